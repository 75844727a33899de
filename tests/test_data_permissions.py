# -*- test-case-name: tests.test_data_permissions -*-
"""
What another local user can read of the data folder: nothing the hub makes.
Mail, queued mail, FTP and SFTP uploads, folders and the files beside them
are the hub's own user's only, however the hub was started (C{twistd -n}
from a shell whose umask is the usual 022, as the README's commands are),
as Postfix's local delivery and vsftpd's C{local_umask=077} keep them.
"""

from __future__ import annotations

import ftplib
import imaplib
import io
import os
import smtplib
import stat

import pytest


def _readable_by_others(root: str) -> list[str]:
    found = []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
                continue  # (a link's own mode means nothing; the control socket is 0600 by itself)
            if st.st_mode & 0o077:
                found.append(f"{os.path.relpath(path, root)} {stat.S_IMODE(st.st_mode):04o}")
    return found


@pytest.fixture
def hub_from_a_shell(start_hub):
    old = os.umask(0o022)
    try:
        return start_hub()
    finally:
        os.umask(old)


def test_what_the_hub_writes_in_its_data_folder_only_its_user_can_read(hub_from_a_shell):
    hub = hub_from_a_shell
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"]) as s:
        s.sendmail("x@example.org", ["alice@localhost"], b"Subject: private\r\n\r\nfor alice only\r\n")
    f = ftplib.FTP()
    f.connect("127.0.0.1", hub.ports["ftp"])
    f.login("alice", "secret")
    f.mkd("papers")
    f.storbinary("STOR papers/exam.txt", io.BytesIO(b"the answers\n"))
    f.storbinary("STOR notes.txt", io.BytesIO(b"mine\n"))
    f.quit()
    i = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    i.login("alice", "secret")
    assert i.create("Private")[0] == "OK"
    i.select("INBOX")
    assert i.copy("1", "Private")[0] == "OK"
    i.logout()

    assert _readable_by_others(hub.data_dir) == []
    # and they are there: the walk looked at the files a user would worry about
    home = os.path.join(hub.data_dir, "ftp", "localhost", "alice")
    assert open(os.path.join(home, "papers", "exam.txt"), "rb").read() == b"the answers\n"
    maildir = os.path.join(hub.data_dir, "mail", "localhost", "alice")
    assert os.listdir(os.path.join(maildir, "cur")) + os.listdir(os.path.join(maildir, "new"))
    assert os.listdir(os.path.join(maildir, ".Private", "cur")) + os.listdir(os.path.join(maildir, ".Private", "new"))


def test_a_shell_umask_gains_077_and_a_twistd_umask_is_left_alone():
    from twisted_mailhub.privileges import keep_data_private

    old = os.umask(0o022)
    try:
        assert keep_data_private(None) == 0o077
        assert os.umask(0o022) == 0o077
        # twistd --umask 027 (a backup group that reads): the admin's choice
        assert keep_data_private(0o027) == 0o022
        assert os.umask(0o002) == 0o022
        # a stricter umask stays as strict
        assert keep_data_private(None) == 0o077
        os.umask(0o277)
        assert keep_data_private(None) == 0o277
    finally:
        os.umask(old)
