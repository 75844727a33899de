"""
The JSON API under /api/v1/ on the web listener, spoken to over HTTP by a
real client against a real hub: every endpoint, authentication, paging,
the long poll, hostile input, and the OpenAPI document against what the
hub really answers.
"""

from __future__ import annotations

import base64
import http.client
import imaplib
import io
import json
import smtplib
import threading
import time
from email.message import EmailMessage
from urllib.parse import quote

import pytest

from twisted_mailhub.testing import Mailhub
from twisted_mailhub.web.api import ROUTES
from twisted_mailhub.web.openapi import document

ALICE = ("alice@localhost", "secret")
BOB = ("bob@localhost", "hungry")
ADMIN = ("teacher@localhost", "chalk")


@pytest.fixture(scope="module")
def shared():
    with Mailhub("--teacher", "teacher", accounts=["alice:secret", "bob:hungry", "teacher:chalk"]) as hub:
        yield hub


@pytest.fixture
def hub(shared):
    shared.purge()
    return shared


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        return json.loads(self.body)


def call(hub, method: str, path: str, auth=ALICE, body: bytes | None = None, json_body=None, token: str | None = None, raw_path: bool = False) -> Reply:
    connection = http.client.HTTPConnection(hub.host, hub.ports["web"], timeout=30)
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    elif auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    if json_body is not None:
        body = json.dumps(json_body).encode()
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path if raw_path else "/api/v1" + path, body=body, headers=headers)
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def send(hub, subject: str, to: str = "alice@localhost", body: str = "hello\n", message: EmailMessage | None = None) -> None:
    if message is None:
        message = EmailMessage()
        message["From"] = "Sender <sender@example.net>"
        message["To"] = to
        message["Subject"] = subject
        message.set_content(body)
    with smtplib.SMTP(hub.host, hub.ports["smtp"], timeout=10) as s:
        s.send_message(message, "sender@example.net", [to])


def rich_message() -> EmailMessage:
    m = EmailMessage()
    m["From"] = "=?utf-8?q?Ren=C3=A9e?= <renee@example.net>"
    m["To"] = "Alice <alice@localhost>"
    m["Subject"] = "=?utf-8?q?Caf=C3=A9_report?="
    m["Message-ID"] = "<report-1@example.net>"
    m.set_content("Plain body\n")
    m.add_alternative("<p>HTML body</p>\n", subtype="html")
    m.add_attachment(b"a,b\r\n1,2\r\n", maintype="text", subtype="csv", filename="q1.csv")
    m.add_attachment(bytes(range(256)), maintype="application", subtype="octet-stream", filename="../../etc/passwd")
    return m


def error_of(reply: Reply, status: int, code: str | None = None) -> dict:
    assert reply.status == status, (reply.status, reply.body)
    error = reply.json()["error"]
    assert set(error) == {"status", "code", "message"} and error["status"] == status
    if code is not None:
        assert error["code"] == code
    return error


# -- the document against the implementation ------------------------------------------------


def _doc_path(route_path: str) -> str:
    return "/" + route_path.replace("{path+}", "{path}")


def test_openapi_document_names_exactly_the_implemented_operations(hub):
    reply = call(hub, "GET", "/openapi.json", auth=None)
    assert reply.status == 200
    served = reply.json()
    assert served == json.loads(json.dumps(document()))
    documented = {(method.upper(), path) for path, ops in served["paths"].items() for method in ops}
    implemented = {(r.method, _doc_path(r.path)) for r in ROUTES}
    assert documented == implemented
    for route in ROUTES:
        op = served["paths"][_doc_path(route.path)][route.method.lower()]
        in_path = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert in_path == {seg.strip("{}+") for seg in route.path.split("/") if seg.startswith("{")}, route
        assert (op.get("security") == []) == (route.auth == "none"), route


