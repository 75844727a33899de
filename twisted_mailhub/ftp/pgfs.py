# -*- test-case-name: tests.test_pgfs -*-
"""
The FTP/SFTP file system in PostgreSQL (C{--ftp-filesystem
postgresql[:DSN]}): a file uploaded through one hub is there for every hub
on the database.

Rules (the C{ftp_node} table is described in
L{twisted_mailhub.cluster.schema}):

  - A folder is a row; a file is a row whose C{content} is a large
    object, written and read in chunks (C{lo_put}, C{lo_get}), never held
    whole in memory. The tree is the disk backend's: the root holds
    C{<domain>/<localpart>} homes and C{public} (anonymous, read-only).
  - A shell's root is its home row. A path is resolved by walking its
    segments down from there, so nothing outside the home can be named;
    segments that are empty, C{.}, C{..} or hold a slash or NUL are refused
    with 550, as on disk. There are no links to follow.
  - Uploads are the disk backend's (L{twisted_mailhub.ftp.vfs}): written
    under the hidden partial name (C{.NAME.mailhub-part}, left out of
    listings), and put in place under C{NAME} in one transaction when
    complete; that COMMIT (C{synchronous_commit} on) comes before the
    226. An interrupted upload keeps its partial row for REST/APPE to
    resume; SIZE answers its size.
  - SFTP may write at any offset, in any order (a client keeps many
    WRITEs in flight and need not send them in order):
    L{PostgresWriter.write_at}. Bytes that continue the ones gathered are
    gathered with them; others are written where they belong
    (C{lo_put} fills a gap with zeros until its bytes come); the file's
    size is the end of the furthest write.
  - Files count against the account's C{--quota} as on disk
    (L{twisted_mailhub.filequota}): L{PostgresFileSystem.usage} sums a
    home's files, a partial upload beside the file it will replace by its
    growth only; an upload the quota stops loses its partial row.
  - How it meets the reactor: as the PostgreSQL mail store, short reads
    and changes run on one connection in the reactor thread (well under a
    millisecond on loopback); the chunks of an upload are written there too
    without waiting for the disk (C{synchronous_commit} off for them), and
    the final COMMIT, which waits for the disk, runs in a worker thread.
"""

from __future__ import annotations

import errno
import posixpath
import stat as statmod
import time
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols import ftp
from zope.interface import implementer

from twisted_mailhub.cluster import schema
from twisted_mailhub.cluster.database import Database, driver, reason
from twisted_mailhub.ftp.vfs import (
    PARTIAL_MAX_AGE,
    PARTIAL_SUFFIX,
    FileActionError,
    FileSystemUnavailable,
    FileSystemUnavailableWrite,
    IFileSystem,
    IMailhubShell,
    NameNotAllowedError,
    is_listed_name,
    is_partial_name,
    kept_mode,
    partial_name,
    error_words,
    partial_name_refused,
    not_utf8_refused,
    utf8_name,
)
from twisted_mailhub.store.interfaces import StoreError, StoreUnavailable

log = Logger()

# Bytes per lo_get / lo_put.
CHUNK = 256 * 1024
# Bytes an upload gathers before it writes them.
WRITE_EVERY = 1024 * 1024


class _Node:
    __slots__ = ("id", "is_folder", "size", "modified", "content", "mode")

    def __init__(self, row):
        self.id, self.is_folder, self.size, self.modified, self.content, self.mode = row


_COLUMNS = "id, is_folder, size, modified, content, mode"


def _touch(conn: Any, *folder_ids: int) -> None:
    """
    A folder's modification time moves when an entry in it is added,
    removed or renamed, as on disk. Last in its transaction, the folders
    in id order: the row locks are taken after every other and always in
    one order, so two changes never wait for each other in a circle.
    """
    conn.execute("UPDATE ftp_node SET modified = %s WHERE id = ANY(%s)", (time.time(), sorted(set(folder_ids))))


def _child(conn: Any, parent: int, name: str) -> _Node | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM ftp_node WHERE parent_id = %s AND name = %s", (parent, name)).fetchone()
    return _Node(row) if row else None


