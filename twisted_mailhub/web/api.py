# -*- test-case-name: tests.test_api -*-
"""
The JSON API under C{/api/v1/} on the web listeners: mail and FTP files of
an account for programs and tests (the part of GreenMail's and Mailpit's
APIs a test needs), and run-time administration for teacher accounts.

Rules:

 - Every route is a row of L{ROUTES}; the OpenAPI document
   (L{twisted_mailhub.web.openapi}) describes the same rows and a test
   holds the two together.
 - A caller authenticates on every request with HTTP Basic (the account's
   address and password, through the hub's portal and login throttle like
   every protocol) or with a bearer token from C{POST /api/v1/tokens}. No
   cookies; but a browser sends the Basic credentials it cached with any
   page's form, so a POST, PUT or DELETE that a browser says came from
   another origin (C{Origin}, C{Sec-Fetch-Site}: L{site.cross_site}) is
   refused 403 C{cross_site}. Plain HTTP from outside
   C{--trusted-networks} is sent to HTTPS by the web root before it gets
   here.
 - An account sees its own mail and files (C{me} names it in paths); a
   C{--teacher} account is an admin: any account, account changes, purge.
 - Every error is C{{"error": {"status": N, "code": "...", "message":
   "..."}}} with the HTTP status N; bad input is a 4xx, never a 500.
 - The API reads and writes the same store and file system as IMAP and FTP:
   the store's folders (with their change listeners for the long poll) and
   the C{IFTPShell} the realm gives the account.
"""

from __future__ import annotations

import base64
import binascii
import email.errors
import email.policy
import email.utils
import json
import re
import secrets
import time
from email.parser import BytesHeaderParser
from typing import Any, Awaitable, Callable
from urllib.parse import quote

import attr
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols import ftp
from twisted.web import resource, server

from twisted_mailhub.imap.message import split_header
from twisted_mailhub.imap.search import BadSearch, Candidate, compile_query, headers_in_thread, matching_in_thread
from twisted_mailhub.login import ClientPortal
from twisted_mailhub.ftp.vfs import FileSystemUnavailable, StorageFullError
from twisted_mailhub.store.base import expunge_later, set_flags_later
from twisted_mailhub.store.interfaces import INBOX, SYSTEM_FLAGS, InsufficientStorage, NoSuchFolder, NoSuchMessage, StoreError, StoreUnavailable, is_out_of_space
from twisted_mailhub.web import offload
from twisted_mailhub.web.message import decoded, field

log = Logger()

PREFIX = "/api/v1"
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
DEFAULT_WAIT = 30.0
MAX_WAIT = 300.0
# RFC 3501 §9: uniqueid = nz-number, a 32-bit unsigned number: 1 to 4294967295.
MAX_UID = 2**32 - 1
MAX_PART = 999_999
MAX_OFFSET = 10**9
MAX_JSON_BODY = 1024 * 1024


#: Types a page loads and runs or applies from a URL whatever its
#: Content-Disposition (the JavaScript MIME types of WHATWG MIME Sniffing
#: §4.6, CSS, WebAssembly): a message part of one of these is served by
#: the API as application/octet-stream (with nosniff, nothing runs it).
RUNNABLE_TYPES = frozenset(
    {
        "application/ecmascript", "application/javascript", "application/x-ecmascript", "application/x-javascript",
        "text/ecmascript", "text/javascript", "text/javascript1.0", "text/javascript1.1", "text/javascript1.2",
        "text/javascript1.3", "text/javascript1.4", "text/javascript1.5", "text/jscript", "text/livescript",
        "text/x-ecmascript", "text/x-javascript", "text/css", "application/wasm",
    }
)


_FLAG = re.compile(r"^\\?[!#$&'+\-.0-9:<>?@A-Z^_`a-z|~]{1,64}$")
def _usable_name(name: str) -> bool:
    """Whether C{name} can name an account: the hub's one rule (L{accounts.account_name_problem})."""
    from twisted_mailhub.accounts import check_account_name

    try:
        check_account_name(name, "localhost")
    except ValueError:
        return False
    return name == name.strip()


def _cross_site(request: Any) -> bool:
    """L{twisted_mailhub.web.site.cross_site}, imported when a request comes: a hub without a web listener loads no web face (tests/test_e2e_modules_loaded.py), while the component system imports this module for its options."""
    from twisted_mailhub.web.site import cross_site

    return cross_site(request)


class ApiError(Exception):
    """
    An error reply: C{status} (HTTP), C{code} (a stable machine-readable
    word) and C{message} (for people).
    """

    def __init__(self, status: int, code: str, message: str):
        Exception.__init__(self, message)
        self.status = status
        self.code = code
        self.message = message


@attr.s(auto_attribs=True, frozen=True)
class Caller:
    """Who is asking: an account address, and whether it may administer the hub."""

    address: str
    is_admin: bool


@attr.s(auto_attribs=True, frozen=True)
class Route:
    """
    One endpoint: C{method} and C{path} (segments after C{/api/v1/}, with
    C{{name}} parameters; C{{path+}} takes the rest), the handler's name on
    L{ApiResource}, and who may call it: C{"none"}, C{"user"} or
    C{"admin"}.
    """

    method: str
    path: str
    handler: str
    auth: str = "user"

    def match(self, segments: list[str]) -> dict[str, str] | None:
        pattern = self.path.split("/") if self.path else []
        params: dict[str, str] = {}
        for i, part in enumerate(pattern):
            if part == "{path+}":
                if len(segments) <= i:
                    return None
                params["path"] = segments[i:]  # type: ignore[assignment]
                return params
            if i >= len(segments):
                return None
            if part.startswith("{"):
                params[part[1:-1]] = segments[i]
            elif part != segments[i]:
                return None
        return params if len(segments) == len(pattern) else None


