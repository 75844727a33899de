# -*- test-case-name: tests.test_e2e_maildir_tmp -*-
"""
Maildir tmp/ after a crash: the hub removes what its dead processes left
there as it starts (issue 8 item 16).
"""

from __future__ import annotations

import os
import subprocess


def test_hub_start_removes_tmp_files_of_its_dead_processes(start_hub, tmp_path):
    hub = start_hub()
    tmp = os.path.join(hub.maildir("alice@localhost"), "tmp")
    os.makedirs(tmp, exist_ok=True)
    hub.stop()
    gone = subprocess.Popen(["true"])
    gone.wait()
    hostname = "mail.test"
    left = os.path.join(tmp, f"1700000000.M1P{gone.pid}Q7.{hostname},S=7")
    young_of_another_host = os.path.join(tmp, f"1700000000.M1P{gone.pid}Q8.elsewhere,S=7")
    for path in (left, young_of_another_host):
        with open(path, "wb") as f:
            f.write(b"partial")
    hub.start()
    hub.wait_for_log(r"maildir tmp/: removed 1 leftover file\(s\): 1 of processes that are gone, 0 older than 36 h")
    assert not os.path.exists(left)
    assert os.path.exists(young_of_another_host)
