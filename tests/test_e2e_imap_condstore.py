"""
CONDSTORE, QRESYNC (RFC 7162) and ESEARCH (RFC 4731) end to end: the real
hub, imapclient as a resyncing client would use it, and a raw socket for
the exact responses.
"""

from __future__ import annotations

import re

import pytest

from tests.test_e2e_imap_rfc import PLAIN, Raw, raw_append, raw_login


def modseq_of(line: bytes) -> int:
    m = re.search(rb"MODSEQ \((\d+)\)", line)
    assert m, line
    return int(m.group(1))


def highest(lines: list[bytes]) -> int:
    for line in lines:
        m = re.search(rb"\[HIGHESTMODSEQ (\d+)\]", line)
        if m:
            return int(m.group(1))
    raise AssertionError(lines)


def test_capabilities_after_login_offer_condstore_qresync_and_esearch(hub):
    r = Raw(hub.ports["imap"])
    assert b"CONDSTORE" not in r.greeting  # modseqs are the account's store's
    r.cmd(b"l", b"LOGIN alice secret")
    caps = r.cmd(b"c", b"CAPABILITY")[0]
    for name in (b"CONDSTORE", b"QRESYNC", b"ESEARCH", b"ENABLE"):
        assert b" " + name in caps, caps
    r.close()


def test_imapclient_fetches_only_what_changed_since_a_modseq(hub):
    import imapclient

    client = imapclient.IMAPClient("127.0.0.1", port=hub.ports["imap"], ssl=False)
    client.login("alice", "secret")
    for _ in range(3):
        client.append("INBOX", PLAIN)
    assert client.enable("CONDSTORE") == [b"CONDSTORE"]
    selected = client.select_folder("INBOX")
    start = selected[b"HIGHESTMODSEQ"]
    everything = client.fetch([1, 2, 3], ["FLAGS"])
    assert all(b"MODSEQ" in data for data in everything.values())  # FLAGS brings MODSEQ once enabled
    client.add_flags([2], [imapclient.FLAGGED])
    changed = client.fetch([1, 2, 3], ["FLAGS"], modifiers=[f"CHANGEDSINCE {start}"])
    assert list(changed) == [2]
    assert imapclient.FLAGGED in changed[2][b"FLAGS"]
    assert changed[2][b"MODSEQ"][0] > start
    assert client.folder_status("INBOX", ["HIGHESTMODSEQ"])[b"HIGHESTMODSEQ"] == changed[2][b"MODSEQ"][0]
    assert client.search(["MODSEQ", str(changed[2][b"MODSEQ"][0])]) == [2]
    client.logout()


def test_store_unchangedsince_refuses_a_message_changed_since(hub):
    a, b = raw_login(hub), raw_login(hub)
    raw_append(a, b"INBOX", PLAIN)
    raw_append(a, b"INBOX", PLAIN)
    selected = a.cmd(b"s", b"SELECT INBOX (CONDSTORE)")
    mark = highest(selected)
    b.cmd(b"s", b"SELECT INBOX")
    b.cmd(b"t", b"STORE 2 +FLAGS (\\Flagged)")  # someone else changed message 2
    reply = a.cmd(b"u", b"STORE 1:2 (UNCHANGEDSINCE %d) +FLAGS (\\Seen)" % mark)
    assert reply[-1].startswith(b"u OK [MODIFIED 2] "), reply
    fetched = [line for line in reply if line.startswith(b"* 1 FETCH")]
    assert fetched and b"\\Seen" in fetched[0] and modseq_of(fetched[0]) > mark
    assert all(b"\\Seen" not in line for line in reply if line.startswith(b"* 2 FETCH"))
    silent = a.cmd(b"v", b"UID STORE 1 (UNCHANGEDSINCE %d) +FLAGS.SILENT ($Done)" % modseq_of(fetched[0]))
    assert re.match(rb"\* 1 FETCH \(UID 1 MODSEQ \(\d+\)\)", silent[-2]), silent
    a.close()
    b.close()


