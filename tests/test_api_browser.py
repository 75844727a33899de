"""
The JSON API in a real browser (Debian's headless Chromium via Selenium):
a page of another site cannot use the HTTP Basic credentials the browser
cached for the hub's API to change anything there.
"""

from __future__ import annotations

import base64
import http.client
import json

import pytest

from tests.test_web_browser import chromium_driver  # (skips, or fails in CI, without chromium)
from tests.web_helpers import serve_page
from twisted_mailhub.testing import Mailhub

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ADMIN = ("teacher@localhost", "chalk")

# What a page of another site can post: a form whose text/plain body is
# JSON (NAME=VALUE with the "=" inside a string), sent as soon as it loads.
ATTACK = """<!doctype html><title>cute cats</title>
<form id="f" method="post" enctype="text/plain" action="{action}">
<input type="hidden" name='{{"address":"mallory@localhost","password":"pw","x":"' value='"}}'>
</form><script>document.getElementById("f").submit();</script>"""


@pytest.fixture(scope="module")
def hub():
    with Mailhub("--teacher", "teacher", accounts=["alice:secret", "teacher:chalk"]) as running:
        yield running


@pytest.fixture
def other_site(hub):
    """A site of its own (http://localhost:PORT, not 127.0.0.1: another site) serving ATTACK."""
    page = ATTACK.format(action=f"http://127.0.0.1:{hub.ports['web']}/api/v1/accounts").encode()

    server = serve_page(page)
    yield f"http://localhost:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def browser():
    with chromium_driver() as driver:
        yield driver


def accounts(hub) -> list[str]:
    connection = http.client.HTTPConnection("127.0.0.1", hub.ports["web"], timeout=15)
    try:
        token = base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
        connection.request("GET", "/api/v1/accounts", headers={"Authorization": "Basic " + token})
        return json.loads(connection.getresponse().read())["accounts"]
    finally:
        connection.close()


def test_a_page_of_another_site_cannot_add_an_account_with_the_cached_credentials(hub, other_site, browser):
    # The teacher looks at the API in this browser: it asks for and caches
    # the Basic credentials (here given in the address, as a user may).
    browser.get(f"http://teacher%40localhost:chalk@127.0.0.1:{hub.ports['web']}/api/v1/accounts")
    assert "alice@localhost" in browser.find_element(By.TAG_NAME, "body").text
    browser.get(other_site)
    WebDriverWait(browser, 15).until(lambda d: d.current_url.startswith(f"http://127.0.0.1:{hub.ports['web']}/api/v1/accounts"))
    answer = browser.find_element(By.TAG_NAME, "body").text
    assert "cross_site" in answer, answer
    assert "mallory@localhost" not in accounts(hub)