def test_every_documented_operation_answers_as_documented(hub):
    """Each operation, called for real, gives a documented status and the documented top-level fields."""
    doc = document()
    send(hub, "for the document", message=rich_message())
    uid = call(hub, "GET", "/accounts/me/folders/INBOX/messages").json()["messages"][0]["uid"]
    assert call(hub, "PUT", "/accounts/me/files/docs/a.txt", body=b"abc").status == 201
    token = call(hub, "POST", "/tokens").json()["token"]
    values = {"account": "alice@localhost", "folder": "INBOX", "uid": str(uid), "part": "3", "path": "docs/a.txt", "id": str(uid)}
    bodies = {
        ("POST", "/accounts"): {"address": "dora@localhost", "password": "pw"},
        ("PUT", "/accounts/{account}/folders/{folder}/messages/{uid}/flags"): {"flags": ["\\Seen"]},
        ("POST", "/accounts/{account}/folders/{folder}/messages/{uid}/flags"): {"add": ["\\Flagged"]},
    }
    order = sorted(ROUTES, key=lambda r: (r.method == "DELETE", r.handler == "purge"))
    for route in order:
        path = _doc_path(route.path)
        concrete = path
        for name, value in values.items():
            concrete = concrete.replace("{" + name + "}", quote(value, safe="/@"))
        if path == "/accounts/{account}" and route.method == "DELETE":
            concrete = "/accounts/dora@localhost"
        query = "?timeout=0.1" if path.endswith("/wait") else ""
        auth = ADMIN if route.auth == "admin" else ALICE
        if route.handler == "token_revoke":
            reply = call(hub, route.method, concrete, token=token)
        else:
            payload = bodies.get((route.method, path))
            reply = call(hub, route.method, concrete + query, auth=auth, json_body=payload, body=b"x" if route.method == "PUT" and payload is None else None)
        op = doc["paths"][path][route.method.lower()]
        assert str(reply.status) in op["responses"], (route, reply.status, reply.body[:300])
        documented = op["responses"][str(reply.status)]
        types = documented.get("content", {})
        got_type = reply.headers["content-type"].split(";")[0]
        assert got_type in types or "*/*" in types, (route, got_type)
        if got_type == "application/json":
            schema = types[got_type]["schema"]
            if "$ref" in schema:
                schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
            assert set(schema.get("required", [])) <= set(reply.json()), (route, reply.json())


# -- authentication ---------------------------------------------------------------------------


def test_no_credentials_get_401_with_a_basic_challenge(hub):
    reply = call(hub, "GET", "/accounts/me/folders", auth=None)
    error_of(reply, 401, "unauthorized")
    assert reply.headers["www-authenticate"].startswith("Basic")


def test_wrong_password_gets_401(hub):
    error_of(call(hub, "GET", "/accounts/me/folders", auth=("alice@localhost", "wrong")), 401, "unauthorized")


def test_garbage_basic_credentials_get_401_not_500(hub):
    for header in ("Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(), "Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "Digest x"):
        connection = http.client.HTTPConnection(hub.host, hub.ports["web"], timeout=10)
        connection.request("GET", "/api/v1/accounts/me/folders", headers={"Authorization": header})
        response = connection.getresponse()
        assert response.status == 401, header
        connection.close()


def test_a_bearer_token_works_until_revoked(hub):
    created = call(hub, "POST", "/tokens")
    assert created.status == 201
    token = created.json()["token"]
    assert call(hub, "GET", "/accounts/me/folders", token=token).json()["account"] == "alice@localhost"
    assert call(hub, "DELETE", "/tokens", token=token).json() == {"revoked": True}
    error_of(call(hub, "GET", "/accounts/me/folders", token=token), 401)


def test_an_account_cannot_read_another_accounts_mail(hub):
    send(hub, "for bob", to="bob@localhost")
    error_of(call(hub, "GET", "/accounts/bob@localhost/folders/INBOX/messages"), 403, "forbidden")
    error_of(call(hub, "GET", "/accounts/nobody@localhost/folders/INBOX/messages"), 403, "forbidden")
    assert call(hub, "GET", "/accounts/bob@localhost/folders/INBOX/messages", auth=ADMIN).json()["total"] == 1


def test_admin_endpoints_refuse_an_ordinary_account(hub):
    error_of(call(hub, "GET", "/accounts"), 403, "forbidden")
    error_of(call(hub, "POST", "/purge"), 403, "forbidden")


# -- mail -------------------------------------------------------------------------------------------


def test_listing_pages_through_a_folder(hub):
    for i in range(5):
        send(hub, f"m{i}")
    hub.wait_for_message(subject="m4")
    page = call(hub, "GET", "/accounts/me/folders/INBOX/messages?offset=1&limit=2").json()
    assert page["total"] == 5 and page["offset"] == 1 and page["limit"] == 2
    assert [m["subject"] for m in page["messages"]] == ["m1", "m2"]
    assert page["messages"][0]["from"] == [{"name": "Sender", "address": "sender@example.net"}]
    newest = call(hub, "GET", "/accounts/me/folders/INBOX/messages?order=desc&limit=1").json()
    assert [m["subject"] for m in newest["messages"]] == ["m4"]
    beyond = call(hub, "GET", "/accounts/me/folders/INBOX/messages?offset=10").json()
    assert beyond["messages"] == [] and beyond["total"] == 5


