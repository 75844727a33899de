"""
A file whose name holds a backslash (FTP and SFTP store "a\\..\\b" as a
name: on the hub's file systems a backslash is no separator) is listed by
the JSON API with a ref, and that ref fetches it (GET), as every listed
ref must; before, it was 400 bad_path. It never leaves the account's home.
"""

from __future__ import annotations

import ftplib
import io
import json
import urllib.request


def api(hub, path: str, method: str = "GET", body: bytes | None = None):
    request = urllib.request.Request(f"http://127.0.0.1:{hub.ports['web']}/api/v1/accounts/me/files/{path}", data=body, method=method)
    request.add_header("Authorization", "Basic YWxpY2VAbG9jYWxob3N0OnNlY3JldA==")  # alice@localhost:secret
    with urllib.request.urlopen(request, timeout=20) as response:
        return response.status, response.read()


def test_a_name_with_backslashes_made_by_ftp_is_fetched_by_its_listed_ref(hub):
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", hub.ports["ftp"], timeout=20)
    ftp.login("alice", "secret")
    ftp.mkd("a\\..\\..\\b")
    ftp.storbinary("STOR a\\..\\..\\b/notes.txt", io.BytesIO(b"kept inside\n"))
    ftp.quit()
    status, body = api(hub, "")
    [entry] = [e for e in json.loads(body)["entries"] if e["name"] == "a\\..\\..\\b"]
    assert entry["ref"] == "a%5C..%5C..%5Cb"
    status, body = api(hub, entry["ref"])
    assert status == 200 and [e["name"] for e in json.loads(body)["entries"]] == ["notes.txt"]
    assert api(hub, entry["ref"] + "/notes.txt") == (200, b"kept inside\n")
    assert api(hub, "c%5Cd.txt", "PUT", b"x")[0] == 201
    assert sorted(e["name"] for e in json.loads(api(hub, "")[1])["entries"]) == ["a\\..\\..\\b", "c\\d.txt"]
