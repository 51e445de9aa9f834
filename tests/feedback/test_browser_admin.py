"""The admin's side in headless Chromium, at desktop (1280x800) and phone (390x844) sizes.

A team of four labelers with two labelers per item labels a campaign with gold items; one of them
fails the gold items and answers too fast. The admin reads the quality table, filters the review
page down to that labeler's wrong gold answers, and restricts a second campaign to one member, which
the other labelers then no longer see. No admin page is ever wider than the window.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx
import pytest

from browser_kit import BROWSER_MARKS, VIEWPORTS, browser, sign_in  # noqa: F401 (fixture)
from conftest import ADMIN_TOKEN, bearer

TEAM = ["ann", "bob", "cat", "dan"]
LONG = "a long completion that goes on " * 12

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def shots() -> Path:
    """Screenshots go to a temporary folder (printed, so a person can look at them)."""
    folder = Path(tempfile.mkdtemp(prefix="tether-admin-shots-"))
    print(f"screenshots: {folder}")
    return folder


def _team_campaign(url: str) -> tuple[int, dict[str, dict[str, str]]]:
    """A rank campaign of 12 items and 3 gold items (served first: gold rate 1), labeled by four labelers in turn."""
    api = httpx.Client(base_url=url, headers=bearer(ADMIN_TOKEN))
    items = [{"prompt": f"Question {i} <b>bold?</b>", "completions": [f"good {i}", LONG, f"bad {i}"], "id": f"q{i}"} for i in range(12)]
    items += [{"prompt": f"Gold {i}", "completions": ["right", "meh", "wrong"], "id": f"gold{i}", "gold": {"ranking": [1, 2, 3]}} for i in range(3)]
    body = {"name": "team", "kind": "rank", "labelers_per_item": 2, "gold_rate": 1.0, "items": items}
    campaign = api.post("/api/campaigns", json=body).json()
    tokens = {name: bearer(api.post("/api/labelers", json={"name": name}).json()["token"]) for name in TEAM}
    labelers = {name: httpx.Client(base_url=url, headers=tokens[name]) for name in TEAM}
    while labelers:
        for name, labeler in list(labelers.items()):
            task = labeler.get(f"/api/campaigns/{campaign['id']}/next")
            if task.status_code == 204:
                del labelers[name]
                continue
            task = task.json()
            careless = name == "dan"  # ranks everything backwards in half a second
            ranks = [3, 2, 1] if careless else [1, 2, 3]
            unusable = [False, name == "bob", False]
            answer = {"ranks": ranks, "unusable": unusable, "note": f"{name} <i>note</i>", "duration_ms": 500 if careless else 20_000}
            assert labeler.post(f"/api/assignments/{task['assignment_id']}/label", json=answer).status_code == 200
    return campaign["id"], tokens


def _fits(page) -> None:
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"{page.url} is {width[0]} px wide in a {width[1]} px window"


@pytest.mark.parametrize("size", sorted(VIEWPORTS))
def test_admin_quality_review_and_members(live_server, browser, shots, size):
    url = live_server.url
    campaign_id, tokens = _team_campaign(url)
    private = httpx.post(
        f"{url}/api/campaigns", headers=bearer(ADMIN_TOKEN), json={"name": "private", "kind": "pair", "items": [{"prompt": "p", "completions": ["x", "y"]}]}
    ).json()
    admin = sign_in(browser, url, ADMIN_TOKEN, VIEWPORTS[size])

    # the quality table names the labeler who failed the gold items (and answered too fast)
    admin.goto(f"{url}/admin/campaigns/{campaign_id}")
    _fits(admin)
    dan = admin.locator("#quality-table tr[data-labeler='dan']")
    assert "fails gold" in dan.inner_text() and "0.0%" in dan.inner_text() and "fast" in dan.inner_text()
    assert "fails gold" not in admin.locator("#quality-table tr[data-labeler='ann']").inner_text()
    assert "dan" in admin.inner_text("#quality .warning")
    admin.screenshot(path=str(shots / f"campaign-{size}.png"), full_page=True)

    # the review page, reached from the agreement table, filtered with the form
    with admin.expect_navigation():
        admin.click("#agreement table a:text-is('bob')")
    assert admin.locator("tr.match[data-labeler='bob']").count() > 0
    assert admin.locator("tr.match[data-labeler='ann']").count() == 0
    _fits(admin)
    admin.select_option("#f-labeler", "dan")
    admin.check("#f-wrong-gold")
    with admin.expect_navigation():
        admin.click("#filters button[type=submit]")
    cards = admin.locator("section.review-item")
    assert cards.count() == 3 and "3 item(s)" in admin.inner_text("#review-count")
    assert all(cards.nth(i).get_attribute("data-item").startswith("gold") for i in range(3))
    assert "known answer" in cards.first.inner_text() and "gold wrong" in cards.first.inner_text()
    assert "<i>note</i>" in cards.first.inner_text()  # labeler text shown as text
    _fits(admin)
    admin.screenshot(path=str(shots / f"review-dan-{size}.png"), full_page=True)

    admin.uncheck("#f-wrong-gold")
    admin.select_option("#f-labeler", "")
    admin.check("#f-disagreements")
    with admin.expect_navigation():
        admin.click("#filters button[type=submit]")
    disputed = admin.locator("section.review-item")
    assert disputed.count() > 0
    assert all("disagreement" in disputed.nth(i).inner_text() for i in range(disputed.count()))
    _fits(admin)
    admin.screenshot(path=str(shots / f"review-disagreements-{size}.png"), full_page=True)

    # members: the private campaign is only for ann; cat no longer sees it
    cat = sign_in(browser, url, tokens["cat"]["Authorization"].split()[1], VIEWPORTS[size])
    cat.goto(url + "/queue")
    assert "private" in cat.inner_text("main")
    admin.goto(f"{url}/admin/campaigns/{private['id']}")
    admin.select_option("#member", "ann")
    with admin.expect_navigation():
        admin.click("#add-member button")
    assert "ann" in admin.inner_text("#members ul.members")
    _fits(admin)
    admin.screenshot(path=str(shots / f"members-{size}.png"), full_page=True)
    cat.goto(url + "/queue")
    assert "private" not in cat.inner_text("main")
    assert cat.goto(f"{url}/label/{private['id']}").status == 404
    ann = sign_in(browser, url, tokens["ann"]["Authorization"].split()[1], VIEWPORTS[size])
    ann.goto(url + "/queue")
    assert "private" in ann.inner_text("main")

    for path, name in (("/admin", "admin"), ("/admin/campaigns/new", "new-campaign")):
        admin.goto(url + path)
        _fits(admin)
        admin.screenshot(path=str(shots / f"{name}-{size}.png"), full_page=True)