def _ensure_folder(conn: Any, parent: int | None, name: str) -> int:
    conn.execute(
        "INSERT INTO ftp_node (parent_id, name, is_folder, modified) VALUES (%s, %s, true, %s) ON CONFLICT DO NOTHING",
        (parent, name, time.time()),
    )
    if parent is None:
        return conn.execute("SELECT id FROM ftp_node WHERE parent_id IS NULL AND name = %s", (name,)).fetchone()[0]
    return conn.execute("SELECT id FROM ftp_node WHERE parent_id = %s AND name = %s", (parent, name)).fetchone()[0]


def ensure_path(conn: Any, segments: list[str]) -> int:
    """The id of the folder at C{segments} from the root, made if missing."""
    node = _ensure_folder(conn, None, "")
    for segment in segments:
        node = _ensure_folder(conn, node, segment)
    return node


def _drop_content(conn: Any, oid: int | None) -> None:
    if oid is not None:
        conn.execute("SELECT lo_unlink(%s) WHERE EXISTS (SELECT 1 FROM pg_largeobject_metadata WHERE oid = %s)", (oid, oid))


def _drop_subtree(conn: Any, node_id: int) -> None:
    """Unlink the large objects under C{node_id} (its rows go by cascade)."""
    conn.execute(
        "WITH RECURSIVE tree(id, content) AS ("
        " SELECT id, content FROM ftp_node WHERE id = %s"
        " UNION ALL SELECT n.id, n.content FROM ftp_node n JOIN tree ON n.parent_id = tree.id)"
        " SELECT lo_unlink(content) FROM tree WHERE content IS NOT NULL",
        (node_id,),
    )


# A home's files for L{PostgresFileSystem.usage}: the total of the files
# that are not partial uploads (one row, partial false), then each partial
# upload with the size of the file beside it that it will replace (NULL:
# none). (parent_id, name) is the table's unique key: the walk is indexed.
_USAGE = """
WITH RECURSIVE tree(id) AS (
    SELECT id FROM ftp_node WHERE id = %s
    UNION ALL SELECT n.id FROM ftp_node n JOIN tree ON n.parent_id = tree.id WHERE n.is_folder),
files AS (
    SELECT f.parent_id, f.name, f.size,
           left(f.name, 1) = '.' AND right(f.name, length(%s)) = %s AS partial
    FROM ftp_node f JOIN tree ON f.parent_id = tree.id WHERE NOT f.is_folder)
SELECT false, COALESCE(sum(size), 0), NULL::bigint FROM files WHERE NOT partial
UNION ALL
SELECT true, p.size, r.size FROM files p LEFT JOIN files r
    ON r.parent_id = p.parent_id AND NOT r.partial
   AND r.name = substr(p.name, 2, length(p.name) - 1 - length(%s))
WHERE p.partial
"""


def _shown(segments) -> str:
    return "/" + "/".join(segments)


class _Trouble(Exception):
    """Ends a shell call with an FTP error (carried as C{failure})."""

    def __init__(self, failure: Exception):
        self.failure = failure


class PostgresReader:
    """
    A file to send, read in chunks from its large object: the synchronous
    C{read(n)} the FTP data connection pulls, C{size()}, C{close()}.
    """

    def __init__(self, db: Database, oid: int | None, size: int, offset: int):
        self.db = db
        self.oid = oid
        self._size = size
        self.offset = offset

    def size(self) -> int:
        return self._size

    def read(self, n: int) -> bytes:
        if self.oid is None or self.offset >= self._size:
            return b""
        n = min(n, CHUNK, self._size - self.offset)
        try:
            data = self.db.run_here(lambda conn: conn.execute("SELECT lo_get(%s, %s, %s)", (self.oid, self.offset, n)).fetchone()[0])
        except StoreUnavailable as e:
            # a temporary error for FTP (451) and SFTP, the reason logged once
            raise FileSystemUnavailable(str(e)) from None
        data = bytes(data or b"")
        self.offset += len(data)
        return data

    def close(self) -> None:
        pass


