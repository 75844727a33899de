# -*- test-case-name: tests.test_web_login -*-
"""
The web component: C{--web} (HTTP, default C{tcp:8080}) and C{--webs}
(HTTPS with the hub's certificate, default C{tcp:8443}), serving webmail,
the message anatomy and the live teaching console for the same accounts,
realm and store as every other protocol.

Other components add resources with C{hub.web_resources["api/v1"] =
resource}; see L{twisted_mailhub.web.site}.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.python import usage

from twisted_mailhub.hub import ListenerSpec

log = Logger()

listeners = [
    ListenerSpec("web", "tcp:8080", "Web listener (HTTP): webmail, message anatomy, live console."),
    ListenerSpec("webs", "tcp:8443", "Web listener over implicit TLS (HTTPS) with the hub's certificate.", tls="implicit"),
]

option_parameters = [
    ["web-session-timeout", None, 3600, "Seconds a browser session may stay idle before it must log in again.", int],
    ["console-sessions", None, 1000, "Recent sessions the live console keeps (open ones are always kept).", int],
    ["console-lines", None, 5000, "Lines the live console keeps per session (the oldest go first).", int],
]

option_lists = [
    ["teacher", "An account that sees every session in the console (repeatable)."],
]


# Slow-client limits: header fields, body, idle (twisted_mailhub.web.deadlines).
from twisted_mailhub.web import deadlines as _deadlines  # noqa: E402

option_parameters += _deadlines.option_parameters


def check_options(options: Any) -> None:
    for name in ("web-session-timeout", "console-sessions", "console-lines"):
        if int(options[name]) < 1:
            raise usage.UsageError(f"--{name} must be at least 1")
    _deadlines.check_options(options)


def install(hub: Any) -> None:
    from twisted_mailhub.hub import has_web_face

    if not has_web_face(hub.options):
        # --no-web --no-webs: no browser can reach a page, so none of it
        # is loaded and no session is recorded for a console.
        return
    from twisted_mailhub.web.avatar import IWebUser, avatar_factory, teacher_addresses
    from twisted_mailhub.web.site import WebFace

    teachers = teacher_addresses(hub.accounts, hub.options.get("teacher") or [])
    for address in sorted(teachers):
        if hub.accounts.find(address) is None:
            # (a warning, not a refusal: the account may come with a reload)
            log.warn("--teacher {address} is not an account (yet): nobody is that teacher until it is added", address=address)
    hub.realm.register(IWebUser, avatar_factory(hub.store, teachers))
    if not hasattr(hub, "web_resources"):
        hub.web_resources = {}
    hub.web = WebFace(hub, float(hub.options.get("web-session-timeout") or 3600))
    from twisted_mailhub.web import console

    # The console reads the session-event bus: every listener records.
    hub.record_sessions = True
    hub.events.recording = True
    hub.events.max_sessions = int(hub.options.get("console-sessions") or 1000)
    hub.events.max_lines = int(hub.options.get("console-lines") or 5000)

    def account_name(name: str):
        found = hub.accounts.find(name)
        return found.address if found is not None else None

    hub.events.account_name = account_name
    console.install(hub.web)
    from twisted_mailhub.web import mail

    mail.install(hub.web)
    hub.listen_each(listeners, lambda spec: hub.web.site(spec.name))
