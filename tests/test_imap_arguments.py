"""The argument-tree reader of the extended commands (imap/arguments.py), without a network."""

from __future__ import annotations

import pytest
from twisted.mail import imap4

from twisted_mailhub.imap.arguments import Atom, String, _Reader, is_nil


def test_atoms_strings_and_nested_lists_keep_their_kinds():
    tree, rest = _Reader(None).feed(b'(SUBSCRIBED) "" ("a\\"b" %) RETURN (STATUS (MESSAGES)) NIL')
    assert rest == b""
    assert tree == [[b"SUBSCRIBED"], b"", [b'a"b', b"%"], b"RETURN", [b"STATUS", [b"MESSAGES"]], b"NIL"]
    assert isinstance(tree[1], String) and isinstance(tree[2][1], Atom) and is_nil(tree[5])


@pytest.mark.parametrize("line, message", [(b"(a", "missing ')'"), (b"a)", "unbalanced ')'"), (b'"open', "unmatched quotes"), (b"{3} x", "must end the line")])
def test_malformed_arguments_are_refused_in_words(line, message):
    with pytest.raises(imap4.IllegalClientResponse) as e:
        _Reader(None).feed(line)
    assert message in str(e.value)


def test_a_missing_argument_is_named_with_the_commands_form(hub):
    # Before: "a1 BAD Missing argument" (which one? the form is LOGIN
    # userid password), then "Missing argument to LIST" and the like for
    # the commands with no names: each names what is missing and gives
    # the form, in the RFC's words.
    import socket

    def ask(line: bytes) -> bytes:
        tag = line.split(b" ", 1)[0]
        s.sendall(line + b"\r\n")
        while not (reply := f.readline()).startswith(tag + b" "):
            pass
        return reply.rstrip(b"\r\n")

    with socket.create_connection(("127.0.0.1", hub.ports["imap"]), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"* OK")
        assert ask(b"a1 LOGIN bob") == b"a1 BAD Missing argument: password (the form is LOGIN userid password)"
        assert ask(b"b1 LOGIN") == b"b1 BAD Missing argument: userid (the form is LOGIN userid password)"
        assert ask(b"b2 AUTHENTICATE") == b"b2 BAD Missing argument: auth-type (the form is AUTHENTICATE auth-type [initial-response], e.g. AUTHENTICATE PLAIN)"
        assert ask(b"b3 ID") == b"b3 BAD Missing argument: (field value ...) or NIL (the form is ID (field value ...), or ID NIL)"
        assert ask(b"a2 LOGIN alice secret").startswith(b"a2 OK")
        assert ask(b"a3 RENAME INBOX") == b"a3 BAD Missing argument: new-mailbox (the form is RENAME mailbox new-mailbox)"
        assert ask(b"b4 LIST") == b'b4 BAD Missing argument: reference (the form is LIST reference mailbox-pattern, e.g. LIST "" "*")'
        assert ask(b"b5 APPEND") == b"b5 BAD Missing argument: mailbox (the form is APPEND mailbox [(flag ...)] [date-time] literal)"
        assert ask(b"b6 ENABLE") == b"b6 BAD Missing argument: capability (the form is ENABLE capability ..., e.g. ENABLE CONDSTORE)"
        assert ask(b"b7 SETQUOTA") == b"b7 BAD Missing argument: quota-root (the form is SETQUOTA quota-root (resource limit ...))"
        assert ask(b"b8 COMPRESS") == b"b8 BAD Missing argument: algorithm (the form is COMPRESS DEFLATE)"
        assert ask(b"b9 NOTIFY") == b"b9 BAD Missing argument: SET or NONE (the form is NOTIFY SET (filter events) ..., or NOTIFY NONE)"
        assert ask(b"a4 SELECT INBOX").startswith(b"a4 OK")
        assert ask(b"a5 COPY 1") == b"a5 BAD Missing argument: mailbox (the form is COPY sequence-set mailbox)"
        assert ask(b"c1 SEARCH") == b"c1 BAD Missing argument: search-key (the form is SEARCH [CHARSET charset] search-key ..., e.g. SEARCH UNSEEN)"
        assert ask(b"c2 UID") == b"c2 BAD Missing argument: command (the form is UID command arguments, the command FETCH, STORE, COPY, MOVE, SEARCH, EXPUNGE, SORT or THREAD)"
        assert ask(b"c3 UID FETCH") == b"c3 BAD Missing argument: sequence-set (the form is UID FETCH sequence-set items, e.g. FETCH 1:* (FLAGS UID))"
        assert ask(b"c4 UID EXPUNGE") == b"c4 BAD Missing argument: sequence-set (the form is UID EXPUNGE sequence-set)"
        assert ask(b"c6 UID COPY 1") == b"c6 BAD Missing argument: mailbox (the form is UID COPY sequence-set mailbox)"
        assert ask(b"c7 COPY 1") == b"c7 BAD Missing argument: mailbox (the form is COPY sequence-set mailbox)"  # (no UID left over)
        assert ask(b"c5 NOOP").startswith(b"c5 OK")  # the session goes on
        s.sendall(b"a6 LOGOUT\r\n")
