# -*- test-case-name: tests.test_pytest_plugin -*-
"""
The pytest plugin (entry point C{pytest11}, named
C{twisted_mailhub.pytest_plugin} as the module, so that C{pytest -p
twisted_mailhub.pytest_plugin} loads it once whether the package is
installed or on C{PYTHONPATH}; C{-p no:twisted_mailhub.pytest_plugin} turns
it off): a real hub as a fixture.

    def test_signup_sends_a_welcome(mailhub):
        signup("alice@localhost", smtp_port=mailhub.ports["smtp"])
        msg = mailhub.wait_for_message(to="alice@localhost", subject="Welcome")
        assert "activate" in msg.text()

Fixtures:

 - C{mailhub}: a fresh L{twisted_mailhub.testing.Mailhub} for one test,
   stopped (and its data folder removed) after it.
 - C{mailhub_session}: one hub for the whole run, purged before every
   test that uses it (faster; accounts added with C{add_account} stay).

Configuration, the marker winning over C{pytest.ini}/C{pyproject.toml}:

    [pytest]
    mailhub_accounts = alice@example.com:secret bob@example.com:hungry
    mailhub_domains = example.com
    mailhub_options = --max-message-size 100000 --no-ftp

    @pytest.mark.mailhub(accounts=["carol:pw"], domains=["example.org"], options=["--transcript"])
    def test_...(mailhub): ...

The marker applies to C{mailhub} only: the session hub is shared, so it
takes the ini options.
"""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from twisted_mailhub.testing import DEFAULT_ACCOUNTS, Mailhub, MailhubStartError, bytecode_cache_folder, remove_bytecode_cache_folder

_INI = {
    "mailhub_accounts": "accounts of the mailhub fixtures, ADDRESS:PASSWORD separated by spaces (default: alice:secret bob:hungry)",
    "mailhub_domains": "local domains of the mailhub fixtures, separated by spaces (the first is the default domain)",
    "mailhub_options": "more twistd mailhub options for the mailhub fixtures, as on a command line",
}


def pytest_addoption(parser: Any) -> None:
    for name, help_text in _INI.items():
        parser.addini(name, help_text, default="")


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers",
        "mailhub(accounts=None, domains=None, options=None): how the mailhub fixture starts its hub "
        "(accounts ADDRESS:PASSWORD, local domains, more twistd mailhub options)",
    )


def _settings(config: Any, marker: Any = None) -> dict[str, Any]:
    accounts = config.getini("mailhub_accounts").split() or list(DEFAULT_ACCOUNTS)
    domains = config.getini("mailhub_domains").split()
    options = shlex.split(config.getini("mailhub_options"))
    if marker is not None:
        given = dict(marker.kwargs)
        unknown = set(given) - {"accounts", "domains", "options"}
        if unknown or marker.args:
            pytest.fail(f"@pytest.mark.mailhub takes accounts=, domains=, options= (got {', '.join(sorted(unknown)) or 'positional arguments'})", pytrace=False)
        for key in ("accounts", "domains", "options"):
            if isinstance(given.get(key), (str, bytes)):
                pytest.fail(f"@pytest.mark.mailhub({key}=...) takes a list of strings, got one string: {given[key]!r}", pytrace=False)
        accounts = list(given.get("accounts", accounts))
        domains = list(given.get("domains", domains))
        options = [*options, *given.get("options", ())]
    return {"accounts": accounts, "domains": domains, "options": options}


def _start(settings: dict[str, Any], data_dir: str, where: str) -> Mailhub:
    """
    A started hub, or the test's error in the hub's words: pytest's
    traceback through the kit (its source and the fixtures' reprs) would
    bury them.
    """
    __tracebackhide__ = True
    try:
        hub = Mailhub(*settings["options"], accounts=settings["accounts"], domains=settings["domains"], data_dir=data_dir)
        hub._own_data_dir = True  # pytest's temp folder, but nothing of ours left in it
        return hub.start()
    except (ValueError, MailhubStartError) as e:  # an account the hub would refuse; a hub that did not start
        failure = f"{where}: {e}"
    pytest.fail(failure, pytrace=False)  # outside the except: no "during handling" chain


@pytest.fixture(scope="session")
def _mailhub_bytecode_cache(tmp_path_factory: Any):
    """
    Where no bytecode is written, the compiled code the hubs of this run
    (of this xdist worker) share, in pytest's temp folder: removed at the
    end of the session, and left to pytest's own clean-up of its temp
    folders if this process is killed (an xdist worker ended at once by
    Ctrl-C skips its exit handlers).
    """
    bytecode_cache_folder(parent=str(tmp_path_factory.getbasetemp()))
    try:
        yield
    finally:
        remove_bytecode_cache_folder()


@pytest.fixture
def mailhub(request: Any, tmp_path_factory: Any, _mailhub_bytecode_cache: None):
    """
    A L{twisted_mailhub.testing.Mailhub} of its own for this test, started
    on free loopback ports in a folder of pytest's temp folder, with the
    ini's accounts, domains and options and this test's
    C{@pytest.mark.mailhub(accounts=[...], domains=[...], options=[...])}
    (lists of C{str}); stopped and its folder removed after the test,
    however it ends. A hub that does not start, an unknown marker keyword
    or an account the hub would refuse is this test's error, in the hub's
    words. About 0.3-1 s per test (C{mailhub_session} is one hub per run).
    """
    settings = _settings(request.config, request.node.get_closest_marker("mailhub"))
    hub = _start(settings, str(tmp_path_factory.mktemp("mailhub")), "the mailhub fixture could not start its hub")
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture(scope="session")
def _mailhub_shared(request: Any, tmp_path_factory: Any, _mailhub_bytecode_cache: None):
    hub = _start(_settings(request.config), str(tmp_path_factory.mktemp("mailhub-session")), "the mailhub_session fixture could not start its hub")
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def mailhub_session(request: Any, _mailhub_shared: Mailhub):
    """
    The hub shared by the whole run (by each pytest-xdist worker), emptied
    before this test (L{Mailhub.purge}: mail, made folders and FTP files
    of every account it knows; accounts added with C{add_account} stay).

    A C{@pytest.mark.mailhub} on a test that takes only this fixture is
    refused (the test's error): the shared hub takes the ini options only.
    """
    __tracebackhide__ = True
    if "mailhub" not in request.fixturenames and any(m.name == "mailhub" for m in request.node.own_markers):
        pytest.fail(
            "@pytest.mark.mailhub configures the mailhub fixture only; mailhub_session is shared by the run "
            "and takes mailhub_accounts/mailhub_domains/mailhub_options from the ini file: take the mailhub fixture",
            pytrace=False,
        )
    _mailhub_shared.purge()
    return _mailhub_shared
