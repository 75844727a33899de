# -*- test-case-name: tests.test_api -*-
"""
The OpenAPI 3.1 document of the JSON API (C{GET /api/v1/openapi.json}).

It is written here by hand, next to L{twisted_mailhub.web.api.ROUTES}; a
test checks that both name the same operations, and that real replies
have the documented status codes and top-level fields.
"""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    words = {400: "Bad input", 401: "Not logged in", 403: "Not allowed (or, with code cross_site, sent by a page of another site)", 404: "Not found", 405: "Wrong method", 409: "Conflict", 413: "Too large", 503: "The accounts database cannot be reached now (--auth postgresql); nothing changed, try again"}
    return {str(c): _json(_ERROR, words[c]) for c in codes}


_STR = {"type": "string"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_ADDR_LIST = {"type": "array", "items": {"$ref": "#/components/schemas/Address"}}

_ACCOUNT = {"name": "account", "in": "path", "required": True, "schema": _STR, "description": "An account address, or `me`."}
_FOLDER = {"name": "folder", "in": "path", "required": True, "schema": _STR, "description": "A folder name (`INBOX`; `/` in a name as `%2F`)."}
_UID = {"name": "uid", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1, "maximum": 4294967295}, "description": "The message's IMAP UID in the folder (RFC 3501 nz-number)."}
_PATH = {"name": "path", "in": "path", "required": True, "schema": _STR, "description": "A file path in the account's FTP home, segments separated by `/`."}
_SEARCH = {"name": "search", "in": "query", "schema": _STR, "description": "IMAP search keys (RFC 3501 §6.4.4), e.g. `UNSEEN FROM alice SUBJECT \"report\"`."}

_SUMMARY = _obj(
    ["uid", "folder", "flags", "size", "received", "subject", "from", "to"],
    uid=_INT, folder=_STR, flags={"type": "array", "items": _STR}, size=_INT, received=_STR,
    date={"type": ["string", "null"]}, subject=_STR, **{"from": _ADDR_LIST}, sender=_ADDR_LIST, reply_to=_ADDR_LIST,
    to=_ADDR_LIST, cc=_ADDR_LIST, bcc=_ADDR_LIST, in_reply_to={"type": ["string", "null"]}, message_id={"type": ["string", "null"]},
)

_MESSAGE = _obj(
    ["uid", "folder", "flags", "size", "received", "envelope", "headers", "text", "html", "attachments", "raw_url"],
    uid=_INT, folder=_STR, flags={"type": "array", "items": _STR}, size=_INT, received=_STR,
    envelope={"type": "object"},
    headers={"type": "array", "items": _obj(["name", "value"], name=_STR, value=_STR)},
    text={"type": ["string", "null"]}, html={"type": ["string", "null"]},
    attachments={"type": "array", "items": _obj(
        ["part", "filename", "content_type", "size", "url"],
        part=_INT, filename={"type": ["string", "null"]}, content_type=_STR, disposition={"type": ["string", "null"]},
        content_id={"type": ["string", "null"]}, size=_INT, url=_STR,
    )},
    raw_url=_STR,
)

_MAILPIT_ADDRESS = _obj(["Name", "Address"], Name=_STR, Address=_STR)
_MAILPIT_SUMMARY = _obj(
    ["ID", "MessageID", "Read", "From", "To", "Cc", "Bcc", "ReplyTo", "Subject", "Created", "Tags", "Size", "Attachments", "Snippet"],
    ID=_STR, MessageID=_STR, Read=_BOOL, From=_MAILPIT_ADDRESS, To={"type": "array", "items": _MAILPIT_ADDRESS},
    Cc={"type": "array", "items": _MAILPIT_ADDRESS}, Bcc={"type": "array", "items": _MAILPIT_ADDRESS},
    ReplyTo={"type": "array", "items": _MAILPIT_ADDRESS}, Subject=_STR, Created=_STR, Tags={"type": "array", "items": _STR},
    Size=_INT, Attachments=_INT, Snippet=_STR,
)


