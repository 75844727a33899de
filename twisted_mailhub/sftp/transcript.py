# -*- test-case-name: tests.test_e2e_sftp -*-
"""
An SFTP session as session events (L{twisted_mailhub.transcript}): the
decoded requests and their answers as C{C}/C{S} events, the login, the
SSH cipher as the session's encryption, and a summary per file when the
session ends. The hub does not wrap this listener's bytes (they are
encrypted SSH packets); C{--transcript} and the live console read these
events instead, like every other session's.
"""

from __future__ import annotations

from typing import Any


class SFTPTranscript:
    """
    An C{observer} for L{twisted_mailhub.sftp.protocol.SFTPServer}, called
    with a request and its answer (both text), writing to one
    L{twisted_mailhub.transcript.SessionRecord}.
    """

    def __init__(self, record: Any):
        self.record = record
        self.started = False
        # path -> [opens, bytes read, bytes written], in the order first seen
        self.files: dict[str, list[int]] = {}

    def __call__(self, request: str, answer: str) -> None:
        if not self.started:
            self.started = True
            self.record.add("sftp", "SFTP session (inside SSH: none of what follows was visible on the wire)")
        self.record.add("C", request)
        self.record.add("S", answer)

    def file_closed(self, path: str, read: int, written: int) -> None:
        """A file handle was closed after C{read}/C{written} bytes."""
        totals = self.files.setdefault(path, [0, 0, 0])
        totals[0] += 1
        totals[1] += read
        totals[2] += written

    def session_closed(self) -> None:
        if self.started:
            for path, (opens, read, written) in self.files.items():
                done = []
                if read:
                    done.append(f"downloaded {read} bytes")
                if written:
                    done.append(f"uploaded {written} bytes")
                self.record.add("sftp", f"{path}: {' and '.join(done) or 'opened, nothing moved'} ({opens} open{'s' if opens > 1 else ''})")
            self.record.add("sftp", "SFTP session closed (every request above travelled encrypted: a capture shows only SSH packets)")
        self.record.closed()