def test_listing_takes_imap_search_keys(hub):
    for subject in ("report may", "lunch", "report june"):
        send(hub, subject)
    hub.wait_for_message(subject="report june")
    uid = call(hub, "GET", "/accounts/me/folders/INBOX/messages").json()["messages"][0]["uid"]
    call(hub, "POST", f"/accounts/me/folders/INBOX/messages/{uid}/flags", json_body={"add": ["\\Seen"]})
    found = call(hub, "GET", "/accounts/me/folders/INBOX/messages?search=" + quote('SUBJECT "report" UNSEEN')).json()
    assert [m["subject"] for m in found["messages"]] == ["report june"]
    error_of(call(hub, "GET", "/accounts/me/folders/INBOX/messages?search=" + quote("FROBNICATE x")), 400, "bad_search")
    for hostile in ("(SUBJECT x", 'SUBJECT "x', "(" * 500 + "ALL" + ")" * 500, "NOT " * 1000 + "ALL", "ALL " * 2000, "UID 1:*:*", "SINCE 32-Foo-2024"):
        error_of(call(hub, "GET", "/accounts/me/folders/INBOX/messages?search=" + quote(hostile)), 400, "bad_search")


@pytest.mark.parametrize("query", ["limit=100000000", "limit=0", "limit=-1", "limit=abc", "offset=-5", "offset=1e9", "order=sideways", "limit=" + "9" * 40])
def test_bad_paging_parameters_get_400(hub, query):
    error_of(call(hub, "GET", "/accounts/me/folders/INBOX/messages?" + query), 400)


def test_one_message_as_parsed_json_with_attachment_links(hub):
    send(hub, "", message=rich_message())
    [summary] = call(hub, "GET", "/accounts/me/folders/INBOX/messages").json()["messages"]
    assert summary["subject"] == "Café report"
    got = call(hub, "GET", f"/accounts/me/folders/INBOX/messages/{summary['uid']}").json()
    assert got["envelope"]["from"] == [{"name": "Renée", "address": "renee@example.net"}]
    assert got["envelope"]["message_id"] == "<report-1@example.net>"
    assert got["text"] == "Plain body\n" and got["html"] == "<p>HTML body</p>\n"
    assert {"name": "Subject", "value": "Café report"} in got["headers"]
    [csv, binary] = got["attachments"]
    assert (csv["filename"], csv["content_type"], csv["size"]) == ("q1.csv", "text/csv", 10)
    download = call(hub, "GET", csv["url"], raw_path=True)
    assert download.status == 200 and download.body == b"a,b\r\n1,2\r\n"
    assert download.headers["content-type"] == "text/csv"
    assert 'filename="q1.csv"' in download.headers["content-disposition"]
    other = call(hub, "GET", binary["url"], raw_path=True)
    assert other.body == bytes(range(256))
    assert "/" not in other.headers["content-disposition"].split('filename="')[1].split('"')[0]
    raw = call(hub, "GET", got["raw_url"], raw_path=True)
    assert raw.headers["content-type"] == "message/rfc822"
    assert raw.body == hub.messages("alice")[0].raw


def test_delete_and_flags(hub):
    send(hub, "flag me")
    send(hub, "delete me")
    hub.wait_for_message(subject="delete me")
    first, second = (m["uid"] for m in call(hub, "GET", "/accounts/me/folders/INBOX/messages").json()["messages"])
    base = "/accounts/me/folders/INBOX/messages"
    assert call(hub, "PUT", f"{base}/{first}/flags", json_body={"flags": ["\\Seen", "$Important"]}).json() == {"uid": first, "flags": ["$Important", "\\Seen"]}
    assert call(hub, "POST", f"{base}/{first}/flags", json_body={"add": ["\\flagged"], "remove": ["\\Seen"]}).json()["flags"] == ["$Important", "\\Flagged"]
    assert hub.messages("alice")[0].flags == frozenset({"$Important", "\\Flagged"})
    assert call(hub, "DELETE", f"{base}/{second}").json() == {"deleted": second}
    assert [m.subject for m in hub.messages("alice")] == ["flag me"]
    error_of(call(hub, "GET", f"{base}/{second}"), 404, "no_such_message")


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1,2]", b'{"flags": "\\\\Seen"}', b'{"flags": ["has space"]}', b'{"flags": ["\\\\Bogus"]}', b'{"flags": ["a\\u0000b"]}', b'{"add": []}'],
)
def test_bad_flag_bodies_get_400(hub, body):
    send(hub, "x")
    hub.wait_for_message(subject="x")
    uid = hub.messages("alice")[0].uid
    method = "POST" if b"add" in body else "PUT"
    error_of(call(hub, method, f"/accounts/me/folders/INBOX/messages/{uid}/flags", body=body), 400)