class PostgresWriter:
    """
    A file being received into the large object of its partial row; see
    the module docstring. C{write()} as bytes arrive; C{close()} puts it in
    place under its name (a Deferred that fires after COMMIT); C{fail()}
    keeps what arrived for a REST; C{discard()} removes a fresh partial.
    """

    def __init__(self, shell: "PostgresShell", part_id: int, oid: int, offset: int, parent: int, name: str, fresh: bool, replaced: int = 0):
        self.shell = shell
        self.db = shell.db
        self.part_id = part_id
        self.oid = oid
        self.position = offset  # where the gathered bytes go
        self.end = offset  # the file's size: the end of the furthest write
        self.parent = parent
        self.name = name
        self.fresh = fresh
        #: octets of the file under C{name} this upload will replace (0: none)
        self.replaced = replaced
        self.written = 0
        self._held: list[bytes] = []
        self._held_bytes = 0
        # Asked for while open (SFTP FSETSTAT): the modification time and
        # mode the row gets at close (no access time is kept here).
        self.times: tuple[float | None, float] | None = None
        self.mode: int | None = None

    def tell(self) -> int:
        """Where the next C{write} goes (octets from the file's start)."""
        return self.position + self._held_bytes

    def flush(self) -> None:
        """
        Write what is gathered into the partial row (its size too), so a
        count of the account's files sees it.

        @raise OSError: the database cannot take it now.
        """
        self._write_held()

    def write_at(self, offset: int, data: bytes) -> None:
        """
        SFTP's WRITE (draft-ietf-secsh-filexfer-02 §6.4): C{data} at
        C{offset}, whatever was written before. Raises C{OSError} when the
        database cannot be reached.
        """
        if offset != self.position + self._held_bytes:
            self._write_held()
            self.position = offset
        self.write(data)

    def write(self, data: bytes) -> None:
        self._held.append(bytes(data))
        self._held_bytes += len(data)
        self.written += len(data)
        if self._held_bytes >= WRITE_EVERY:
            self._write_held()

    def _write_held(self) -> None:
        if not self._held:
            return
        data = b"".join(self._held)
        self._held, self._held_bytes = [], 0
        at = self.position
        end = max(self.end, at + len(data))

        def put(conn):
            with conn.transaction():
                # Not waited for: the COMMIT of close() flushes it too.
                conn.execute("SET LOCAL synchronous_commit = off")
                for i in range(0, len(data), CHUNK):
                    conn.execute("SELECT lo_put(%s, %s, %s)", (self.oid, at + i, data[i : i + CHUNK]))
                conn.execute("UPDATE ftp_node SET size = %s, modified = %s WHERE id = %s", (end, time.time(), self.part_id))

        try:
            self.db.run_here(put)
        except StoreUnavailable as e:
            raise FileSystemUnavailableWrite(str(e)) from None
        except StoreError as e:
            raise OSError(f"the file database: {e}") from None
        self.position = at + len(data)
        self.end = end

    def receive(self):
        return defer.succeed(ftp.FileConsumer(self))

    def registerProducer(self, producer, streaming):  # FileConsumer's target
        pass

    def unregisterProducer(self):
        pass

    def close(self) -> defer.Deferred:
        """The upload is complete: in place under its name after COMMIT."""
        try:
            self._write_held()
        except FileSystemUnavailableWrite as e:
            return defer.fail(FileSystemUnavailable(str(e)))
        except OSError as e:
            return defer.fail(FileActionError(f"{self.name[:200]}: {e}"))
        size = self.end

        def put_in_place(conn):
            with conn.transaction():
                old = conn.execute(
                    "SELECT id, is_folder, content FROM ftp_node WHERE parent_id = %s AND name = %s FOR UPDATE",
                    (self.parent, self.name),
                ).fetchone()
                if old is not None:
                    if old[1]:
                        raise _Trouble(ftp.IsADirectoryError(self.name))
                    _drop_content(conn, old[2])
                    conn.execute("DELETE FROM ftp_node WHERE id = %s", (old[0],))
                conn.execute(
                    "UPDATE ftp_node SET name = %s, size = %s, modified = %s, mode = %s WHERE id = %s",
                    (self.name, size, self.times[1] if self.times is not None else time.time(), None if self.mode is None else kept_mode(self.mode, False), self.part_id),
                )
                _touch(conn, self.parent)

        return self.shell._later(put_in_place)

    def fail(self, reason) -> defer.Deferred:
        """
        The upload broke: keep what arrived (hidden) for REST to resume; a
        write error (the quota, L{TransferWriteError}) removes the partial
        row instead, as the disk backend removes its file.
        """
        from twisted_mailhub.ftp.data import TransferWriteError

        if isinstance(getattr(reason, "value", reason), TransferWriteError):
            self._held, self._held_bytes = [], 0
            try:
                self.db.run_here(lambda conn: self.shell._remove_node(conn, self.part_id, self.oid))
            except StoreError:
                pass  # (left hidden, as an interrupted upload's)
            return defer.succeed(None)
        try:
            self._write_held()
        except OSError:
            pass
        return defer.succeed(None)

    def discard(self) -> None:
        """The upload never started."""
        self._held = []
        if self.fresh:
            try:
                self.db.run_here(lambda conn: self.shell._remove_node(conn, self.part_id, self.oid))
            except StoreError:
                pass


