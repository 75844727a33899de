"""
A hub started on a copy of a running hub's data folder (a backup restored
with tar or rsync, which keep the control socket's lock: a symbolic link
naming the old hub's pid) gets its own control socket: the lock names a
live process, but no hub answers on that folder's socket. Before, the hub
said "another running hub on this data folder has it" and ran without one,
so mailhub-admin status and reload (and systemctl reload) could not reach
it; on a restored machine the old pid is often another live process.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.hubprocess import ROOT


def admin(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "twisted_mailhub.admin", *args], capture_output=True, text=True, timeout=60, env=env)


def test_a_hub_on_a_restored_copy_of_a_running_hubs_folder_has_its_own_control_socket(start_hub, tmp_path):
    first = start_hub()
    lock = os.path.join(first.data_dir, "control.sock.lock")
    assert os.readlink(lock) == str(first.pid)
    copy = str(tmp_path / "restored")
    os.makedirs(copy)
    os.symlink(os.readlink(lock), os.path.join(copy, "control.sock.lock"))  # as tar -x makes it
    second = start_hub(data=copy)
    assert "another running hub" not in second.log
    status = admin("status", "--data", copy)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"pid {second.pid},")
    # The first hub keeps its own.
    assert admin("status", "--data", first.data_dir).stdout.startswith(f"pid {first.pid},")


def test_a_second_hub_on_the_same_running_folder_still_goes_without(start_hub):
    first = start_hub()
    second = start_hub(data=first.data_dir)
    second.wait_for_log("no control socket")
    assert "another running hub on this data folder has it" in second.log
    assert admin("status", "--data", first.data_dir).stdout.startswith(f"pid {first.pid},")
