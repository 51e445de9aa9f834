"""What every Chromium test shares: Debian's /usr/bin/chromium (no browser is ever downloaded), its flags,
the skip marks, the `browser` fixture, the two screen sizes, and signing in through the login page.

A test module takes the marks with `pytestmark = BROWSER_MARKS` and the fixture with
`from browser_kit import browser  # noqa: F401 (fixture)`.
"""

from __future__ import annotations

import os

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}

BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed (apt-get install -y chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def sign_in(browser, url: str, token: str, viewport: dict[str, int] | None = None, timeout_ms: int = 10_000):
    """A fresh context (at `viewport`, or Playwright's default size), signed in with `token`; returns its page."""
    page = browser.new_context(viewport=viewport).new_page()
    page.set_default_timeout(timeout_ms)
    page.goto(url + "/login")
    page.fill("#token", token)
    with page.expect_navigation():
        page.click("button[type=submit]")
    return page