@pytest.mark.parametrize("uid,status", [("abc", 400), ("0", 400), ("-1", 400), ("99999999999", 400), ("4000", 404), ("1%00", 400)])
def test_bad_and_unknown_message_ids(hub, uid, status):
    error_of(call(hub, "GET", f"/accounts/me/folders/INBOX/messages/{uid}"), status)


@pytest.mark.parametrize(
    "path,code,bound",
    [
        ("/accounts/me/folders/INBOX/messages/4294967296", "bad_uid", "from 1 to 4294967295"),
        ("/accounts/me/folders/INBOX/messages/99999999999999999999", "bad_uid", "from 1 to 4294967295"),
        ("/accounts/me/folders/INBOX/messages/4294967296/raw", "bad_uid", "from 1 to 4294967295"),
        ("/accounts/me/folders/INBOX/messages/1/parts/1000000", "bad_part", "from 1 to 999999"),
        ("/accounts/me/folders/INBOX/wait?timeout=0&after_uid=4294967296", "bad_uid", "from 0 to 4294967295"),
        ("/accounts/me/folders/INBOX/messages?offset=1000000001", "bad_parameter", "from 0 to 1000000000"),
        ("/accounts/me/folders/INBOX/wait?timeout=1e2", "bad_parameter", "from 0 to 300"),
        ("/accounts/me/folders/INBOX/wait?timeout=%D9%A5", "bad_parameter", "from 0 to 300"),
    ],
)
def test_a_number_past_its_bound_is_refused_with_the_bound_said(hub, path, code, bound):
    # RFC 3501 §9: a UID is an nz-number (32 bits): the reply says so rather
    # than "a whole number from 1", which 4294967296 is.
    error = error_of(call(hub, "GET", path), 400, code)
    assert bound in json.dumps(error), error


def test_a_number_with_leading_zeros_is_read_as_its_value(hub):
    send(hub, "zeros")
    hub.wait_for_message(subject="zeros")
    uid = hub.messages("alice")[0].uid
    got = call(hub, "GET", f"/accounts/me/folders/INBOX/messages/{uid:020d}").json()
    assert got["uid"] == uid and got["envelope"]["subject"] == "zeros"
    assert call(hub, "GET", "/accounts/me/folders/INBOX/messages?offset=" + "0" * 15).json()["messages"][0]["subject"] == "zeros"


def test_unknown_folder_path_and_method(hub):
    error_of(call(hub, "GET", "/accounts/me/folders/Nope/messages"), 404, "no_such_folder")
    error_of(call(hub, "GET", "/nothing/here"), 404, "not_found")
    error_of(call(hub, "PATCH", "/accounts/me/folders"), 405, "method_not_allowed")
    error_of(call(hub, "GET", "/accounts/%ff/folders"), 400, "bad_path")


# -- the long poll ----------------------------------------------------------------------------------


def test_wait_returns_soon_after_a_matching_delivery(hub):
    result = {}

    def wait():
        # after_uid=0 (the folder is empty): a message that arrives before
        # the poll is in place is found too, so the test has no race.
        result["reply"] = call(hub, "GET", "/accounts/me/folders/INBOX/wait?timeout=20&after_uid=0&search=" + quote('SUBJECT "wanted"'))
        result["at"] = time.monotonic()

    waiter = threading.Thread(target=wait)
    waiter.start()
    send(hub, "not this one")
    send(hub, "the wanted one")
    delivered = time.monotonic()
    waiter.join(30)
    reply = result["reply"].json()
    assert reply["timed_out"] is False and reply["message"]["subject"] == "the wanted one"
    # bench/api_wait.py measures the latency itself; this bounds it loosely
    # on a loaded machine.
    assert result["at"] - delivered < 1.0


def test_wait_times_out_cleanly(hub):
    started = time.monotonic()
    reply = call(hub, "GET", "/accounts/me/folders/INBOX/wait?timeout=0.3")
    assert reply.json() == {"timed_out": True, "message": None}
    assert 0.25 <= time.monotonic() - started < 5