@implementer(IMailhubShell)
class PostgresShell:
    """An L{IMailhubShell} whose root is one row of C{ftp_node}."""

    def __init__(self, db: Database, root_id: int, readonly: bool = False):
        self.db = db
        self.root_id = root_id
        self.readonly = readonly

    # -- running ---------------------------------------------------------------

    def _now(self, function, *args) -> defer.Deferred:
        """C{function(conn, *args)} here and now, as a Deferred."""
        psycopg = driver()
        try:
            return defer.succeed(self.db.run_here(function, *args))
        except _Trouble as e:
            return defer.fail(e.failure)
        except ftp.FTPCmdError as e:
            return defer.fail(e)
        except StoreUnavailable as e:
            return defer.fail(FileSystemUnavailable(str(e)))
        except StoreError as e:
            return defer.fail(FileActionError(f"the file database: {e}"))
        except psycopg.Error as e:
            return defer.fail(FileActionError(f"the file database: {reason(e)}"))

    def _later(self, function, *args) -> defer.Deferred:
        """C{function(conn, *args)} in a worker thread (it waits for the disk)."""
        psycopg = driver()

        def translate(failure):
            if failure.check(_Trouble):
                return defer.fail(failure.value.failure)
            if failure.check(StoreUnavailable):
                return defer.fail(FileSystemUnavailable(str(failure.value)))
            if failure.check(StoreError):
                return defer.fail(FileActionError(f"the file database: {failure.value}"))
            if failure.check(psycopg.Error):
                return defer.fail(FileActionError(f"the file database: {reason(failure.value)}"))
            return failure

        return self.db.run(function, *args).addErrback(translate)

    # -- paths ---------------------------------------------------------------------

    def _check(self, segments) -> None:
        for s in segments:
            if not s or "/" in s or "\0" in s or s in (".", ".."):
                raise _Trouble(ftp.PermissionDeniedError(_shown(segments)))
            if is_partial_name(s):
                raise _Trouble(FileActionError(partial_name_refused(segments)))
            if not s.isascii() and not utf8_name(s):
                # (names are text in the database: such a one is in none)
                raise _Trouble(ftp.FileNotFoundError(_shown(segments)))

    def _resolve(self, conn, segments) -> _Node | None:
        """The node at C{segments}, or L{None}; a file on the way is ENOTDIR."""
        self._check(segments)
        node = _Node(conn.execute(f"SELECT {_COLUMNS} FROM ftp_node WHERE id = %s", (self.root_id,)).fetchone())
        for i, segment in enumerate(segments):
            if not node.is_folder:
                raise _Trouble(ftp.IsNotADirectoryError(_shown(segments[:i])))
            node = _child(conn, node.id, segment)
            if node is None:
                return None
        return node

    def _existing(self, conn, segments) -> _Node:
        node = self._resolve(conn, segments)
        if node is None:
            raise _Trouble(ftp.FileNotFoundError(_shown(segments)))
        return node

    def _parent(self, conn, segments) -> _Node:
        """The folder that is to hold C{segments[-1]}."""
        parent = self._existing(conn, segments[:-1])
        if not parent.is_folder:
            raise _Trouble(ftp.IsNotADirectoryError(_shown(segments[:-1])))
        return parent

    def _writable(self, segments) -> None:
        if self.readonly:
            raise _Trouble(ftp.PermissionDeniedError(_shown(segments)))
        if not all(s.isascii() or utf8_name(s) for s in segments):
            raise _Trouble(NameNotAllowedError(not_utf8_refused(segments)))
        self._check(segments)

    def _remove_node(self, conn, node_id: int, oid: int | None) -> None:
        with conn.transaction():
            _drop_content(conn, oid)
            conn.execute("DELETE FROM ftp_node WHERE id = %s", (node_id,))

    # -- IFTPShell ---------------------------------------------------------------

    def makeDirectory(self, path):
        def make(conn):
            self._writable(path)
            if not path:
                raise _Trouble(ftp.FileExistsError("/"))
            parent = self._parent(conn, path)
            with conn.transaction():
                made = conn.execute(
                    "INSERT INTO ftp_node (parent_id, name, is_folder, modified) VALUES (%s, %s, true, %s)"
                    " ON CONFLICT DO NOTHING RETURNING id",
                    (parent.id, path[-1], time.time()),
                ).fetchone()
                if made is None:
                    raise _Trouble(ftp.FileExistsError(_shown(path)))
                _touch(conn, parent.id)

        return self._now(make)

    def removeDirectory(self, path):
        def remove(conn):
            self._writable(path)
            if not path:
                raise _Trouble(ftp.PermissionDeniedError("/"))
            node = self._existing(conn, path)  # missing: "no such file", as rmdir(2)
            if not node.is_folder:
                raise _Trouble(ftp.IsNotADirectoryError(_shown(path)))
            # Only an empty folder, as rmdir(2); a hidden partial upload
            # inside counts, as its file does on disk.
            if conn.execute("SELECT 1 FROM ftp_node WHERE parent_id = %s LIMIT 1", (node.id,)).fetchone():
                raise _Trouble(FileActionError(f"{_shown(path)[:200]}: Directory not empty"))
            with conn.transaction():
                gone = conn.execute("DELETE FROM ftp_node WHERE id = %s RETURNING parent_id", (node.id,)).fetchone()
                if gone is not None:
                    _touch(conn, gone[0])

        return self._now(remove)

    def setTimes(self, path, accessed, modified):
        """
        L{IMailhubShell.setTimes}: the row's modification time, committed
        before the Deferred fires. No access time is kept (C{accessed} is
        not stored; SFTP shows the modification time for both): keeping
        one would make every download a write on the shared database.
        """

        def change(conn, node):
            conn.execute("UPDATE ftp_node SET modified = %s WHERE id = %s", (float(modified), node.id))

        return self._change_node(path, change)

    def setPermissions(self, path, mode):
        """
        L{IMailhubShell.setPermissions}: the row's mode, as
        L{kept_mode} keeps it, committed before the Deferred fires with it.
        """

        def change(conn, node):
            kept = kept_mode(mode, node.is_folder)
            conn.execute("UPDATE ftp_node SET mode = %s WHERE id = %s", (kept, node.id))
            return kept

        return self._change_node(path, change)

    def _change_node(self, path, change):
        """
        C{change(conn, node)} on the row at C{path} (a writable path, not
        the root) in one transaction; a Deferred firing with what it
        returns once committed. L{ftp.PermissionDeniedError} for the root
        or a read-only path, L{ftp.FileNotFoundError} for none.
        """

        def run(conn):
            self._writable(path)
            if not path:
                raise _Trouble(ftp.PermissionDeniedError("/"))
            with conn.transaction():
                return change(conn, self._existing(conn, path))

        return self._later(run)

    def removeFile(self, path):
        def remove(conn):
            self._writable(path)
            node = self._existing(conn, path)
            if node.is_folder:
                raise _Trouble(ftp.IsADirectoryError(_shown(path)))
            with conn.transaction():
                self._remove_node(conn, node.id, node.content)
                _touch(conn, self._parent(conn, path).id)

        return self._now(remove)

    def rename(self, fromPath, toPath):
        def move(conn):
            self._writable(fromPath)
            self._writable(toPath)
            if not fromPath or not toPath:
                raise _Trouble(ftp.PermissionDeniedError("/"))
            with conn.transaction():
                node = self._existing(conn, fromPath)
                parent = self._parent(conn, toPath)
                if node.is_folder:
                    # Not into itself (rename(2) says EINVAL).
                    inside = conn.execute(
                        "WITH RECURSIVE up(id, parent_id) AS (SELECT id, parent_id FROM ftp_node WHERE id = %s"
                        " UNION ALL SELECT n.id, n.parent_id FROM ftp_node n JOIN up ON n.id = up.parent_id)"
                        " SELECT 1 FROM up WHERE id = %s",
                        (parent.id, node.id),
                    ).fetchone()
                    if inside:
                        # (the disk's words and path: vfs._fail of rename(2)'s EINVAL)
                        raise _Trouble(FileActionError(f"{_shown(fromPath)[:200]}: {error_words(OSError(errno.EINVAL, 'into itself'))}"))
                target = _child(conn, parent.id, toPath[-1])
                if target is not None and target.id != node.id:
                    if target.is_folder or node.is_folder:
                        # rename(2) replaces only a file by a file (an empty
                        # folder by a folder too; kept simple: refused).
                        raise _Trouble(ftp.FileExistsError(_shown(toPath)))
                    _drop_content(conn, target.content)
                    conn.execute("DELETE FROM ftp_node WHERE id = %s", (target.id,))
                old_parent = conn.execute("SELECT parent_id FROM ftp_node WHERE id = %s", (node.id,)).fetchone()[0]
                conn.execute("UPDATE ftp_node SET parent_id = %s, name = %s WHERE id = %s", (parent.id, toPath[-1], node.id))
                _touch(conn, old_parent, parent.id)

        return self._now(move)

    def access(self, path):
        def look(conn):
            node = self._existing(conn, path)
            if not node.is_folder:
                raise _Trouble(ftp.IsNotADirectoryError(_shown(path)))

        return self._now(look)

    def stat(self, path, keys=()):
        def look(conn):
            node = self._resolve(conn, path)
            if node is None and path and tuple(keys) == ("size",):
                # SIZE of a name whose upload was interrupted: where REST resumes.
                parent = self._resolve(conn, path[:-1])
                part = _child(conn, parent.id, partial_name(path[-1])) if parent is not None and parent.is_folder else None
                if part is not None:
                    return [part.size]
            if node is None:
                raise _Trouble(ftp.FileNotFoundError(_shown(path)))
            return [self._fact(node, k) for k in keys]

        return self._now(look)

    def list(self, path, keys=()):
        def look(conn):
            node = self._existing(conn, path)
            if not node.is_folder:
                return [(path[-1] if path else "/", [self._fact(node, k) for k in keys])]
            rows = conn.execute(f"SELECT name, {_COLUMNS} FROM ftp_node WHERE parent_id = %s ORDER BY name", (node.id,)).fetchall()
            return [(name, [self._fact(_Node(rest), k) for k in keys]) for name, *rest in rows if is_listed_name(name)]

        return self._now(look)

    def openForReading(self, path):
        return self.openForReadingAt(path, 0)

    def openForWriting(self, path):
        return self.openForWritingAt(path, 0, False)

    # -- IMailhubShell -------------------------------------------------------------

    def openForReadingAt(self, path, offset):
        def open_(conn):
            node = self._existing(conn, path)
            if node.is_folder:
                raise _Trouble(ftp.IsADirectoryError(_shown(path)))
            return PostgresReader(self.db, node.content, node.size, offset)

        return self._now(open_)

    def openForWritingAt(self, path, offset, append):
        def open_(conn):
            self._writable(path)
            if not path:
                raise _Trouble(ftp.IsADirectoryError("/"))
            with conn.transaction():
                parent = self._parent(conn, path)
                name, hidden = path[-1], partial_name(path[-1])
                final = _child(conn, parent.id, name)
                if final is not None and final.is_folder:
                    raise _Trouble(ftp.IsADirectoryError(_shown(path)))
                part = _child(conn, parent.id, hidden)
                resumed = bool(append or offset) and part is not None
                if not resumed:
                    if part is not None:
                        self._remove_node(conn, part.id, part.content)
                    oid = conn.execute("SELECT lo_create(0)").fetchone()[0]
                    size = 0
                    if (append or offset) and final is not None:
                        # Continue a complete file on a copy: it stays whole
                        # until the new version is.
                        if final.content is not None:
                            for at in range(0, final.size, CHUNK):
                                conn.execute("SELECT lo_put(%s, %s, lo_get(%s, %s, %s))", (oid, at, final.content, at, CHUNK))
                        size = final.size
                    part_id = conn.execute(
                        "INSERT INTO ftp_node (parent_id, name, is_folder, size, modified, content) VALUES (%s, %s, false, %s, %s, %s) RETURNING id",
                        (parent.id, hidden, size, time.time(), oid),
                    ).fetchone()[0]
                    part = _Node((part_id, False, size, time.time(), oid, None))
                start = part.size if append else offset
                if start != part.size:
                    # Shorter, or longer (SFTP SETSTAT size): lo_truncate
                    # fills with zeros, as a file on disk is extended, so
                    # the size told is what is read and what the quota counts.
                    conn.execute("SELECT lo_truncate(lo_open(%s, x'60000'::int), %s)", (part.content, start))
                    conn.execute("UPDATE ftp_node SET size = %s WHERE id = %s", (start, part.id))
                replaced = final.size if final is not None else 0
                return PostgresWriter(self, part.id, part.content, start, parent.id, name, fresh=not resumed, replaced=replaced)

        return self._now(open_)

    def uniqueName(self, path):
        def find(conn):
            self._writable(path)
            base = path[-1] if path else "file"
            parent = self._parent(conn, path) if path else self._existing(conn, [])
            for n in range(1, 10000):
                if _child(conn, parent.id, f"{base}.{n}") is None:
                    return path[:-1] + [f"{base}.{n}"]
            raise _Trouble(ftp.FileExistsError(base))

        return self._now(find)

    # -- facts -----------------------------------------------------------------------

    def _fact(self, node: _Node, key: str):
        if key == "size":
            return node.size if not node.is_folder else 0
        if key == "directory":
            return node.is_folder
        if key == "permissions":
            if node.is_folder:
                return statmod.S_IFDIR | (0o755 if node.mode is None else node.mode)
            return statmod.S_IFREG | (0o644 if node.mode is None else node.mode)
        if key == "hardlinks":
            return 1
        if key == "modified":
            return node.modified
        if key in ("owner", "group"):
            return "mailhub"
        if key == "unique":
            return f"pg{node.id:x}"
        if key == "writable":
            return not self.readonly
        raise ValueError(f"unknown fact {key!r}")


