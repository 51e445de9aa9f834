"""`tether loop` with people, end to end in headless Chromium: the loop creates the round's ranking campaign and
stops; the admin adds two labellers in the browser; each ranks every item in the browser (one with the mouse, one
with the keyboard); run again, the loop trains on exactly the campaign's consensus of their labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from browser_kit import BROWSER_MARKS, browser, sign_in  # noqa: F401 (fixture)
from conftest import ADMIN_TOKEN
from test_browser import _add_labeler
from test_loop import loop_config

pytestmark = [*BROWSER_MARKS, pytest.mark.slow]


def _ranks_by_sample_order(page) -> list[int]:
    """The rank each card gets (in the order shown) from a preference both people share: the completion sampled
    first is best. The app shows each person the completions in an order of its own, so two people who ranked by
    position would agree only by chance, and their consensus could tie on every pair."""
    indices = [int(i) for i in page.locator("li.completion").evaluate_all("cards => cards.map(c => c.dataset.index)")]
    order = sorted(indices)
    return [order.index(i) + 1 for i in indices]


def _rank_with_mouse(page) -> None:
    cards = page.locator("li.completion")
    for position, rank in enumerate(_ranks_by_sample_order(page)):
        cards.nth(position).locator(f".rank-btn[data-rank='{rank}']").click()
    with page.expect_navigation():
        page.click("#submit")


def _rank_with_keys(page) -> None:
    ranks = _ranks_by_sample_order(page)
    page.locator("li.completion").first.focus()
    for rank in ranks:  # each rank key ranks the focused card and moves the focus to the next
        page.keyboard.press(str(rank))
    with page.expect_navigation():
        page.keyboard.press("Enter")


def _rank_every_item(page, url: str, rank) -> list[str]:
    """Rank every item the queue offers; returns the prompts ranked, in order."""
    page.goto(url + "/queue")
    with page.expect_navigation():
        page.click("a.button.primary")
    prompts = []
    while page.locator("#done").count() == 0:
        prompts.append(page.inner_text("#prompt"))
        rank(page)
    return prompts


def test_people_rank_the_loops_campaign_in_chromium_and_the_loop_trains_on_exactly_their_labels(
        live_server, browser, tiny_data, tiny_models, db_url, tmp_path: Path):  # noqa: F811 (fixture)
    from tether.feedback.export import ExportKind, ExportMode, export_records
    from tether.loop import FeedbackPending, run_loop

    cfg = loop_config(tiny_data, tiny_models, tmp_path / "loop", rounds=1,
                      labeler={"kind": "human", "db": db_url, "labelers_per_item": 2, "url": live_server.url},
                      eval={"judge": tiny_models["rm"], "max_prompts": 4, "generation": {"max_new_tokens": 6}})
    # 1. the loop samples the policy, creates the campaign and stops, saying where to label
    with pytest.raises(FeedbackPending, match=rf"campaign 'loop-round-01' at {live_server.url} has 0 of 4 items"):
        run_loop(cfg)

    # 2. the admin adds two labellers; each ranks all four items in the browser
    admin = sign_in(browser, live_server.url, ADMIN_TOKEN)
    admin.goto(live_server.url + "/admin")
    assert "loop-round-01" in admin.inner_text("body")
    tokens = [_add_labeler(admin, "mouse"), _add_labeler(admin, "keys")]
    ranked = [_rank_every_item(sign_in(browser, live_server.url, token), live_server.url, rank)
              for token, rank in zip(tokens, (_rank_with_mouse, _rank_with_keys))]
    assert [len(r) for r in ranked] == [4, 4] and set(ranked[0]) == set(ranked[1])
    labels = live_server.store.list_labels(live_server.store.campaign_by_name("loop-round-01").id)
    by_item: dict = {}
    for label in labels:
        by_item.setdefault(label.item_id, []).append(label.data.ranks)
    assert all(a == b == [1, 2, 3] for a, b in by_item.values())  # both ranked as they meant to, in either order shown

    # 3. run again: the round's pairs are the consensus export of exactly those labels, and the reward model learns them
    out = run_loop(cfg)
    store = live_server.store
    campaign = store.campaign_by_name("loop-round-01")
    labels = store.list_labels(campaign.id)
    assert sorted(label.labeler_name for label in labels) == ["keys"] * 4 + ["mouse"] * 4
    expected = [(p.prompt, p.chosen, p.rejected) for p in export_records(
        campaign, store.list_items(campaign.id), labels, ExportKind.PAIRS, ExportMode.CONSENSUS)]
    pairs = [json.loads(line) for line in (out / "round-01" / "pairs.jsonl").open()]
    assert expected and [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == expected
    assert {p["campaign"] for p in pairs} == {"loop-round-01"}
    assert str(out / "round-01" / "pairs.jsonl") in (out / "round-01" / "rm" / "config.yaml").read_text()
    assert json.loads((out / "loop.json").read_text())["rounds"][0]["pairs"] == len(expected)
