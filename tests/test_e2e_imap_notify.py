"""
NOTIFY (RFC 5465) end to end: the real hub, one raw session that set
NOTIFY reading what arrives unasked, another (raw, imaplib, SMTP) making
the changes.
"""

from __future__ import annotations

import smtplib

from tests.test_e2e_imap import login
from tests.test_e2e_imap_rfc import raw_append, raw_login

MESSAGE = b"From: bob@localhost\r\nTo: alice@localhost\r\nSubject: news\r\n\r\nbody\r\n"
EVERYTHING = b"(MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange)"


def notify(r, text: bytes, tag: bytes = b"N") -> list[bytes]:
    lines = r.cmd(tag, b"NOTIFY " + text)
    assert lines[-1].startswith(tag + b" OK"), lines
    return lines


def test_other_mailboxes_are_told_as_status_without_a_command(hub):
    a, b = raw_login(hub), raw_login(hub)
    assert b" NOTIFY" in a.cmd(b"c", b"CAPABILITY")[0]
    a.cmd(b"s", b"SELECT INBOX")
    notify(a, b"SET (SELECTED (MessageNew MessageExpunge)) (PERSONAL " + EVERYTHING + b")")
    uid = raw_append(b, b"Archive", MESSAGE)
    assert a.line() == b'* STATUS "Archive" (MESSAGES 1 UIDNEXT %d UNSEEN 1)' % (uid + 1)
    b.cmd(b"bs", b"SELECT Archive")
    b.cmd(b"b1", b"STORE 1 +FLAGS (\\Seen)")
    assert a.line() == b'* STATUS "Archive" (UNSEEN 0)'
    b.cmd(b"b2", b"STORE 1 +FLAGS (\\Deleted)")
    assert a.line() == b'* STATUS "Archive" (UNSEEN 0)'
    b.cmd(b"b3", b"EXPUNGE")
    assert a.line() == b'* STATUS "Archive" (MESSAGES 0 UIDNEXT %d UNSEEN 0)' % (uid + 1)
    # the session goes on as usual
    assert a.cmd(b"n", b"NOOP")[-1].startswith(b"n OK")
    a.close()
    b.close()


def test_a_delivery_by_smtp_to_inbox_is_told_under_inboxes(hub):
    a = raw_login(hub)
    a.cmd(b"s", b"SELECT Archive")
    notify(a, b"SET (INBOXES (MessageNew MessageExpunge))")
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"]) as s:
        s.sendmail("bob@localhost", ["alice@localhost"], MESSAGE)
    assert a.line() == b'* STATUS "INBOX" (MESSAGES 1 UIDNEXT 2 UNSEEN 1)'
    a.close()


def test_selected_mailbox_is_told_at_once_with_the_fetch_asked_for(hub):
    a, b = raw_login(hub), raw_login(hub)
    a.cmd(b"s", b"SELECT INBOX")
    notify(a, b"SET (SELECTED (MessageNew (UID FLAGS) MessageExpunge FlagChange))")
    c = login(hub)
    assert c.append("INBOX", "(\\Flagged)", None, MESSAGE)[0] == "OK"
    assert a.line() == b"* 1 EXISTS"
    assert a.line() == b"* 1 RECENT"
    assert a.line() == b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))"
    b.cmd(b"bs", b"SELECT INBOX")
    b.cmd(b"b1", b"STORE 1 +FLAGS (\\Seen)")
    assert a.line().startswith(b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Seen \\Recent)")
    b.cmd(b"b2", b"STORE 1 +FLAGS.SILENT (\\Deleted)")
    a.line()  # the \\Deleted flag change
    b.cmd(b"b3", b"EXPUNGE")
    assert a.line() == b"* 1 EXPUNGE"  # SELECTED: at once
    c.logout()
    a.close()
    b.close()


