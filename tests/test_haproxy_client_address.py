"""
Behind Debian's real HAProxy, run with the shipped C{etc/haproxy-mailhub.cfg}
(C{send-proxy-v2}; loopback addresses and free ports put in), a hub whose
every listener is C{haproxy:} sees each client's own address, not the
balancer's: in SMTP's EHLO reply and Received line and the delivery log's
C{client=}, in every protocol's login line (submission, IMAP, IMAPS, POP3,
POP3S, FTP, SFTP, the web API), in the per-address connection limit, and
in FTP's check that a data connection comes from the control connection's
client. Clients bind 127.0.0.2-127.0.0.9 (all loopback on Linux) while
HAProxy reaches the hub from 127.0.0.1.
"""

from __future__ import annotations

import ftplib
import http.client
import base64
import imaplib
import re
import signal
import smtplib
import socket
import ssl
import subprocess

import pytest

from tests.test_haproxy import EXAMPLE, LISTENERS, behind_haproxy, haproxy_binary, loopback_config, start_haproxy

@pytest.fixture
def haproxy_in_front(tmp_path):
    """C{start(hub)}: HAProxy with the example config in front of C{hub}; returns the front ports."""
    binary = haproxy_binary()
    processes = []

    def start(hub, ftp_data=None):
        with open(EXAMPLE) as f:
            example = f.read()
        backends = [b for b in re.findall(r"^backend (\S+)", example, re.M) if not b.startswith("ftp-data")]
        assert set(backends) == set(LISTENERS)  # the example balances every listener
        assert re.search(r"^\s*default-server .*\bsend-proxy(-v2)?\b", example, re.M)
        process, fronts = start_haproxy(binary, tmp_path / "haproxy.cfg", backends, lambda fronts: loopback_config(example, [hub, hub], fronts, ftp_data))
        processes.append(process)
        return fronts

    yield start
    for process in processes:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def connect_from(source: str, port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class IMAPFrom(imaplib.IMAP4):
    source = "127.0.0.1"

    def _create_socket(self, timeout):
        return connect_from(self.source, self.port)


class IMAPSFrom(imaplib.IMAP4_SSL):
    source = "127.0.0.1"

    def _create_socket(self, timeout):
        return self.ssl_context.wrap_socket(connect_from(self.source, self.port), server_hostname=self.host)


def pop3_login(sock: socket.socket) -> list[bytes]:
    reader = sock.makefile("rb")
    said = [reader.readline()]
    for command in (b"USER alice", b"PASS secret", b"QUIT"):
        sock.sendall(command + b"\r\n")
        said.append(reader.readline())
    return said


def test_every_protocol_sees_the_client_own_address_behind_haproxy(start_hub, haproxy_in_front):
    hub = start_hub(*behind_haproxy())
    fronts = haproxy_in_front(hub)

    with smtplib.SMTP("127.0.0.1", fronts["smtp"], timeout=10, source_address=("127.0.0.2", 0)) as s:
        code, text = s.ehlo("client.test")
        assert b"[127.0.0.2]" in text  # "250-hub Hello client.test [127.0.0.2]"
        s.sendmail("bob@localhost", ["alice@localhost"], b"Subject: from two\r\n\r\nhi\r\n")
    hub.wait_for_log(r"delivered \S+ from=<bob@localhost> to=<alice@localhost> .* client=127\.0\.0\.2")

    with smtplib.SMTP("127.0.0.1", fronts["submission"], timeout=10, source_address=("127.0.0.3", 0)) as s:
        s.starttls(context=tls_context())
        s.login("alice", "secret")
        s.sendmail("alice@localhost", ["alice@localhost"], b"Subject: submitted from three\r\n\r\nhi\r\n")
    hub.wait_for_log(r"submission login alice(@localhost)? from 127\.0\.0\.3")
    with smtplib.SMTP_SSL("127.0.0.1", fronts["smtps"], timeout=10, source_address=("127.0.0.9", 0), context=tls_context()) as s:
        s.login("alice", "secret")
    hub.wait_for_log(r"smtps login alice(@localhost)? from 127\.0\.0\.9")

    IMAPFrom.source = "127.0.0.4"
    c = IMAPFrom("127.0.0.1", fronts["imap"])
    c.login("alice", "secret")
    c.select("INBOX", readonly=True)
    typ, data = c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT RECEIVED)])")
    c.logout()
    headers = b"".join(item[1] for item in data if isinstance(item, tuple)).decode()
    assert "[127.0.0.2]" in headers and "Subject: from two" in headers  # the Received line names the client
    assert "Subject: submitted from three" in headers
    # "Received: from HELO (NAME [ADDRESS])": the address is the client's, never the balancer's
    assert sorted(re.findall(r"\[(127\.0\.0\.\d+)\]\)", headers)) == ["127.0.0.2", "127.0.0.3"], headers
    hub.wait_for_log(r"imap login alice(@localhost)? from 127\.0\.0\.4")
    IMAPSFrom.source = "127.0.0.5"
    c = IMAPSFrom("127.0.0.1", fronts["imaps"], ssl_context=tls_context())
    c.login("alice", "secret")
    c.logout()
    hub.wait_for_log(r"imaps login alice(@localhost)? from 127\.0\.0\.5")

    said = pop3_login(connect_from("127.0.0.6", fronts["pop3"]))
    assert said[0].startswith(b"+OK") and said[2].startswith(b"+OK"), said
    hub.wait_for_log(r"pop3 login alice(@localhost)? from 127\.0\.0\.6")
    said = pop3_login(tls_context().wrap_socket(connect_from("127.0.0.7", fronts["pop3s"])))
    assert said[2].startswith(b"+OK"), said
    hub.wait_for_log(r"pop3s login alice(@localhost)? from 127\.0\.0\.7")

    web = http.client.HTTPConnection("127.0.0.1", fronts["web"], timeout=10, source_address=("127.0.0.8", 0))
    web.request("GET", "/api/v1/accounts/me/folders", headers={"Authorization": "Basic " + base64.b64encode(b"alice:secret").decode()})
    answer = web.getresponse()
    answer.read()
    web.close()
    assert answer.status == 200
    hub.wait_for_log(r"api login alice(@localhost)? from 127\.0\.0\.8")


