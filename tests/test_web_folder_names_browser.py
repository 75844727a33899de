"""
Folders of every kind of name in Chromium (the folders and the hub of
test_web_folder_names.py): each opens from the folder list with its
message, compose is reachable beside a folder named "compose", Reply and
Move work from and to folders whose names are full of URL characters, and
an open folder's poll finds new mail.
"""

from __future__ import annotations

import imaplib
import urllib.parse

from tests.test_web_browser import base, browser, login, wait_text  # noqa: F401  (browser: the fixture; skips or fails there without Chromium)
from tests.test_web_folder_names import NAMES, folder_path, hub, subject_of, wire  # noqa: F401  (hub: the fixture)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


def test_chromium_opens_every_folder_from_the_folder_list_and_its_message(hub, browser):
    login(browser, hub, "alice", "secret")
    for name in NAMES:
        browser.get(base(hub) + "/mail/INBOX")
        link = [a for a in browser.find_elements(By.CSS_SELECTOR, "nav.folders li a") if a.find_element(By.XPATH, "..").get_attribute("data-folder") == name]
        assert len(link) == 1, name
        link[0].click()
        WebDriverWait(browser, 15).until(lambda d: d.find_element(By.TAG_NAME, "h1").text == name)
        assert urllib.parse.unquote(urllib.parse.urlsplit(browser.current_url).path) == "/mail/" + name
        browser.find_element(By.LINK_TEXT, subject_of(name)).click()
        WebDriverWait(browser, 15).until(lambda d: d.find_element(By.TAG_NAME, "h1").text == subject_of(name))
        assert f"the text in {name}" in browser.find_element(By.TAG_NAME, "body").text


def test_chromium_composes_replies_and_moves_from_folders_of_odd_names(hub, browser):
    login(browser, hub, "alice", "secret")
    # The folder list's Compose link, with a folder named "compose".
    browser.get(base(hub) + folder_path("compose"))
    browser.find_element(By.CSS_SELECTOR, "nav.folders p a").click()
    WebDriverWait(browser, 15).until(lambda d: d.find_elements(By.CSS_SELECTOR, "form.compose"))
    # Reply to a message of a folder whose name is full of URL characters.
    odd = "50% off?#1 & more"
    browser.get(base(hub) + folder_path(odd) + "/1")
    browser.find_element(By.LINK_TEXT, "Reply").click()
    WebDriverWait(browser, 15).until(lambda d: d.find_elements(By.NAME, "subject"))
    assert browser.find_element(By.NAME, "subject").get_attribute("value") == "Re: " + subject_of(odd)
    # Move a message from "why?" to "&" (modified UTF-7 "&-").
    browser.get(base(hub) + folder_path("why?") + "/1")
    Select(browser.find_element(By.NAME, "target")).select_by_value("&")
    browser.find_element(By.XPATH, "//button[text()='Move']").click()
    WebDriverWait(browser, 15).until(lambda d: urllib.parse.unquote(urllib.parse.urlsplit(d.current_url).path) == "/mail/why?")
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        imap.login("alice", "secret")
        typ, data = imap.select(wire("&"), readonly=True)
        assert typ == "OK" and int(data[0]) == 2
        typ, data = imap.select(wire("why?"), readonly=True)
        assert typ == "OK" and int(data[0]) == 0
    finally:
        imap.logout()


def test_chromium_shows_new_mail_in_an_open_folder_of_an_odd_name_without_a_reload(hub, browser):
    login(browser, hub, "alice", "secret")
    name = "#1"
    browser.get(base(hub) + folder_path(name))
    marker = browser.find_element(By.TAG_NAME, "h1")
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        imap.login("alice", "secret")
        imap.append(wire(name), None, None, b"Subject: arrived in #1 while watching\r\n\r\nhi\r\n")
    finally:
        imap.logout()
    wait_text(browser, "arrived in #1 while watching")
    assert marker.is_displayed()  # (the page's poll of /mail/%231/state found it: no reload)
