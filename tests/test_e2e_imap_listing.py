"""
LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819) and the SPECIAL-USE LIST
options (RFC 6154) end to end: the real hub, a raw socket for the exact
responses, imaplib and imapclient as clients use them.
"""

from __future__ import annotations

from tests.test_e2e_imap import login
from tests.test_e2e_imap_rfc import PLAIN, raw_append, raw_login, untagged


def folders(r, *names: bytes) -> None:
    for i, name in enumerate(names):
        assert r.cmd(b"c%d" % i, b"CREATE " + name)[-1].startswith(b"c%d OK" % i)


def test_capability_advertises_list_extended_and_list_status(hub):
    r = raw_login(hub)
    caps = r.cmd(b"c", b"CAPABILITY")[0].split()
    assert b"LIST-EXTENDED" in caps and b"LIST-STATUS" in caps and b"SPECIAL-USE" in caps
    r.close()


def test_subscribed_selection_lists_subscribed_names_even_when_gone(hub):
    r = raw_login(hub)
    folders(r, b"Fruit", b"Fruit/Banana", b"Tofu")
    r.cmd(b"s1", b"SUBSCRIBE Fruit/Banana")
    r.cmd(b"s2", b"SUBSCRIBE Gone")  # a name that does not exist (RFC 3501 §6.3.6 allows it)
    lines = r.cmd(b"l", b'LIST (SUBSCRIBED) "" "*"')
    assert lines[-1].startswith(b"l OK")
    assert b'* LIST (\\HasNoChildren \\Subscribed) "/" "Fruit/Banana"' in lines
    assert b'* LIST (\\NonExistent \\Subscribed) "/" "Gone"' in lines
    assert b'* LIST (\\HasNoChildren \\Subscribed) "/" "INBOX"' in lines
    assert not untagged(lines, rb'\* LIST .*"(Tofu|Fruit)"$')
    r.close()


