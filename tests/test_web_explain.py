"""
The console's explanation tables: every command the hub accepts and every
reply code it sends has a one-line explanation with an RFC section.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from twisted.protocols import ftp as twisted_ftp

from twisted_mailhub import pop3
from twisted_mailhub.ftp.server import MailhubFTP
from twisted_mailhub.imap.server import IMAPServer
from twisted_mailhub.smtp.server import MailhubSMTP
from twisted_mailhub.web.explain import explain, table

PACKAGE = Path(__file__).resolve().parent.parent / "twisted_mailhub"


def _source(*paths: str) -> str:
    return "".join((PACKAGE / p).read_text() for p in paths)


def accepted_commands() -> dict[str, set[str]]:
    imap = set()
    for name in dir(IMAPServer):
        for state in ("unauth_", "auth_", "select_", "logout_"):
            if name.startswith(state) and name[len(state):].isupper():
                imap.add(name[len(state):])
    return {
        "smtp": {n[5:] for n in dir(MailhubSMTP) if n.startswith("smtp_")},
        "pop3": set(pop3._KNOWN),
        "imap": imap | {"DONE"},
        "ftp": {n[4:] for n in dir(MailhubFTP) if n.startswith("ftp_")},
    }


def sent_codes() -> dict[str, set[str]]:
    smtp_source = _source("smtp/server.py", "smtp/delivery.py", "hub.py", "filters.py")
    smtp = set(re.findall(r"(?:reply|sendCode|refuse|Verdict|Reject)\(\s*([2-5]\d\d)\b", smtp_source))
    smtp |= set(re.findall(r"b?\"([2-5]\d\d)[ -]", smtp_source))
    ftp_source = _source("ftp/server.py", "ftp/data.py")
    ftp = {v[:3] for v in twisted_ftp.RESPONSE.values() if isinstance(v, str)}
    ftp |= set(re.findall(r"[\"']([1-5]\d\d)[ -]", ftp_source))
    ftp |= set(re.findall(r"(?:multiline|reply_code)\(\s*([1-5]\d\d)\b", ftp_source))
    pop = {"+OK", "-ERR"} | {f"[{c}]" for c in re.findall(r"\[([A-Z][A-Z/-]+)\]", _source("pop3.py"))}
    imap_source = _source("imap/server.py")
    imap = {"OK", "NO", "BAD", "BYE", "+"} | {f"[{c}]" for c in re.findall(r"\[([A-Z][A-Z-]+)[\] ]", imap_source)}
    return {"smtp": smtp, "ftp": ftp, "pop3": pop, "imap": imap}


@pytest.mark.parametrize("protocol", ["smtp", "pop3", "imap", "ftp"])
def test_every_command_the_hub_accepts_has_an_explanation(protocol):
    commands = accepted_commands()[protocol]
    assert commands, "found no commands: the test would prove nothing"
    missing = sorted(commands - set(table(protocol)["commands"]))
    assert missing == [], f"{protocol} commands without an explanation: {missing}"


@pytest.mark.parametrize("protocol", ["smtp", "pop3", "imap", "ftp"])
def test_every_reply_the_hub_sends_has_an_explanation(protocol):
    codes = sent_codes()[protocol]
    assert len(codes) > 3
    missing = sorted(codes - set(table(protocol)["replies"]))
    assert missing == [], f"{protocol} replies without an explanation: {missing}"


@pytest.mark.parametrize("protocol", ["smtp", "pop3", "imap", "ftp"])
def test_every_explanation_names_an_rfc_section(protocol):
    t = table(protocol)
    for group in ("commands", "replies"):
        for key, entry in t[group].items():
            assert entry["text"] and int(entry["rfc"]) > 0 and re.fullmatch(r"[\d.]+", str(entry["section"])), (key, entry)


def test_a_354_is_explained_as_start_mail_input_with_its_rfc_section():
    found = explain("smtp", "S", "354 End data with <CR><LF>.<CR><LF>")
    assert found["text"].startswith("start mail input; end with <CRLF>.<CRLF>")
    assert found["ref"] == "RFC 5321 §4.1.1.4"
    assert found["url"] == "https://www.rfc-editor.org/rfc/rfc5321#section-4.1.1.4"


def test_lines_are_explained_by_their_keyword_in_each_protocol():
    assert explain("submission", "C", "mail from:<a@b>")["ref"] == "RFC 5321 §4.1.1.2"
    assert "extended passive" in explain("ftp", "S", "229 Entering Extended Passive Mode (|||5000|)")["text"]
    assert explain("imaps", "C", "a1 UID FETCH 1:* FLAGS")["text"].startswith("the command that follows uses UIDs")
    assert "FETCH" not in explain("imap", "S", "* 3 EXISTS")["text"] and "messages" in explain("imap", "S", "* 3 EXISTS")["text"]
    tagged = explain("imap", "S", "a2 NO [TRYCREATE] no such mailbox")
    assert "failed" in tagged["text"] and "create it first" in tagged["text"]
    assert explain("pop3", "S", "-ERR [AUTH] wrong password")["ref"] == "RFC 1939 §3, RFC 3206 §4"
    assert explain("smtp", "C", "**** (SASL response)") is None
    assert explain("smtp", "C", "FROB x") is None
