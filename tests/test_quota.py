"""
Storage quotas (issue 14): --quota and an account's own ;quota=, enforced
for SMTP (552 5.2.2 at RCPT when already full, at the end of DATA when the
message would not fit), IMAP APPEND/COPY (NO [OVERQUOTA]), with a warning
message at 90% and space freed by deletions found again.
"""

from __future__ import annotations

import imaplib
import os
import re
import smtplib
import time

import pytest

from twisted_mailhub.quota import format_size, parse_size


def test_sizes_read_with_binary_multiples():
    assert parse_size("1048576") == 1048576
    assert parse_size("500M") == 500 * 1024 * 1024
    assert parse_size("2g") == 2 * 1024**3
    assert parse_size("1.5GiB") == int(1.5 * 1024**3)
    assert parse_size("4k") == 4096
    for bad in ("", "-1", "0", "12 parsecs", "M"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert format_size(3 * 1024 * 1024) == "3.0 MiB"


def message(subject: str, octets: int) -> bytes:
    head = f"From: judy@jbc.test\r\nSubject: {subject}\r\n\r\n".encode()
    # In lines of 100 octets (RFC 5321 §4.5.3.1.6: at most 1000), the last shorter.
    rest = octets - len(head)
    body = (b"x" * 98 + b"\r\n") * ((rest - 2) // 100)
    return head + body + b"x" * (rest - len(body) - 2) + b"\r\n"


def inbox(hub, user="alice", password="secret"):
    client = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    client.login(user, password)
    client.select("INBOX")
    return client


def subjects(client) -> list[str]:
    typ, data = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    return [part[1].decode().strip() for part in data if isinstance(part, tuple)]


def test_smtp_refuses_what_does_not_fit_then_refuses_at_rcpt_once_full(start_hub):
    # The trace headers the hub adds come on top of each message's size.
    hub = start_hub("--quota", "8k")
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as client:
        client.sendmail("judy@jbc.test", ["alice@localhost"], message("first", 5000))
        with pytest.raises(smtplib.SMTPDataError) as full:
            client.sendmail("judy@jbc.test", ["alice@localhost"], message("too big", 4000))
        assert full.value.smtp_code == 552 and full.value.smtp_error.startswith(b"5.2.2")
        client.rset()
        # A message bigger than the whole quota is not "mailbox full".
        with pytest.raises(smtplib.SMTPDataError) as huge:
            client.sendmail("judy@jbc.test", ["alice@localhost"], message("huge", 9000))
        assert huge.value.smtp_code == 552 and huge.value.smtp_error.startswith(b"5.2.3"), huge.value.smtp_error
        client.rset()
        # Another account has its own room: the quota is per account.
        client.sendmail("judy@jbc.test", ["bob@localhost"], message("for bob", 4000))
        # Past 90%: the warning arrives, and with it alice is full.
        client.sendmail("judy@jbc.test", ["alice@localhost"], message("second", 2500))
    imap = inbox(hub)
    deadline = time.monotonic() + 10
    while len(subjects(imap)) < 3 and time.monotonic() < deadline:
        imap.noop()
    got = subjects(imap)
    assert got[:2] == ["Subject: first", "Subject: second"]
    assert len(got) == 3 and got[2].startswith("Subject: Your mailbox is") and got[2].endswith("% full")
    # Its Date: gives the hub's zone offset, as Received: does, not -0000 ("zone unknown", RFC 5322 §3.3).
    _, data = imap.fetch("3", "(BODY.PEEK[HEADER.FIELDS (DATE)])")
    date = data[0][1].decode().strip()
    assert re.fullmatch(r"Date: .* [+-]\d{4}", date) and not date.endswith("-0000"), date
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail("judy@jbc.test", ["alice@localhost"], message("third", 100))
        code, text = refused.value.recipients["alice@localhost"]
        assert code == 552 and text.startswith(b"5.2.2") and b"Mailbox full" in text
    # Deleting frees the space, and mail is taken again at once.
    imap.store("1", "+FLAGS", "\\Deleted")
    imap.expunge()
    imap.logout()
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as client:
        assert client.sendmail("judy@jbc.test", ["alice@localhost"], message("after cleanup", 1000)) == {}


def carol_hub(start_hub, tmp_path, accounts: str):
    """
    Start a hub whose accounts file (under C{tmp_path}) holds C{accounts}
    (lines of C{address;quota=N:password}): (the hub, an IMAP session
    logged in as carol with password "pw").
    """
    path = tmp_path / "accounts"
    path.write_text(accounts)
    hub = start_hub("--auth", f"file:{path}", users=())
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    imap.login("carol", "pw")
    return hub, imap


def _getquota_used(imap) -> int:
    typ, data = imap.getquota('""')
    assert typ == "OK", data
    return int(re.match(rb'"" \(STORAGE (\d+) 1024\)', data[0]).group(1))


def test_imap_append_and_copy_over_quota_get_overquota(start_hub, tmp_path):
    hub, imap = carol_hub(start_hub, tmp_path, "carol@localhost;quota=6k:pw\n")
    assert imap.append("INBOX", None, None, message("kept", 3500))[0] == "OK"
    typ, data = imap.append("INBOX", None, None, message("no room", 4000))
    assert typ == "NO" and data[0].startswith(b"[OVERQUOTA]") and b"mailbox full" in data[0], data
    imap.create("Archive")
    imap.select("INBOX")
    typ, data = imap.copy("1", "Archive")
    assert typ == "NO" and data[0].startswith(b"[OVERQUOTA]")
    imap.select("Archive")
    assert imap.search(None, "ALL")[1] == [b""]
    imap.logout()


def test_imap_quota_extension_reports_the_storage_root(start_hub, tmp_path):
    hub, imap = carol_hub(start_hub, tmp_path, "carol@localhost;quota=64k:pw\ndave@localhost:pw\n")
    assert "QUOTA" in imap.capabilities and "QUOTA=RES-STORAGE" in imap.capabilities
    imap.append("INBOX", None, None, message("some", 3000))
    typ, data = imap.getquotaroot("INBOX")
    assert typ == "OK"
    roots, quotas = data
    assert roots == [b'"INBOX" ""'] and quotas == [b'"" (STORAGE 3 64)'], data
    typ, data = imap.getquota('""')
    assert typ == "OK" and data == [b'"" (STORAGE 3 64)']
    typ, data = imap._simple_command("SETQUOTA", '""', "(STORAGE 100)")
    assert typ == "NO" and data[0].startswith(b"[NOPERM]"), data
    imap.logout()
    # An account with no limit has no quota root.
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    imap.login("dave", "pw")
    typ, data = imap.getquotaroot("INBOX")
    assert typ == "OK" and data[0] == [b'"INBOX"']
    imap.logout()


def test_no_quota_capability_without_quotas(hub):
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    imap.login("alice", "secret")
    assert "QUOTA" not in imap.capabilities
    imap.logout()


def test_messages_arriving_at_once_cannot_all_pass_on_the_same_free_space(start_hub):
    # Found by breaker: with --quota 20K, 8 messages of 4.7 KB sent at
    # once were all accepted (39 KiB stored): each passed the check before
    # any was counted. A message being stored now counts for the next check.
    import threading

    hub = start_hub("--quota", "20k")
    body = b"Subject: at once\r\n\r\n" + (b"x" * 76 + b"\r\n") * 60
    clients = [smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=30) for _ in range(8)]
    for c in clients:
        c.ehlo()
        c.mail("sender@example.org")
        c.rcpt("alice@localhost")
    answers = []
    start = threading.Barrier(len(clients))

    def send(c):
        start.wait(10)
        answers.append(c.data(body)[0])

    threads = [threading.Thread(target=send, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for c in clients:
        c.quit()
    assert sorted(set(answers)) == [250, 552], answers
    m = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    m.login("alice", "secret")
    quota = m.getquotaroot("INBOX")[1][1][0]
    m.logout()
    used = int(quota.split(b"STORAGE ")[1].split()[0])
    assert used <= 20 + 1, quota  # the 90 % warning passes the quota on purpose (< 1 KiB)


def test_getquota_is_current_after_expunge_pop3_dele_delete_and_ftp_dele(start_hub, tmp_path):
    # RFC 9208 §4.2: GETQUOTA tells the usage. Deletions were not followed:
    # the count (quota.RECOUNT, 60 s) still held what an EXPUNGE, a POP3
    # DELE + QUIT, a DELETE of a folder or an FTP DELE had freed.
    import ftplib
    import io
    import poplib

    hub, imap = carol_hub(start_hub, tmp_path, "carol@localhost;quota=1m:pw\n")

    def used() -> int:
        return _getquota_used(imap)

    for n in range(3):
        assert imap.append("INBOX", None, None, message(f"m{n}", 100 * 1024))[0] == "OK"
    imap.create("Old")
    assert imap.append("Old", None, None, message("old", 100 * 1024))[0] == "OK"
    assert used() == 400  # added at once (before too)
    imap.select("INBOX")
    imap.store("1", "+FLAGS", "\\Deleted")
    imap.expunge()
    assert used() == 300
    pop = poplib.POP3("127.0.0.1", hub.ports["pop3"])
    pop.user("carol")
    pop.pass_("pw")
    pop.dele(1)
    pop.quit()
    assert used() == 200
    imap.delete("Old")
    assert used() == 100
    f = ftplib.FTP()
    f.connect("127.0.0.1", hub.ports["ftp"])
    f.login("carol", "pw")
    f.storbinary("STOR file.bin", io.BytesIO(b"f" * 200 * 1024))
    assert used() == 300
    f.delete("file.bin")
    assert used() == 100
    f.quit()
    imap.logout()


def test_the_shared_count_of_workers_takes_removals_off(tmp_path):
    # Under --workers the count is the Maildir's mailhub-quota file; a
    # removal made by one worker must be seen by the others (Maildir++
    # maildirsize writes such lines with a minus sign). Before, only
    # "+N" lines were read: a removal could not be written at all.
    from twisted_mailhub.quota import SharedUsage

    usage = SharedUsage(str(tmp_path))
    usage.write(1000)
    usage.add(300)
    usage.add(-500)
    assert SharedUsage(str(tmp_path)).read(60) == 800
    usage.forget()
    assert SharedUsage(str(tmp_path)).read(60) is None  # the next reader counts again


def test_an_expunge_of_many_messages_takes_their_sizes_off_in_one_walk(tmp_path):
    # More than 16 UIDs: the sizes come from one messages() walk (one query
    # on PostgreSQL), not one info() a message; the count is exact either way.
    from twisted_mailhub.accounts import AccountBook
    from twisted_mailhub.quota import Quotas, QuotaStore
    from twisted_mailhub.store.memory import MemoryStore

    real = MemoryStore()
    accounts = AccountBook(["localhost"])
    accounts.add("carol@localhost", "pw")
    quotas = Quotas(real, 10 * 1024 * 1024, accounts)
    store = QuotaStore(real, quotas)
    inbox = store.account("carol@localhost").folder("INBOX")
    for n in range(40):
        inbox.append(message(f"m{n}", 1000))
    assert quotas.usage("carol@localhost") == 40_000
    looked_up = []
    real_info = inbox._real.info
    inbox._real.info = lambda uid: looked_up.append(uid) or real_info(uid)
    inbox.expunge(range(1, 31))
    assert quotas.usage("carol@localhost") == 10_000 and looked_up == []
    inbox.expunge([31, 32])
    assert quotas.usage("carol@localhost") == 8_000 and sorted(looked_up) == [31, 32]


def test_getquota_is_current_after_a_maildir_is_edited_by_hand(start_hub, tmp_path):
    # A message removed from the Maildir by hand (a user's script, an admin)
    # was in GETQUOTA's count for up to quota.RECOUNT (60 s): the usage is
    # now counted when it is reported (Quotas.reported).
    hub, imap = carol_hub(start_hub, tmp_path, "carol@localhost;quota=1m:pw\n")
    for n in range(3):
        assert imap.append("INBOX", None, None, message(f"m{n}", 100 * 1024))[0] == "OK"
    assert _getquota_used(imap) == 300
    cur = os.path.join(hub.maildir("carol@localhost"), "cur")
    os.unlink(os.path.join(cur, sorted(os.listdir(cur))[0]))
    assert _getquota_used(imap) == 200  # (before: 300 for a minute)
    assert imap.getquotaroot("INBOX")[1][1][0] == b'"" (STORAGE 200 1024)'
    imap.logout()


def test_getquota_is_current_across_workers_on_postgresql(start_hub, tmp_path, pg_dsn):
    # PostgreSQL under --workers has no shared count file: a worker's count
    # did not see an EXPUNGE made in the other worker for up to 60 s. Every
    # session (spread over both workers) now reports the usage after it.
    accounts = tmp_path / "accounts"
    accounts.write_text("carol@localhost;quota=1m:pw\n")
    hub = start_hub("--workers", "2", "--store", f"postgresql:{pg_dsn}", "--auth", f"file:{accounts}", users=())
    sessions = []
    for _ in range(8):
        imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
        imap.login("carol", "pw")
        sessions.append(imap)
    for n in range(3):
        assert sessions[0].append("INBOX", None, None, message(f"m{n}", 100 * 1024))[0] == "OK"
    assert [_getquota_used(imap) for imap in sessions] == [300] * 8  # (each worker remembers a count)
    sessions[0].select("INBOX")
    sessions[0].store("1", "+FLAGS", "\\Deleted")
    sessions[0].expunge()
    assert [_getquota_used(imap) for imap in sessions] == [200] * 8
    for imap in sessions:
        imap.logout()
    assert len(set(re.findall(r"\[worker (\d)\] imap login carol", hub.log))) == 2, "the sessions did not reach both workers"
