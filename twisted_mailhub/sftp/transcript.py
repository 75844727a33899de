# -*- test-case-name: tests.test_e2e_sftp -*-
"""
The transcript of an SFTP session: decoded requests and their answers as
C{C:}/C{S:} lines under the transcript's connection id, and a summary per
file when the session ends. On the wire all of it was encrypted; the
transcript says so once per session.
"""

from __future__ import annotations

from twisted.logger import Logger

log = Logger(namespace="mailhub.transcript")


class SFTPTranscript:
    """
    An C{observer} for L{twisted_mailhub.sftp.protocol.SFTPServer}: called
    with a request and its answer, both already text.
    """

    def __init__(self, connection_id: str):
        self.connection_id = connection_id
        self.started = False
        # path -> [opens, bytes read, bytes written], in the order first seen
        self.files: dict[str, list[int]] = {}

    def file_closed(self, path: str, read: int, written: int) -> None:
        """A file handle was closed after C{read}/C{written} bytes."""
        totals = self.files.setdefault(path, [0, 0, 0])
        totals[0] += 1
        totals[1] += read
        totals[2] += written

    def __call__(self, request: str, answer: str) -> None:
        if not self.started:
            self.started = True
            self._emit("*", "SFTP session (inside SSH: none of what follows was visible on the wire)")
        self._emit("C", request)
        self._emit("S", answer)

    def _emit(self, who: str, text: str) -> None:
        # The same event shape as every other transcript line (namespace
        # mailhub.transcript, cid/who/line): whatever reads those reads these.
        log.info("{cid} {who}: {line}", cid=self.connection_id, who=who, line=text, protocol="sftp")

    def session_closed(self) -> None:
        if not self.started:
            return
        for path, (opens, read, written) in self.files.items():
            done = []
            if read:
                done.append(f"downloaded {read} bytes")
            if written:
                done.append(f"uploaded {written} bytes")
            self._emit("*", f"{path}: {' and '.join(done) or 'opened, nothing moved'} ({opens} open{'s' if opens > 1 else ''})")
        self._emit("*", "SFTP session closed (every request above travelled encrypted: a capture shows only SSH packets)")
