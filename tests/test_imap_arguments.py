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