@implementer(IFileSystem)
class PostgresFileSystem:
    """
    Homes at C{<domain>/<localpart>} and the public area at C{public} in
    the C{ftp_node} tree of the database at C{dsn}.
    """

    def __init__(self, dsn: str, reactor: Any = None):
        self.db = Database(dsn, reactor, workers=2, what="the file database")
        schema.ready(self.db)
        self._homes: dict[tuple[str, ...], int] = {}

    def _home(self, segments: tuple[str, ...]) -> int:
        found = self._homes.get(segments)
        if found is None:
            def make(conn):
                with conn.transaction():
                    return ensure_path(conn, list(segments))

            found = self._homes[segments] = self.db.run_here(make)
        return found

    def clean_now(self, reactor: Any = None) -> defer.Deferred:
        """
        Remove the hidden partial uploads not written to for
        L{PARTIAL_MAX_AGE} seconds (the disk backend's
        L{twisted_mailhub.ftp.vfs.clean_partials}: an interrupted upload no
        one resumed would stay unseen, counted against the quota, for
        ever), in a worker thread; one log line when it removed any. The
        FTP component runs it at start and hourly.
        """

        def clean(conn):
            with conn.transaction():
                gone = conn.execute(
                    "DELETE FROM ftp_node WHERE NOT is_folder AND left(name, 1) = '.' AND right(name, length(%s)) = %s"
                    " AND modified < %s RETURNING content",
                    (PARTIAL_SUFFIX, PARTIAL_SUFFIX, time.time() - PARTIAL_MAX_AGE),
                ).fetchall()
                for (oid,) in gone:
                    _drop_content(conn, oid)
            return len(gone)

        def report(removed):
            if removed:
                log.info("ftp: removed {n} interrupted upload(s) not resumed within 36 h (hidden .NAME.mailhub-part rows)", n=removed)

        return self.db.run(clean).addCallbacks(report, lambda f: log.warn("ftp: cleaning interrupted uploads failed: {error}", error=f.value))

    def usage(self, account) -> int:
        """
        Octets of C{account}'s files (C{--quota}): every file under its
        home, a hidden partial upload too, by
        L{twisted_mailhub.filequota.partial_growth} beside the file it will
        replace.

        @raise StoreUnavailable: the database cannot be reached now (the
            quota's last count stands: L{twisted_mailhub.quota.Quotas.count}).
        """
        from twisted_mailhub.filequota import partial_growth

        home = self._home(self.home_segments(account))
        rows = self.db.run_here(lambda conn: conn.execute(_USAGE, (home, PARTIAL_SUFFIX, PARTIAL_SUFFIX, PARTIAL_SUFFIX)).fetchall())
        total = 0
        for partial, size, replaced in rows:
            total += partial_growth(int(size), None if replaced is None else int(replaced)) if partial else int(size or 0)
        return total

    @staticmethod
    def home_segments(account) -> tuple[str, str]:
        return (account.domain.lower(), account.localpart)

    def shell_for(self, account) -> PostgresShell:
        if account is None:
            return PostgresShell(self.db, self._home(("public",)), readonly=True)
        return PostgresShell(self.db, self._home(self.home_segments(account)))


