"""
One realm, one store (design.md, rule 1): an account added once works on
every protocol, and what one protocol writes the others see.
"""

import ftplib
import imaplib
import io
import poplib
import smtplib

from tests.hubprocess import HubProcess, client_context

MESSAGE = (
    b"From: carol@example.org\r\n"
    b"To: dave@example.org\r\n"
    b"Subject: shared realm\r\n"
    b"\r\n"
    b"one account, every protocol\r\n"
)


def test_an_account_given_once_works_on_every_protocol(start_hub, tmp_path):
    accounts = tmp_path / "accounts"
    accounts.write_text("dave@example.org:pw-dave\n")
    hub: HubProcess = start_hub("--domain", "example.org", "--auth", f"file:{accounts}", users=())

    # SMTP submission, AUTH PLAIN after STARTTLS, as dave.
    with smtplib.SMTP("127.0.0.1", hub.ports["submission"], timeout=10) as smtp:
        smtp.starttls(context=client_context())
        smtp.login("dave", "pw-dave")
        smtp.sendmail("dave@example.org", ["dave@example.org"], MESSAGE)

    # POP3 sees the message, byte for byte after the headers the hub adds.
    pop = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=10)
    try:
        pop.user("dave@example.org")
        pop.pass_("pw-dave")
        count, _ = pop.stat()
        assert count == 1
        body = b"\r\n".join(pop.retr(1)[1]) + b"\r\n"
        assert body.endswith(MESSAGE)
    finally:
        pop.quit()

    # IMAP sees the same message, and a flag set here is on disk for all.
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        imap.login("dave", "pw-dave")
        imap.select("INBOX")
        typ, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[])")
        assert typ == "OK"
        assert data[0][1].endswith(MESSAGE)
        typ, _ = imap.uid("STORE", "1:*", "+FLAGS", "(\\Flagged)")
        assert typ == "OK"
    finally:
        imap.logout()
    cur = tmp_path / "hub0" / "mail" / "example.org" / "dave" / "cur"
    [stored] = list(cur.iterdir())
    assert stored.name.split(":2,")[1].count("F") == 1, stored.name

    # FTP logs in with the same password, into the account's own home.
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", hub.ports["ftp"], timeout=10)
    try:
        ftp.login("dave@example.org", "pw-dave")
        ftp.storbinary("STOR note.txt", io.BytesIO(b"from ftp\n"))
        assert "note.txt" in ftp.nlst()
    finally:
        ftp.quit()
    assert (tmp_path / "hub0" / "ftp" / "example.org" / "dave" / "note.txt").read_bytes() == b"from ftp\n"

    # A wrong password fails everywhere alike.
    pop = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=30)
    try:
        pop.user("dave")
        try:
            pop.pass_("wrong")
            raise AssertionError("wrong password accepted over POP3")
        except poplib.error_proto as e:
            assert str(e).startswith("b'-ERR")
    finally:
        pop.close()