def _op(summary: str, responses: dict[str, Any], parameters: list | None = None, body: dict | None = None, auth: bool = True, tag: str = "mail") -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
    if not auth:
        op["security"] = []
    return op


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def document() -> dict[str, Any]:
    """The whole OpenAPI document, as a JSON-ready dict."""
    msg = "/accounts/{account}/folders/{folder}/messages/{uid}"
    mp = [_ACCOUNT, _FOLDER, _UID]
    flags_reply = _json(_obj(["uid", "flags"], uid=_INT, flags={"type": "array", "items": _STR}))
    flag_list = {"type": "array", "items": _STR}
    paths = {
        "/": {"get": _op("What this API is, and where its OpenAPI document is", {"200": _json(_obj(["name", "version", "openapi"], name=_STR, version=_INT, openapi=_STR))}, auth=False, tag="meta")},
        "/openapi.json": {"get": _op("This document", {"200": _json({"type": "object"})}, auth=False, tag="meta")},
        "/tokens": {
            "post": _op("A bearer token for the account that logs in (kept until revoked or the hub restarts)", {"201": _json(_obj(["token", "account", "admin"], token=_STR, account=_STR, admin=_BOOL)), **_errors(401, 403)}, tag="auth"),
            "delete": _op("Revoke the bearer token this request carries", {"200": _json(_obj(["revoked"], revoked=_BOOL)), **_errors(400, 401, 403)}, tag="auth"),
        },
        "/accounts": {
            "get": _op("Every account (admin)", {"200": _json(_obj(["accounts"], accounts={"type": "array", "items": _STR})), **_errors(401, 403)}, tag="admin"),
            "post": _op(
                "Add an account at run time (admin); with --auth postgresql, a user_account row every hub sees",
                {"201": _json(_obj(["address"], address=_STR)), **_errors(400, 401, 403, 409, 413, 503)},
                body=_json_body(_obj(["address", "password"], address=_STR, password=_STR)),
                tag="admin",
            ),
        },
        "/accounts/{account}": {
            "delete": _op("Remove an account at run time; its mail and files stay on disk (admin)", {"200": _json(_obj(["removed"], removed=_STR)), **_errors(401, 403, 404, 503)}, [_ACCOUNT], tag="admin"),
        },
        "/purge": {"post": _op("Expunge every message and delete every file of every account (admin)", {"200": _json(_obj(["messages", "files"], messages=_INT, files=_INT)), **_errors(401, 403)}, tag="admin")},
        "/accounts/{account}/folders": {
            "get": _op("The account's folders with message counts", {"200": _json(_obj(["account", "folders"], account=_STR, folders={"type": "array", "items": _obj(["name", "messages", "unseen"], name=_STR, messages=_INT, unseen=_INT)})), **_errors(401, 403, 404)}, [_ACCOUNT]),
        },
        "/accounts/{account}/folders/{folder}/messages": {
            "get": _op(
                "Messages of a folder, a page at a time, oldest first (order=desc: newest first)",
                {"200": _json(_obj(["account", "folder", "total", "offset", "limit", "messages"], account=_STR, folder=_STR, total=_INT, offset=_INT, limit=_INT, messages={"type": "array", "items": _SUMMARY})), **_errors(400, 401, 403, 404)},
                [
                    _ACCOUNT, _FOLDER, _SEARCH,
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 1000000000, "default": 0}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
                    {"name": "order", "in": "query", "schema": {"enum": ["asc", "desc"], "default": "asc"}},
                ],
            ),
        },
        "/accounts/{account}/folders/{folder}/wait": {
            "get": _op(
                "Long poll: the next message that arrives and matches `search` (with `after_uid`: or one already there above that UID)",
                {"200": _json(_obj(["timed_out", "message"], timed_out=_BOOL, message={"oneOf": [_SUMMARY, {"type": "null"}]})), **_errors(400, 401, 403, 404)},
                [
                    _ACCOUNT, _FOLDER, _SEARCH,
                    {"name": "timeout", "in": "query", "schema": {"type": "number", "minimum": 0, "maximum": 300, "default": 30}, "description": "Seconds to wait."},
                    {"name": "after_uid", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 4294967295}},
                ],
            ),
        },
        msg: {
            "get": _op("One message, parsed: envelope, decoded headers, text and HTML bodies, attachments with links", {"200": _json(_MESSAGE), **_errors(400, 401, 403, 404)}, mp),
            "delete": _op("Delete (expunge) one message", {"200": _json(_obj(["deleted"], deleted=_INT)), **_errors(400, 401, 403, 404)}, mp),
        },
        msg + "/raw": {"get": _op("The message as stored (message/rfc822)", {"200": {"description": "The message", "content": {"message/rfc822": {"schema": {"type": "string"}}}}, **_errors(400, 401, 403, 404)}, mp)},
        msg + "/parts/{part}": {
            "get": _op(
                "One leaf part, decoded (an attachment download)",
                {"200": {"description": "The part's content, with its own content type (a script, style sheet or WebAssembly type: application/octet-stream)", "content": {"*/*": {"schema": {"type": "string"}}}}, **_errors(400, 401, 403, 404)},
                mp + [{"name": "part", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1, "maximum": 999999}}],
            ),
        },
        msg + "/flags": {
            "put": _op("Set the message's flags", {"200": flags_reply, **_errors(400, 401, 403, 404, 413)}, mp, _json_body(_obj(["flags"], flags=flag_list))),
            "post": _op("Add and/or remove flags", {"200": flags_reply, **_errors(400, 401, 403, 404, 413)}, mp, _json_body(_obj([], add=flag_list, remove=flag_list))),
        },
        "/accounts/{account}/files": {
            "get": _op("The FTP home's top folder", {"200": _json({"$ref": "#/components/schemas/Listing"}), **_errors(401, 403, 404)}, [_ACCOUNT], tag="files"),
        },
        "/accounts/{account}/files/{path}": {
            "get": _op(
                "A file (download) or a folder (listing)",
                {"200": {"description": "The file's bytes, or a folder's listing", "content": {"application/octet-stream": {"schema": {"type": "string"}}, "application/json": {"schema": {"$ref": "#/components/schemas/Listing"}}}}, **_errors(400, 401, 403, 404, 409)},
                [_ACCOUNT, _PATH], tag="files",
            ),
            "put": _op(
                "Upload a file (the body is its bytes; missing folders are made)",
                {"201": _json(_obj(["path", "size"], path=_STR, size=_INT)), **_errors(400, 401, 403, 404, 409)},
                [_ACCOUNT, _PATH], {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string"}}}}, tag="files",
            ),
            "delete": _op("Delete a file or an empty folder", {"200": _json(_obj(["deleted"], deleted=_STR)), **_errors(400, 401, 403, 404, 409)}, [_ACCOUNT, _PATH], tag="files"),
        },
        "/messages": {
            "get": _op(
                "Mailpit-compatible: the caller's INBOX, newest first",
                {"200": _json(_obj(["total", "unread", "count", "messages_count", "start", "tags", "messages"], total=_INT, unread=_INT, count=_INT, messages_count=_INT, start=_INT, tags={"type": "array", "items": _STR}, messages={"type": "array", "items": _MAILPIT_SUMMARY})), **_errors(400, 401)},
                [{"name": "start", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 1000000000}}, {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}}],
                tag="mailpit",
            ),
        },
        "/message/{id}": {
            "get": _op(
                "Mailpit-compatible: one message of the caller's INBOX (ID is its UID)",
                {"200": _json(_obj(["ID", "MessageID", "From", "To", "Cc", "Bcc", "ReplyTo", "ReturnPath", "Subject", "Date", "Tags", "Text", "HTML", "Size", "Inline", "Attachments"], ID=_STR, Subject=_STR, Text=_STR, HTML=_STR, Size=_INT)), **_errors(400, 401, 404)},
                [{"name": "id", "in": "path", "required": True, "schema": _STR}],
                tag="mailpit",
            ),
        },
        "/message/{id}/raw": {
            "get": _op(
                "Mailpit-compatible: the message source",
                {"200": {"description": "The message", "content": {"text/plain": {"schema": {"type": "string"}}}}, **_errors(400, 401, 404)},
                [{"name": "id", "in": "path", "required": True, "schema": _STR}],
                tag="mailpit",
            ),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "twisted-mailhub JSON API",
            "version": "1",
            "description": "Mail and FTP files of the hub's accounts, for programs and tests. Log in with HTTP Basic (address:password) or a bearer token from POST /tokens; --teacher accounts are admins.",
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"basic": []}, {"bearer": []}],
        "components": {
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}, "bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _obj(["error"], error=_obj(["status", "code", "message"], status=_INT, code=_STR, message=_STR)),
                "Address": _obj(["name", "address"], name=_STR, address=_STR),
                "Listing": _obj(["path", "entries"], path=_STR, entries={"type": "array", "items": _obj(["name", "ref", "type", "size", "modified"], name=_STR, ref=_STR, type={"enum": ["file", "folder"]}, size=_INT, modified=_STR)}),
            },
        },
        "paths": paths,
    }