def copy_tree(conn: Any, local_root: str, segments: list[str]) -> tuple[int, int]:
    """
    Copy the files and folders under C{local_root} (a folder of the disk
    backend) into the tree at C{segments}, in chunks; files already there
    are replaced. Returns (folders, files) copied. Partial uploads and
    links are left out.
    """
    import os

    folders = files = 0
    with conn.transaction():
        top = ensure_path(conn, segments)
    for here, dirnames, filenames in os.walk(local_root):
        rel = os.path.relpath(here, local_root)
        parts = [] if rel == "." else rel.split(os.sep)
        with conn.transaction():
            parent = ensure_path(conn, segments + parts) if parts else top
        dirnames[:] = sorted(d for d in dirnames if not os.path.islink(os.path.join(here, d)))
        folders += len(dirnames)
        for name in sorted(filenames):
            path = os.path.join(here, name)
            if is_partial_name(name) or os.path.islink(path) or not os.path.isfile(path):
                continue
            with conn.transaction():
                old = _child(conn, parent, name)
                if old is not None:
                    _drop_content(conn, old.content)
                    conn.execute("DELETE FROM ftp_node WHERE id = %s", (old.id,))
                oid = conn.execute("SELECT lo_create(0)").fetchone()[0]
                size = 0
                with open(path, "rb") as f:
                    while True:
                        chunk = f.read(CHUNK)
                        if not chunk:
                            break
                        conn.execute("SELECT lo_put(%s, %s, %s)", (oid, size, chunk))
                        size += len(chunk)
                st = os.stat(path)
                conn.execute(
                    "INSERT INTO ftp_node (parent_id, name, is_folder, size, modified, content, mode) VALUES (%s, %s, false, %s, %s, %s, %s)",
                    (parent, name, size, st.st_mtime, oid, kept_mode(st.st_mode, False)),
                )
            files += 1
    return folders, files