def test_selected_delayed_keeps_expunges_for_a_command(hub):
    a, b = raw_login(hub), raw_login(hub)
    raw_append(b, b"INBOX", MESSAGE)
    raw_append(b, b"INBOX", MESSAGE)
    a.cmd(b"s", b"SELECT INBOX")
    notify(a, b"SET (SELECTED-DELAYED (MessageNew MessageExpunge FlagChange))")
    b.cmd(b"bs", b"SELECT INBOX")
    b.cmd(b"b1", b"STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert a.line().startswith(b"* 1 FETCH (UID 1 FLAGS (\\Deleted")
    b.cmd(b"b2", b"EXPUNGE")
    raw_append(b, b"INBOX", MESSAGE)  # something told at once after the expunge
    assert a.line() == b"* 3 EXISTS"  # the expunged message is still number 1 here
    assert a.line() == b"* 3 RECENT"
    lines = a.cmd(b"n", b"NOOP")
    assert lines[0] == b"* 1 EXPUNGE", lines
    a.close()
    b.close()


def test_mailbox_names_and_subscriptions_are_told_as_list(hub):
    a, b = raw_login(hub), raw_login(hub)
    notify(a, b"SET (PERSONAL " + EVERYTHING + b")")
    assert b.cmd(b"b1", b"CREATE Projects")[-1].startswith(b"b1 OK")
    assert a.line() == b'* LIST () "/" "Projects"'
    assert b.cmd(b"b2", b"SUBSCRIBE Projects")[-1].startswith(b"b2 OK")
    assert a.line() == b'* LIST (\\Subscribed) "/" "Projects"'
    assert b.cmd(b"b3", b"UNSUBSCRIBE Projects")[-1].startswith(b"b3 OK")
    assert a.line() == b'* LIST () "/" "Projects"'
    assert b.cmd(b"b4", b"DELETE Projects")[-1].startswith(b"b4 OK")
    assert a.line() == b'* LIST (\\NonExistent) "/" "Projects"'
    a.close()
    b.close()


def test_set_status_reports_now_and_none_ends_the_notices(hub):
    a, b = raw_login(hub), raw_login(hub)
    raw_append(b, b"Sent", MESSAGE)
    lines = notify(a, b"SET STATUS (MAILBOXES (Sent Drafts) (MessageNew MessageExpunge))")
    statuses = sorted(line for line in lines if line.startswith(b"* STATUS"))
    assert statuses[0].startswith(b'* STATUS "Drafts" (MESSAGES 0 UIDNEXT 1 UIDVALIDITY ')
    assert statuses[1].startswith(b'* STATUS "Sent" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY ')
    assert statuses[1].endswith(b" UNSEEN 1)")
    # SUBTREE takes the mailbox and those below it; others stay quiet
    notify(a, b"SET (SUBTREE Work (MessageNew MessageExpunge))")
    b.cmd(b"b1", b"CREATE Work/Reports")
    raw_append(b, b"Sent", MESSAGE)
    raw_append(b, b"Work/Reports", MESSAGE)
    assert a.line() == b'* STATUS "Work/Reports" (MESSAGES 1 UIDNEXT 2 UNSEEN 1)'
    notify(a, b"NONE")
    raw_append(b, b"Work/Reports", MESSAGE)
    assert [line for line in a.cmd(b"n", b"NOOP") if line.startswith(b"* ")] == []
    a.close()
    b.close()


def test_bad_notify_commands_are_refused_and_unsupported_events_named(hub):
    r = raw_login(hub)
    for bad in (
        b"SET (SELECTED (FlagChange))",
        b"SET (SELECTED (MessageNew))",
        b"SET (SELECTED (MessageNew MessageExpunge)) (SELECTED-DELAYED (MessageNew MessageExpunge))",
        b"SET (SELECTED (MessageNew MessageExpunge MailboxName))",
        b"SET (PERSONAL (MessageNew (UID) MessageExpunge))",
        b"SET (SELECTED (MessageExpunge (UID) MessageNew))",
        b"SET (BOGUS (MessageNew MessageExpunge))",
        b"SET (PERSONAL ())",
        b"SET (MAILBOXES () (MessageNew MessageExpunge))",
        b"SET",
        b"BOGUS",
        b"SET (SELECTED (MessageNew (NOSUCHITEM) MessageExpunge))",
        b"SET (PERSONAL (MessageNew MessageExpunge)",
    ):
        assert r.cmd(b"x", b"NOTIFY " + bad)[-1].startswith(b"x BAD "), bad
    for unsupported in (b"SET (SELECTED (MessageNew MessageExpunge AnnotationChange))", b"SET (PERSONAL (SomeVendorEvent))"):
        assert r.cmd(b"y", b"NOTIFY " + unsupported)[-1] == (
            b"y NO [BADEVENT (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange)] these events are not available here"
        )
    assert r.cmd(b"z", b"NOTIFY NONE")[-1].startswith(b"z OK")
    r.close()


def drop_into_maildir(folder_dir: str, message: bytes, name: str) -> None:
    """What another program (procmail, a --workers peer) does: write in tmp/, rename into new/."""
    import os

    os.makedirs(os.path.join(folder_dir, "tmp"), exist_ok=True)
    tmp = os.path.join(folder_dir, "tmp", name)
    with open(tmp, "wb") as f:
        f.write(message)
    os.rename(tmp, os.path.join(folder_dir, "new", name))


def test_a_rename_is_told_as_mailboxname_with_oldname_for_each_mailbox(hub):
    a, b = raw_login(hub), raw_login(hub)
    b.cmd(b"c", b"CREATE Projects/2024")
    notify(a, b"SET (PERSONAL " + EVERYTHING + b")")
    assert b.cmd(b"r", b"RENAME Projects Work/Projects")[-1].startswith(b"r OK")
    told = sorted(a.line() for _ in range(3))
    # RFC 5465 §5.4: the new name with the old one as OLDNAME (RFC 5258 §3);
    # the parent RENAME made is a new mailbox. Nothing is told as deleted.
    assert told == [
        b'* LIST () "/" "Work"',
        b'* LIST () "/" "Work/Projects" ("OLDNAME" ("Projects"))',
        b'* LIST () "/" "Work/Projects/2024" ("OLDNAME" ("Projects/2024"))',
    ], told
    assert a.cmd(b"n", b"NOOP") == [b"n OK NOOP completed"]  # nothing else was waiting
    a.close()
    b.close()


def test_a_rename_in_the_maildir_by_another_program_is_told_with_oldname(hub):
    import os

    a, b = raw_login(hub), raw_login(hub)
    b.cmd(b"c", b"CREATE Old")
    b.close()
    notify(a, b"SET (PERSONAL (MailboxName))")
    root = hub.maildir("alice@localhost")
    os.rename(os.path.join(root, ".Old"), os.path.join(root, ".New"))
    assert a.line() == b'* LIST () "/" "New" ("OLDNAME" ("Old"))'
    a.close()


def test_a_message_dropped_into_the_maildir_is_told_without_a_command(hub):
    a = raw_login(hub)
    raw_append(a, b"Archive", MESSAGE)
    notify(a, b"SET (PERSONAL (MessageNew MessageExpunge))")
    drop_into_maildir(hub.maildir("alice@localhost") + "/.Archive", MESSAGE, "1700000000.outside.host")
    assert a.line() == b'* STATUS "Archive" (MESSAGES 2 UIDNEXT 3 UNSEEN 2)'
    a.close()


def test_idle_hears_a_message_dropped_into_the_selected_maildir(hub):
    a = raw_login(hub)
    a.cmd(b"s", b"SELECT INBOX")
    a.send(b"i IDLE\r\n")
    assert a.line().startswith(b"+ ")
    drop_into_maildir(hub.maildir("alice@localhost"), MESSAGE, "1700000001.outside.host")
    assert a.line() == b"* 1 EXISTS"
    a.send(b"DONE\r\n")
    assert a.until_tag(b"i")[-1].startswith(b"i OK")
    a.close()


def test_idle_on_a_mailbox_renamed_by_another_program_says_bye(hub):
    import os

    a = raw_login(hub)
    a.cmd(b"c", b"CREATE Doomed")
    a.cmd(b"s", b"SELECT Doomed")
    a.send(b"i IDLE\r\n")
    assert a.line().startswith(b"+ ")
    root = hub.maildir("alice@localhost")
    os.rename(os.path.join(root, ".Doomed"), os.path.join(root, ".Saved"))
    assert a.line().startswith(b"* BYE [UNAVAILABLE] selected mailbox Doomed was deleted or renamed")
    a.close()


def test_a_delete_and_a_create_at_once_are_not_taken_for_a_rename(hub):
    a, b = raw_login(hub), raw_login(hub)
    b.cmd(b"c", b"CREATE Gone")
    notify(a, b"SET (PERSONAL (MailboxName))")
    # pipelined: both changes land before the notifier looks
    b.send(b"d DELETE Gone\r\nc2 CREATE Fresh\r\n")
    assert b.until_tag(b"c2")[-1].startswith(b"c2 OK")
    told = sorted([a.line(), a.line()])
    assert told == [b'* LIST () "/" "Fresh"', b'* LIST (\\NonExistent) "/" "Gone"'], told
    a.close()
    b.close()


def test_messagenews_fetch_attributes_may_name_a_section(hub):
    # RFC 5465 §5.2: any fetch-att; BODY.PEEK[] and a section with a field
    # list were refused (BAD unknown FETCH item "BODY.PEEK").
    a = raw_login(hub)
    a.cmd(b"s", b"SELECT INBOX")
    notify(a, b"SET (SELECTED (MessageNew (UID BODY.PEEK[HEADER.FIELDS (Subject)] BODY.PEEK[]<0.4>) MessageExpunge))")
    c = login(hub)
    assert c.append("INBOX", None, None, MESSAGE)[0] == "OK"
    assert a.line() == b"* 1 EXISTS"
    assert a.line() == b"* 1 RECENT"
    assert a.line() == b"* 1 FETCH (UID 1 BODY[HEADER.FIELDS (SUBJECT)] {17}"
    assert a.line() == b"Subject: news"
    assert a.line() == b""
    assert a.line() == b" BODY[]<0> {4}"
    assert a.line() == b"From)"
    c.logout()
    a.close()
