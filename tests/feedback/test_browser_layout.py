"""The labeler's pages in headless Chromium on a desktop (1280x800) and a phone (390x844) viewport.

A K=4 ranking with one 50 KB completion: the page stays short (long completions are scroll boxes),
the answer bar with the ranks and Submit stays in view, the guidelines can be reached, no page is
wider than the screen; ties must be confirmed, a skip can be undone, an answer can be revised, and
Markdown shows formatted (or raw on request) without running anything. Screenshots go to tmp_path.
"""

from __future__ import annotations


import pytest

from browser_kit import BROWSER_MARKS, VIEWPORTS, browser  # noqa: F401 (fixture)
from conftest import ADMIN_TOKEN
from tether.storage import NewItem, TaskKind

XSS = "<script>window.__pwned = 1</script><img src=x onerror='window.__pwned = 2'>[click](javascript:window.__pwned=3)"

pytestmark = BROWSER_MARKS


def long_completion(n_bytes: int = 50_000) -> str:
    """About n_bytes of Markdown: headings, paragraphs, lists and code."""
    part = "## Step {i}\n\nBoil **water**, then add the `egg` and wait. " * 1 + "More words to read here. " * 12 + "\n\n- one\n- two\n\n```python\nprint({i})\n```\n\n"
    text, i = "", 0
    while len(text) < n_bytes:
        text += part.replace("{i}", str(i))
        i += 1
    return text


@pytest.fixture
def labeling(live_server):
    """A K=4 ranking campaign (the first completion 50 KB), Markdown guidelines, and a labeler's token."""
    store = live_server.store
    completions = [long_completion(), "A *short* answer.", "1. first\n2. second\n\n" + XSS, "Plain answer, medium length. " * 20]
    items = [NewItem(prompt=f"How do I boil an egg? (item {i}) {XSS}", completions=completions, external_id=f"q{i}") for i in range(3)]
    guidelines = "# Rules\n\nPrefer **correct** answers.\n\n- then helpful\n- then short"
    campaign = store.create_campaign("eggs", TaskKind.RANK, items, guidelines=guidelines)
    token = store.add_labeler("ann").token
    return live_server.url, campaign.id, token


def _page(browser, url: str, token: str, viewport: dict):
    page = browser.new_context(viewport=viewport).new_page()
    page.set_default_timeout(10_000)
    page.goto(url + "/login")
    assert _overflow(page) <= 0
    page.fill("#token", token)
    with page.expect_navigation():
        page.click("button[type=submit]")
    return page


def _overflow(page) -> int:
    """How many pixels the page is wider than the viewport (0 or less: no horizontal scrolling)."""
    return page.evaluate("document.documentElement.scrollWidth - window.innerWidth")


