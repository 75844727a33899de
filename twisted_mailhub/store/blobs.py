# -*- test-case-name: tests.test_pgstore -*-
"""
Where the PostgreSQL store keeps a message's bytes: behind L{IMessageBlobs},
a small interface, so that a later backend may put them elsewhere (an
S3-compatible object store, say) while the C{message} row keeps the size
and the rows that place a message in folders keep pointing at it.

The one implementation here, L{ByteaBlobs}, keeps the bytes in the
C{message.body} column (C{bytea}, stored out of line and uncompressed, so a
slice of a big message reads only the pages it needs).

A write is a statement the group commit sends inside the delivering
transaction (the bytes are durable when the UID is); reads and deletes take
the caller's psycopg connection. A blob is named by its C{message.id}
(an int); blobs are never changed after L{IMessageBlobs.put}.
"""

from __future__ import annotations

from typing import Any, Sequence

from zope.interface import Interface, implementer


class IMessageBlobs(Interface):
    """The bytes of messages, named by their C{message} row's id."""

    def put(ids: Sequence[int], bodies: Sequence[bytes]) -> tuple[str, list]:
        """
        The statement that stores C{bodies} (each a message as sent to
        clients: CRLF line ends, dot-unstuffed) under C{ids} (from
        C{message_id_seq}, taken by the caller): (its SQL, with C{$1},
        C{$2}, ... for parameters; the parameters: C{bytes} are sent as
        binary C{bytea}, C{str} as text). The group commit sends it in the
        delivering transaction, before the statements that place the
        messages in folders, in the same round trip as the rest of the
        batch; the SQL text should not change from call to call (each
        connection prepares it once).
        """

    def get(conn: Any, ids: Sequence[int]) -> dict[int, bytes]:
        """
        The whole bytes of each blob in C{ids} that exists, in one round
        trip (missing ids are left out). Callers keep this to small
        messages; big ones are read with L{read}.
        """

    def read(conn: Any, blob: int, offset: int, length: int) -> bytes | None:
        """
        Up to C{length} octets of one blob from C{offset} (0-based): fewer
        at its end, C{b""} past it, L{None} if the blob is gone.
        """

    def heads(conn: Any, ids: Sequence[int], length: int) -> dict[int, bytes]:
        """
        The first C{length} octets (fewer for a shorter blob) of each blob
        in C{ids} that exists, in one round trip (missing ids are left
        out): what a search of header fields reads (RFC 9051 §6.4.4).
        """

    def drop(conn: Any, ids: Sequence[int]) -> None:
        """
        Delete the blobs in C{ids} that no folder refers to any more (the
        last copy was expunged or its folder deleted).
        """


@implementer(IMessageBlobs)
class ByteaBlobs:
    """
    Message bytes in the C{message.body} column (C{bytea}, out of line;
    see L{twisted_mailhub.store.pgschema}).
    """

    # Every body end to end as one bytea, with their ids and lengths as one
    # text each: three values to send, not lists adapted item by item.
    PUT = (
        "INSERT INTO message (id, size, body)"
        " SELECT i, n, substring($1::bytea FROM (s - n + 1)::int4 FOR n)"
        " FROM (SELECT i, n, sum(n) OVER (ORDER BY o) AS s"
        "       FROM unnest(string_to_array($2::text, ',')::bigint[], string_to_array($3::text, ',')::int4[]) WITH ORDINALITY AS t(i, n, o)) AS t"
    )

    def put(self, ids: Sequence[int], bodies: Sequence[bytes]) -> tuple[str, list]:
        return self.PUT, [b"".join(bodies), ",".join(map(str, ids)), ",".join([str(len(b)) for b in bodies])]

    def get(self, conn: Any, ids: Sequence[int]) -> dict[int, bytes]:
        if not ids:
            return {}
        rows = conn.execute("SELECT id, body FROM message WHERE id = ANY(%s)", (list(ids),), binary=True).fetchall()
        return {blob: bytes(body) for blob, body in rows}

    def read(self, conn: Any, blob: int, offset: int, length: int) -> bytes | None:
        row = conn.execute(
            "SELECT substring(body FROM %s FOR %s) FROM message WHERE id = %s", (offset + 1, length, blob), binary=True
        ).fetchone()
        return None if row is None else bytes(row[0])

    def heads(self, conn: Any, ids: Sequence[int], length: int) -> dict[int, bytes]:
        if not ids:
            return {}
        rows = conn.execute("SELECT id, substring(body FROM 1 FOR %s) FROM message WHERE id = ANY(%s)", (length, list(ids)), binary=True).fetchall()
        return {blob: bytes(head) for blob, head in rows}

    def drop(self, conn: Any, ids: Sequence[int]) -> None:
        if ids:
            conn.execute(
                "DELETE FROM message m WHERE m.id = ANY(%s)"
                " AND NOT EXISTS (SELECT 1 FROM mailbox_message mm WHERE mm.message_id = m.id)",
                (sorted(set(ids)),),
            )