_MSG = "accounts/{account}/folders/{folder}/messages/{uid}"
ROUTES = [
    Route("GET", "", "index", "none"),
    Route("GET", "openapi.json", "openapi", "none"),
    Route("POST", "tokens", "token_create"),
    Route("DELETE", "tokens", "token_revoke"),
    Route("GET", "accounts", "accounts_list", "admin"),
    Route("POST", "accounts", "account_add", "admin"),
    Route("DELETE", "accounts/{account}", "account_remove", "admin"),
    Route("POST", "purge", "purge", "admin"),
    Route("GET", "accounts/{account}/folders", "folders"),
    Route("GET", "accounts/{account}/folders/{folder}/messages", "messages"),
    Route("GET", "accounts/{account}/folders/{folder}/wait", "wait"),
    Route("GET", _MSG, "message"),
    Route("DELETE", _MSG, "message_delete"),
    Route("GET", _MSG + "/raw", "message_raw"),
    Route("GET", _MSG + "/parts/{part}", "message_part"),
    Route("PUT", _MSG + "/flags", "flags_set"),
    Route("POST", _MSG + "/flags", "flags_change"),
    Route("GET", "accounts/{account}/files", "files_root"),
    Route("GET", "accounts/{account}/files/{path+}", "file_get"),
    Route("PUT", "accounts/{account}/files/{path+}", "file_put"),
    Route("DELETE", "accounts/{account}/files/{path+}", "file_delete"),
    # Mailpit's read-only shapes, on the caller's INBOX.
    Route("GET", "messages", "mailpit_messages"),
    Route("GET", "message/{id}", "mailpit_message"),
    Route("GET", "message/{id}/raw", "mailpit_raw"),
]


# -- reading messages ---------------------------------------------------------


def _addresses(value: Any, raw: str | None = None) -> list[dict[str, str]]:
    if value is None:
        return []
    pairs = email.utils.getaddresses([str(value)])
    if raw and any(isinstance(d, _BROKEN_BASE64) for d in getattr(value, "defects", ())):
        # A broken encoded word in a display name: email.policy.default
        # drops the name; the webmail shows it as sent (web.message.decoded)
        # and so does the API.
        pairs = [(decoded(name), address) for name, address in email.utils.getaddresses([raw])]
    return [{"name": name, "address": address} for name, address in pairs if address or name]


_BROKEN_BASE64 = (email.errors.InvalidBase64CharactersDefect, email.errors.InvalidBase64PaddingDefect, email.errors.InvalidBase64LengthDefect)


def _header_text(value: Any) -> str | None:
    return None if value is None else " ".join(str(value).split())


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _headers(raw_header: bytes) -> Any:
    return BytesHeaderParser(policy=email.policy.default).parsebytes(raw_header.replace(b"\r\n", b"\n"))


def _safe_header(message: Any, name: str) -> Any:
    try:
        return message.get(name)
    except (ValueError, TypeError, IndexError, AttributeError):
        # A header the email package cannot parse (From: "\ crashes its
        # address parser with an IndexError): its raw text instead, read
        # without the parser (get_all parses again, and raised again: the
        # whole listing was a 500).
        lower = name.lower()
        for key, value in message.raw_items() if hasattr(message, "raw_items") else ():
            if key.lower() == lower:
                return str(value)
        return None


def envelope_json(message: Any) -> dict[str, Any]:
    """The envelope fields of a parsed message (addresses split, words decoded)."""
    get = lambda name: _safe_header(message, name)  # noqa: E731
    raw = lambda name: field(message, name) if hasattr(message, "raw_items") else None  # noqa: E731
    return {
        "date": _header_text(get("Date")),
        # As the webmail shows it (web.message.decoded): a broken encoded
        # word as sent, not what email.policy.default guesses from it
        # ("=?utf-8?B?!!!x?=" was "!!!x" here and as sent on the page).
        "subject": decoded(field(message, "Subject")) if hasattr(message, "raw_items") else _header_text(get("Subject")) or "",
        "from": _addresses(get("From"), raw("From")),
        "sender": _addresses(get("Sender"), raw("Sender")),
        "reply_to": _addresses(get("Reply-To"), raw("Reply-To")),
        "to": _addresses(get("To"), raw("To")),
        "cc": _addresses(get("Cc"), raw("Cc")),
        "bcc": _addresses(get("Bcc"), raw("Bcc")),
        "in_reply_to": _header_text(get("In-Reply-To")),
        "message_id": _header_text(get("Message-ID")),
    }


def summary_json(info: Any, raw_header: bytes, folder: str) -> dict[str, Any]:
    """One message in a listing: index data and its envelope."""
    return {
        "uid": info.uid,
        "folder": folder,
        "flags": sorted(info.flags),
        "size": info.size,
        "received": _iso(info.internal_date),
        **envelope_json(_headers(raw_header)),
    }


def _leaves(message: Any) -> list[Any]:
    return [part for part in message.walk() if not part.is_multipart()]


def _payload(part: Any) -> bytes:
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _part_text(part: Any) -> str | None:
    try:
        return part.get_content()
    except (LookupError, ValueError, AssertionError, KeyError):
        return _payload(part).decode("utf-8", "replace")


def _parse(raw: bytes) -> Any:
    """C{raw} parsed with the default policy, nested parts bounded as the web's (L{msgparse.parse})."""
    from twisted_mailhub.web import message as msgparse

    return msgparse.parse(raw.replace(b"\r\n", b"\n"), email.policy.default)


def _parsed(info: Any, raw: bytes, folder: str, link: str) -> defer.Deferred:
    """
    L{message_json} in a thread: the standard library's parser takes
    seconds over a message of thousands of MIME parts (IMAP's own parser,
    a fraction of that), and the reactor serves every other client
    meanwhile instead of stopping for it.
    """
    return offload.in_thread(message_json, info, raw, folder, link)


