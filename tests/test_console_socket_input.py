"""
The live console's WebSocket carries updates to the browser only. A
signed-in client that sends on it anyway (one endless message: Twisted
reassembles a message whole) is cut off after 1 MiB, so it cannot grow
the hub's memory; other watchers go on.
"""

from __future__ import annotations

import socket

import pytest

from tests.web_helpers import LiveSocket, WebClient


def test_a_client_sending_an_endless_message_on_the_console_socket_is_cut_off(hub):
    from wsproto.events import TextMessage

    browser = WebClient(hub)
    browser.login("alice", "secret")
    live = LiveSocket(browser)
    assert live.accepted
    chunk = "a" * 65536
    sent = 0
    with pytest.raises(OSError):
        while sent < 64 * 1024 * 1024:  # without the limit all of it is taken and kept
            live.sock.sendall(live.ws.send(TextMessage(data=chunk, message_finished=False)))
            sent += len(chunk)
        live.sock.settimeout(10)
        if live.sock.recv(65536) == b"":
            raise ConnectionResetError("closed")
    assert sent < 8 * 1024 * 1024
    hub.wait_for_log(r"console: alice@localhost sent over 1048576 octets on the live socket, which takes none: closed")
    other = LiveSocket(browser)
    assert other.accepted
    with socket.create_connection(("127.0.0.1", hub.ports["smtp"]), timeout=10):
        pass
    other.wait_for(lambda update: update.get("type") == "session")