def test_ftp_data_connections_are_checked_against_the_client_behind_haproxy(start_hub, haproxy_in_front):
    # The control connection comes through the balancer; PASV names the
    # hub's own address and the data connection goes straight to it, from
    # the client's address: the hub takes it because the header named it.
    hub = start_hub(*behind_haproxy())
    fronts = haproxy_in_front(hub)
    ftp = ftplib.FTP(timeout=10, source_address=("127.0.0.2", 0))
    ftp.connect("127.0.0.1", fronts["ftp"])
    ftp.login("alice", "secret")
    ftp.storbinary("STOR notes.txt", __import__("io").BytesIO(b"through the balancer\n"))
    assert ftp.nlst() == ["notes.txt"]
    ftp.quit()
    hub.wait_for_log(r"ftp login alice(@localhost)? from 127\.0\.0\.2")
    assert "passive data connection from" not in hub.log


def test_sftp_sees_the_client_address_behind_haproxy(start_hub, haproxy_in_front):
    paramiko = pytest.importorskip("paramiko")
    hub = start_hub(*behind_haproxy())
    fronts = haproxy_in_front(hub)
    transport = paramiko.Transport(connect_from("127.0.0.3", fronts["sftp"]))
    try:
        transport.connect(username="alice", password="secret")
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp.listdir(".") is not None
        sftp.close()
    finally:
        transport.close()
    hub.wait_for_log(r"sftp login alice(@localhost)? from 127\.0\.0\.3")


def test_the_per_address_limit_counts_each_client_behind_haproxy_not_the_balancer(start_hub, haproxy_in_front):
    hub = start_hub(*behind_haproxy("--max-connections-per-ip", "1"))
    fronts = haproxy_in_front(hub)
    first = connect_from("127.0.0.2", fronts["imap"])
    assert first.makefile("rb").readline().startswith(b"* OK")
    other = connect_from("127.0.0.3", fronts["imap"])  # another client: its own count
    assert other.makefile("rb").readline().startswith(b"* OK")
    again = connect_from("127.0.0.2", fronts["imap"])  # the first client's second connection
    assert again.makefile("rb").readline() == b"* BYE [UNAVAILABLE] too many connections from your address\r\n"
    for s in (first, other, again):
        s.close()
    hub.wait_for_log(r"imap: refused a connection from 127\.0\.0\.2: too many connections")