def test_wait_after_uid_returns_a_message_already_there(hub):
    send(hub, "early")
    hub.wait_for_message(subject="early")
    reply = call(hub, "GET", "/accounts/me/folders/INBOX/wait?timeout=5&after_uid=0").json()
    assert reply["message"]["subject"] == "early"


@pytest.mark.parametrize("query", ["timeout=-1", "timeout=301", "timeout=nan", "timeout=abc", "after_uid=x"])
def test_wait_refuses_bad_parameters(hub, query):
    error_of(call(hub, "GET", "/accounts/me/folders/INBOX/wait?" + query), 400)


# -- files -------------------------------------------------------------------------------------------


def test_files_upload_list_download_delete(hub):
    assert call(hub, "PUT", "/accounts/me/files/reports/2024/q1.csv", body=b"a,b\n").json() == {"path": "reports/2024/q1.csv", "size": 4}
    listing = call(hub, "GET", "/accounts/me/files/reports/2024").json()
    assert [(e["name"], e["type"], e["size"]) for e in listing["entries"]] == [("q1.csv", "file", 4)]
    top = call(hub, "GET", "/accounts/me/files").json()
    assert [(e["name"], e["type"]) for e in top["entries"]] == [("reports", "folder")]
    download = call(hub, "GET", "/accounts/me/files/reports/2024/q1.csv")
    assert download.body == b"a,b\n" and download.headers["content-type"] == "application/octet-stream"
    assert hub.files("alice") == {"reports/2024/q1.csv": b"a,b\n"}
    assert call(hub, "DELETE", "/accounts/me/files/reports/2024/q1.csv").json() == {"deleted": "reports/2024/q1.csv"}
    error_of(call(hub, "GET", "/accounts/me/files/reports/2024/q1.csv"), 404, "no_such_file")
    assert call(hub, "DELETE", "/accounts/me/files/reports/2024").status == 200


def test_a_file_uploaded_over_ftp_is_read_through_the_api(hub):
    client = hub.ftp("alice")
    try:
        client.storbinary("STOR from-ftp.bin", io.BytesIO(b"\x00\x01ftp"))
    finally:
        client.quit()
    assert call(hub, "GET", "/accounts/me/files/from-ftp.bin").body == b"\x00\x01ftp"


@pytest.mark.parametrize("path", ["/accounts/me/files/..", "/accounts/me/files/a/../../b", "/accounts/me/files/%2e%2e/x", "/accounts/me/files/a%2F..%2F..%2Fb", "/accounts/me/files/a%00b", "/accounts/me/files/a%0ab"])
def test_path_traversal_and_control_characters_in_file_names_get_400(hub, path):
    for method in ("GET", "PUT", "DELETE"):
        error_of(call(hub, method, path, body=b"x" if method == "PUT" else None), 400, "bad_path")
    assert hub.files("alice") == {}


def test_deleting_a_folder_that_is_not_empty_is_refused(hub):
    call(hub, "PUT", "/accounts/me/files/full/f.txt", body=b"x")
    reply = call(hub, "DELETE", "/accounts/me/files/full")
    assert reply.status in (400, 409)
    assert hub.files("alice") == {"full/f.txt": b"x"}


# -- admin ---------------------------------------------------------------------------------------------


def test_admin_adds_and_removes_an_account_at_run_time(hub):
    added = call(hub, "POST", "/accounts", auth=ADMIN, json_body={"address": "dora@localhost", "password": "pw"})
    assert added.status == 201 and added.json() == {"address": "dora@localhost"}
    assert "dora@localhost" in call(hub, "GET", "/accounts", auth=ADMIN).json()["accounts"]
    send(hub, "welcome dora", to="dora@localhost")
    imap = imaplib.IMAP4(hub.host, hub.ports["imap"], timeout=10)
    try:
        imap.login("dora@localhost", "pw")
        imap.select("INBOX")
        assert imap.search(None, "SUBJECT", "welcome")[1] == [b"1"]
    finally:
        imap.logout()
    error_of(call(hub, "POST", "/accounts", auth=ADMIN, json_body={"address": "dora@localhost", "password": "x"}), 409, "account_exists")
    assert call(hub, "DELETE", "/accounts/dora@localhost", auth=ADMIN).json() == {"removed": "dora@localhost"}
    error_of(call(hub, "GET", "/accounts/me/folders", auth=("dora@localhost", "pw")), 401)


