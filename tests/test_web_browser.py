"""
The web face in a real browser: Debian's headless Chromium driven with
Selenium. Logs in, reads mail sent over SMTP, sends mail that arrives over
IMAP, opens an anatomy with a decoded image, watches an SMTP session typed
over a raw socket appear line by line with its explanations, checks that
hostile mail and protocol lines run nothing and that a student cannot open
another's session or message. Saves the README's screenshots in docs/.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import shutil
import smtplib
import socket
import tempfile
import urllib.parse

import pytest

from tests.hubprocess import ROOT, HubProcess
from tests.test_web_mail import multipart_with_image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)

if not (CHROMIUM and DRIVER):
    if os.environ.get("CI"):
        raise RuntimeError("CI needs chromium and chromium-driver (Debian packages) for the browser tests")
    pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)", allow_module_level=True)

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

DOCS = os.path.join(ROOT, "docs")


def screenshot(driver, name: str) -> None:
    """
    Save the README's picture docs/NAME when it is missing or
    MAILHUB_SCREENSHOTS=1 asks for new ones (so that an ordinary test run
    leaves the checkout as it was); otherwise into a temp folder.
    """
    path = os.path.join(DOCS, name)
    if os.path.exists(path) and os.environ.get("MAILHUB_SCREENSHOTS") != "1":
        path = os.path.join(tempfile.gettempdir(), "mailhub-" + name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert driver.save_screenshot(path)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    data = str(tmp_path_factory.mktemp("browserhub"))
    process = HubProcess(data, ["--teacher", "teacher"], users=("alice:secret", "bob:hungry", "teacher:chalk"))
    process.start()
    yield process
    process.stop()


@contextlib.contextmanager
def chromium_driver(*flags: str):
    """
    A headless chromium under selenium with a fresh profile folder and
    C{flags} added (e.g. C{"--window-size=1280,900"}), pages given 30
    seconds to load: the driver; quit and the profile deleted on exit.
    """
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="mailhub-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
        f"--user-data-dir={profile}", *flags,
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    with chromium_driver("--window-size=1280,900") as driver:
        yield driver


def base(hub) -> str:
    return f"http://127.0.0.1:{hub.ports['web']}"


def login(driver, hub, user: str, password: str) -> None:
    driver.delete_all_cookies()
    driver.get(base(hub) + "/login")
    driver.find_element(By.NAME, "username").send_keys(user)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "form.login button").click()
    WebDriverWait(driver, 15).until(lambda d: "Signed in as" in d.page_source or "/login" not in d.current_url)


def no_alert(driver) -> bool:
    try:
        driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


def wait_text(driver, text: str, timeout: float = 15) -> None:
    WebDriverWait(driver, timeout).until(lambda d: text in d.find_element(By.TAG_NAME, "body").text)


def test_read_a_message_sent_over_smtp(hub, browser):
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as smtp:
        smtp.sendmail("carol@example.org", ["alice@localhost"], b"From: Carol <carol@example.org>\r\nSubject: field trip\r\n\r\nBring a notebook.\r\n")
    login(browser, hub, "alice", "secret")
    browser.get(base(hub) + "/mail/INBOX")
    browser.find_element(By.LINK_TEXT, "field trip").click()
    wait_text(browser, "Bring a notebook.")
    assert browser.find_element(By.TAG_NAME, "h1").text == "field trip"


def test_new_mail_appears_without_a_reload(hub, browser):
    login(browser, hub, "alice", "secret")
    browser.get(base(hub) + "/mail/INBOX")
    marker = browser.find_element(By.TAG_NAME, "h1")
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as smtp:
        smtp.sendmail("carol@example.org", ["alice@localhost"], b"Subject: arrived while watching\r\n\r\nhi\r\n")
    wait_text(browser, "arrived while watching")
    assert marker.is_displayed()  # the same page: no reload happened


def test_a_message_composed_in_the_browser_arrives_over_imap(hub, browser):
    login(browser, hub, "alice", "secret")
    browser.get(base(hub) + "/compose")
    browser.find_element(By.NAME, "to").send_keys("bob@localhost")
    browser.find_element(By.NAME, "subject").send_keys("sent from Chromium")
    browser.find_element(By.NAME, "body").send_keys("typed in a browser")
    browser.find_element(By.CSS_SELECTOR, "form.compose button").click()
    WebDriverWait(browser, 15).until(lambda d: d.current_url.endswith("/mail/INBOX"))
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        imap.login("bob", "hungry")
        imap.select("INBOX")
        typ, data = imap.search(None, "SUBJECT", '"sent from Chromium"')
        [number] = data[0].split()
        typ, fetched = imap.fetch(number, "(BODY.PEEK[TEXT])")
        assert b"typed in a browser" in fetched[0][1]
    finally:
        imap.logout()


def test_the_anatomy_of_a_multipart_message_shows_its_decoded_image(hub, browser):
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as smtp:
        smtp.sendmail("eloise@example.org", ["bob@localhost"], multipart_with_image())
    login(browser, hub, "bob", "hungry")
    browser.get(base(hub) + "/mail/INBOX")
    browser.find_element(By.PARTIAL_LINK_TEXT, "café photo").click()
    browser.find_element(By.LINK_TEXT, "Anatomy").click()
    wait_text(browser, "MIME tree")
    image = browser.find_element(By.CSS_SELECTOR, "img.decoded")
    WebDriverWait(browser, 10).until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) == 1)
    assert "Voilà the picture." in browser.page_source
    screenshot(browser, "anatomy.png")


def test_a_live_smtp_session_typed_over_a_socket_appears_line_by_line_with_explanations(hub, browser):
    login(browser, hub, "teacher", "chalk")
    browser.get(base(hub) + "/console")
    sock = socket.create_connection(("127.0.0.1", hub.ports["smtp"]), timeout=10)
    try:
        sock.recv(1024)
        WebDriverWait(browser, 15).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#sessions tr.open td a"))
        link = [a for a in browser.find_elements(By.CSS_SELECTOR, "#sessions tr.open td a") if a.text.startswith("smtp#")][0]
        link.click()
        wait_text(browser, "220 mail.test ESMTP")
        for line, answer in ((b"HELO classroom.example", "250"), (b"MAIL FROM:<student@example.org>", "250 2.1.0"), (b"RCPT TO:<alice@localhost>", "250 2.1.5"), (b"DATA", "354")):
            sock.sendall(line + b"\r\n")
            sock.recv(1024)
            wait_text(browser, line.decode())
        wait_text(browser, "start mail input; end with <CRLF>.<CRLF>")
        sock.sendall(b"Subject: typed by hand\r\n\r\nhello\r\n.\r\n")
        sock.recv(1024)
        wait_text(browser, "[message: 3 lines")
        assert "RFC 5321 §4.1.1.4" in browser.find_element(By.ID, "lines").text
        screenshot(browser, "console.png")
        sock.sendall(b"QUIT\r\n")
        sock.recv(1024)
        wait_text(browser, "the TCP connection closed")
    finally:
        sock.close()


def test_hostile_subjects_html_and_protocol_lines_run_nothing(hub, browser):
    hostile = (
        b"From: \"<img src=x onerror=alert(1)>\" <evil@example.org>\r\n"
        b"Subject: <script>alert('subject')</script><svg onload=alert(2)>\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="h"\r\n\r\n'
        b"--h\r\nContent-Type: text/html\r\n\r\n"
        b"<p onmouseover=alert(3)>hi</p><script>alert(4)</script><a href='javascript:alert(5)' id=js>x</a>"
        b"<img src=x onerror=alert(6)><svg><script>alert(7)</script></svg><iframe src='javascript:alert(8)'></iframe>"
        b"<div style='width:expression(alert(9))'>css</div><form><input name=p></form>\r\n"
        b"--h\r\nContent-Type: image/svg+xml\r\nContent-Disposition: attachment; filename=\"<script>alert(10)</script>.svg\"\r\n\r\n"
        b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(11)'><script>alert(12)</script></svg>\r\n"
        b"--h--\r\n"
    )
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as smtp:
        smtp.sendmail("evil@example.org", ["alice@localhost"], hostile)
    with socket.create_connection(("127.0.0.1", hub.ports["smtp"]), timeout=10) as sock:
        sock.recv(1024)
        sock.sendall(b"HELO <script>alert(13)</script><img src=x onerror=alert(14)>\r\nQUIT\r\n")
        sock.recv(1024)
    login(browser, hub, "alice", "secret")
    browser.get(base(hub) + "/mail/INBOX")
    assert no_alert(browser)
    browser.find_element(By.PARTIAL_LINK_TEXT, "<script>alert('subject')</script>").click()
    wait_text(browser, "hi")
    assert no_alert(browser)
    assert browser.execute_script("return document.querySelectorAll('.body-html script, .body-html form, .body-html iframe, .body-html [onmouseover], .body-html [onerror]').length") == 0
    assert [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, ".body-html a")] == [None]
    for link in browser.find_elements(By.CSS_SELECTOR, "ul.attachments a"):
        assert link.get_attribute("download")
    browser.find_element(By.LINK_TEXT, "Anatomy").click()
    wait_text(browser, "MIME tree")
    assert no_alert(browser)
    browser.get(base(hub) + "/console")
    sessions = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#sessions td a")]
    shown_as_text = False
    for session_id in sessions:
        browser.get(base(hub) + "/console/session/" + urllib.parse.quote(session_id, safe=""))
        assert no_alert(browser)
        shown_as_text |= "HELO <script>alert(13)</script><img src=x onerror=alert(14)>" in browser.find_element(By.TAG_NAME, "body").text
    assert shown_as_text  # the hostile line is there, as text


def test_a_student_cannot_open_another_students_session_or_message(hub, browser):
    with socket.create_connection(("127.0.0.1", hub.ports["pop3"]), timeout=10, source_address=("127.0.0.2", 0)) as pop:
        reader = pop.makefile("rb")
        reader.readline()
        for line in (b"USER bob", b"PASS hungry", b"QUIT"):
            pop.sendall(line + b"\r\n")
            reader.readline()
    login(browser, hub, "teacher", "chalk")
    browser.get(base(hub) + "/console")
    WebDriverWait(browser, 15).until(lambda d: [a for a in d.find_elements(By.CSS_SELECTOR, "#sessions td a") if a.text.startswith("pop3#")])
    bobs = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#sessions td a") if a.text.startswith("pop3#")][0]
    login(browser, hub, "alice", "secret")
    browser.get(base(hub) + "/console")
    assert bobs not in browser.find_element(By.ID, "sessions").text
    browser.get(base(hub) + "/console/session/" + urllib.parse.quote(bobs, safe=""))
    assert "not one of yours" in browser.page_source and "USER bob" not in browser.page_source
    browser.get(base(hub) + "/mail/INBOX")
    assert "sent from Chromium" not in browser.page_source  # bob's mail


def test_from_a_message_the_reader_goes_to_the_older_one_and_back_to_the_folder(hub, browser):
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as smtp:
        for subject in ("walk first", "walk second"):
            smtp.sendmail("carol@example.org", ["bob@localhost"], f"Subject: {subject}\r\n\r\n{subject} text\r\n".encode())
    login(browser, hub, "bob", "hungry")
    browser.get(base(hub) + "/mail/INBOX")
    browser.find_element(By.LINK_TEXT, "walk second").click()
    wait_text(browser, "walk second text")
    browser.find_element(By.LINK_TEXT, "older ›").click()
    WebDriverWait(browser, 15).until(lambda d: d.find_element(By.TAG_NAME, "h1").text == "walk first")
    browser.find_element(By.LINK_TEXT, "‹ newer").click()
    WebDriverWait(browser, 15).until(lambda d: d.find_element(By.TAG_NAME, "h1").text == "walk second")
    browser.find_element(By.LINK_TEXT, "« INBOX").click()
    WebDriverWait(browser, 15).until(lambda d: d.find_element(By.TAG_NAME, "h1").text == "INBOX")


def test_emptying_the_trash_asks_first_and_then_deletes_for_ever(hub, browser):
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as smtp:
        smtp.sendmail("carol@example.org", ["teacher@localhost"], b"Subject: to be thrown away\r\n\r\nbye\r\n")
    login(browser, hub, "teacher", "chalk")
    browser.get(base(hub) + "/mail/INBOX")
    browser.find_element(By.LINK_TEXT, "to be thrown away").click()
    wait_text(browser, "bye")
    browser.find_element(By.XPATH, "//button[text()='Delete']").click()
    WebDriverWait(browser, 15).until(lambda d: d.current_url.endswith("/mail/INBOX"))
    browser.get(base(hub) + "/mail/Trash")
    browser.find_element(By.XPATH, "//button[text()='Empty Trash']").click()
    WebDriverWait(browser, 10).until(lambda d: not no_alert(d))
    assert "for ever" in browser.switch_to.alert.text
    browser.switch_to.alert.dismiss()
    assert "to be thrown away" in browser.find_element(By.ID, "messages").text
    browser.find_element(By.XPATH, "//button[text()='Empty Trash']").click()
    WebDriverWait(browser, 10).until(lambda d: not no_alert(d))
    browser.switch_to.alert.accept()
    wait_text(browser, "Trash emptied: 1 message deleted for ever.")
    assert "No messages in this folder." in browser.find_element(By.ID, "messages").text
    browser.find_element(By.LINK_TEXT, "Compose").click()
    WebDriverWait(browser, 15).until(lambda d: d.find_elements(By.CSS_SELECTOR, "form.compose"))


def test_a_typed_session_that_logs_in_as_another_student_leaves_the_students_console_at_once(hub, browser):
    # From the address of alice's browser: she sees it while it is
    # anonymous (her own nc would be), not once it is bob's.
    login(browser, hub, "alice", "secret")
    browser.get(base(hub) + "/console")
    WebDriverWait(browser, 15).until(lambda d: "live" in d.find_element(By.TAG_NAME, "body").get_attribute("class"))
    list_tab = browser.current_window_handle
    pop = socket.create_connection(("127.0.0.1", hub.ports["pop3"]), timeout=10)
    try:
        reader = pop.makefile("rb")
        reader.readline()
        WebDriverWait(browser, 15).until(lambda d: [a for a in d.find_elements(By.CSS_SELECTOR, "#sessions tr.open td a") if a.text.startswith("pop3#")])
        session_id = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#sessions tr.open td a") if a.text.startswith("pop3#")][0]
        browser.switch_to.new_window("tab")
        browser.get(base(hub) + "/console/session/" + urllib.parse.quote(session_id, safe=""))
        wait_text(browser, "+OK")
        WebDriverWait(browser, 15).until(lambda d: "live" in d.find_element(By.TAG_NAME, "body").get_attribute("class"))
        for line in (b"USER bob", b"PASS hungry", b"LIST"):
            pop.sendall(line + b"\r\n")
            reader.readline()
        wait_text(browser, "This session logged in as another account")
        assert "USER bob" not in browser.find_element(By.ID, "lines").text
        assert "LIST" not in browser.find_element(By.ID, "lines").text
        browser.close()
        browser.switch_to.window(list_tab)
        WebDriverWait(browser, 15).until(lambda d: session_id not in d.find_element(By.ID, "sessions").text)
    finally:
        pop.close()
    browser.refresh()
    assert session_id not in browser.find_element(By.ID, "sessions").text


def test_an_active_mode_ftp_data_connection_from_port_l_minus_1_is_on_screen(browser, tmp_path):
    import ftplib
    import io

    from tests.test_e2e_ftp import free_port_pair

    port = free_port_pair()
    ftphub = HubProcess(str(tmp_path), ["--ftp", f"tcp:{port}:interface=127.0.0.1"], users=("alice:secret",)).start()
    try:
        f = ftplib.FTP()
        f.connect("127.0.0.1", port, timeout=10)
        f.login("alice", "secret")
        f.set_pasv(False)  # active mode: the server connects to the client
        f.storbinary("STOR lesson.txt", io.BytesIO(b"x" * 1000))
        f.quit()
        login(browser, ftphub, "alice", "secret")
        browser.get(base(ftphub) + "/console")
        WebDriverWait(browser, 15).until(lambda d: [a for a in d.find_elements(By.CSS_SELECTOR, "#sessions td a") if a.text.startswith("ftp#")])
        [link] = [a for a in browser.find_elements(By.CSS_SELECTOR, "#sessions td a") if a.text.startswith("ftp#")]
        link.click()
        wait_text(browser, f"open: server 127.0.0.1:{port - 1} connected to client 127.0.0.1:")
        text = browser.find_element(By.TAG_NAME, "body").text
        assert "(active mode)" in text and "1000 bytes in" in text
        assert "PASS ****" in text and "secret" not in text
    finally:
        ftphub.stop()


def test_the_compose_form_has_one_field_a_row_and_a_wide_text_box(hub, browser):
    # It had no layout: To, Cc, Subject, the text and Attachment ran on in
    # one wrapped line.
    login(browser, hub, "alice", "secret")
    browser.get(base(hub) + "/compose")
    fields = [browser.find_element(By.NAME, name) for name in ("to", "cc", "subject", "body")]
    send = browser.find_element(By.CSS_SELECTOR, "form.compose button")
    tops = [e.location["y"] for e in fields + [send]]
    assert tops == sorted(tops) and len(set(tops)) == len(tops), tops  # one row each, in order
    assert len({e.location["x"] for e in fields[:3]}) == 1  # the boxes line up
    assert fields[3].size["width"] >= fields[0].size["width"] > 300


def test_a_web_only_user_can_move_mail_to_its_special_use_folders_and_sees_when_it_came(hub, browser):
    # An account that never used IMAP had INBOX alone: the Move menu was
    # empty (and Move then a 404); a message without Date: showed none.
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as smtp:
        smtp.sendmail("carol@example.org", ["teacher@localhost"], b"From: carol@example.org\r\nSubject: no date here\r\n\r\nhi\r\n")
    login(browser, hub, "teacher", "chalk")
    browser.get(base(hub) + "/mail/INBOX")
    browser.find_element(By.LINK_TEXT, "no date here").click()
    wait_text(browser, "hi")
    assert "(none given; received " in browser.find_element(By.CSS_SELECTOR, "dl.facts").text
    from selenium.webdriver.support.ui import Select

    menu = Select(browser.find_element(By.NAME, "target"))
    assert {"Sent", "Drafts", "Trash", "Junk", "Archive"} <= {o.text for o in menu.options}
    menu.select_by_visible_text("Archive")
    browser.find_element(By.XPATH, "//button[text()='Move']").click()
    WebDriverWait(browser, 15).until(lambda d: d.current_url.endswith("/mail/INBOX"))
    browser.get(base(hub) + "/mail/Archive")
    assert browser.find_elements(By.LINK_TEXT, "no date here")


def test_a_message_read_elsewhere_turns_from_unread_without_a_reload(hub, browser):
    # The page's poll looked at new and removed messages only.
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as smtp:
        smtp.sendmail("carol@example.org", ["bob@localhost"], b"Subject: read in thunderbird\r\n\r\nhi\r\n")
    login(browser, hub, "bob", "hungry")
    browser.get(base(hub) + "/mail/INBOX")
    row = "//tr[.//a[text()='read in thunderbird']]"
    assert browser.find_element(By.XPATH, row).get_attribute("class") == "unread"
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    imap.login("bob", "hungry")
    imap.select("INBOX")
    uid = imap.uid("SEARCH", None, "SUBJECT", '"read in thunderbird"')[1][0].split()[-1]
    imap.uid("STORE", uid, "+FLAGS", "(\\Seen)")
    imap.logout()
    WebDriverWait(browser, 15).until(lambda d: d.find_element(By.XPATH, row).get_attribute("class") == "read")


def test_a_folder_page_says_when_its_session_has_ended_and_the_back_button_after_log_out_is_the_login_form(hub, browser):
    login(browser, hub, "alice", "secret")
    browser.get(base(hub) + "/mail/INBOX")
    # Logged out in another tab: the open folder page says so (it went on
    # polling in silence, its list no longer kept up to date).
    browser.execute_script(
        "var f = new FormData(); f.append('csrf', document.body.dataset.csrf);"
        "fetch('/logout', {method: 'POST', body: new URLSearchParams(f), credentials: 'same-origin'});"
    )
    WebDriverWait(browser, 15).until(lambda d: d.find_elements(By.ID, "signed-out"))
    assert "Log in again" in browser.find_element(By.ID, "signed-out").text
    # Back to the Log out page after logging out: the login form, not a
    # button that then says "the form had expired".
    login(browser, hub, "alice", "secret")
    browser.get(base(hub) + "/logout")
    browser.find_element(By.CSS_SELECTOR, "main button").click()
    WebDriverWait(browser, 15).until(lambda d: d.current_url.endswith("/login"))
    browser.back()
    WebDriverWait(browser, 15).until(lambda d: "/login" in d.current_url)
    assert browser.find_elements(By.NAME, "password")


def test_an_open_console_says_when_its_session_has_ended_and_stops_showing_sessions(hub, browser):
    login(browser, hub, "teacher", "chalk")
    browser.get(base(hub) + "/console")
    WebDriverWait(browser, 15).until(lambda d: "live" in d.find_element(By.TAG_NAME, "body").get_attribute("class"))
    browser.execute_script(
        "var f = new FormData(); f.append('csrf', document.body.dataset.csrf);"
        "fetch('/logout', {method: 'POST', body: new URLSearchParams(f), credentials: 'same-origin'});"
    )
    WebDriverWait(browser, 15).until(lambda d: d.find_elements(By.ID, "signed-out"))
    assert "no longer shows what happens" in browser.find_element(By.ID, "signed-out").text
    assert "live" not in browser.find_element(By.TAG_NAME, "body").get_attribute("class")


def test_a_message_typed_while_the_session_ended_comes_back_after_the_login_and_is_sent(hub, browser):
    # Sent after the session had ended (a hub restart, a log out in
    # another tab): the POST was redirected to the login page and what was
    # typed was lost.
    login(browser, hub, "alice", "secret")
    browser.get(base(hub) + "/compose")
    browser.find_element(By.NAME, "to").send_keys("bob@localhost")
    browser.find_element(By.NAME, "subject").send_keys("kept through a login")
    browser.find_element(By.NAME, "body").send_keys("a long text\nthat took an hour to write")
    browser.execute_script(
        "var f = new FormData(); f.append('csrf', document.body.dataset.csrf);"
        "return fetch('/logout', {method: 'POST', body: new URLSearchParams(f), credentials: 'same-origin'}).then(r => r.status);"
    )
    browser.find_element(By.CSS_SELECTOR, "form.compose button").click()
    WebDriverWait(browser, 15).until(lambda d: "your message was not sent" in d.page_source)
    browser.find_element(By.NAME, "username").send_keys("alice")
    browser.find_element(By.NAME, "password").send_keys("secret")
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    # (page_source: the login page's body may be read as it goes)
    WebDriverWait(browser, 15).until(lambda d: "here it is as you typed it" in d.page_source)
    assert browser.find_element(By.NAME, "subject").get_attribute("value") == "kept through a login"
    assert browser.find_element(By.NAME, "body").get_attribute("value").replace("\r\n", "\n") == "a long text\nthat took an hour to write"
    browser.find_element(By.CSS_SELECTOR, "form.compose button").click()
    WebDriverWait(browser, 15).until(lambda d: d.current_url.endswith("/mail/INBOX"))
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        imap.login("bob", "hungry")
        imap.select("INBOX")
        typ, data = imap.search(None, "SUBJECT", '"kept through a login"')
        [number] = data[0].split()
        typ, fetched = imap.fetch(number, "(BODY.PEEK[TEXT])")
        assert b"that took an hour to write" in fetched[0][1]
    finally:
        imap.logout()


def test_a_long_source_on_the_anatomy_page_goes_on_a_page_of_lines_at_a_time(hub, browser):
    body = b"".join(b"body line %05d\r\n" % n for n in range(1, 12001))
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as smtp:
        smtp.sendmail("eloise@example.org", ["bob@localhost"], b"From: eloise@example.org\r\nTo: bob@localhost\r\nSubject: long source\r\n\r\n" + body)
    login(browser, hub, "bob", "hungry")
    browser.get(base(hub) + "/mail/INBOX")
    browser.find_element(By.PARTIAL_LINK_TEXT, "long source").click()
    browser.find_element(By.LINK_TEXT, "Anatomy").click()
    wait_text(browser, "MIME tree")
    lines = browser.find_elements(By.CSS_SELECTOR, "pre.source span.line")
    assert len(lines) == 5000
    # (numbered by the style sheet's counter on the first page)
    assert browser.execute_script("return getComputedStyle(arguments[0], '::before').content", lines[-1]) == "counter(line)"
    more = browser.find_element(By.CSS_SELECTOR, "p.more a.next")
    assert more.text.endswith("more lines")
    more.click()
    wait_text(browser, "Lines 5,001 to 10,000")
    first = browser.find_element(By.CSS_SELECTOR, "pre.source span.line")
    assert first.find_element(By.CSS_SELECTOR, "span.n").text == "5001"
    assert browser.execute_script("return getComputedStyle(arguments[0], '::before').content", first) == "none"
    assert first.text.startswith("5001")