def _in_viewport(page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    size = page.viewport_size
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= size["height"] and box["x"] >= 0 and box["x"] + box["width"] <= size["width"]


@pytest.mark.parametrize("device", sorted(VIEWPORTS))
def test_long_ranking_fits_the_screen(browser, labeling, device, tmp_path):
    url, campaign_id, token = labeling
    viewport = VIEWPORTS[device]
    page = _page(browser, url, token, viewport)

    # the queue: Start is on screen, nothing wider than the screen
    assert page.url.endswith("/queue")
    assert _overflow(page) <= 0 and _in_viewport(page, "a.button.primary")
    page.screenshot(path=str(tmp_path / f"{device}-queue.png"), full_page=True)

    with page.expect_navigation():
        page.click("a.button.primary")
    assert page.evaluate("window.__pwned") is None
    page.screenshot(path=str(tmp_path / f"{device}-label.png"))
    height = page.evaluate("document.documentElement.scrollHeight")
    assert height <= 2.5 * viewport["height"], f"page is {height} px tall"  # 10,692 / 29,906 px before
    assert _overflow(page) <= 0
    longest = page.locator("li.completion .body").evaluate_all("els => Math.max(...els.map(e => e.getBoundingClientRect().height))")
    assert longest <= 0.6 * viewport["height"]
    assert page.locator("li.completion .expand:visible").count() >= 1  # the long one offers "Show all"

    # Submit is in view and disabled, saying why; the ranks are in the bar
    assert _in_viewport(page, "#task-bar") and _in_viewport(page, "#submit")
    assert page.is_disabled("#submit") and "#1, #2, #3, #4" in page.inner_text("#submit-reason")
    # scrolled to the middle of the completions: the bar is still there
    page.evaluate("window.scrollTo(0, document.querySelector('#completions').offsetTop + 300)")
    assert _in_viewport(page, "#task-bar")

    # the guidelines: a drawer opened from the bar (on the phone, and beside completions side by side)
    assert not page.locator("#guidelines").is_visible() and _in_viewport(page, "#show-guidelines")
    page.click("#show-guidelines")
    assert page.locator("#guidelines").is_visible() and "Prefer correct answers." in page.inner_text("#guidelines")
    assert page.locator("#guidelines h1").count() == 1  # rendered Markdown
    page.screenshot(path=str(tmp_path / f"{device}-guidelines.png"))
    page.click("#close-guidelines")
    assert not page.locator("#guidelines").is_visible()

    # rank from the bar without scrolling to the cards, then submit
    for position, rank in enumerate([2, 1, 4, 3], start=1):
        page.click(f".bar-rank[data-position='{position}'] .bar-rank-btn[data-rank='{rank}']")
    assert page.is_enabled("#submit") and page.inner_text("#submit-reason") == ""
    with page.expect_navigation():
        page.click("#submit")
    assert "q1" in page.inner_text(".view-tools") or "q2" in page.inner_text(".view-tools")

    page.goto(url + "/history")
    assert page.locator("#history tbody tr").count() == 1 and _overflow(page) <= 0
    page.screenshot(path=str(tmp_path / f"{device}-history.png"), full_page=True)

    # the admin's pages fit too: their tables scroll inside their own box
    admin = _page(browser, url, ADMIN_TOKEN, viewport)
    for path in ("/admin", f"/admin/campaigns/{campaign_id}", "/admin/campaigns/new"):
        admin.goto(url + path)
        assert _overflow(admin) <= 0, path
    admin.screenshot(path=str(tmp_path / f"{device}-admin.png"), full_page=True)


def test_markdown_raw_text_and_side_by_side(browser, labeling):
    url, campaign_id, token = labeling
    page = _page(browser, url, token, VIEWPORTS["desktop"])
    page.goto(f"{url}/label/{campaign_id}")
    third = page.locator("li.completion").filter(has_text="second")
    assert third.locator(".md ol li").count() == 2  # a Markdown list
    assert "<script>" in third.inner_text() and third.locator(".md a").count() == 0  # shown as text, the link refused
    third.locator(".md").click()  # clicking the text runs nothing
    assert page.evaluate("window.__pwned") is None

    page.keyboard.press("r")
    assert not third.locator(".md").is_visible() and third.locator(".raw").inner_text().startswith("1. first")
    page.keyboard.press("r")
    assert third.locator(".md").is_visible()

    # side by side by default on a wide screen: the four completions start on one line
    tops = page.locator("li.completion").evaluate_all("els => els.map(e => Math.round(e.getBoundingClientRect().top))")
    assert len(set(tops)) == 1
    page.keyboard.press("c")
    tops = page.locator("li.completion").evaluate_all("els => els.map(e => Math.round(e.getBoundingClientRect().top))")
    assert len(set(tops)) == 4 and page.get_attribute("#toggle-columns", "aria-pressed") == "false"
    # stacked on a wide screen: the guidelines are beside the task, no drawer needed
    assert page.locator("#guidelines").is_visible() and not page.locator("#show-guidelines").is_visible()
    page.reload()  # the choice is remembered
    assert page.get_attribute("#toggle-columns", "aria-pressed") == "false"


def test_ties_skips_and_revisions_with_the_keyboard(browser, labeling):
    url, campaign_id, token = labeling
    page = _page(browser, url, token, VIEWPORTS["desktop"])
    page.goto(f"{url}/label/{campaign_id}")
    first_item = page.inner_text(".view-tools .meta")

    # 1, 1, 1, 1 is not sent as an all-tie ranking without a word
    page.locator("li.completion").first.focus()
    for key in "1111":
        page.keyboard.press(key)
    assert page.is_disabled("#submit") and page.locator("#tie-confirm").is_visible()
    assert "given more than once" in page.inner_text("#submit-reason")
    page.keyboard.press("Enter")
    assert page.url.endswith(f"/label/{campaign_id}")  # nothing sent
    page.keyboard.press("e")  # "these are equally good"
    assert page.is_checked("#tie-ok") and page.is_enabled("#submit")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    second_item = page.inner_text(".view-tools .meta")
    assert second_item != first_item

    # s skips, z takes it back
    with page.expect_navigation():
        page.keyboard.press("s")
    assert page.locator("#skip-notice").is_visible() and page.inner_text(".view-tools .meta") != second_item
    with page.expect_navigation():
        page.keyboard.press("z")
    assert page.inner_text(".view-tools .meta").split(" · ")[0] == second_item.split(" · ")[0]

    # revise the tie into a strict ranking from the history page
    page.goto(url + "/history")
    assert "#1: 1, #2: 1, #3: 1, #4: 1" in page.inner_text("#history")
    with page.expect_navigation():
        page.click("a.revise")
    assert page.locator(".bar-rank-btn[aria-pressed=true]").count() == 4 and page.is_checked("#tie-ok")
    page.locator("li.completion").first.focus()
    for key in "1234":
        page.keyboard.press(key)
    assert page.locator("#tie-confirm").is_hidden()
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url.endswith("/history?revised=" + page.get_attribute("#history tbody tr", "data-assignment"))
    assert "#1: 1, #2: 2, #3: 3, #4: 4" in page.inner_text("#history") and "revised 1×" in page.inner_text("#history")
