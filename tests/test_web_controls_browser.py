"""
What a reader sees in a real browser (Chromium, as tests/test_web_browser.py)
of a Subject and file name carrying a bidirectional override, and of a
control character typed into the compose form: shown as an escape, and the
form refused with a reason, never applied or sent.
"""

from __future__ import annotations

import smtplib

from tests.test_web_browser import DRIVER, CHROMIUM, base, browser, login  # noqa: F401 (the browser fixture)
from tests.test_web_controls import bobs_inbox, tricky_message

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

assert CHROMIUM and DRIVER  # test_web_browser skips (or fails under CI) without them


def test_the_reader_sees_a_bidi_override_as_an_escape_not_reversed_text(hub, browser):  # noqa: F811
    with smtplib.SMTP(hub.host, hub.ports["smtp"], timeout=10) as s:
        s.sendmail("mallory@example.net", ["alice@localhost"], tricky_message())
    hub.wait_for_message(to="alice@localhost", timeout=10)
    login(browser, hub, "alice", "secret")
    browser.get(base(hub) + "/mail/INBOX/1")
    WebDriverWait(browser, 15).until(lambda d: d.find_elements(By.TAG_NAME, "h1"))
    title = browser.find_element(By.TAG_NAME, "h1").text
    assert title == "pay \\u2066now\\u2069 \\u202eeton \\x1b[31mred"
    links = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "ul.attachments a")]
    assert links == ["invoice\\u202efdp.exe"]
    sender = browser.find_element(By.CSS_SELECTOR, "dl.facts dd").text
    assert sender == "Bank \\u202eknaB <mallory@example.net>"


def test_an_escape_put_into_the_subject_field_is_refused_with_a_reason_and_the_form_kept(hub, browser):  # noqa: F811
    login(browser, hub, "alice", "secret")
    browser.get(base(hub) + "/compose")
    browser.find_element(By.NAME, "to").send_keys("bob@localhost")
    # What a paste of terminal output puts there: an ESC sequence.
    browser.execute_script("document.querySelector('input[name=subject]').value = 'build \\u001b[31mfailed'")
    browser.find_element(By.NAME, "body").send_keys("see the log")
    browser.find_element(By.CSS_SELECTOR, "form.compose button").click()
    WebDriverWait(browser, 15).until(lambda d: d.find_elements(By.CSS_SELECTOR, "p.error"))
    error = browser.find_element(By.CSS_SELECTOR, "p.error").text
    assert error.startswith("Not sent: The Subject has a control character, U+001B (ESC).")
    assert browser.find_element(By.NAME, "subject").get_attribute("value") == "build [31mfailed"
    assert browser.find_element(By.NAME, "body").get_attribute("value") == "see the log"
    assert bobs_inbox(hub) == 0
    browser.find_element(By.CSS_SELECTOR, "form.compose button").click()
    WebDriverWait(browser, 15).until(lambda d: d.current_url.endswith("/mail/INBOX"))
    assert bobs_inbox(hub) == 1