def test_recursivematch_marks_a_parent_of_a_subscribed_child_with_childinfo(hub):
    r = raw_login(hub)
    folders(r, b"Fruit", b"Fruit/Banana", b"Fruit/Apple", b"Tofu")
    r.cmd(b"s", b"SUBSCRIBE Fruit/Banana")
    lines = r.cmd(b"l", b'LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
    assert b'* LIST (\\HasChildren) "/" "Fruit" ("CHILDINFO" ("SUBSCRIBED"))' in lines, lines
    assert not untagged(lines, rb'\* LIST .*"(Tofu|Fruit/Banana)"')
    # with "*" the child itself matches: no CHILDINFO on the parent
    lines = r.cmd(b"m", b'LIST (SUBSCRIBED RECURSIVEMATCH) "" "Fruit*"')
    assert lines[:-1] == [b'* LIST (\\HasNoChildren \\Subscribed) "/" "Fruit/Banana"'], lines
    r.close()


def test_bad_list_options_get_a_tagged_bad_and_the_session_goes_on(hub):
    r = raw_login(hub)
    assert r.cmd(b"a", b'LIST (RECURSIVEMATCH) "" "*"')[-1].startswith(b"a BAD RECURSIVEMATCH needs")
    assert r.cmd(b"b", b'LIST (NOPE) "" "*"')[-1].startswith(b'b BAD unknown LIST selection option "NOPE"')
    assert r.cmd(b"c", b'LIST "" "*" RETURN (NOPE)')[-1].startswith(b'c BAD unknown LIST return option "NOPE"')
    assert r.cmd(b"d", b'LIST "" "*" RETURN (STATUS (BOGUS))')[-1].startswith(b'd BAD unknown STATUS item "BOGUS"')
    assert r.cmd(b"e", b'LIST "" ("*"')[-1].startswith(b"e BAD missing ')'")
    assert r.cmd(b"f", b"LIST")[-1].startswith(b"f BAD")
    assert r.cmd(b"g", b"NOOP")[-1].startswith(b"g OK")
    r.close()


def test_several_patterns_and_return_subscribed_children(hub):
    r = raw_login(hub)
    folders(r, b"Fruit", b"Fruit/Banana", b"Fruit/Apple")
    r.cmd(b"s", b"SUBSCRIBE Fruit/Apple")
    lines = r.cmd(b"l", b'LIST "" ("INBOX" "Fruit/%" "Fruit/*") RETURN (SUBSCRIBED CHILDREN)')
    assert lines == [
        b'* LIST (\\HasNoChildren \\Subscribed) "/" "INBOX"',
        b'* LIST (\\HasNoChildren \\Subscribed) "/" "Fruit/Apple"',
        b'* LIST (\\HasNoChildren) "/" "Fruit/Banana"',
        b"l OK LIST completed",
    ], lines
    r.close()


def test_special_use_selection_lists_only_special_folders(hub):
    r = raw_login(hub)
    folders(r, b"Fruit")
    lines = r.cmd(b"l", b'LIST (SPECIAL-USE) "" "*" RETURN (SPECIAL-USE)')
    assert sorted(lines[:-1]) == sorted(
        b'* LIST (\\HasNoChildren %s) "/" "%s"' % (use, name)
        for name, use in [(b"Archive", b"\\Archive"), (b"Drafts", b"\\Drafts"), (b"Junk", b"\\Junk"), (b"Sent", b"\\Sent"), (b"Trash", b"\\Trash")]
    ), lines
    r.close()


def test_missing_parent_is_nonexistent_in_extended_list_and_noselect_in_plain(hub):
    r = raw_login(hub)
    folders(r, b"Veg", b"Veg/Leek")
    r.cmd(b"d", b"DELETE Veg")
    assert b'* LIST (\\NonExistent \\HasChildren) "/" "Veg"' in r.cmd(b"e", b'LIST () "" "Veg"')
    assert b'* LIST (\\Noselect \\HasChildren) "/" "Veg"' in r.cmd(b"p", b'LIST "" "Veg"')
    r.close()


def test_list_status_follows_each_selectable_mailbox_with_its_status(hub):
    r = raw_login(hub)
    folders(r, b"Veg", b"Veg/Leek")
    r.cmd(b"d", b"DELETE Veg")
    raw_append(r, b"INBOX", PLAIN)
    raw_append(r, b"Veg/Leek", PLAIN)
    r.send(b"f APPEND Veg/Leek (\\Seen) {%d+}\r\n" % len(PLAIN) + PLAIN + b"\r\n")
    r.until_tag(b"f")
    lines = r.cmd(b"l", b'LIST "" ("INBOX" "Veg*") RETURN (STATUS (MESSAGES UNSEEN SIZE))')
    assert lines == [
        b'* LIST (\\HasNoChildren) "/" "INBOX"',
        b"* STATUS \"INBOX\" (MESSAGES 1 UNSEEN 1 SIZE %d)" % len(PLAIN),
        b'* LIST (\\NonExistent \\HasChildren) "/" "Veg"',
        b'* LIST (\\HasNoChildren) "/" "Veg/Leek"',
        b'* STATUS "Veg/Leek" (MESSAGES 2 UNSEEN 1 SIZE %d)' % (2 * len(PLAIN)),
        b"l OK LIST completed",
    ], lines
    r.close()


def test_imaplib_sees_list_status_and_status_size(hub):
    c = login(hub)
    c.append("INBOX", None, None, PLAIN)
    typ, data = c._simple_command("LIST", '""', '"INBOX"', "RETURN", "(STATUS (MESSAGES UIDNEXT))")
    assert typ == "OK", data
    _, listed = c._untagged_response(typ, data, "LIST")
    _, status = c._untagged_response(typ, data, "STATUS")
    assert listed == [b'(\\HasNoChildren) "/" "INBOX"']
    assert status == [b"\"INBOX\" (MESSAGES 1 UIDNEXT 2)"]
    typ, data = c.status("INBOX", "(SIZE MESSAGES)")
    assert data == [b"\"INBOX\" (SIZE %d MESSAGES 1)" % len(PLAIN)]
    c.logout()


def test_imapclient_lists_folders_with_a_literal_pattern(hub):
    import imapclient

    client = imapclient.IMAPClient("127.0.0.1", port=hub.ports["imap"], ssl=False)
    client.login("alice", "secret")
    client.create_folder("Fruit")
    client.create_folder("Fruit/Äpfel")
    names = [name for _, _, name in client.list_folders("Fruit/", "%")]
    assert names == ["Fruit/Äpfel"]
    client.subscribe_folder("Fruit/Äpfel")
    assert [name for _, _, name in client.list_sub_folders("", "Fruit/*")] == ["Fruit/Äpfel"]
    client.logout()


def test_a_pattern_sent_as_a_literal_is_read(hub):
    r = raw_login(hub)
    folders(r, b"Fruit")
    r.send(b'l LIST () "" ({5}\r\n')
    assert r.line().startswith(b"+ ")
    r.send(b'Fruit "INBOX") RETURN (CHILDREN)\r\n')
    lines = r.until_tag(b"l")
    assert lines == [b'* LIST (\\HasNoChildren) "/" "INBOX"', b'* LIST (\\HasNoChildren) "/" "Fruit"', b"l OK LIST completed"], lines
    r.close()