@pytest.mark.parametrize("body", [{"address": "a b@x", "password": "p"}, {"address": "../x", "password": "p"}, {"address": "e@localhost", "password": ""}, {"address": "e@localhost", "password": "a\nb"}, {"address": 5, "password": "p"}, {}])
def test_admin_add_account_refuses_bad_input(hub, body):
    error_of(call(hub, "POST", "/accounts", auth=ADMIN, json_body=body), 400)


def test_admin_add_account_refuses_a_password_with_a_lone_surrogate(hub):
    # JSON can carry "\udcff", which no client can ever send as UTF-8: the
    # account was made (201) and each of its logins was a server error.
    error = error_of(call(hub, "POST", "/accounts", auth=ADMIN, json_body={"address": "eve@localhost", "password": "p\udcff"}), 400, "bad_password")
    assert "lone surrogate" in error["message"]
    assert "eve@localhost" not in call(hub, "GET", "/accounts", auth=ADMIN).json()["accounts"]


def test_admin_purge_empties_every_account(hub):
    send(hub, "a")
    send(hub, "b", to="bob@localhost")
    hub.wait_for_message(to="bob@localhost")
    call(hub, "PUT", "/accounts/me/files/x/y.txt", body=b"y")
    purged = call(hub, "POST", "/purge", auth=ADMIN).json()
    assert purged["messages"] >= 2 and purged["files"] == 1
    assert hub.messages("alice") == [] and hub.messages("bob") == [] and hub.files("alice") == {}


# -- Mailpit's shapes --------------------------------------------------------------------------------------


def test_mailpit_message_list_and_message_shapes(hub):
    send(hub, "older")
    send(hub, "", message=rich_message())
    hub.wait_for_message(subject="Café")
    listing = call(hub, "GET", "/messages?limit=10").json()
    assert listing["total"] == 2 and listing["count"] == 2 and listing["unread"] == 2
    newest = listing["messages"][0]
    assert newest["Subject"] == "Café report" and newest["From"] == {"Name": "Renée", "Address": "renee@example.net"}
    assert newest["MessageID"] == "report-1@example.net" and newest["Read"] is False and newest["Attachments"] == 2
    assert newest["Snippet"] == "Plain body"
    one = call(hub, "GET", f"/message/{newest['ID']}").json()
    assert one["Text"] == "Plain body\n" and one["HTML"] == "<p>HTML body</p>\n"
    assert [a["FileName"] for a in one["Attachments"]] == ["q1.csv", "../../etc/passwd"]
    assert one["ReturnPath"] == "sender@example.net"
    raw = call(hub, "GET", f"/message/{newest['ID']}/raw")
    assert raw.body == hub.messages("alice")[1].raw


def test_no_request_in_this_module_left_a_traceback(shared):
    assert "Traceback" not in shared.log


def test_a_message_of_thousands_of_parts_does_not_stop_other_clients_while_the_api_parses_it(hub):
    # The standard library's parser takes seconds over 3,000 MIME parts; it
    # ran in the reactor, so every other client of every protocol waited.
    parts = b"".join(b"--zz\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"f%d.bin\"\r\n\r\nabc\r\n" % i for i in range(3000))
    raw = b"From: a@example.net\r\nTo: alice@localhost\r\nSubject: many parts\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n" + parts + b"--zz--\r\n"
    with smtplib.SMTP(hub.host, hub.ports["smtp"], timeout=10) as s:
        s.sendmail("a@example.net", ["alice@localhost"], raw)
    uid = hub.wait_for_message(to="alice@localhost", subject="many parts", timeout=10).uid
    imap = hub.imap("bob")
    logins = hub.log.count("api login alice")
    result = {}

    def fetch():
        started = time.monotonic()
        result["reply"] = call(hub, "GET", f"/accounts/me/folders/INBOX/messages/{uid}")
        result["seconds"] = time.monotonic() - started

    worker = threading.Thread(target=fetch)
    worker.start()
    deadline = time.monotonic() + 30
    while hub.log.count("api login alice") == logins and time.monotonic() < deadline:
        time.sleep(0.01)  # until the hub has the request (its login line)
    started = time.monotonic()
    assert imap.noop()[0] == "OK"
    noop = time.monotonic() - started
    worker.join(120)
    imap.logout()
    reply = result["reply"]
    assert reply.status == 200
    assert len(reply.json()["attachments"]) == 3000
    # The IMAP client was answered while the parse went on, not after it.
    assert noop < result["seconds"] / 3, (noop, result["seconds"])


