"""
IMAP end to end: the real `twistd mailhub`, spoken to with imaplib,
imapclient and a raw socket (for IDLE and for bad input).
"""

from __future__ import annotations

import base64
import imaplib
import os
import poplib
import re
import smtplib
import socket
import time
from email.message import EmailMessage

import pytest

from tests.rawclient import LineReader
from tests.hubprocess import client_context

imaplib.Commands.setdefault("MOVE", ("SELECTED",))
imaplib.Commands.setdefault("UNSELECT", ("SELECTED",))

MESSAGE = b"From: Bob <bob@localhost>\r\nTo: alice@localhost\r\nSubject: lunch\r\n\r\nAt noon?\r\n"


def login(hub, user="alice", password="secret") -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    c.login(user, password)
    return c


def code(data) -> bytes:
    """The response code of a tagged reply, e.g. b'APPENDUID 1 2'."""
    text = data[-1] if isinstance(data, list) else data
    m = re.match(rb"\[([^\]]*)\]", text)
    return m.group(1) if m else b""


class Raw(LineReader):
    """A line-at-a-time IMAP client for what imaplib will not send."""

    def __init__(self, port: int, timeout: float = 10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.greeting = self.line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def until_tag(self, tag: bytes) -> list[bytes]:
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def cmd(self, tag: bytes, text: bytes) -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        return self.until_tag(tag)

    def close(self) -> None:
        self.sock.close()


def append(c, folder="INBOX", message=MESSAGE, flags=None) -> int:
    typ, data = c.append(folder, flags, None, message)
    assert typ == "OK", data
    m = re.match(rb"APPENDUID (\d+) (\d+)", code(data))
    assert m, data
    return int(m.group(2))


# -- folders, APPEND, COPY, MOVE ---------------------------------------------------


def test_special_use_folders_exist_at_first_login(hub):
    c = login(hub)
    typ, listing = c.list()
    assert typ == "OK"
    joined = b"\n".join(listing)
    for name, attribute in [(b"Sent", b"\\Sent"), (b"Drafts", b"\\Drafts"), (b"Trash", b"\\Trash"), (b"Junk", b"\\Junk"), (b"Archive", b"\\Archive")]:
        assert re.search(rb"\(.*" + re.escape(attribute) + rb".*\) \"/\" \"?" + name + rb"\"?$", joined, re.M), joined
    assert os.path.isdir(os.path.join(hub.maildir("alice"), ".Sent", "cur"))
    typ, ns = c.namespace()
    assert ns == [b'(("" "/")) NIL NIL']
    c.logout()


def test_folders_created_renamed_deleted(hub):
    c = login(hub)
    assert c.create("Work/Projects")[0] == "OK"
    names = b"\n".join(c.list()[1])
    assert b'(\\HasChildren) "/" "Work"' in names
    assert b'(\\HasNoChildren) "/" "Work/Projects"' in names
    assert os.path.isdir(os.path.join(hub.maildir("alice"), ".Work.Projects", "cur"))
    uid = append(c, "Work/Projects")
    assert c.rename("Work", "Job")[0] == "OK"
    names = b"\n".join(c.list('""', "Job/*")[1])
    assert names == b'(\\HasNoChildren) "/" "Job/Projects"'
    c.select("Job/Projects")
    assert c.uid("FETCH", str(uid), "(BODY.PEEK[])")[1][0][1] == MESSAGE
    c.close()
    assert c.delete("Job/Projects")[0] == "OK"
    assert b"Job/Projects" not in b"\n".join(c.list()[1])
    typ, data = c.select("Job/Projects")
    assert typ == "NO"
    c.logout()


def test_rename_inbox_moves_its_messages(hub):
    c = login(hub)
    append(c)
    append(c)
    assert c.rename("INBOX", "Old")[0] == "OK"
    assert b"MESSAGES 2" in c.status("Old", "(MESSAGES)")[1][0]
    assert b"MESSAGES 0" in c.status("INBOX", "(MESSAGES)")[1][0]
    c.logout()


def test_append_reports_appenduid_and_stores_crlf_bytes(hub):
    c = login(hub)
    typ, data = c.append("INBOX", r"(\Flagged $Work)", None, b"Subject: lf only\n\nline one\nline two\n")
    assert typ == "OK"
    validity, uid = map(int, re.match(rb"APPENDUID (\d+) (\d+)", code(data)).groups())
    c.select("INBOX")
    assert c.response("UIDVALIDITY")[1] == [str(validity).encode()]
    typ, data = c.uid("FETCH", str(uid), "(FLAGS RFC822.SIZE BODY.PEEK[])")
    stored = b"Subject: lf only\r\n\r\nline one\r\nline two\r\n"
    assert data[0][1] == stored
    assert b"RFC822.SIZE %d" % len(stored) in data[0][0]
    assert b"\\Flagged" in data[0][0] and b"$Work" in data[0][0]
    typ, data = c.append("Nowhere", None, None, MESSAGE)
    assert typ == "NO" and b"TRYCREATE" in data[0]
    c.logout()


def test_copyuid_of_a_large_copy_gives_ranges_in_the_order_of_the_pairs(hub):
    c = login(hub)
    uids = [append(c) for _ in range(40)]
    c.select("INBOX")
    typ, data = c._simple_command("UID", "COPY", f"{uids[0]}:{uids[-1]}", "Archive")
    assert typ == "OK", data
    m = re.match(rb"COPYUID (\d+) (\S+) (\S+)", code(data))
    assert m and m.group(2) == b"%d:%d" % (uids[0], uids[-1]) and m.group(3) == b"1:40", data
    # Sources with gaps: each set keeps the pairs' order, runs become ranges.
    picked = uids[0:3] + uids[10:11] + uids[20:22]
    typ, data = c._simple_command("UID", "COPY", ",".join(map(str, picked)), "Archive")
    m = re.match(rb"COPYUID (\d+) (\S+) (\S+)", code(data))
    assert m.group(2) == b"%d:%d,%d,%d:%d" % (picked[0], picked[2], picked[3], picked[4], picked[5]), data
    assert m.group(3) == b"41:46", data
    c.logout()


def test_copy_and_move_report_copyuid(hub):
    c = login(hub)
    uids = [append(c) for _ in range(3)]
    c.select("INBOX")
    typ, data = c._simple_command("UID", "COPY", f"{uids[0]}:{uids[1]}", "Archive")
    assert typ == "OK"
    m = re.match(rb"COPYUID (\d+) (\S+) (\S+)", code(data))
    # RFC 4315 §3: uid-sets, so a run of UIDs is one range.
    assert m and m.group(2) == b"%d:%d" % (uids[0], uids[1]), data
    typ, data = c.uid("MOVE", str(uids[2]), "Trash")
    assert typ == "OK", data
    untagged_ok = b" ".join(c.untagged_responses.get("OK", []))
    assert b"COPYUID" in untagged_ok
    assert c.response("EXPUNGE")[1] == [b"3"]
    typ, data = c.uid("SEARCH", "ALL")
    assert data == [b"%d %d" % (uids[0], uids[1])]
    status = c.status("Trash", "(MESSAGES)")[1][0]
    assert b"MESSAGES 1" in status
    status = c.status("Archive", "(MESSAGES UIDNEXT)")[1][0]
    assert b"MESSAGES 2" in status
    typ, data = c._simple_command("UID", "COPY", str(uids[0]), "Nowhere")
    assert typ == "NO" and b"TRYCREATE" in data[0]
    c.logout()


# -- flags and UIDs survive ------------------------------------------------------------


def test_flags_and_uids_survive_logout_and_restart(hub):
    c = login(hub)
    uids = [append(c) for _ in range(3)]
    c.select("INBOX")
    c.uid("STORE", str(uids[1]), "+FLAGS", r"(\Flagged \Answered $Label1)")
    validity = c.response("UIDVALIDITY")[1]
    c.logout()
    c = login(hub)
    c.select("INBOX")
    flags = c.uid("FETCH", str(uids[1]), "(FLAGS)")[1][0]
    assert b"\\Flagged" in flags and b"\\Answered" in flags and b"$Label1" in flags
    c.logout()
    hub.restart()
    c = login(hub)
    c.select("INBOX")
    assert c.response("UIDVALIDITY")[1] == validity
    typ, data = c.fetch("1:*", "(UID FLAGS)")
    assert [int(re.search(rb"UID (\d+)", d).group(1)) for d in data] == uids
    assert b"\\Flagged" in data[1] and b"$Label1" in data[1] and b"\\Flagged" not in data[0]
    # the flags are in the Maildir file name, the keyword in the UID list
    names = os.listdir(os.path.join(hub.maildir("alice"), "cur"))
    assert sum(n.endswith(":2,FR") for n in names) == 1, names
    c.logout()


def test_delivered_mail_moves_from_new_to_cur_when_selected(hub):
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"]) as s:
        s.sendmail("bob@localhost", ["alice@localhost"], MESSAGE)
    new = os.path.join(hub.maildir("alice"), "new")
    assert len(os.listdir(new)) == 1
    c = login(hub)
    c.select("INBOX", readonly=True)
    assert len(os.listdir(new)) == 1  # EXAMINE changes nothing
    c.select("INBOX")
    assert c.response("RECENT")[1] == [b"1"]
    assert os.listdir(new) == []
    assert len(os.listdir(os.path.join(hub.maildir("alice"), "cur"))) == 1
    c.logout()


# -- FETCH ------------------------------------------------------------------------------


def multipart_message(attachment: bytes) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Carol <carol@example.org>"
    msg["To"] = "alice@localhost"
    msg["Subject"] = "the report"
    msg["Date"] = "Mon, 02 Nov 2026 10:00:00 +0000"
    msg.set_content("plain text\n")
    msg.add_alternative("<p>html text</p>\n", subtype="html")
    msg.make_mixed()
    msg.add_attachment(attachment, maintype="application", subtype="octet-stream", filename="data.bin")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def test_bodystructure_and_parts_of_nested_multipart(hub):
    import imapclient

    attachment = os.urandom(3000)
    raw = multipart_message(attachment)
    client = imapclient.IMAPClient("127.0.0.1", port=hub.ports["imap"], ssl=False)
    client.login("alice", "secret")
    client.append("INBOX", raw)
    client.select_folder("INBOX")
    [uid] = client.search("ALL")
    got = client.fetch([uid], ["BODYSTRUCTURE", "BODY.PEEK[2]", "BODY.PEEK[1.2.MIME]", "BODY.PEEK[1.1]", "RFC822.SIZE", "ENVELOPE"])[uid]
    bs = got[b"BODYSTRUCTURE"]
    assert bs.is_multipart
    parts, subtype = bs[0], bs[1]
    assert subtype.lower() == b"mixed"
    alternative, attached = parts
    assert alternative.is_multipart and alternative[1].lower() == b"alternative"
    assert [(p[0].lower(), p[1].lower()) for p in alternative[0]] == [(b"text", b"plain"), (b"text", b"html")]
    assert (attached[0].lower(), attached[1].lower()) == (b"application", b"octet-stream")
    assert attached[5].lower() == b"base64"
    assert base64.b64decode(got[b"BODY[2]"]) == attachment
    assert attached[6] == len(got[b"BODY[2]"])  # size is the octets of the part
    assert b"text/html" in got[b"BODY[1.2.MIME]"].lower()
    assert got[b"BODY[1.2.MIME]"].endswith(b"\r\n\r\n")
    assert got[b"BODY[1.1]"] == b"plain text\r\n"
    assert got[b"RFC822.SIZE"] == len(raw)
    envelope = got[b"ENVELOPE"]
    assert envelope.subject == b"the report"
    assert envelope.from_[0].mailbox == b"carol" and envelope.from_[0].host == b"example.org"
    client.logout()


def test_header_fields_text_partial_and_seen(hub):
    c = login(hub)
    uid = append(c)
    c.select("INBOX")
    typ, data = c.uid("FETCH", str(uid), "(BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[TEXT] BODY.PEEK[]<0.4> FLAGS)")
    pieces = {re.search(rb"(BODY\[[^\]]*\](?:<\d+>)?) \{\d+\}$", item[0]).group(1): item[1] for item in data if isinstance(item, tuple)}
    assert pieces[b"BODY[HEADER.FIELDS (SUBJECT)]"] == b"Subject: lunch\r\n\r\n"
    assert pieces[b"BODY[TEXT]"] == b"At noon?\r\n"
    assert pieces[b"BODY[]<0>"] == b"From"
    assert b"\\Seen" not in c.uid("FETCH", str(uid), "(FLAGS)")[1][0]
    typ, data = c.uid("FETCH", str(uid), "(BODY[HEADER])")
    assert data[0][1] == b"From: Bob <bob@localhost>\r\nTo: alice@localhost\r\nSubject: lunch\r\n\r\n"
    assert b"\\Seen" in c.uid("FETCH", str(uid), "(FLAGS)")[1][0]
    c.logout()


# -- SEARCH ----------------------------------------------------------------------------


def test_search_by_subject_from_date_size_and_flags(hub):
    c = login(hub)
    old = append(c, message=b"From: dave@example.org\r\nSubject: Old news\r\n\r\nhistory\r\n")
    c.append("INBOX", r"(\Seen)", imaplib.Time2Internaldate(time.mktime((2020, 5, 17, 12, 0, 0, 0, 0, -1))), b"From: erin@example.net\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\nbig " + b"x" * 5000 + b"\r\n")
    c.select("INBOX")
    assert c.search(None, "SUBJECT", '"old NEWS"')[1] == [b"1"]
    assert c.search(None, "FROM", "example.net")[1] == [b"2"]
    assert c.search(None, "BEFORE", "1-Jan-2021")[1] == [b"2"]
    assert c.search(None, "SINCE", "1-Jan-2021")[1] == [b"1"]
    assert c.search(None, "ON", "17-May-2020")[1] == [b"2"]
    assert c.search(None, "LARGER", "1000")[1] == [b"2"]
    assert c.search(None, "UNSEEN")[1] == [b"1"]
    assert c.search(None, "NOT", "SEEN", "BODY", "history")[1] == [b"1"]
    assert c.search(None, "OR", "FROM", "dave", "FROM", "erin")[1] == [b"1 2"]
    assert c.search(None, "HEADER", "Subject", "news")[1] == [b"1"]
    assert c.uid("SEARCH", "UID", str(old))[1] == [str(old).encode()]
    assert c.search("UTF-8", "SUBJECT", "Grüße".encode())[1] == [b"2"]
    with pytest.raises(imaplib.IMAP4.error, match="unknown search key"):
        c.search(None, "FROBNICATE")
    c.logout()


def test_pipelined_commands_after_a_search_that_reads_messages_keep_their_order_and_another_session_is_served(hub):
    # SEARCH BODY/TEXT and SORT over a Maildir folder read the files in a
    # worker thread; the session's later commands wait for the answer.
    c = login(hub)
    for n in range(40):
        append(c, message=b"From: p%d@example.org\r\nSubject: s%02d\r\n\r\n%s\r\n" % (n, 40 - n, b"the needle" if n % 10 == 3 else b"hay"))
    c.logout()
    r = Raw(hub.ports["imap"])
    r.cmd(b"a", b"login alice secret")
    r.cmd(b"b", b"select INBOX")
    other = login(hub, "bob", "hungry")
    r.send(b"c SEARCH BODY needle\r\nd NOOP\r\ne UID SEARCH TEXT p13@\r\nf SORT (SUBJECT) UTF-8 BODY needle\r\ng SEARCH RETURN (SAVE) TEXT needle\r\nh FETCH $ (UID)\r\n")
    assert other.noop()[0] == "OK"
    lines = r.until_tag(b"h")
    tags = [line.split(b" ", 1)[0] for line in lines if not line.startswith(b"*")]
    assert tags == [b"c", b"d", b"e", b"f", b"g", b"h"], lines
    assert b"* SEARCH 4 14 24 34" in lines, lines
    assert lines[lines.index(b"* SEARCH 4 14 24 34") + 1].startswith(b"c OK")
    uid_line = [line for line in lines if line.startswith(b"* SEARCH ") and line != b"* SEARCH 4 14 24 34"]
    assert len(uid_line) == 1 and len(uid_line[0].split()) == 3, lines  # the one message from p13
    assert b"* SORT 34 24 14 4" in lines, lines
    assert sum(1 for line in lines if re.match(rb"\* \d+ FETCH \(UID \d+\)", line)) == 4, lines
    other.logout()
    r.close()


# -- several sessions --------------------------------------------------------------------


def test_idle_gets_exists_for_mail_sent_over_smtp(hub):
    c = login(hub)
    append(c)
    c.logout()
    r = Raw(hub.ports["imap"])
    r.cmd(b"a", b"login alice secret")
    r.cmd(b"b", b"select INBOX")
    r.send(b"c idle\r\n")
    assert r.line().startswith(b"+")
    r.send(b"noop\r\n")  # not DONE: IDLE goes on (RFC 2177)
    assert r.line().startswith(b"* BAD")
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"]) as s:
        s.sendmail("bob@localhost", ["alice@localhost"], MESSAGE)
    sent = time.monotonic()
    line = r.line()
    while not line.endswith(b"EXISTS"):
        line = r.line()
    assert line == b"* 2 EXISTS"
    assert time.monotonic() - sent < 1.0, time.monotonic() - started
    r.send(b"DONE\r\n")
    assert r.until_tag(b"c")[-1].startswith(b"c OK")
    r.close()


def test_idle_notices_a_file_dropped_into_new(hub):
    c = login(hub)
    append(c)
    c.logout()
    r = Raw(hub.ports["imap"])
    r.cmd(b"a", b"login alice secret")
    r.cmd(b"b", b"select INBOX")
    r.send(b"c idle\r\n")
    assert r.line().startswith(b"+")
    new = os.path.join(hub.maildir("alice"), "new")
    with open(os.path.join(hub.maildir("alice"), "tmp", "outside.1"), "wb") as f:
        f.write(b"Subject: bare LF\n\nfrom procmail\n")
    os.rename(os.path.join(hub.maildir("alice"), "tmp", "outside.1"), os.path.join(new, "outside.1"))
    dropped = time.monotonic()
    line = r.line()
    while not line.endswith(b"EXISTS"):
        line = r.line()
    assert line == b"* 2 EXISTS"
    assert time.monotonic() - dropped < 2.0
    r.send(b"DONE\r\n")
    r.until_tag(b"c")
    lines = r.cmd(b"d", b"fetch 2 (RFC822.SIZE BODY.PEEK[])")
    crlf = b"Subject: bare LF\r\n\r\nfrom procmail\r\n"
    assert lines[0] == b"* 2 FETCH (RFC822.SIZE %d BODY[] {%d}" % (len(crlf), len(crlf))
    r.close()


def test_two_sessions_see_flag_changes_and_expunges(hub):
    a = login(hub)
    for _ in range(3):
        append(a)
    a.select("INBOX")
    b = Raw(hub.ports["imap"])
    b.cmd(b"1", b"login alice secret")
    b.cmd(b"2", b"select INBOX")
    a.store("2", "+FLAGS", r"(\Flagged)")
    lines = b.cmd(b"3", b"noop")
    assert re.match(rb"\* 2 FETCH \(UID \d+ FLAGS \(\\Flagged\)\)", lines[0]), lines
    a.store("1", "+FLAGS", r"(\Deleted)")
    a.expunge()
    # During FETCH the expunge waits: sequence numbers stay put.
    lines = b.cmd(b"4", b"fetch 3 (FLAGS)")
    assert lines[0].startswith(b"* 3 FETCH"), lines
    assert not any(b"EXPUNGE" in line for line in lines)
    lines = b.cmd(b"5", b"noop")
    assert b"* 1 EXPUNGE" in lines, lines
    lines = b.cmd(b"6", b"fetch 1:* (FLAGS)")
    assert len([line for line in lines if line.startswith(b"* ")]) == 2
    # and b's expunge shows in a
    b.cmd(b"7", b"store 2 +flags (\\Deleted)")
    b.cmd(b"8", b"expunge")
    a.noop()
    assert a.response("EXPUNGE")[1] == [b"2"]
    b.close()
    a.logout()


def test_pop3_and_imap_agree(hub):
    c = login(hub)
    first = append(c)
    second = append(c, message=b"Subject: two\r\n\r\nsecond\r\n")
    c.select("INBOX")
    c.uid("STORE", str(second), "+FLAGS", r"(\Seen)")
    c.logout()
    p = poplib.POP3("127.0.0.1", hub.ports["pop3"])
    p.user("alice")
    p.pass_("secret")
    assert p.stat()[0] == 2
    p.retr(2)
    p.dele(1)
    p.quit()
    c = login(hub)
    c.select("INBOX")
    typ, data = c.fetch("1:*", "(UID FLAGS)")
    assert len(data) == 1
    assert b"UID %d" % second in data[0] and b"\\Seen" in data[0]
    assert c.uid("FETCH", str(first), "(FLAGS)")[1] in ([None], [])
    c.logout()


# -- TLS and plaintext rules -------------------------------------------------------------


def test_logindisabled_without_tls_from_untrusted_address_then_starttls(start_hub):
    hub = start_hub("--trusted-networks", "10.99.0.0/16")
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    assert "LOGINDISABLED" in c.capabilities and "STARTTLS" in c.capabilities
    assert "AUTH=PLAIN" not in c.capabilities
    typ, data = c._simple_command("LOGIN", "alice", "secret")
    assert typ == "NO" and b"PRIVACYREQUIRED" in data[0]
    c.starttls(ssl_context=client_context())
    assert "LOGINDISABLED" not in c.capabilities and "AUTH=PLAIN" in c.capabilities
    assert c.login("alice", "secret")[0] == "OK"
    c.logout()


def test_commands_sent_with_starttls_in_the_clear_are_dropped(start_hub):
    hub = start_hub("--trusted-networks", "10.99.0.0/16")
    r = Raw(hub.ports["imap"])
    r.send(b"a STARTTLS\r\nb LOGIN alice secret\r\n")
    assert r.line() == b"a OK Begin TLS negotiation now"
    assert r.buf == b""
    tls = client_context().wrap_socket(r.sock)
    tls.sendall(b"c NOOP\r\n")
    reply = b""
    while not reply.endswith(b"\r\n"):
        reply += tls.recv(4096)
    assert reply == b"c OK NOOP completed\r\n"  # b LOGIN was never run
    tls.sendall(b"d CAPABILITY\r\n")
    caps = b""
    while b"d OK" not in caps:
        caps += tls.recv(4096)
    assert b"AUTH=PLAIN" in caps and b"LOGINDISABLED" not in caps
    tls.close()


def test_imaps_port_speaks_tls(hub):
    c = imaplib.IMAP4_SSL("127.0.0.1", hub.ports["imaps"], ssl_context=client_context())
    assert "STARTTLS" not in c.capabilities
    c.login("alice", "secret")
    append(c)
    c.select("INBOX")
    assert c.fetch("1", "(BODY.PEEK[])")[1][0][1] == MESSAGE
    c.logout()


def test_authenticate_plain_and_cram_md5(hub):
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    assert c.authenticate("PLAIN", lambda _: b"\0alice\0secret")[0] == "OK"
    c.logout()
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    assert c.login_cram_md5("bob", "hungry")[0] == "OK"
    c.logout()


def test_wrong_password_is_slowed_down(hub):
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    times = []
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(imaplib.IMAP4.error):
            c.login("alice", "wrong")
        times.append(time.monotonic() - started)
    assert times[2] >= 0.25, times
    assert c.login("alice", "secret")[0] == "OK"
    c.logout()


# -- bad input ----------------------------------------------------------------------------


def test_bad_input_gets_clear_errors_and_the_session_goes_on(hub):
    r = Raw(hub.ports["imap"])
    assert r.cmd(b"a1", b"frobnicate")[-1].startswith(b"a1 BAD unknown command")
    assert r.cmd(b"a2", b"select INBOX")[-1] == b"a2 BAD SELECT not allowed now: log in first"
    assert r.cmd(b"a3", b"login {-5}")[-1].startswith(b"a3 BAD malformed literal size")
    assert r.cmd(b"a4", b"login {5x}")[-1].startswith(b"a4 BAD malformed literal size")
    # before login, literals are small; refused before a single octet is read
    assert r.cmd(b"a5", b"login {100000}")[-1].startswith(b"a5 NO [TOOBIG]")
    r.send(b"a6 login {5}\r\n")
    assert r.line().startswith(b"+")
    r.send(b"alice {6+}\r\nsecret\r\n")
    assert r.until_tag(b"a6")[-1].startswith(b"a6 OK")
    assert r.cmd(b"a7", b"fetch 1 flags")[-1] == b"a7 BAD FETCH not allowed now: select a mailbox first"
    for bad in (b'"../etc"', b'"/etc/passwd"', b'"Work/../../x"'):
        assert r.cmd(b"a8", b"create " + bad)[-1].startswith(b"a8 NO"), bad
        assert r.cmd(b"a9", b"select " + bad)[-1].startswith(b"a9 NO"), bad
    assert not os.path.exists(os.path.join(hub.data_dir, "mail", "localhost", "etc"))
    r.cmd(b"b1", b"select INBOX")
    assert r.cmd(b"b2", b"fetch 5 (FLAGS)")[-1].startswith(b"b2 BAD no message 5")
    assert r.cmd(b"b3", b"fetch 1:* (FROB)")[-1].startswith(b"b3 BAD unknown FETCH item")
    assert r.cmd(b"b4", b"search before yesterday")[-1].startswith(b"b4 BAD bad date")
    assert r.cmd(b"b5", b"store 1:* frob (\\Seen)")[-1].startswith(b"b5 BAD")
    assert r.cmd(b"b6", b"noop")[-1] == b"b6 OK NOOP completed"
    r.close()


def test_append_over_the_size_limit_is_refused_before_reading(start_hub):
    hub = start_hub("--max-message-size", "1000")
    r = Raw(hub.ports["imap"])
    r.cmd(b"a", b"login alice secret")
    lines = r.cmd(b"b", b"append INBOX {5000}")
    assert lines[-1].startswith(b"b NO [TOOBIG]")
    r.send(b"c append INBOX {10}\r\n")
    assert r.line().startswith(b"+")
    r.send(b"Subject: x\r\n")
    assert r.until_tag(b"c")[-1].startswith(b"c OK [APPENDUID")
    # a LITERAL+ that is too big: its octets are already coming; the server says BYE
    r.send(b"d append INBOX {5000+}\r\n")
    assert r.line().startswith(b"* BYE")
    r.close()
    c = login(hub)  # the server goes on
    assert c.select("INBOX")[1] == [b"1"]
    c.logout()


def test_overlong_line_is_refused(hub):
    r = Raw(hub.ports["imap"])
    r.send(b"a login " + b"x" * 70000 + b"\r\n")
    assert r.line().startswith(b"* BYE line too long")
    r.close()
    c = login(hub)
    c.logout()


def test_imapclient_session(hub):
    import imapclient

    client = imapclient.IMAPClient("127.0.0.1", port=hub.ports["imap"], ssl=False)
    client.login("alice", "secret")
    assert client.id_({"name": "pytest"})[0][:2] == (b"name", b"twisted-mailhub")
    special = {flags[-1] for flags, _, name in client.list_folders() if name in ("Sent", "Trash")}
    assert special == {b"\\Sent", b"\\Trash"}
    client.create_folder("Lists")
    result = client.append("Lists", MESSAGE, flags=[imapclient.SEEN])
    assert b"APPENDUID" in result
    client.select_folder("Lists")
    [uid] = client.search(["FROM", "bob"])
    client.move([uid], "Archive")
    assert client.search("ALL") == []
    client.select_folder("Archive", readonly=True)
    assert client.search("SEEN") != []
    client.unselect_folder()
    client.logout()


def test_curl_reads_a_message_and_lists_folders(hub):
    import shutil
    import subprocess

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (.ci/run installs it)")
    c = login(hub)
    uid = append(c)
    c.logout()
    base = f"imap://alice:secret@127.0.0.1:{hub.ports['imap']}"
    got = subprocess.run(["curl", "-sS", f"{base}/INBOX;UID={uid}"], capture_output=True, timeout=30)
    assert got.returncode == 0, got.stderr
    assert got.stdout == MESSAGE
    listing = subprocess.run(["curl", "-sS", f"{base}/"], capture_output=True, timeout=30).stdout
    assert b'"/" Sent' in listing or b'"/" "Sent"' in listing, listing


def test_fetch_of_an_empty_folder(hub):
    c = login(hub)
    c.select("Drafts")
    assert c.fetch("1:*", "(FLAGS)") == ("OK", [None])
    with pytest.raises(imaplib.IMAP4.error, match="no message 1"):
        c.fetch("1", "(FLAGS)")
    c.logout()


@pytest.mark.parametrize("how", ["delete", "rename"])
def test_selected_folder_removed_by_another_session_ends_with_bye(hub, how):
    """
    Like Dovecot: message numbers in a folder that is gone mean nothing, so
    the session is told why and closed, not left fetching empty results.
    """
    name = f"Gone-{how}"
    b = login(hub)
    assert b.create(name)[0] == "OK"
    append(b, name)
    a = Raw(hub.ports["imap"])
    assert a.cmd(b"a1", b"LOGIN alice secret")[-1].startswith(b"a1 OK")
    assert a.cmd(b"a2", b"SELECT " + name.encode())[-1].startswith(b"a2 OK")
    if how == "delete":
        assert b.delete(name)[0] == "OK"
    else:
        assert b.rename(name, name + "-new")[0] == "OK"
    b.logout()
    a.send(b"a3 FETCH 1 (FLAGS)\r\n")
    assert a.line() == b"* BYE [UNAVAILABLE] selected mailbox " + name.encode() + b" was deleted or renamed; reconnect"
    with pytest.raises(EOFError):
        a.line()
    assert "Traceback" not in hub.log


def test_idle_on_a_folder_another_session_deletes_gets_bye(hub):
    b = login(hub)
    assert b.create("Gone-idle")[0] == "OK"
    a = Raw(hub.ports["imap"])
    a.cmd(b"a1", b"LOGIN alice secret")
    a.cmd(b"a2", b"SELECT Gone-idle")
    a.send(b"a3 IDLE\r\n")
    assert a.line().startswith(b"+ ")
    assert b.delete("Gone-idle")[0] == "OK"
    b.logout()
    assert a.line().startswith(b"* BYE [UNAVAILABLE] selected mailbox Gone-idle was deleted")


def test_a_logout_pipelined_after_a_failed_login_comes_after_its_no(hub):
    # The failed login's answer is held back (slowed down); the commands
    # sent after it wait for it, so its NO is not lost when LOGOUT closes.
    s = socket.create_connection(("127.0.0.1", hub.ports["imap"]), timeout=10)
    s.sendall(b"a LOGIN alice wrong\r\nb LOGIN alice secret\r\nc LOGOUT\r\n")
    replies = b""
    while chunk := s.recv(4096):
        replies += chunk
    s.close()
    tagged = [line.split(b" ", 2)[:2] for line in replies.split(b"\r\n") if line and not line.startswith(b"*")]
    assert tagged == [[b"a", b"NO"], [b"b", b"OK"], [b"c", b"OK"]]


def test_a_control_character_in_a_command_name_is_named_not_echoed_raw(hub):
    s = socket.create_connection(("127.0.0.1", hub.ports["imap"]), timeout=10)
    s.sendall(b"a NOOP\x01\r\nb\x1b NOOP\r\nc LOGOUT\r\n")
    replies = b""
    while chunk := s.recv(4096):
        replies += chunk
    s.close()
    lines = replies.split(b"\r\n")
    assert not any(0 < byte < 32 and byte not in (13, 10) for byte in replies)
    assert b"a BAD control characters are not allowed in a tag or command name (the line contained a control character: ^A)" in lines
    assert any(line.startswith(b"* BAD") and b"^[" in line for line in lines)  # shown as ^[, never raw
    assert b"c OK LOGOUT successful" in lines


def test_examine_says_its_permanent_flags_are_none_because_it_is_read_only(hub):
    c = login(hub)
    try:
        typ, _ = c.select("INBOX", readonly=True)
        assert typ == "OK"
        said = [line for line in c.untagged_responses.get("OK", []) if line.startswith(b"[PERMANENTFLAGS")]
        assert said == [b"[PERMANENTFLAGS ()] read-only (EXAMINE): flags cannot be changed"]
        typ, _ = c.select("INBOX")
        said = [line for line in c.untagged_responses.get("OK", []) if line.startswith(b"[PERMANENTFLAGS")]
        assert said[-1].endswith(b"\\*)] flags and keywords are kept")
    finally:
        c.logout()