def message_json(info: Any, raw: bytes, folder: str, link: str) -> dict[str, Any]:
    """
    One message, parsed: envelope, every header decoded, the text and HTML
    bodies, and its attachments with C{link + "/parts/N"} download links
    (N counts the leaf parts from 1, in order).
    """
    message = _parse(raw)
    text_part = html_part = None
    try:
        text_part = message.get_body(preferencelist=("plain",))
        html_part = message.get_body(preferencelist=("html",))
    except (KeyError, ValueError):
        pass
    attachments = []
    for number, part in enumerate(_leaves(message), 1):
        if part is text_part or part is html_part:
            continue
        filename = None
        try:
            filename = part.get_filename()
        except (ValueError, TypeError):
            pass
        attachments.append(
            {
                "part": number,
                "filename": filename,
                "content_type": part.get_content_type(),
                "disposition": part.get_content_disposition(),
                "content_id": _header_text(_safe_header(part, "Content-ID")),
                "size": len(_payload(part)),
                "url": f"{link}/parts/{number}",
            }
        )
    headers = []
    for name, value in message.raw_items():
        try:
            text = str(message.policy.header_factory(name, value))
        except (ValueError, TypeError, IndexError, AttributeError):
            text = str(value)
        headers.append({"name": name, "value": " ".join(text.split())})
    return {
        "uid": info.uid,
        "folder": folder,
        "flags": sorted(info.flags),
        "size": info.size,
        "received": _iso(info.internal_date),
        "envelope": envelope_json(message),
        "headers": headers,
        "text": _part_text(text_part) if text_part is not None else None,
        "html": _part_text(html_part) if html_part is not None else None,
        "attachments": attachments,
        "raw_url": f"{link}/raw",
    }


def _mailpit_address(entry: dict[str, str]) -> dict[str, str]:
    return {"Name": entry["name"], "Address": entry["address"]}


# -- the resource ---------------------------------------------------------------------


