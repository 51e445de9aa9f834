"""Gold items and screening: reading known answers, accuracy with its interval, fast answers, and
exports that leave out gold items, failing labelers and fast answers (API and command line)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from conftest import make_campaign, make_labeler, sign_in
from tether.errors import DataError
from tether.feedback.campaign_file import parse_campaign_text, parse_item
from tether.feedback.cli import main
from tether.feedback.quality import fast_threshold_ms, gold_correct, quality_report, screen_labels, wilson_interval
from tether.feedback.tasks import expand_items
from tether.storage import Campaign, FeedbackStore, Item, Label, LabelData, PairChoice, TaskKind

NOW = datetime(2024, 1, 1, tzinfo=timezone.utc)


# ---- reading known answers ---------------------------------------------------------------------


def test_gold_answers_in_every_accepted_form():
    line = {"prompt": "p", "completions": ["a", "b", "c"]}
    assert parse_item({**line, "gold": {"ranking": [2, 1, 3]}}, TaskKind.RANK).gold == LabelData(ranks=[2, 1, 3])
    assert parse_item({**line, "gold": {"best": 2}}, TaskKind.RANK).gold == LabelData(ranks=[2, 2, 1])
    assert parse_item({**line, "gold": True, "best": 0}, TaskKind.RANK).gold == LabelData(ranks=[1, 2, 2])  # a flag
    assert parse_item({**line, "best": 1}, TaskKind.RANK, gold=True).gold == LabelData(ranks=[2, 1, 2])  # a gold file
    assert parse_item(line, TaskKind.RANK).gold is None
    two = {"prompt": "p", "completions": ["a", "b"]}
    assert parse_item({**two, "gold": {"choice": "B"}}, TaskKind.PAIR).gold == LabelData(choice=PairChoice.B)
    assert parse_item({"prompt": "p", "completions": ["a"], "gold": {"thumb": 0}}, TaskKind.THUMBS).gold == LabelData(thumb=0)


@pytest.mark.parametrize(
    ("kind", "line", "message"),
    [
        (TaskKind.RANK, {"completions": ["a", "b"], "gold": {"ranking": [1, 5]}}, "ranking"),
        (TaskKind.RANK, {"completions": ["a", "b"], "gold": {"ranking": [1, 1]}}, "prefer"),
        (TaskKind.RANK, {"completions": ["a", "b"], "gold": {"best": 2}}, "best"),
        (TaskKind.RANK, {"completions": ["a", "b"], "gold": {"thumb": 1}}, "thumb"),
        (TaskKind.PAIR, {"completions": ["a", "b", "c"], "gold": {"choice": "A"}}, "choice"),
        (TaskKind.THUMBS, {"completions": ["a", "b"], "gold": {"thumb": 1}}, "one completion"),
        (TaskKind.THUMBS, {"completions": ["a"], "gold": {"thumb": 2}}, "thumb"),
        (TaskKind.REDTEAM, {"gold": {"best": 0}}, "red-team"),
        (TaskKind.RANK, {"completions": ["a", "b"]}, "known answer"),
    ],
)
def test_bad_gold_answers_name_the_key(kind, line, message):
    text = json.dumps({"prompt": "p", **line})
    with pytest.raises(DataError, match=f"gold.jsonl:1: .*{message}"):
        parse_campaign_text(text, kind, source="gold.jsonl", gold=True)


def test_split_pair_gold_keeps_only_the_pairs_the_answer_orders():
    [item] = parse_campaign_text(json.dumps({"prompt": "p", "completions": ["a", "b", "c"], "id": "g", "gold": {"best": 1}}), TaskKind.PAIR)
    pairs = {i.external_id: i.gold for i in expand_items(TaskKind.PAIR, [item])}
    assert pairs == {"g:0-1": LabelData(choice=PairChoice.B), "g:1-2": LabelData(choice=PairChoice.A)}  # 0-2: not known


# ---- scoring -----------------------------------------------------------------------------------


def test_wilson_interval_matches_hand_computed_values():
    low, high = wilson_interval(0, 3)
    assert low == 0.0 and high == pytest.approx(0.5615, abs=1e-4)
    low, high = wilson_interval(1, 1)
    assert low == pytest.approx(0.2065, abs=1e-4) and high == 1.0
    low, high = wilson_interval(8, 10)
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    assert wilson_interval(0, 0) is None


def test_gold_correct_by_kind():
    known = LabelData(ranks=[1, 2, 3])
    assert gold_correct(TaskKind.RANK, known, LabelData(ranks=[1, 2, 3]))
    assert not gold_correct(TaskKind.RANK, known, LabelData(ranks=[1, 3, 2]))
    best = LabelData(ranks=[2, 1, 2])  # only "#1 is best" is known
    assert gold_correct(TaskKind.RANK, best, LabelData(ranks=[3, 1, 2]))
    assert not gold_correct(TaskKind.RANK, best, LabelData(ranks=[1, 1, 2]))  # a tie is not a preference
    assert gold_correct(TaskKind.PAIR, LabelData(choice=PairChoice.A), LabelData(choice=PairChoice.A))
    assert not gold_correct(TaskKind.PAIR, LabelData(choice=PairChoice.A), LabelData(choice=PairChoice.TIE))
    assert not gold_correct(TaskKind.THUMBS, LabelData(thumb=1), LabelData(thumb=0))


def _campaign(fast_ms=None) -> Campaign:
    return Campaign(id=1, name="c", kind=TaskKind.RANK, guidelines="", labelers_per_item=2, status="active", model_path=None, created_at=NOW, fast_ms=fast_ms)


def _item(item_id: int, gold: LabelData | None = None, text: str = "p") -> Item:
    return Item(id=item_id, campaign_id=1, position=item_id, external_id=f"x{item_id}", prompt=text, completions=["a", "b"], model=None, meta=None, gold=gold)


def _label(item_id: int, name: str, ranks: list[int], ms: int | None) -> Label:
    return Label(id=item_id * 10 + len(name), campaign_id=1, item_id=item_id, labeler_id=len(name), labeler_name=name,
                 data=LabelData(ranks=ranks, duration_ms=ms), created_at=NOW, updated_at=NOW)


def test_fast_threshold_grows_with_text_or_is_the_setting():
    short, long = _item(1, text="p"), _item(2, text="p" * 1000)
    assert fast_threshold_ms(long, None) - fast_threshold_ms(short, None) == 10 * 999
    assert fast_threshold_ms(long, 1500) == 1500


def test_quality_report_and_screening():
    gold = LabelData(ranks=[1, 2])
    items = [_item(1, gold), _item(2, gold), _item(3, gold), _item(4), _item(5)]
    labels = []
    for i in (1, 2, 3):
        labels += [_label(i, "ann", [1, 2], 9000), _label(i, "dan", [2, 1], 300)]
    labels += [_label(4, "ann", [1, 2], 9000), _label(4, "dan", [2, 1], 300), _label(5, "ann", [1, 2], 100), _label(5, "bo", [1, 2], None)]
    report = quality_report(_campaign(), items, labels)
    rows = {row.name: row for row in report.labelers}
    assert report.n_gold_items == 3
    assert (rows["ann"].n_correct, rows["ann"].n_gold, rows["ann"].fails_gold) == (3, 3, False)
    assert (rows["dan"].n_correct, rows["dan"].accuracy, rows["dan"].fails_gold, rows["dan"].fast) == (0, 0.0, True, True)
    assert rows["dan"].high == pytest.approx(0.5615, abs=1e-4)
    assert (rows["ann"].n_fast, rows["ann"].n_timed, rows["ann"].fast) == (1, 5, False)
    assert rows["bo"].accuracy is None and rows["bo"].n_timed == 0

    everyone = screen_labels(_campaign(), items, labels)
    assert {lab.item_id for lab in everyone.labels} == {4, 5}  # gold labels never leave
    strict = screen_labels(_campaign(), items, labels, min_gold_accuracy=0.5, exclude_fast=True)
    assert strict.dropped_labelers == ["dan"] and strict.n_fast_dropped == 1
    assert sorted((lab.item_id, lab.labeler_name) for lab in strict.labels) == [(4, "ann"), (5, "bo")]  # bo has no gold: kept


# ---- through the API and the command line ------------------------------------------------------


def _label_all(client, headers, campaign_id, ranks_for, ms):
    while (task := client.get(f"/api/campaigns/{campaign_id}/next", headers=headers)).status_code == 200:
        task = task.json()
        body = {"ranks": ranks_for(task), "duration_ms": ms}
        assert client.post(f"/api/assignments/{task['assignment_id']}/label", json=body, headers=headers).status_code == 200


def test_gold_through_the_api_quality_and_filtered_export(client, admin):
    items = [{"prompt": f"q{i}", "completions": ["good", "bad"], "id": f"q{i}"} for i in range(4)]
    items += [{"prompt": f"gold {i}", "completions": ["right", "wrong"], "id": f"g{i}", "gold": {"best": 0}} for i in range(3)]
    campaign = make_campaign(client, admin, items=items, labelers_per_item=2, gold_rate=1.0)
    assert campaign["gold_rate"] == 1.0 and campaign["n_items"] == 7
    ann, dan = make_labeler(client, admin, "ann"), make_labeler(client, admin, "dan")

    def by_text(good_first):
        return lambda task: [1 if (c["text"] in ("good", "right")) == good_first else 2 for c in sorted(task["completions"], key=lambda c: c["index"])]

    _label_all(client, ann, campaign["id"], by_text(True), 30_000)
    _label_all(client, dan, campaign["id"], by_text(False), 200)
    quality = client.get(f"/api/campaigns/{campaign['id']}/quality", headers=admin).json()
    rows = {row["name"]: row for row in quality["labelers"]}
    assert quality["n_gold_items"] == 3
    assert (rows["ann"]["n_correct"], rows["ann"]["n_gold"]) == (3, 3) and not rows["ann"]["fails_gold"]
    assert (rows["dan"]["n_correct"], rows["dan"]["n_gold"]) == (0, 3) and rows["dan"]["fails_gold"] and rows["dan"]["fast"]
    assert client.get(f"/api/campaigns/{campaign['id']}/progress", headers=admin).json()["n_items"] == 4

    def export(**params):
        response = client.get(f"/api/campaigns/{campaign['id']}/export", params={"mode": "all", **params}, headers=admin)
        assert response.status_code == 200, response.text
        return [json.loads(line) for line in response.text.splitlines()]

    everything = export()
    assert len(everything) == 8 and not any(row["prompt"].startswith("gold") for row in everything)
    assert {row["labeler"] for row in export(min_gold_accuracy=0.5)} == {"ann"}
    assert {row["labeler"] for row in export(exclude_fast="true")} == {"ann"}
    assert client.get(f"/api/campaigns/{campaign['id']}/export", params={"min_gold_accuracy": 2}, headers=admin).status_code == 422
    # agreement leaves the gold items out (they are judged by the known answer)
    assert client.get(f"/api/campaigns/{campaign['id']}/agreement", headers=admin).json()["n_items_multi"] == 4


def test_gold_bad_answer_in_api_is_a_422_naming_the_item(client, admin):
    items = [{"prompt": "p", "completions": ["a", "b"], "gold": {"best": 7}}]
    response = client.post("/api/campaigns", json={"name": "c", "kind": "rank", "items": items}, headers=admin)
    assert response.status_code == 422 and "items[0]" in response.text and "best" in response.text


def test_cli_import_gold_file_quality_and_screened_export(tmp_path, db_url, capsys):
    campaign = tmp_path / "c.jsonl"
    campaign.write_text("\n".join(json.dumps({"prompt": f"q{i}", "completions": ["good", "bad"]}) for i in range(3)), encoding="utf-8")
    gold = tmp_path / "gold.jsonl"
    gold.write_text("\n".join(json.dumps({"prompt": f"g{i}", "completions": ["right", "wrong"], "best": 0}) for i in range(2)), encoding="utf-8")
    args = ["--db", db_url]
    assert main(["import", str(campaign), "--name", "c", "--gold", str(gold), "--gold-rate", "1", "--fast-ms", "1000", "--labelers-per-item", "2", *args]) == 0
    assert "5 items (2 gold)" in capsys.readouterr().out
    assert main(["import", str(campaign), "--name", "bad", "--gold-rate", "2", *args]) == 1
    assert "--gold-rate" in capsys.readouterr().err
    store = FeedbackStore(db_url)
    ann, dan = store.add_labeler("ann").labeler, store.add_labeler("dan").labeler
    c = store.campaign_by_name("c")
    assert (c.gold_rate, c.fast_ms) == (1.0, 1000)
    for labeler, right in ((ann, True), (dan, False)):
        while (task := store.next_task(c.id, labeler.id)) is not None:
            good = task.item.completions[0] in ("good", "right")
            ranks = [1, 2] if good == right else [2, 1]
            store.submit_label(task.assignment_id, labeler.id, LabelData(ranks=ranks, duration_ms=5000 if right else 300))
    assert main(["quality", "--campaign", "c", *args]) == 0
    out = capsys.readouterr().out
    assert "gold items: 2" in out and "dan" in out and "FAILS GOLD" not in out.split("dan")[0]
    assert "0/2" in out and "FAST" in out
    path = tmp_path / "out.jsonl"
    assert main(["export", "--campaign", "c", "--out", str(path), "--mode", "all", "--min-gold-accuracy", "0.5", *args]) == 0
    assert "left out (gold accuracy below 0.5): dan" in capsys.readouterr().out
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["labeler"] for r in rows} == {"ann"} and not any(r["prompt"].startswith("g") for r in rows)
    assert main(["export", "--campaign", "c", "--out", str(path), "--mode", "all", "--exclude-fast", *args]) == 0
    assert "left out 3 implausibly fast" in capsys.readouterr().out


def test_gold_rate_and_fast_threshold_are_settings(client, admin):
    campaign = make_campaign(client, admin, fast_ms=800)
    assert campaign["fast_ms"] == 800 and campaign["gold_rate"] == 0.1
    patched = client.patch(f"/api/campaigns/{campaign['id']}", json={"gold_rate": 0.3, "fast_ms": 0}, headers=admin).json()
    assert (patched["gold_rate"], patched["fast_ms"]) == (0.3, None)
    assert client.patch(f"/api/campaigns/{campaign['id']}", json={"gold_rate": 1.5}, headers=admin).status_code == 422
    sign_in(client, admin["Authorization"].split()[1])
    response = client.post(f"/admin/campaigns/{campaign['id']}", data={"gold_rate": "0.2", "fast_ms": "1200"}, follow_redirects=False)
    assert response.status_code == 303
    quality = client.get(f"/api/campaigns/{campaign['id']}/quality", headers=admin).json()
    assert (quality["gold_rate"], quality["fast_ms"]) == (0.2, 1200)
    assert "under 1200 ms" in client.get(f"/admin/campaigns/{campaign['id']}").text