def test_a_client_that_goes_around_the_balancer_is_closed_without_a_word(start_hub):
    hub = start_hub(*behind_haproxy())
    s = socket.create_connection(("127.0.0.1", hub.ports["smtp"]), timeout=10)
    s.sendall(b"EHLO sneaky\r\n")
    try:
        said = s.recv(100)
    except ConnectionResetError:
        said = b""
    assert said == b""  # closed, no greeting, nothing echoed
    s.close()
    hub.wait_for_log(r"smtp: closed a connection from 127\.0\.0\.1: its PROXY header is malformed \(a haproxy: listener\)")


def test_workers_behind_haproxy_see_the_client_address(start_hub, haproxy_in_front):
    # Each worker's listener is the supervisor's socket with the same
    # factories: the PROXY header is read there too.
    hub = start_hub(*behind_haproxy("--workers", "2"))
    fronts = haproxy_in_front(hub)
    for n, source in enumerate(("127.0.0.2", "127.0.0.3", "127.0.0.4")):
        with smtplib.SMTP("127.0.0.1", fronts["smtp"], timeout=10, source_address=(source, 0)) as s:
            code, text = s.ehlo("client.test")
            assert f"[{source}]".encode() in text
            s.sendmail("bob@localhost", ["alice@localhost"], f"Subject: {n}\r\n\r\nhi\r\n".encode())
        hub.wait_for_log(rf"delivered \S+ from=<bob@localhost> .* client={re.escape(source)}")


def test_a_client_outside_proxy_from_cannot_name_an_address(start_hub):
    # Reaching the hub around the balancer, a header claiming 127.0.0.1
    # (inside --trusted-networks) would have made it trusted: only the
    # balancers of --proxy-from are believed.
    hub = start_hub(*behind_haproxy("--proxy-from", "10.0.0.0/8"))
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(("127.0.0.1", hub.ports["imap"]))
        s.sendall(b"PROXY TCP4 127.0.0.1 127.0.0.1 51000 143\r\na1 CAPABILITY\r\n")
        said = s.recv(100)
    except ConnectionResetError:  # (closed before connect() or sendall() returned: the same refusal)
        said = b""
    finally:
        s.close()
    assert said == b""
    hub.wait_for_log(r"imap: closed a connection from 127\.0\.0\.1: not a balancer \(--proxy-from\)")


# -- FTP passive data connections through the balancer (--passive-ports haproxy:LO-HI)


def free_range(count: int = 4, hosts=("127.0.0.1", "127.0.0.11")) -> tuple[int, int]:
    """LO, HI: C{count} consecutive ports free on each of C{hosts} (below the ephemeral range)."""
    import random

    for _ in range(200):
        lo = random.randrange(20000, 32000 - count)
        held = []
        try:
            for port in range(lo, lo + count):
                for host in hosts:
                    s = socket.socket()
                    held.append(s)
                    s.bind((host, port))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        return lo, lo + count - 1
    raise AssertionError("no free range of ports")


def balanced_ftp(start_hub, haproxy_in_front, *more):
    """
    A hub whose FTP listens on 127.0.0.11 (HAProxy's data frontends take
    the same ports on 127.0.0.1), with its passive range forwarded by the
    example's ftp-data-hub1 frontend: (hub, front ports, (LO, HI)).
    """
    ours, other = free_range(), free_range()
    args = behind_haproxy("--passive-ports", "haproxy:%d-%d" % ours, *more)
    args[args.index("--ftp") + 1] = "haproxy:tcp:0:interface=127.0.0.11"
    hub = start_hub(*args)
    fronts = haproxy_in_front(hub, {"ftp-data-hub1": ours, "ftp-data-hub2": other})
    return hub, fronts, ours


