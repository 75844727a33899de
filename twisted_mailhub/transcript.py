# -*- test-case-name: tests.test_transcript -*-
"""
Session transcripts: every line of a session logged as C:/S: with a
connection id, the way textbooks print SMTP and POP3 dialogues.

Secrets are masked: passwords (POP3/FTP C{PASS}, IMAP C{LOGIN}), SASL
responses (anything the client sends while an AUTH/AUTHENTICATE exchange is
open, and the initial response on the AUTH line). The body of an SMTP DATA
is summarised in one line rather than logged.
"""

from __future__ import annotations

import itertools
import re

from twisted.logger import Logger
from twisted.protocols import policies

log = Logger(namespace="mailhub.transcript")

_ids = itertools.count(1)

_AUTH = re.compile(rb"^(?:(\S+) )?(AUTH|AUTHENTICATE)\b", re.I)
_AUTH_INITIAL = re.compile(rb"^((?:\S+ )?(?:AUTH|AUTHENTICATE) \S+) \S+", re.I)
_PASS = re.compile(rb"^(PASS)\b.*", re.I)
_LOGIN = re.compile(rb"^(\S+ LOGIN \S+) .*", re.I)


def next_connection_id(protocol: str) -> str:
    return f"{protocol}#{next(_ids)}"


class Transcriber:
    """
    Turns the bytes of one session into masked C:/S: log lines.
    """

    def __init__(self, connection_id: str):
        self.connection_id = connection_id
        self._client = b""
        self._server = b""
        self._in_sasl = False
        self._in_data = False
        self._data_lines = 0
        self._data_octets = 0

    def _emit(self, who: str, line: bytes) -> None:
        text = line.rstrip(b"\r\n").decode("utf-8", "backslashreplace")
        log.info("{cid} {who}: {line}", cid=self.connection_id, who=who, line=text)

    def client_bytes(self, data: bytes) -> None:
        self._client += data
        while b"\n" in self._client:
            line, _, self._client = self._client.partition(b"\n")
            self._client_line(line)
        if len(self._client) > 4096:
            self._emit("C", self._client[:80] + b"... [over-long line]")
            self._client = b""

    def _client_line(self, line: bytes) -> None:
        bare = line.rstrip(b"\r")
        if self._in_data:
            if bare == b".":
                self._emit("C", b"[message: %d lines, %d octets]" % (self._data_lines, self._data_octets))
                self._emit("C", b".")
                self._in_data = False
            else:
                self._data_lines += 1
                self._data_octets += len(line) + 1
            return
        if self._in_sasl:
            self._emit("C", b"**** (SASL response)")
            return
        if _AUTH.match(bare):
            self._in_sasl = True
            bare = _AUTH_INITIAL.sub(rb"\1 ****", bare)
        elif _PASS.match(bare):
            bare = _PASS.sub(rb"\1 ****", bare)
        elif _LOGIN.match(bare):
            bare = _LOGIN.sub(rb"\1 ****", bare)
        self._emit("C", bare)

    def server_bytes(self, data: bytes) -> None:
        self._server += data
        while b"\n" in self._server:
            line, _, self._server = self._server.partition(b"\n")
            self._server_line(line)

    def _server_line(self, line: bytes) -> None:
        bare = line.rstrip(b"\r")
        if bare.startswith(b"354"):
            self._in_data = True
            self._data_lines = self._data_octets = 0
        if self._in_sasl and not (bare.startswith(b"334") or bare.startswith(b"+ ") or bare == b"+"):
            self._in_sasl = False
        self._emit("S", bare)


class TranscriptProtocol(policies.ProtocolWrapper):
    def makeConnection(self, transport):
        policies.ProtocolWrapper.makeConnection(self, transport)

    def connectionMade(self):
        name = getattr(self.factory, "protocol_name", "conn")
        self.transcriber = Transcriber(next_connection_id(name))
        peer = self.transport.getPeer()
        log.info(
            "{cid} connected from {host}:{port}",
            cid=self.transcriber.connection_id,
            host=getattr(peer, "host", "?"),
            port=getattr(peer, "port", "?"),
        )
        policies.ProtocolWrapper.connectionMade(self)

    def dataReceived(self, data):
        self.transcriber.client_bytes(data)
        policies.ProtocolWrapper.dataReceived(self, data)

    def write(self, data):
        self.transcriber.server_bytes(data)
        policies.ProtocolWrapper.write(self, data)

    def writeSequence(self, data):
        self.transcriber.server_bytes(b"".join(data))
        policies.ProtocolWrapper.writeSequence(self, data)

    def connectionLost(self, reason):
        log.info("{cid} closed", cid=self.transcriber.connection_id)
        policies.ProtocolWrapper.connectionLost(self, reason)


class TranscriptFactory(policies.WrappingFactory):
    protocol = TranscriptProtocol

    def __init__(self, wrapped, protocol_name: str):
        policies.WrappingFactory.__init__(self, wrapped)
        self.protocol_name = protocol_name