@pytest.mark.parametrize("kind", ["message/rfc822", "multipart"])
def test_a_message_nested_thousands_deep_is_shown_by_the_api_and_the_webmail_not_a_500(hub, kind):
    # 3,000 nested parts were a RecursionError in the standard library's
    # parser: a 500 and a traceback, for a message anyone can send.
    from tests.test_imap_message import nested_deep
    from tests.web_helpers import WebClient

    body = nested_deep(kind)
    with smtplib.SMTP(hub.host, hub.ports["smtp"], timeout=10) as s:
        s.sendmail("a@example.net", ["alice@localhost"], b"From: a@example.net\r\nSubject: deep " + kind.encode() + b"\r\n" + body)
    uid = hub.wait_for_message(to="alice@localhost", subject="deep", timeout=10).uid
    reply = call(hub, "GET", f"/accounts/me/folders/INBOX/messages/{uid}")
    assert reply.status == 200, reply.body[:300]
    assert reply.json()["envelope"]["subject"] == "deep " + kind
    assert call(hub, "GET", f"/message/{uid}").status == 200
    assert call(hub, "GET", f"/accounts/me/folders/INBOX/messages/{uid}/parts/1").status == 200
    browser = WebClient(hub)
    assert browser.login("alice@localhost", "secret").status == 303
    for page in (f"/mail/INBOX/{uid}", f"/mail/INBOX/{uid}/anatomy"):
        assert browser.get(page).status == 200, page
    assert "RecursionError" not in hub.log


def test_a_file_name_that_is_not_utf8_is_listed_fetched_and_deleted_by_its_ref(hub):
    # FTP stores any octets as a name (a Latin-1 client's "café.txt").
    # The API listed it as "caf\ufffd.txt" and answered GET and DELETE of
    # "caf%E9.txt" with 400 "the path is not UTF-8": the file could be
    # seen but neither fetched nor deleted. Each entry now has a "ref",
    # its name percent-encoded (RFC 3986 §2.1), that the API takes back.
    client = hub.ftp("alice")
    client.encoding = "latin-1"
    try:
        client.mkd("d\xe9p\xf4t")
        client.storbinary("STOR d\xe9p\xf4t/caf\xe9.txt", io.BytesIO(b"latin-1 name\n"))
    finally:
        client.quit()
    top = call(hub, "GET", "/accounts/me/files").json()
    assert [(e["name"], e["ref"], e["type"]) for e in top["entries"]] == [("d\ufffdp\ufffdt", "d%E9p%F4t", "folder")]
    listing = call(hub, "GET", "/accounts/me/files/d%E9p%F4t").json()
    assert [(e["name"], e["ref"], e["size"]) for e in listing["entries"]] == [("caf\ufffd.txt", "caf%E9.txt", 13)]
    path = "/accounts/me/files/" + top["entries"][0]["ref"] + "/" + listing["entries"][0]["ref"]
    fetched = call(hub, "GET", path)
    assert fetched.status == 200 and fetched.body == b"latin-1 name\n"
    assert call(hub, "DELETE", path).status == 200
    error_of(call(hub, "GET", path), 404, "no_such_file")
    assert call(hub, "GET", "/accounts/me/files/d%E9p%F4t").json()["entries"] == []
    assert call(hub, "DELETE", "/accounts/me/files/d%E9p%F4t").status == 200
    assert call(hub, "GET", "/accounts/me/files").json()["entries"] == []
    # A UTF-8 name's ref is its percent-encoded UTF-8; mail routes still want UTF-8.
    call(hub, "PUT", "/accounts/me/files/" + quote("café.txt"), body=b"x")
    assert [e["ref"] for e in call(hub, "GET", "/accounts/me/files").json()["entries"]] == ["caf%C3%A9.txt"]
    error_of(call(hub, "GET", "/accounts/me/folders/caf%E9/messages"), 400, "bad_path")
    error_of(call(hub, "GET", "/accounts/me/caf%E9"), 400, "bad_path")


