"""
An ssh ProxyCommand that reads what the server sends slowly: C{python3
tests/slowpipe.py HOST PORT FAST RATE} connects with a 4 KiB receive
buffer, passes the client's octets on at once and the server's at full
speed for the first FAST octets (the key exchange, the login), then at
RATE octets a second.
"""

import os
import socket
import sys
import threading
import time


def main() -> None:
    host, port, fast, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))

    def upstream() -> None:
        while True:
            data = os.read(0, 65536)
            if not data:
                sock.shutdown(socket.SHUT_WR)
                return
            sock.sendall(data)

    threading.Thread(target=upstream, daemon=True).start()
    passed = 0
    while True:
        try:
            data = sock.recv(65536 if passed < fast else 64)
        except OSError:
            break
        if not data:
            break
        os.write(1, data)
        passed += len(data)
        if passed >= fast:
            time.sleep(len(data) / rate)
    os._exit(0)


if __name__ == "__main__":
    main()
