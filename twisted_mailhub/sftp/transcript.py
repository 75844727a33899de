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

    def __call__(self, request: str, answer: str) -> None:
        if not self.started:
            self.started = True
            self._emit("*", "SFTP session (inside SSH: none of what follows was visible on the wire)")
        self._emit("C", request)
        self._emit("S", answer)

    def _emit(self, who: str, text: str) -> None:
        log.info("{cid} {who}: {line}", cid=self.connection_id, who=who, line=text)

    def session_closed(self) -> None:
        if self.started:
            self._emit("*", "SFTP session closed")
