"""
Listener components are plugins: the built-in ones and a third party's are
found the same way, offer their options, and are served by the hub.
"""

import os
import shutil
import socket
import subprocess
import sys

from tests.hubprocess import ROOT, listener_names
from twisted_mailhub import tap
from twisted_mailhub.components import IHubComponent, hub_components


def test_builtin_components_are_plugins_in_a_stable_start_order():
    components = hub_components()
    assert all(IHubComponent.providedBy(c) for c in components)
    names = [c.name for c in components]
    # the queue first: SMTP hands mail for other domains to its relay
    builtin = ["queue", "smtp", "pop3", "imap", "ftp"]
    assert [n for n in names if n in builtin] == builtin
    assert [c.name for c in hub_components()] == names
    assert [(c.order, c.name) for c in components] == sorted((c.order, c.name) for c in components)


def test_every_listener_option_comes_from_a_component():
    options = tap.Options()
    offered = {row[0] for row in options.optParameters}
    for name in listener_names():
        assert name in offered
        assert f"no-{name}" in {row[0] for row in options.optFlags}


def test_test_hubs_give_every_registered_listener_an_ephemeral_port(hub):
    assert set(hub.ports) == set(listener_names())
    defaults = {int(spec.default.split(":")[1]) for c in hub_components() for spec in c.listeners}
    assert not defaults & set(hub.ports.values())


def _install_example(tmp_path):
    plugins = tmp_path / "thirdparty"
    target = plugins / "twisted_mailhub" / "plugins"
    target.mkdir(parents=True)
    # a third-party plugin directory: no __init__.py anywhere
    shutil.copy(os.path.join(ROOT, "etc", "example_listener.py"), target / "example_listener.py")
    return str(plugins)


def test_example_listener_installed_on_the_path_is_offered_by_twistd_help(tmp_path):
    path = _install_example(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "mailhub", "--help"],
        capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, path])),
    )
    assert result.returncode == 0, result.stderr
    assert "--finger=" in result.stdout
    assert "--no-finger" in result.stdout
    assert "--finger-plan=" in result.stdout


def test_example_listener_installed_on_the_path_is_served_by_the_hub(start_hub, tmp_path):
    path = _install_example(tmp_path)
    hub = start_hub("--finger-plan", "office hours at noon", env={"PYTHONPATH": path})
    # hubprocess saw the plugin too and gave it an ephemeral port
    assert "finger" in hub.ports and hub.ports["finger"] != 8079
    with socket.create_connection(("127.0.0.1", hub.ports["finger"]), timeout=10) as s:
        s.sendall(b"alice\r\n")
        answer = b"".join(iter(lambda: s.recv(4096), b""))
    assert answer == b"alice@localhost: mail account on mail.test\r\nPlan: office hours at noon\r\n"
    # the other listeners are still there
    assert {"smtp", "imap", "ftp"} <= set(hub.ports)
