"""
Every folder name has its own webmail address, and none collides with a
page of the webmail or breaks one: a folder named "compose" (the compose
page was /mail/compose), "state" (a folder's poll), route words, names
with "/" (a hierarchy), "%", "?", "#", "+", blanks, non-ASCII and the
modified UTF-7 "&" ("&-" on the IMAP wire). The folders are made and
filled over IMAP, then opened with curl (Chromium:
test_web_folder_names_browser.py); the JSON API reads them too.
"""

from __future__ import annotations

import html
import imaplib
import json
import os
import re
import shutil
import subprocess
import urllib.parse

import pytest

import twisted.mail.imap4  # noqa: F401  (registers the "imap4-utf-7" codec: modified UTF-7, RFC 3501 §5.1.3)
from tests.hubprocess import HubProcess

CURL = shutil.which("curl")
if CURL is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI needs curl (Debian package) for the webmail's folder-name tests")
    pytest.skip("needs curl (apt-get install curl)", allow_module_level=True)

# Words of the webmail's own addresses, and characters that mean something
# in a URL or in IMAP's modified UTF-7. (A name with a part "..", "." or
# starting with a dot is refused by the store: no URL can hold one.)
NAMES = [
    "compose", "Compose", "state", "login", "console", "api", "static",
    "a/b", "INBOX/sub", "100%", "100%25", "%2F", "why?", "#1", "a+b", "x y", "a;b=c", "x..y", "*",
    "&", "&-", "a&b", "Entwürfe", "日本語", "📁 mail", "50% off?#1 & more",
]


def wire(name: str) -> str:
    """C{name} as an IMAP quoted string in modified UTF-7."""
    return '"' + name.encode("imap4-utf-7").decode("ascii").replace("\\", "\\\\").replace('"', '\\"') + '"'


def subject_of(name: str) -> str:
    return f"kept in {name}"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    process = HubProcess(str(tmp_path_factory.mktemp("foldernames")), users=("alice:secret", "bob:hungry"))
    process.start()
    imap = imaplib.IMAP4("127.0.0.1", process.ports["imap"], timeout=10)
    try:
        imap.login("alice", "secret")
        for name in NAMES:
            typ, data = imap.create(wire(name))
            assert typ == "OK", (name, data)
            message = f"From: carol@example.org\r\nSubject: {subject_of(name)}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nthe text in {name}\r\n".encode("utf-8")
            typ, data = imap.append(wire(name), None, None, message)
            assert typ == "OK", (name, data)
    finally:
        imap.logout()
    yield process
    process.stop()


class Curl:
    """curl with a cookie jar: a signed-in browser without JavaScript."""

    def __init__(self, hub, tmp_path):
        self.base = f"http://127.0.0.1:{hub.ports['web']}"
        self.jar = str(tmp_path / "cookies")

    def run(self, *args: str) -> tuple[int, dict[str, str], bytes]:
        """(status, headers lowercased, body) of one request; no redirect followed unless -L is given."""
        out = subprocess.run([CURL, "-sS", "--max-time", "20", "-b", self.jar, "-c", self.jar, "-D", "-", *args], capture_output=True, timeout=30, check=True).stdout
        blocks = []
        while out.startswith(b"HTTP/"):
            head, _, out = out.partition(b"\r\n\r\n")
            blocks.append(head)
        lines = blocks[-1].decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        return int(lines[0].split()[1]), headers, out

    def get(self, path: str, *args: str):
        return self.run(*args, self.base + path)

    def login(self, user: str, password: str) -> None:
        status, _, page = self.get("/login")
        csrf = html.unescape(re.search(rb'name="csrf" value="([^"]*)"', page).group(1).decode())
        status, headers, _ = self.run("--data-urlencode", f"username={user}", "--data-urlencode", f"password={password}", "--data-urlencode", f"csrf={csrf}", self.base + "/login")
        assert status == 303, status


def folder_path(name: str) -> str:
    return "/mail/" + urllib.parse.quote(name, safe="")


@pytest.mark.parametrize("name", NAMES)
def test_curl_opens_every_folder_its_message_its_source_and_its_state_whatever_the_name(hub, tmp_path, name):
    curl = Curl(hub, tmp_path)
    curl.login("alice", "secret")
    status, _, page = curl.get(folder_path(name))
    text = page.decode("utf-8")
    assert status == 200, text[:500]
    assert f"<h1>{html.escape(name, quote=False)}</h1>" in text
    assert html.escape(subject_of(name), quote=False) in text
    assert 'class="compose"' not in text  # (the folder, not the compose form)
    status, _, page = curl.get(folder_path(name) + "/1")
    assert status == 200 and f"the text in {html.escape(name, quote=False)}" in page.decode("utf-8")
    status, headers, raw = curl.get(folder_path(name) + "/1/raw")
    assert status == 200 and headers["content-type"] == "message/rfc822"
    assert raw.endswith(f"the text in {name}\r\n".encode("utf-8"))
    status, _, state = curl.get(folder_path(name) + "/state")
    assert status == 200 and json.loads(state)["count"] == 1
    status, _, page = curl.get(folder_path(name) + "/1/anatomy")
    assert status == 200 and "MIME tree" in page.decode("utf-8")


def test_the_api_reads_a_folder_of_any_name_given_as_one_percent_encoded_segment(hub, tmp_path):
    curl = Curl(hub, tmp_path)
    for name in NAMES:
        status, _, body = curl.get(f"/api/v1/accounts/alice@localhost/folders/{urllib.parse.quote(name, safe='')}/messages", "-u", "alice:secret")
        assert status == 200, (name, body[:300])
        assert [m["subject"] for m in json.loads(body)["messages"]] == [subject_of(name)], name
    status, _, body = curl.get("/api/v1/accounts/alice@localhost/folders", "-u", "alice:secret")
    listed = {f["name"] for f in json.loads(body)["folders"]}
    assert set(NAMES) <= listed


def test_compose_is_its_own_page_while_a_folder_named_compose_exists(hub, tmp_path):
    curl = Curl(hub, tmp_path)
    curl.login("alice", "secret")
    status, _, page = curl.get("/compose")
    assert status == 200 and 'class="compose"' in page.decode("utf-8")
    status, _, page = curl.get("/mail/INBOX")
    assert 'href="/compose"' in page.decode("utf-8")
    status, _, page = curl.get("/mail/compose")
    assert status == 200 and subject_of("compose") in page.decode("utf-8")


def test_the_old_compose_address_still_composes_and_sends_for_an_account_without_such_a_folder(hub, tmp_path):
    curl = Curl(hub, tmp_path)
    curl.login("bob", "hungry")
    status, headers, _ = curl.get("/mail/compose?reply=INBOX/1")
    assert status == 307 and headers["location"] == "/compose?reply=INBOX/1"
    status, _, page = curl.get("/mail/compose", "-L")
    text = page.decode("utf-8")
    assert status == 200 and 'class="compose"' in text
    csrf = html.unescape(re.search(r'name="csrf" value="([^"]*)"', text).group(1))
    # An old page's form posts to /mail/compose: the 307 keeps the POST.
    status, headers, _ = curl.get("/mail/compose", "-L", "-F", f"csrf={csrf}", "-F", "to=alice@localhost", "-F", "subject=through the old address", "-F", "body=hello")
    assert status == 200  # (the INBOX it is sent on to)
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        imap.login("alice", "secret")
        imap.select("INBOX", readonly=True)
        typ, data = imap.search(None, "SUBJECT", '"through the old address"')
        assert typ == "OK" and len(data[0].split()) == 1
    finally:
        imap.logout()
