"""End to end in headless Chromium (Debian's /usr/bin/chromium; no browser is ever downloaded).

The admin signs in, creates a campaign by uploading a campaign file, adds two labelers; one
labeler ranks with the mouse, the other with the keyboard; the admin sees agreement and exports.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from browser_kit import BROWSER_MARKS, browser, sign_in  # noqa: F401 (fixture)
from conftest import ADMIN_TOKEN, bearer

XSS = "<script>window.__pwned = 1</script>"

pytestmark = BROWSER_MARKS


def _add_labeler(page, name: str) -> str:
    page.fill("#labeler-name", name)
    with page.expect_navigation():
        page.click("#add-labeler button")
    return page.inner_text("#token-value").strip()


def _rank_with_mouse(page) -> None:
    cards = page.locator("li.completion")
    for position in range(cards.count()):
        cards.nth(position).locator(f".rank-btn[data-rank='{position + 1}']").click()
    with page.expect_navigation():
        page.click("#submit")


def _rank_with_keys(page) -> None:
    page.locator("li.completion").first.focus()
    for key in ("1", "2", "3"):
        page.keyboard.press(key)
    with page.expect_navigation():
        page.keyboard.press("Enter")


def _label_all(page, url: str, rank) -> int:
    page.goto(url + "/queue")
    with page.expect_navigation():
        page.click("a.button.primary")
    done = 0
    while page.locator("#done").count() == 0:
        assert page.evaluate("window.__pwned") is None
        assert XSS in page.inner_text("#prompt")  # shown as text
        rank(page)
        done += 1
    return done


def test_admin_and_two_labelers_in_chromium(live_server, browser, tmp_path: Path):
    url = live_server.url
    rows = [{"prompt": f"Question {i} {XSS}", "completions": [f"first {i}", f"second {i}", f"third {i}"]} for i in range(2)]
    campaign_file = tmp_path / "campaign.jsonl"
    campaign_file.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")

    admin = sign_in(browser, url, ADMIN_TOKEN)
    admin.click("text=New campaign")
    admin.fill("#name", "browser")
    admin.select_option("#kind", "rank")
    admin.fill("#labelers_per_item", "2")
    admin.fill("#guidelines", "Rank by helpfulness.")
    admin.set_input_files("#file", str(campaign_file))
    with admin.expect_navigation():
        admin.click("#new-campaign button[type=submit]")
    assert "browser" in admin.inner_text("h1")
    admin.goto(url + "/admin")
    tokens = [_add_labeler(admin, "mouse"), _add_labeler(admin, "keys")]

    mouse = sign_in(browser, url, tokens[0])
    assert _label_all(mouse, url, _rank_with_mouse) == 2
    keys = sign_in(browser, url, tokens[1])
    assert _label_all(keys, url, _rank_with_keys) == 2
    assert keys.locator("#guidelines").inner_text() == "Rank by helpfulness."

    campaign_id = live_server.store.campaign_by_name("browser").id
    admin.goto(f"{url}/admin/campaigns/{campaign_id}")
    assert "4 of 4 labels" in admin.inner_text("#progress")
    assert "Krippendorff" in admin.inner_text("#agreement")
    assert admin.goto(f"{url}/admin").status == 200
    assert mouse.goto(f"{url}/admin").status == 403

    export = httpx.get(f"{url}/api/campaigns/{campaign_id}/export?mode=all", headers=bearer(ADMIN_TOKEN))
    pairs = [json.loads(line) for line in export.text.splitlines()]
    assert len(pairs) == 2 * 2 * 3  # two labelers, two items, three strict pairs each
    assert {p["labeler"] for p in pairs} == {"mouse", "keys"}
    assert all(p["prompt"].endswith(XSS) for p in pairs)