def test_ftp_passive_data_connections_go_through_haproxy_too(start_hub, haproxy_in_front):
    hub, fronts, (lo, hi) = balanced_ftp(start_hub, haproxy_in_front, "--transcript")
    ftp = ftplib.FTP(timeout=10, source_address=("127.0.0.2", 0))
    ftp.connect("127.0.0.1", fronts["ftp"])
    ftp.login("alice", "secret")
    # PASV names the balancer's address the client reached, a port of the
    # hub's range: HAProxy listens there (the hub on 127.0.0.11).
    host, port = ftplib.parse227(ftp.sendcmd("PASV"))
    assert host == "127.0.0.1" and lo <= port <= hi
    ftp.sendcmd("ABOR")
    body = b"through the balancer, both ways\n" * 1000
    ftp.storbinary("STOR notes.txt", __import__("io").BytesIO(body))
    got = []
    ftp.retrbinary("RETR notes.txt", got.append)
    assert b"".join(got) == body
    assert ftp.nlst() == ["notes.txt"]
    ftp.quit()
    # The hub saw the client itself on the data connections, from the header.
    hub.wait_for_log(r"open: client 127\.0\.0\.2:\d+ connected to server 127\.0\.0\.1:\d+ \(passive mode\)")
    assert "refused" not in hub.log


def test_an_ftp_data_connection_through_haproxy_from_another_client_is_refused(start_hub, haproxy_in_front):
    hub, fronts, (lo, hi) = balanced_ftp(start_hub, haproxy_in_front)
    control = connect_from("127.0.0.2", fronts["ftp"])
    replies = control.makefile("rb")
    assert replies.readline().startswith(b"220")
    for line in (b"USER alice", b"PASS secret"):
        control.sendall(line + b"\r\n")
        replies.readline()
    control.sendall(b"EPSV\r\n")
    epsv = replies.readline().decode()
    port = int(re.search(r"\(\|\|\|(\d+)\|\)", epsv).group(1))
    assert lo <= port <= hi
    # Another client reaches the passive port first, through the balancer.
    thief = connect_from("127.0.0.3", port)
    hub.wait_for_log(r"ftp passive data connection for 127\.0\.0\.3 through the balancer refused \(control peer is 127\.0\.0\.2\)")
    assert thief.recv(100) == b""  # closed, nothing sent
    thief.close()
    control.sendall(b"LIST\r\n")
    data = connect_from("127.0.0.2", port)
    # (125 when the data connection came through the balancer before the
    # hub read LIST, 150 when after: both are RFC 959's preliminary reply)
    assert replies.readline()[:4] in (b"125 ", b"150 ")
    while data.recv(65536):
        pass
    data.close()
    assert replies.readline().startswith(b"226")
    control.close()


def test_ftps_protected_data_connections_go_through_haproxy(start_hub, haproxy_in_front):
    hub, fronts, (lo, hi) = balanced_ftp(start_hub, haproxy_in_front)
    ftps = ftplib.FTP_TLS(timeout=10, source_address=("127.0.0.4", 0), context=tls_context())
    ftps.connect("127.0.0.1", fronts["ftp"])
    ftps.login("alice", "secret")
    ftps.prot_p()
    ftps.storbinary("STOR secret.txt", __import__("io").BytesIO(b"private\n" * 5000))
    got = []
    ftps.retrbinary("RETR secret.txt", got.append)
    assert b"".join(got) == b"private\n" * 5000
    ftps.quit()


def test_a_health_check_of_every_listener_ends_without_an_error_in_the_log(start_hub):
    # What HAProxy's check does (send-proxy-v2 ... check): connect, a v2
    # LOCAL header, close its side. Behind an implicit-TLS listener (smtps,
    # imaps, pop3s, webs) that half-close went round between the header's
    # wrapper and TLS until "maximum recursion depth exceeded": an
    # Unhandled Error with a 2,000-line traceback every 2 s per hub.
    from twisted_mailhub.proxyheader import _V2_SIGNATURE

    hub = start_hub(*behind_haproxy())
    for name in LISTENERS:
        check = socket.create_connection(("127.0.0.1", hub.ports[name]), timeout=10)
        check.sendall(_V2_SIGNATURE + b"\x20\x00\x00\x00")
        check.shutdown(socket.SHUT_WR)
        while check.recv(4096):
            pass
        check.close()
    # A login after them: every line the checks made is in the log before it.
    said = pop3_login(_proxied_pop3(hub))
    assert said[2].startswith(b"+OK"), said
    hub.wait_for_log(r"pop3 login alice(@localhost)? from 127\.0\.0\.9")
    assert "Unhandled Error" not in hub.log and "Traceback" not in hub.log, hub.log[-3000:]


def _proxied_pop3(hub) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", hub.ports["pop3"]), timeout=10)
    s.sendall(b"PROXY TCP4 127.0.0.9 127.0.0.1 50000 110\r\n")
    return s