class ApiResource(resource.Resource):
    """
    C{/api/v1}: one leaf resource that routes by L{ROUTES}.
    """

    isLeaf = True

    def __init__(self, hub: Any):
        resource.Resource.__init__(self)
        self.hub = hub
        self.tokens: dict[str, Caller] = {}

    # -- dispatch ----------------------------------------------------------------

    def render(self, request):
        d = defer.Deferred.fromCoroutine(self._respond(request))
        d.addErrback(lambda f: log.failure("API request failed", f))
        return server.NOT_DONE_YET

    async def _respond(self, request) -> None:
        status, body, content_type, extra = 200, b"", b"application/json", {}
        try:
            result = await self._dispatch(request)
            if isinstance(result, Raw):
                status, body, content_type, extra = result.status, result.body, result.content_type, result.headers
            elif isinstance(result, Streamed):
                return
            else:
                status, payload = result if isinstance(result, tuple) else (200, result)
                body = _dumps(payload)
        except ApiError as e:
            status, body = e.status, _dumps({"error": {"status": e.status, "code": e.code, "message": e.message}})
            if e.status == 401:
                extra = {b"www-authenticate": b'Basic realm="mailhub", charset="UTF-8"'}
        except Exception as e:
            # The web face's one error path (errors.refusal): the store or
            # its database down is 503 with Retry-After, a full disk or quota
            # 507, a message or folder gone meanwhile 404, one log line each;
            # only a fault of the hub (500) logs its traceback.
            from twisted_mailhub.web import errors

            said = errors.refusal(request, e)
            if said.code == 500:
                # (in an except clause: the failure logged is this one)
                log.failure("API: {method} {path} failed", method=request.method.decode("ascii", "replace"), path=errors._path(request))
            status, extra = said.code, said.headers
            body = errors.answer(request, said.code, said.message)
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.setResponseCode(status)
        request.setHeader(b"content-type", content_type if content_type != b"application/json" else b"application/json; charset=utf-8")
        for name, value in extra.items():
            request.setHeader(name, value)
        request.setHeader(b"content-length", b"%d" % len(body))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    async def _dispatch(self, request) -> Any:
        # A file name need not be UTF-8 (FTP stores any octets): such a
        # segment is kept as the file system has it (surrogate escapes),
        # for the file routes only; anything else must be UTF-8.
        segments = [s.decode("utf-8", "surrogateescape") for s in request.postpath]
        not_utf8 = any(not s.isascii() and _has_surrogates(s) for s in segments)
        if segments and segments[-1] == "":
            segments = segments[:-1]
        method = request.method.decode("ascii", "replace").upper()
        if method == "HEAD":
            method = "GET"
        allowed = []
        for route in ROUTES:
            params = route.match(segments)
            if params is None:
                continue
            if route.method != method:
                allowed.append(route.method)
                continue
            if method != "GET" and _cross_site(request):
                # A page of another site posting with the Basic credentials
                # the browser cached for this one (a form's text/plain body
                # can be JSON): refused before any login is tried.
                raise ApiError(403, "cross_site", "a page of another site may not change anything here: send the request yourself (no Origin header), or from this site's own pages")
            caller = None
            if route.auth != "none":
                caller = await self._authenticate(request)
                if route.auth == "admin" and not caller.is_admin:
                    raise ApiError(403, "forbidden", "only a teacher (admin) account may do this")
            if not_utf8 and route.handler not in _OCTET_NAMES:
                raise ApiError(400, "bad_path", "the path is not UTF-8")
            request.mailhub_route = route.handler  # for the log, never client data
            handler: Callable[..., Awaitable[Any]] = getattr(self, "api_" + route.handler)
            return await handler(request, caller, **params)
        if not_utf8:
            raise ApiError(400, "bad_path", "the path is not UTF-8")
        if allowed:
            raise ApiError(405, "method_not_allowed", f"use {', '.join(sorted(set(allowed)))} here")
        raise ApiError(404, "not_found", "no such API endpoint; see /api/v1/openapi.json")

    # -- authentication ---------------------------------------------------------------

    async def _authenticate(self, request) -> Caller:
        header = _authorization(request)
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            caller = self.tokens.get(value.strip())
            if caller is None or self.hub.accounts.find(caller.address) is None:
                raise ApiError(401, "unauthorized", "unknown or revoked token")
            return caller
        if scheme.lower() != "basic":
            raise ApiError(401, "unauthorized", "log in with HTTP Basic (address and password) or a bearer token")
        try:
            username, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, ValueError):
            raise ApiError(401, "unauthorized", "the Basic credentials are not base64 of address:password") from None
        if not sep:
            raise ApiError(401, "unauthorized", "the Basic credentials are not base64 of address:password")
        from twisted_mailhub.web.avatar import IWebUser
        from twisted_mailhub.web.site import client_host

        portal = ClientPortal(self.hub.portal, self.hub.throttle, client_host(request), "api")
        try:
            _, avatar, logout = await portal.login(UsernamePassword(username.encode("utf-8"), password.encode("utf-8")), None, IWebUser)
        except (UnauthorizedLogin, UnhandledCredentials):
            raise ApiError(401, "unauthorized", "wrong address or password") from None
        logout()
        return Caller(avatar.address, bool(avatar.is_teacher))

    def _account(self, caller: Caller, name: str) -> str:
        """The address C{name} names (C{me}: the caller's), if the caller may use it."""
        if name == "me":
            return caller.address
        account = self.hub.accounts.find(name) if _usable_name(name) else None
        if account is None:
            if caller.is_admin:
                raise ApiError(404, "no_such_account", "no such account")
            raise ApiError(403, "forbidden", "an account may only use its own mail and files")
        if account.address.lower() != caller.address.lower() and not caller.is_admin:
            raise ApiError(403, "forbidden", "an account may only use its own mail and files")
        return account.address

    # -- small endpoints ---------------------------------------------------------------------

    async def api_index(self, request, caller):
        return {"name": "twisted-mailhub API", "version": 1, "openapi": f"{PREFIX}/openapi.json"}

    async def api_openapi(self, request, caller):
        from twisted_mailhub.web.openapi import document

        return document()

    async def api_token_create(self, request, caller):
        token = secrets.token_urlsafe(32)
        self.tokens[token] = caller
        return 201, {"token": token, "account": caller.address, "admin": caller.is_admin}

    async def api_token_revoke(self, request, caller):
        header = _authorization(request)
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer":
            raise ApiError(400, "not_a_token", "send the token to revoke as Authorization: Bearer TOKEN")
        self.tokens.pop(value.strip(), None)
        return {"revoked": True}

    # -- accounts (admin) ---------------------------------------------------------------------

    async def api_accounts_list(self, request, caller):
        return {"accounts": sorted(a.address for a in self.hub.accounts)}

    async def api_account_add(self, request, caller):
        body = _json_body(request)
        address, password = body.get("address"), body.get("password")
        if not isinstance(address, str):
            raise ApiError(400, "bad_address", "address must be localpart@domain (or a bare local part)")
        from twisted_mailhub.accounts import check_account_name, shown_name

        try:
            # The hub's one rule, as the accounts file and mailhub-admin.
            if address != address.strip():
                raise ValueError(f"not a usable mailbox name: {shown_name(address)}: a blank before or after the name")
            check_account_name(address, self.hub.accounts.default_domain)
        except ValueError as e:
            raise ApiError(400, "bad_address", str(e)) from None
        if not isinstance(password, str) or not password or any(c in password for c in "\r\n\x00"):
            raise ApiError(400, "bad_password", "password must be a non-empty string on one line")
        if any("\ud800" <= c <= "\udfff" for c in password):
            # (JSON's "\udcff": no protocol could ever send it, RFC 8259 §8.2)
            raise ApiError(400, "bad_password", "password must be Unicode text: it holds a lone surrogate (\\ud800-\\udfff)")
        if self.hub.accounts.find(address) is not None:
            raise ApiError(409, "account_exists", "that account exists already")
        # --auth postgresql: a row of user_account, which every hub sees.
        in_table = getattr(self.hub.accounts, "add_to_table", None)
        try:
            if in_table is not None:
                from twisted_mailhub.cluster.accounts import AccountExists

                try:
                    account = await in_table(address, password)
                except AccountExists:
                    raise ApiError(409, "account_exists", "that account exists already") from None
                except StoreError as e:
                    raise self._accounts_unavailable(e) from None
            else:
                account = self.hub.accounts.add(address, password)
        except ValueError as e:
            raise ApiError(400, "bad_address", str(e)) from None
        log.info("API: {admin} added the account {address}", admin=caller.address, address=account.address)
        return 201, {"address": account.address}

    @staticmethod
    def _accounts_unavailable(error: Exception) -> ApiError:
        from twisted_mailhub.store.outage import refused

        refused("api", "account change", error)
        return ApiError(503, "unavailable", "the accounts database cannot be reached now; nothing was changed, try again")

    async def api_account_remove(self, request, caller, account):
        found = self.hub.accounts.find(account) if _usable_name(account) else None
        if found is None:
            raise ApiError(404, "no_such_account", "no such account")
        in_table = getattr(self.hub.accounts, "remove_from_table", None)
        if in_table is not None:
            try:
                await in_table(found.address)
            except StoreError as e:
                raise self._accounts_unavailable(e) from None
        else:
            self.hub.accounts.remove(found.address)
        for token, holder in list(self.tokens.items()):
            if holder.address.lower() == found.address.lower():
                del self.tokens[token]
        log.info("API: {admin} removed the account {address} (its mail and files stay on disk)", admin=caller.address, address=found.address)
        return {"removed": found.address}

    async def api_purge(self, request, caller):
        messages = files = 0
        for account in list(self.hub.accounts):
            mail = self.hub.store.account(account.address)
            for name in mail.folders():
                folder = mail.folder(name)
                uids = [m.uid for m in folder.messages()]
                if uids:
                    messages += len(await expunge_later(folder, uids))
                    await defer.maybeDeferred(folder.flush)
            shell = self._shell(account.address, required=False)
            if shell is not None:
                files += await _empty_tree(shell, [])
        log.info("API: {admin} purged every account ({messages} messages, {files} files)", admin=caller.address, messages=messages, files=files)
        return {"messages": messages, "files": files}

    # -- mail ------------------------------------------------------------------------------

    async def _folder(self, caller: Caller, account: str, folder: str) -> tuple[str, Any]:
        address = self._account(caller, account)
        try:
            mail = self.hub.store.account(address)
            opener = getattr(mail, "select_later", None)
            if opener is not None:
                # PostgreSQL: the folder's row and cache are read in a
                # worker thread (as EXAMINE's: \Recent is left alone), and
                # this request's calls take the cache as current.
                box = (await opener(folder, True))[0]
            else:
                box = mail.folder(folder)
        except (StoreUnavailable, InsufficientStorage):
            raise  # 503 / 507 by the error path (_respond), not "no such folder"
        except (NoSuchFolder, StoreError):
            raise ApiError(404, "no_such_folder", "no such folder") from None
        return address, await _settled(box)

    def _uid(self, value: str) -> int:
        n = whole_number(value, 1, MAX_UID)
        if n is None:
            raise ApiError(400, "bad_uid", f"a message id is its UID, a whole number from 1 to {MAX_UID} (RFC 3501 nz-number)")
        return n

    def _info(self, folder: Any, uid: int) -> Any:
        try:
            return folder.info(uid)
        except (NoSuchMessage, KeyError, IndexError):
            raise ApiError(404, "no_such_message", "no such message") from None

    async def _read(self, folder: Any, uid: int) -> bytes:
        """The stored message (read in a parsing thread when it is a file: L{offload.read_message}); a 404 L{ApiError} if it is gone."""
        try:
            return await offload.read_message(folder, uid)
        except (NoSuchMessage, FileNotFoundError, KeyError):
            raise ApiError(404, "no_such_message", "no such message") from None

    def _search(self, request, folder: Any) -> Callable[[Candidate], bool] | None:
        query = _arg(request, "search")
        if query is None or not query.strip():
            return None
        try:
            return compile_query(folder, query, words=False)
        except BadSearch as e:
            raise ApiError(400, "bad_search", str(e)) from None

    def _matching(self, folder: Any, predicate, infos, wanted=None) -> defer.Deferred:
        """
        The L{MessageInfo}s of C{infos} that C{predicate} takes (all for
        None), read and matched in a worker thread: a Deferred. C{wanted}:
        as L{match_in_thread<twisted_mailhub.imap.search.match_in_thread>}'s
        (L{offload.still_waiting}: no further than the client waits).
        """
        return matching_in_thread(folder, predicate, infos, wanted)

    def _summaries(self, folder: Any, infos: list, name: str) -> defer.Deferred:
        """A Deferred of the summaries of C{infos}, their headers read in a worker thread (L{headers_in_thread})."""
        return headers_in_thread(folder, infos).addCallback(lambda headers: [summary_json(i, h, name) for i, h in zip(infos, headers)])

    async def api_folders(self, request, caller, account):
        address = self._account(caller, account)
        mail = self.hub.store.account(address)
        counts_later = getattr(mail, "counts_later", None)
        if counts_later is not None:
            # PostgreSQL: one query in a worker thread, not three a folder
            # on the reactor's connection.
            rows = await counts_later()
            return {"account": address, "folders": [{"name": n, "messages": c, "unseen": u} for n, c, u in rows]}
        out = []
        for name in mail.folders():
            box = mail.folder(name)
            counts = getattr(box, "counts", None)  # (kept while nothing changed: a poll walks no message)
            if counts is not None:
                count, unseen = counts()
            else:
                infos = box.messages()
                count, unseen = len(infos), sum(1 for i in infos if "\\Seen" not in i.flags)
            out.append({"name": name, "messages": count, "unseen": unseen})
        return {"account": address, "folders": out}

    async def api_messages(self, request, caller, account, folder):
        address, box = await self._folder(caller, account, folder)
        offset = _int_arg(request, "offset", 0, 0, MAX_OFFSET)
        limit = _int_arg(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        order = _arg(request, "order") or "asc"
        if order not in ("asc", "desc"):
            raise ApiError(400, "bad_order", "order is asc (oldest first) or desc")
        found = await self._matching(box, self._search(request, box), box.messages(), offload.still_waiting(request))
        if order == "desc":
            found.reverse()
        page = found[offset : offset + limit]
        return {
            "account": address,
            "folder": box.name,
            "total": len(found),
            "offset": offset,
            "limit": limit,
            "messages": await self._summaries(box, page, box.name),
        }

    async def api_message(self, request, caller, account, folder, uid):
        address, box = await self._folder(caller, account, folder)
        n = self._uid(uid)
        info = self._info(box, n)
        link = f"{PREFIX}/accounts/{quote(address, safe='@')}/folders/{quote(box.name, safe='')}/messages/{n}"
        return await _parsed(info, await self._read(box, n), box.name, link)

    async def api_message_raw(self, request, caller, account, folder, uid):
        address, box = await self._folder(caller, account, folder)
        n = self._uid(uid)
        return Raw(200, await self._read(box, n), b"message/rfc822")

    async def api_message_part(self, request, caller, account, folder, uid, part):
        address, box = await self._folder(caller, account, folder)
        n = self._uid(uid)
        index = whole_number(part, 1, MAX_PART)
        if index is None:
            raise ApiError(400, "bad_part", f"a part is a whole number from 1 to {MAX_PART} (see the message's attachments)")
        raw = await self._read(box, n)
        message = await offload.in_thread(_parse, raw)
        leaves = _leaves(message)
        if index > len(leaves):
            raise ApiError(404, "no_such_part", "no such part")
        chosen = leaves[index - 1]
        try:
            filename = chosen.get_filename() or f"part-{part}"
        except (ValueError, TypeError):
            filename = f"part-{part}"
        safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", filename)[:100] or f"part-{part}"
        content_type = chosen.get_content_type()
        if not re.match(r"^[a-z0-9.+-]+/[a-z0-9.+-]+$", content_type) or content_type in RUNNABLE_TYPES:
            # (a sender's script or style sheet at a URL of this origin is
            # one a page here could load: CSP's 'self' would let it run)
            content_type = "application/octet-stream"
        return Raw(
            200,
            _payload(chosen),
            content_type.encode("ascii"),
            {b"content-disposition": f"attachment; filename=\"{safe_name}\"; filename*=UTF-8''{quote(filename)}".encode("ascii")},
        )

    async def api_message_delete(self, request, caller, account, folder, uid):
        address, box = await self._folder(caller, account, folder)
        n = self._uid(uid)
        self._info(box, n)
        await expunge_later(box, [n])  # (PostgreSQL: in a worker thread)
        await defer.maybeDeferred(box.flush)
        return {"deleted": n}

    async def _flags(self, request, account, folder, uid, caller, mode_of) -> Any:
        address, box = await self._folder(caller, account, folder)
        n = self._uid(uid)
        self._info(box, n)
        body = _json_body(request)
        changes = mode_of(body)
        result = None
        for mode, flags in changes:
            result = await set_flags_later(box, [n], flags, mode)  # (PostgreSQL: in a worker thread)
        await defer.maybeDeferred(box.flush)
        flags = result.get(n) if result else self._info(box, n).flags
        return {"uid": n, "flags": sorted(flags or ())}

    async def api_flags_set(self, request, caller, account, folder, uid):
        return await self._flags(request, account, folder, uid, caller, lambda body: [("replace", _flag_list(body, "flags", required=True))])

    async def api_flags_change(self, request, caller, account, folder, uid):
        def changes(body):
            add, remove = _flag_list(body, "add"), _flag_list(body, "remove")
            if not add and not remove:
                raise ApiError(400, "bad_flags", 'send {"add": [...]} and/or {"remove": [...]}')
            return [("add", add), ("remove", remove)]

        return await self._flags(request, account, folder, uid, caller, changes)

    async def api_wait(self, request, caller, account, folder):
        """
        Long poll: the first message that arrives (or, with C{after_uid},
        is there already above that UID) and matches C{search}.
        """
        address, box = await self._folder(caller, account, folder)
        timeout = _float_arg(request, "timeout", DEFAULT_WAIT, 0.0, MAX_WAIT)
        after = _arg(request, "after_uid")
        if after is not None:
            after_uid = whole_number(after, 0, MAX_UID)
            if after_uid is None:
                raise ApiError(400, "bad_uid", f"after_uid is a whole number from 0 to {MAX_UID} (a UID, RFC 3501 nz-number, or 0)")
        predicate = self._search(request, box)

        if after is not None:
            # (those there already may be many: read and matched in a worker thread)
            there = await self._matching(box, predicate, [i for i in box.messages() if i.uid > after_uid])
            if there:
                return {"timed_out": False, "message": (await self._summaries(box, there[:1], box.name))[0]}
        arrived: defer.Deferred = defer.Deferred()
        # The arrivals are read and matched in a worker thread, a batch at
        # a time and in order (each waits for the one before), so the
        # first match is the first that arrived.
        looked: list[defer.Deferred] = [defer.succeed(None)]

        def changed(change) -> None:
            if arrived.called or not change.added:
                return
            # (the messages that arrived, not a walk over the folder's every message)
            infos = []
            for uid in sorted(set(change.added)):
                try:
                    infos.append(box.info(uid))
                except NoSuchMessage:
                    continue
            if not infos:
                return

            def look(_) -> Any:
                if arrived.called:
                    return None
                return self._matching(box, predicate, infos).addCallback(found)

            def found(matches: list) -> None:
                if matches and not arrived.called:
                    arrived.callback(matches[0])

            def failed(reason) -> None:
                if not arrived.called:
                    arrived.errback(reason)

            looked[0] = looked[0].addCallback(look).addErrback(failed)

        def give_up(_=None) -> None:
            if not arrived.called:
                arrived.callback(None)

        box.add_listener(changed)
        timer = self.hub.reactor.callLater(timeout, give_up)
        request.notifyFinish().addErrback(give_up)
        try:
            match = await arrived
        finally:
            box.remove_listener(changed)
            if timer.active():
                timer.cancel()
        if match is None:
            return {"timed_out": True, "message": None}
        return {"timed_out": False, "message": (await self._summaries(box, [match], box.name))[0]}

    # -- Mailpit's shapes ------------------------------------------------------------------------

    async def api_mailpit_messages(self, request, caller):
        box = await _settled(self.hub.store.account(caller.address).folder(INBOX))
        start = _int_arg(request, "start", 0, 0, MAX_OFFSET)
        limit = _int_arg(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        infos = list(reversed(box.messages()))  # newest first, as Mailpit
        page = infos[start : start + limit]
        out = []
        for info in page:
            raw = await self._read(box, info.uid)
            parsed = await _parsed(info, raw, INBOX, "")
            env = parsed["envelope"]
            out.append(
                {
                    "ID": str(info.uid),
                    "MessageID": (env["message_id"] or "").strip("<>"),
                    "Read": "\\Seen" in info.flags,
                    "From": _mailpit_address(env["from"][0]) if env["from"] else {"Name": "", "Address": ""},
                    "To": [_mailpit_address(a) for a in env["to"]],
                    "Cc": [_mailpit_address(a) for a in env["cc"]],
                    "Bcc": [_mailpit_address(a) for a in env["bcc"]],
                    "ReplyTo": [_mailpit_address(a) for a in env["reply_to"]],
                    "Subject": env["subject"],
                    "Created": parsed["received"],
                    "Tags": [],
                    "Size": info.size,
                    "Attachments": len([a for a in parsed["attachments"] if a["disposition"] != "inline"]),
                    "Snippet": " ".join((parsed["text"] or "").split())[:250],
                }
            )
        return {
            "total": len(infos),
            "unread": sum(1 for i in infos if "\\Seen" not in i.flags),
            "count": len(out),
            "messages_count": len(infos),
            "start": start,
            "tags": [],
            "messages": out,
        }

    async def api_mailpit_message(self, request, caller, id):
        box = await _settled(self.hub.store.account(caller.address).folder(INBOX))
        n = self._uid(id)
        info = self._info(box, n)
        raw = await self._read(box, n)
        parsed = await _parsed(info, raw, INBOX, "")
        env = parsed["envelope"]
        headers = _headers(split_header(raw)[0])

        def attachment(a):
            return {"PartID": str(a["part"]), "FileName": a["filename"] or "", "ContentType": a["content_type"], "ContentID": (a["content_id"] or "").strip("<>"), "Size": a["size"]}

        return_path = _addresses(_safe_header(headers, "Return-Path"))
        return {
            "ID": str(n),
            "MessageID": (env["message_id"] or "").strip("<>"),
            "From": _mailpit_address(env["from"][0]) if env["from"] else {"Name": "", "Address": ""},
            "To": [_mailpit_address(a) for a in env["to"]],
            "Cc": [_mailpit_address(a) for a in env["cc"]],
            "Bcc": [_mailpit_address(a) for a in env["bcc"]],
            "ReplyTo": [_mailpit_address(a) for a in env["reply_to"]],
            "ReturnPath": return_path[0]["address"] if return_path else "",
            "Subject": env["subject"],
            "Date": parsed["received"],
            "Tags": [],
            "Text": parsed["text"] or "",
            "HTML": parsed["html"] or "",
            "Size": info.size,
            "Inline": [attachment(a) for a in parsed["attachments"] if a["disposition"] == "inline"],
            "Attachments": [attachment(a) for a in parsed["attachments"] if a["disposition"] != "inline"],
        }

    async def api_mailpit_raw(self, request, caller, id):
        box = await _settled(self.hub.store.account(caller.address).folder(INBOX))
        return Raw(200, await self._read(box, self._uid(id)), b"text/plain; charset=utf-8")

    # -- FTP files -------------------------------------------------------------------------------

    def _shell(self, address: str, required: bool = True) -> Any:
        from twisted_mailhub.realm import UnknownInterface

        try:
            _, shell, _logout = self.hub.realm.requestAvatar(address, None, ftp.IFTPShell)
        except UnknownInterface:
            if required:
                raise ApiError(404, "no_files", "this hub keeps no files (no FTP file system)") from None
            return None
        return shell

    async def _ftp(self, d: Any) -> Any:
        try:
            return await d
        except ftp.FileNotFoundError:
            raise ApiError(404, "no_such_file", "no such file or folder") from None
        except (ftp.PermissionDeniedError, ftp.AuthorizationError):
            raise ApiError(403, "forbidden", "permission denied") from None
        except ftp.IsADirectoryError:
            raise ApiError(409, "is_a_folder", "that is a folder") from None
        except ftp.IsNotADirectoryError:
            raise ApiError(409, "not_a_folder", "a part of that path is a file") from None
        except ftp.FileExistsError:
            raise ApiError(409, "exists", "that exists already") from None
        except StorageFullError as e:
            raise _no_room(e) from None
        except FileSystemUnavailable:
            raise  # 503 with Retry-After and one log line (_respond), not a 400
        except ftp.FTPCmdError as e:
            text = " ".join(str(e.args[0] if e.args else "").split()) or "the file system refused"
            raise ApiError(400, "file_error", text[:200]) from None

    async def api_files_root(self, request, caller, account):
        return await self._list(self._shell(self._account(caller, account)), [])

    async def _list(self, shell, segments) -> dict[str, Any]:
        entries = await self._ftp(shell.list(segments, ("size", "directory", "modified")))
        return {
            "path": "/".join(segments),
            "entries": [
                {"name": name, "ref": _ref(name), "type": "folder" if directory else "file", "size": size, "modified": _iso(modified)}
                for name, (size, directory, modified) in entries
            ],
        }

    async def api_file_get(self, request, caller, account, path):
        shell = self._shell(self._account(caller, account))
        segments = _segments(path)
        [is_dir] = await self._ftp(shell.stat(segments, ("directory",)))
        if is_dir:
            return await self._list(shell, segments)
        reader = await self._ftp(shell.openForReading(segments))
        consumer = _Collect()
        await reader.send(consumer)
        return Raw(
            200,
            consumer.data(),
            b"application/octet-stream",
            {b"content-disposition": b'attachment; filename="' + re.sub(r"[^A-Za-z0-9._-]", "_", segments[-1]).encode("ascii") + b'"'},
        )

    async def api_file_put(self, request, caller, account, path):
        shell = self._shell(self._account(caller, account))
        segments = _segments(path)
        for i in range(1, len(segments)):
            try:
                await shell.makeDirectory(segments[:i])
            except ftp.FTPCmdError:
                pass  # there already (or the write below says why not)
        request.content.seek(0)
        data = request.content.read()
        writer = await self._ftp(shell.openForWriting(segments))
        try:
            if hasattr(writer, "write"):
                writer.write(data)
            else:
                consumer = await writer.receive()
                consumer.write(data)
                consumer.unregisterProducer()
            await self._ftp(defer.maybeDeferred(writer.close))
        except OSError as e:
            # The upload rules of FTP (ftp/vfs.py): a write that failed
            # leaves nothing under the file's name, and a disk-full one
            # not even the hidden partial file that would keep it full.
            fail = getattr(writer, "fail", None)
            if fail is not None:
                await defer.maybeDeferred(fail, e)
            if is_out_of_space(e):
                raise _no_room(e) from None
            raise
        return 201, {"path": "/".join(segments), "size": len(data)}

    async def api_file_delete(self, request, caller, account, path):
        shell = self._shell(self._account(caller, account))
        segments = _segments(path)
        [is_dir] = await self._ftp(shell.stat(segments, ("directory",)))
        if is_dir:
            await self._ftp(shell.removeDirectory(segments))
        else:
            await self._ftp(shell.removeFile(segments))
        return {"deleted": "/".join(segments)}


def _no_room(error: BaseException) -> ApiError:
    """
    C{507 Insufficient Storage} (RFC 4918 §11.5) for an upload the disk or
    the account's quota had no room for; one log line, no traceback.
    """
    reason = getattr(error, "reason", None) or "no room on the server's disk for that file"
    log.warn("API upload not stored: {reason}", reason=reason)
    return ApiError(507, "insufficient_storage", f"{reason}; nothing was stored")


@attr.s(auto_attribs=True)
class Raw:
    """A reply that is not JSON: C{body} with C{content_type}."""

    status: int
    body: bytes
    content_type: bytes
    headers: dict = attr.ib(factory=dict)


class Streamed:
    """A reply the handler wrote and finished itself."""


class _Collect:
    """An IConsumer that keeps what it is given (a file read through the shell)."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.producer = None

    def registerProducer(self, producer, streaming):
        self.producer = producer
        if not streaming:
            while self.producer is not None:
                producer.resumeProducing()

    def unregisterProducer(self):
        self.producer = None

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def data(self) -> bytes:
        return b"".join(self.parts)


async def _empty_tree(shell: Any, segments: list[str]) -> int:
    removed = 0
    for name, (is_dir,) in await shell.list(segments, ("directory",)):
        child = segments + [name]
        if is_dir:
            removed += await _empty_tree(shell, child)
            await shell.removeDirectory(child)
        else:
            await shell.removeFile(child)
            removed += 1
    return removed


# -- request helpers ----------------------------------------------------------------------


def _authorization(request) -> str:
    """The Authorization header as text (latin-1, as HTTP headers are), stripped."""
    return (request.getHeader(b"authorization") or b"").decode("latin-1").strip()


_SURROGATE = re.compile("[\ud800-\udfff]")


def _dumps(payload: Any) -> bytes:
    """
    C{payload} as JSON text in UTF-8 (RFC 8259 §8.1). An octet of a header
    that is not UTF-8 (kept by the email package as a lone surrogate) is
    U+FFFD, as a decoder shows it: it made the whole reply a 500.
    """
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text).encode("utf-8")


def _arg(request, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "bad_parameter", f"{name} is not UTF-8") from None


async def _settled(box: Any) -> Any:
    """
    C{box} once its UID list is durable: a folder whose list was lost (or
    never made) makes it again at its first open and flushes it off the
    reactor (store/maildir.py C{unsettled()}); its UIDs are told after that.
    """
    unsettled = getattr(box, "unsettled", None)
    pending = unsettled() if unsettled is not None else None
    if pending is not None:
        try:
            await pending
        except OSError:
            raise ApiError(503, "unavailable", "the folder's UID list could not be saved now; nothing was changed, try again") from None
    return box


def _int_arg(request, name: str, default: int, low: int, high: int) -> int:
    value = _arg(request, name)
    if value is None or value == "":
        return default
    number = whole_number(value, low, high)
    if number is None:
        raise ApiError(400, "bad_parameter", f"{name} must be a whole number from {low} to {high}")
    return number


def whole_number(text: str, low: int, high: int) -> int | None:
    """
    The whole number C{text} writes in ASCII digits (leading zeros allowed)
    when it is from C{low} to C{high}, else None. Not C{int()}'s wider
    reading: no sign, blank, C{_} or other scripts' digits, and no
    thousands of digits (CPython's limit raises past 4,300).
    """
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(high)):
        return None
    number = int(digits)
    return number if low <= number <= high else None


def _float_arg(request, name: str, default: float, low: float, high: float) -> float:
    value = _arg(request, name)
    if value is None or value == "":
        return default
    # ASCII digits with an optional fraction: float() would also take
    # "inf", "1e2", "1_0" and other scripts' digits.
    number = float(value) if re.fullmatch(r"[0-9]{1,12}(\.[0-9]{1,12})?", value) else float("nan")
    if not (low <= number <= high):
        raise ApiError(400, "bad_parameter", f"{name} must be a number of seconds from {low:g} to {high:g}")
    return number


def _json_body(request) -> dict[str, Any]:
    request.content.seek(0)
    data = request.content.read(MAX_JSON_BODY + 1)
    if len(data) > MAX_JSON_BODY:
        raise ApiError(413, "too_large", "a JSON body may be at most 1 MiB")
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "bad_json", "the body is not a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "the body is not a JSON object")
    return body


def _flag_list(body: dict[str, Any], key: str, required: bool = False) -> list[str]:
    value = body.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list) or not all(isinstance(f, str) and _FLAG.match(f) for f in value):
        raise ApiError(400, "bad_flags", f"{key} must be a list of IMAP flags (\\Seen, \\Flagged, ... or keywords)")
    known = {f.lower(): f for f in SYSTEM_FLAGS}
    out = []
    for flag in value:
        if flag.startswith("\\"):
            if flag.lower() not in known:
                raise ApiError(400, "bad_flags", f"{flag} is not a system flag (one of {', '.join(SYSTEM_FLAGS)})")
            flag = known[flag.lower()]
        out.append(flag)
    return out


# Routes whose path may name a file by octets that are not UTF-8.
_OCTET_NAMES = frozenset({"file_get", "file_put", "file_delete"})


def _has_surrogates(text: str) -> bool:
    """True when C{text} holds a lone surrogate (an octet that was not UTF-8, kept by surrogateescape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _ref(name: str) -> str:
    """
    A listed file name as a path segment of the API's URLs (RFC 3986
    §2.1 percent-encoding of its octets): C{caf%E9.txt} for a name
    stored in Latin-1, which the C{name} field can only show as
    C{caf\ufffd.txt}. GET, PUT and DELETE take it back as it is.
    """
    return quote(name.encode("utf-8", "surrogateescape"), safe="")


def _segments(path: list[str]) -> list[str]:
    for segment in path:
        # (A backslash is a character of a name like any other, as in FTP
        # and SFTP, which store such names: refused here, a file they made
        # was listed with a ref its GET refused.)
        if segment in ("", ".", "..") or "/" in segment or any(ord(c) < 32 or ord(c) == 127 for c in segment) or len(segment) > 255:
            raise ApiError(400, "bad_path", "a file path is names separated by /, without empty, . or .. parts or control characters")
    return list(path)


def install(hub: Any) -> None:
    """Mount the API at C{api/v1} on the web listeners (see L{twisted_mailhub.web.site}); none without a web listener."""
    from twisted_mailhub.hub import has_web_face

    if not has_web_face(getattr(hub, "options", {})):
        return
    if not hasattr(hub, "web_resources"):
        hub.web_resources = {}
    hub.api = ApiResource(hub)
    hub.web_resources["api/v1"] = hub.api
