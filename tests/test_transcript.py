# -*- test-case-name: tests.test_transcript -*-
"""
Session transcripts: C:/S: lines with a connection id, secrets masked.
"""

from __future__ import annotations

import base64
import re
import smtplib

from twisted.logger import globalLogPublisher

from tests.hubprocess import client_context
from twisted_mailhub.transcript import Transcriber



def test_transcriber_masks_auth_and_summarises_data():
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        t = Transcriber("smtp#99")
        t.server_bytes(b"220 mail.test ESMTP\r\n")
        t.client_bytes(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")
        t.server_bytes(b"235 2.7.0 Authentication successful\r\n")
        t.client_bytes(b"AUTH LOGIN\r\n")
        t.server_bytes(b"334 VXNlcm5hbWU6\r\n")
        t.client_bytes(b"YWxpY2U=\r\n")
        t.server_bytes(b"334 UGFzc3dvcmQ6\r\n")
        t.client_bytes(b"c2VjcmV0\r\n")
        t.server_bytes(b"535 5.7.8 Error: authentication failed\r\n")
        t.client_bytes(b"DATA\r\n")
        t.server_bytes(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        t.client_bytes(b"Subject: hi\r\n\r\nprivate words\r\n.\r\n")
    finally:
        globalLogPublisher.removeObserver(events)
    lines = [f"{e['who']}: {e['line']}" for e in events if e.get("cid") == "smtp#99"]
    assert lines == [
        "S: 220 mail.test ESMTP",
        "C: AUTH PLAIN ****",
        "S: 235 2.7.0 Authentication successful",
        "C: AUTH LOGIN",
        "S: 334 VXNlcm5hbWU6",
        "C: **** (SASL response)",
        "S: 334 UGFzc3dvcmQ6",
        "C: **** (SASL response)",
        "S: 535 5.7.8 Error: authentication failed",
        "C: DATA",
        "S: 354 End data with <CR><LF>.<CR><LF>",
        "C: [message: 3 lines, 30 octets]",
        "C: .",
    ]


def test_transcript_of_a_real_session_masks_the_auth_secret(start_hub):
    hub = start_hub("--transcript")
    secret = base64.b64encode(b"\0alice\0secret").decode()
    with smtplib.SMTP_SSL("127.0.0.1", hub.ports["smtps"], context=client_context()) as c:
        c.ehlo("transcribed.example")
        c.docmd("AUTH", "PLAIN " + secret)
        c.sendmail("alice@localhost", ["bob@localhost"], b"Subject: t\r\n\r\nnot in the log\r\n")
    m = hub.wait_for_log(r"(smtps#\d+) C: AUTH PLAIN \*\*\*\*")
    cid = re.escape(m.group(1))
    hub.wait_for_log(cid + r" S: 250 2\.0\.0 Ok: queued as \w+")
    log = hub.log
    assert re.search(cid + r" S: 220 mail\.test ESMTP", log)
    assert re.search(cid + r" C: ehlo transcribed\.example", log)
    assert re.search(cid + r" S: 235 2\.7\.0 Authentication successful", log)
    assert re.search(cid + r" C: \[message: \d+ lines, \d+ octets\]", log)
    assert secret not in log and "not in the log" not in log