def _from_page(hub, method: str, path: str, body: bytes, headers: dict[str, str], auth=ADMIN) -> Reply:
    """A request as a browser sends it from a page: with the Basic credentials it cached, and C{headers}."""
    connection = http.client.HTTPConnection(hub.host, hub.ports["web"], timeout=30)
    all_headers = {"Authorization": "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode(), "Content-Type": "text/plain", **headers}
    try:
        connection.request(method, "/api/v1" + path, body=body, headers=all_headers)
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def test_a_page_of_another_site_cannot_use_the_browsers_cached_basic_credentials(hub):
    # <form enctype="text/plain" method="post" action="http://hub/api/v1/accounts">
    # with <input name='{"address":"mallory@localhost","password":"pw","x":"' value='"}'>:
    # the body is JSON, and the browser adds the Basic credentials it cached.
    body = b'{"address":"mallory@localhost","password":"pw","x":"="}'
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site", "Origin": f"http://{hub.host}:{hub.ports['web']}"}, {"Sec-Fetch-Site": "same-site"}):
        refused = _from_page(hub, "POST", "/accounts", body, headers)
        assert error_of(refused, 403, "cross_site")["message"].startswith("a page of another site may not change anything")
    send(hub, "keep me")
    uid = call(hub, "GET", "/accounts/me/folders/INBOX/messages").json()["messages"][0]["uid"]
    flags = f"/accounts/me/folders/INBOX/messages/{uid}/flags"
    for method, path in (("POST", "/purge"), ("DELETE", "/accounts/alice@localhost"), ("POST", flags), ("DELETE", f"/accounts/me/folders/INBOX/messages/{uid}")):
        error_of(_from_page(hub, method, path, b'{"add":["\\\\Deleted"]}', {"Origin": "http://evil.example"}), 403, "cross_site")
    accounts = call(hub, "GET", "/accounts", auth=ADMIN).json()["accounts"]
    assert "mallory@localhost" not in accounts and "alice@localhost" in accounts
    assert len(call(hub, "GET", "/accounts/me/folders/INBOX/messages").json()["messages"]) == 1
    # The hub's own pages, and programs (no Origin at all), still may.
    same = _from_page(hub, "POST", "/accounts", b'{"address":"carol@localhost","password":"pw"}', {"Origin": f"http://{hub.host}:{hub.ports['web']}", "Sec-Fetch-Site": "same-origin"})
    assert same.status == 201, same.body
    assert call(hub, "DELETE", "/accounts/carol@localhost", auth=ADMIN).status == 200
    assert call(hub, "POST", flags, json_body={"add": ["\\Flagged"]}).status == 200


def test_a_senders_script_or_style_sheet_part_is_served_as_octets_not_as_script(hub):
    # With CSP script-src 'self', a part served as text/javascript at a URL
    # of the hub's own origin is a script any page of the hub could load.
    m = EmailMessage()
    m["From"] = "sender@example.net"
    m["To"] = "alice@localhost"
    m["Subject"] = "runnable parts"
    m.set_content("see the attachments\n")
    m.add_attachment(b"alert(document.domain)\n", maintype="text", subtype="javascript", filename="a.js")
    m.add_attachment(b"alert(1)\n", maintype="application", subtype="x-javascript", filename="b.js")
    m.add_attachment(b"body{background:url(//evil.example/)}\n", maintype="text", subtype="css", filename="c.css")
    m.add_attachment(b"\0asm\1\0\0\0", maintype="application", subtype="wasm", filename="d.wasm")
    m.add_attachment(b"a,b\r\n", maintype="text", subtype="csv", filename="e.csv")
    send(hub, "", message=m)
    uid = call(hub, "GET", "/accounts/me/folders/INBOX/messages").json()["messages"][0]["uid"]
    types = []
    for n in range(2, 7):
        reply = call(hub, "GET", f"/accounts/me/folders/INBOX/messages/{uid}/parts/{n}")
        assert reply.status == 200 and reply.headers["x-content-type-options"] == "nosniff"
        types.append(reply.headers["content-type"])
    assert types == ["application/octet-stream"] * 4 + ["text/csv"]


def test_many_passwords_at_once_are_checked_one_after_another(hub):
    # Eight wrong passwords in eight requests at once, then the right one:
    # it is checked only once the eight are answered (held 0.1 s, 0.2 s,
    # ... 0.8 s one after another: 3.6 s), not found at once beside them.
    results: dict[int, tuple[int, float]] = {}

    def attempt(n: int, password: str) -> None:
        reply = call(hub, "GET", "/accounts/me/folders", auth=("alice@localhost", password))
        results[n] = (reply.status, time.monotonic())

    started = time.monotonic()
    threads = [threading.Thread(target=attempt, args=(n, f"guess{n}")) for n in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    attempt(8, "secret")
    for t in threads:
        t.join(30)
    assert [results[n][0] for n in range(9)] == [401] * 8 + [200]
    assert results[8][1] - started >= 3.0