def test_qresync_select_tells_vanished_and_changed_messages(hub):
    r = raw_login(hub)
    for _ in range(4):
        raw_append(r, b"INBOX", PLAIN)
    selected = r.cmd(b"s", b"SELECT INBOX")
    validity = int(re.search(rb"UIDVALIDITY (\d+)", b"\n".join(selected)).group(1))
    mark = highest(selected)
    r.cmd(b"t", b"STORE 3 +FLAGS (\\Deleted \\Seen)")
    r.cmd(b"x", b"UID EXPUNGE 3")
    assert r.cmd(b"f", b"UID STORE 4 +FLAGS (\\Answered)")[-1].startswith(b"f OK")
    r.close()

    q = raw_login(hub)
    assert q.cmd(b"e", b"ENABLE QRESYNC") == [b"* ENABLED QRESYNC", b"e OK ENABLE completed"]
    resync = q.cmd(b"s", b"SELECT INBOX (QRESYNC (%d %d 1:4))" % (validity, mark))
    assert b"* VANISHED (EARLIER) 3" in resync, resync
    changed = [line for line in resync if b" FETCH " in line]
    assert len(changed) == 1 and changed[0].startswith(b"* 3 FETCH (UID 4 FLAGS (\\Answered") and modseq_of(changed[0]) > mark
    assert resync[-1].startswith(b"s OK [READ-WRITE]")
    fetched = q.cmd(b"f", b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % mark)
    assert fetched[0] == b"* VANISHED (EARLIER) 3" and len(fetched) == 3, fetched
    q.cmd(b"d", b"STORE 1 +FLAGS (\\Deleted)")
    assert q.cmd(b"x", b"EXPUNGE") == [b"* VANISHED 1", b"x OK EXPUNGE completed"]
    closed = q.cmd(b"t", b"EXAMINE Trash")
    assert closed[0] == b"* OK [CLOSED] previous mailbox closed"
    q.close()


def test_qresync_with_an_old_uidvalidity_sends_no_resync_data(hub):
    r = raw_login(hub)
    raw_append(r, b"INBOX", PLAIN)
    r.cmd(b"e", b"ENABLE QRESYNC")
    resync = r.cmd(b"s", b"SELECT INBOX (QRESYNC (1 1))")
    assert not [line for line in resync if b"VANISHED" in line or b" FETCH " in line], resync
    assert r.cmd(b"n", b"SELECT INBOX (QRESYNC)")[-1].startswith(b"n BAD ")
    r.close()


def test_modseqs_survive_a_restart(start_hub, tmp_path):
    data = str(tmp_path / "kept")
    hub = start_hub(data=data)
    r = raw_login(hub)
    raw_append(r, b"INBOX", PLAIN)
    r.cmd(b"s", b"SELECT INBOX (CONDSTORE)")
    stored = r.cmd(b"t", b"STORE 1 +FLAGS ($Kept)")
    before = modseq_of(stored[-2])
    r.close()
    hub.stop()
    hub = start_hub(data=data)
    r = raw_login(hub)
    selected = r.cmd(b"s", b"SELECT INBOX (CONDSTORE)")
    assert highest(selected) >= before
    assert modseq_of(r.cmd(b"f", b"FETCH 1 (MODSEQ)")[0]) == before
    r.close()


@pytest.mark.parametrize("returns", [b"(MIN MAX COUNT ALL)", b"()"])
def test_esearch_returns_min_max_count_and_all(hub, returns):
    r = raw_login(hub)
    for subject in (b"a", b"b", b"a", b"a"):
        raw_append(r, b"INBOX", b"Subject: " + subject + b"\r\n\r\nx\r\n")
    r.cmd(b"s", b"SELECT INBOX")
    reply = r.cmd(b"q", b"UID SEARCH RETURN " + returns + b" CHARSET UTF-8 SUBJECT a")
    if returns == b"()":
        assert reply[0] == b'* ESEARCH (TAG "q") UID ALL 1,3:4'
    else:
        assert reply[0] == b'* ESEARCH (TAG "q") UID MIN 1 MAX 4 COUNT 3 ALL 1,3:4'
    none = r.cmd(b"n", b"SEARCH RETURN (COUNT MIN) SUBJECT zzz")
    assert none[0] == b'* ESEARCH (TAG "n") COUNT 0'
    assert r.cmd(b"b", b"SEARCH RETURN (NOPE) ALL")[-1].startswith(b"b BAD ")  # (SAVE is SEARCHRES: test_e2e_imap_rev2.py)
    r.close()


def test_imapclient_esearch_and_condstore_search(hub):
    import imapclient

    client = imapclient.IMAPClient("127.0.0.1", port=hub.ports["imap"], ssl=False)
    client.login("alice", "secret")
    client.append("INBOX", PLAIN)
    client.append("INBOX", PLAIN)
    client.select_folder("INBOX")
    client.add_flags([1], [imapclient.SEEN])
    found = client.search(["SEEN"])
    assert found == [1]
    modseq = client.fetch([1], ["MODSEQ"])[1][b"MODSEQ"][0]
    found = client.search(["MODSEQ", str(modseq)])
    assert found == [1] and found.modseq == modseq
    client.logout()
