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


def test_a_missing_argument_is_named(hub):
    # Before: "a1 BAD Missing argument" (which one? LOGIN takes a name and
    # a password).
    import socket

    with socket.create_connection(("127.0.0.1", hub.ports["imap"]), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"* OK")
        s.sendall(b"a1 LOGIN bob\r\n")
        assert f.readline() == b"a1 BAD Missing argument: the password (LOGIN takes: user name, password)\r\n"
        s.sendall(b"a2 LOGIN alice secret\r\n")
        while not (line := f.readline()).startswith(b"a2 "):
            pass
        assert line.startswith(b"a2 OK")
        s.sendall(b"a3 RENAME INBOX\r\n")
        assert f.readline() == b"a3 BAD Missing argument: the new mailbox name (RENAME takes: mailbox name, new mailbox name)\r\n"
        s.sendall(b"a4 SELECT INBOX\r\n")
        while not (line := f.readline()).startswith(b"a4 "):
            pass
        s.sendall(b"a5 COPY 1\r\n")
        assert f.readline() == b"a5 BAD Missing argument: the mailbox name (COPY takes: sequence set, mailbox name)\r\n"
        s.sendall(b"a6 LOGOUT\r\n")
