"""
The web listener: login through the shared portal and throttle, the session
cookie's flags, CSRF, logout, plain HTTP only from trusted networks, the
security headers and static files.
"""

from __future__ import annotations

import socket
import time

from tests.web_helpers import WebClient


def test_login_with_an_account_shows_the_address_and_sets_a_new_strict_httponly_cookie(hub):
    browser = WebClient(hub)
    browser.get("/login")
    before = dict(browser.cookies)
    response = browser.post("/login", {"username": "alice", "password": "secret"})
    assert response.status == 303
    assert response.header("Location") == "/"
    [cookie] = response.set_cookies()
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back
    assert browser.cookies["mailhub_session"] != before["mailhub_session"]
    home = browser.get("/")
    assert home.status == 200
    assert "alice@localhost" in home.text


def test_login_over_https_sets_a_secure_host_prefixed_cookie(hub):
    browser = WebClient(hub, secure=True)
    response = browser.login("alice", "secret")
    assert response.status == 303
    [cookie] = response.set_cookies()
    assert cookie.startswith("__Host-mailhub_session=")
    assert "Secure" in cookie and "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    assert "alice@localhost" in browser.get("/").text


def test_a_wrong_password_is_refused_and_held_back_by_the_shared_throttle(hub):
    browser = WebClient(hub)
    held = []
    for attempt in range(3):
        started = time.monotonic()
        response = browser.login("alice", "wrong")
        held.append(time.monotonic() - started)
        assert response.status == 401
        assert "Wrong address or password." in response.text
    # the n-th failure in a row waits n x 0.1 s, as on every protocol
    assert held[2] >= 0.3
    assert browser.get("/").status == 303


def test_a_post_without_the_csrf_token_is_refused(hub):
    browser = WebClient(hub)
    browser.login("alice", "secret")
    refused = browser.post("/logout", {"csrf": "forged"})
    assert refused.status == 403
    assert browser.get("/").status == 200  # still logged in


def test_a_login_post_without_the_forms_token_is_refused(hub):
    browser = WebClient(hub)
    response = browser.post("/login", {"username": "alice", "password": "secret"}, csrf=False)
    assert response.status == 403
    assert "mailhub_session" in browser.cookies
    assert browser.get("/").status == 303


def test_logout_ends_the_session_for_good(hub):
    browser = WebClient(hub)
    browser.login("alice", "secret")
    old_cookie = dict(browser.cookies)
    assert browser.post("/logout").status == 303
    assert browser.get("/").status == 303
    browser.cookies = old_cookie  # replaying the old cookie does not help
    assert browser.get("/").status == 303


def test_plain_http_from_outside_the_trusted_networks_is_redirected_to_https(start_hub):
    hub = start_hub("--trusted-networks", "10.0.0.0/8")
    response = WebClient(hub).get("/login?next=/mail")
    assert response.status == 302
    assert response.header("Location") == f"https://127.0.0.1:{hub.ports['webs']}/login?next=/mail"
    secure = WebClient(hub, secure=True)
    assert secure.login("alice", "secret").status == 303


def test_every_page_forbids_inline_script_and_framing(hub):
    response = WebClient(hub).get("/login")
    policy = response.header("Content-Security-Policy")
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert response.header("X-Content-Type-Options") == "nosniff"


def test_a_teacher_is_told_they_see_every_session(start_hub):
    hub = start_hub("--teacher", "bob")
    teacher = WebClient(hub)
    teacher.login("bob", "hungry")
    assert "teacher" in teacher.get("/").text
    student = WebClient(hub)
    student.login("alice", "secret")
    assert "teacher" not in student.get("/").text


def _raw_get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET " + path.encode() + b" HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def test_static_files_are_served_but_never_outside_their_folder(hub):
    assert WebClient(hub).get("/static/mailhub.css").status == 200
    for path in ("/static/../site.py", "/static/..%2f..%2fsetup.cfg", "/static/%2e%2e/site.py", "/static/", "/static/..%5csite.py"):
        answer = _raw_get(hub.ports["web"], path)
        status = answer.split(b"\r\n", 1)[0]
        assert b" 200 " not in status, (path, answer[:300])
        assert b"import" not in answer


def test_the_sessions_of_a_removed_account_end_with_it(start_hub):
    from tests.test_api import call

    hub = start_hub("--teacher", "bob")
    teacher = ("bob@localhost", "hungry")
    assert call(hub, "POST", "/accounts", auth=teacher, json_body={"address": "dave@localhost", "password": "pw"}).status == 201
    dave = WebClient(hub)
    dave.login("dave@localhost", "pw")
    assert dave.get("/mail/INBOX").status == 200
    alice = WebClient(hub)
    alice.login("alice", "secret")
    assert call(hub, "DELETE", "/accounts/dave@localhost", auth=teacher).status == 200
    # The next request of the removed account's browser is a stranger's:
    # no mail read, none sent under its name.
    gone = dave.get("/mail/INBOX")
    assert gone.status == 303 and gone.header("Location").startswith("/login"), (gone.status, gone.header("Location"))
    assert dave.get("/").header("Location") == "/login"
    assert alice.get("/mail/INBOX").status == 200
