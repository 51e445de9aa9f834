"""Export formats: what `tether rm` and `tether dpo` read."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from tether.errors import ConfigError
from tether.feedback.export import ExportKind, ExportMode, export_records, record_json, write_jsonl
from tether.storage import Campaign, Item, Label, LabelData, PairChoice, TaskKind

NOW = datetime(2024, 1, 1, tzinfo=timezone.utc)


def _campaign(kind: TaskKind) -> Campaign:
    return Campaign(id=1, name="camp", kind=kind, guidelines="", labelers_per_item=3, status="active", model_path=None, created_at=NOW)


def _item(completions: list[str], item_id: int = 1, prompt: str = "P") -> Item:
    return Item(id=item_id, campaign_id=1, position=item_id, external_id=f"x{item_id}", prompt=prompt, completions=completions, model=None, meta=None)


def _label(labeler: str, item_id: int = 1, **data) -> Label:
    return Label(id=0, campaign_id=1, item_id=item_id, labeler_id=0, labeler_name=labeler, data=LabelData(**data), created_at=NOW, updated_at=NOW)


def _rows(records) -> list[dict]:
    return [json.loads(record_json(r)) for r in records]


def test_rank_consensus_pairs_follow_borda_with_margins():
    labels = [_label("a", ranks=[1, 2, 3]), _label("b", ranks=[2, 1, 3]), _label("c", ranks=[1, 3, 2])]
    rows = _rows(export_records(_campaign(TaskKind.RANK), [_item(["x", "y", "z"])], labels))
    # Borda scores 5, 3, 1 over 3 rankings of 3 completions: margins (5-3)/6, (5-1)/6, (3-1)/6
    assert [(r["chosen"], r["rejected"], r["margin"]) for r in rows] == [("x", "y", 0.3333), ("x", "z", 0.6667), ("y", "z", 0.3333)]
    assert all(r["prompt"] == "P" and r["campaign"] == "camp" and r["item_id"] == "x1" and "labeler" not in r for r in rows)


def test_rank_all_mode_writes_every_labelers_pairs_and_skips_ties():
    labels = [_label("a", ranks=[1, 1, 2]), _label("b", ranks=[3, 2, 1])]
    rows = _rows(export_records(_campaign(TaskKind.RANK), [_item(["x", "y", "z"])], labels, ExportKind.PAIRS, ExportMode.ALL))
    assert [(r["labeler"], r["chosen"], r["rejected"], r["margin"]) for r in rows] == [
        ("a", "x", "z", 0.5),
        ("a", "y", "z", 0.5),
        ("b", "y", "x", 0.5),
        ("b", "z", "x", 1.0),
        ("b", "z", "y", 0.5),
    ]


def test_unusable_completion_is_never_chosen():
    labels = [_label("a", ranks=[1, 2], unusable=[True, False])]
    assert list(export_records(_campaign(TaskKind.RANK), [_item(["junk", "ok"])], labels)) == []


def test_rankings_format():
    labels = [_label("a", ranks=[2, 1, 3]), _label("b", ranks=[2, 1, 3])]
    [row] = _rows(export_records(_campaign(TaskKind.RANK), [_item(["x", "y", "z"])], labels, ExportKind.RANKINGS))
    assert row == {"prompt": "P", "completions": ["x", "y", "z"], "ranking": [2, 1, 3], "campaign": "camp", "item_id": "x1"}
    rows = _rows(export_records(_campaign(TaskKind.RANK), [_item(["x", "y", "z"])], labels, ExportKind.RANKINGS, ExportMode.ALL))
    assert [r["labeler"] for r in rows] == ["a", "b"]


def test_pair_choices_by_majority():
    campaign, item = _campaign(TaskKind.PAIR), _item(["left", "right"])
    labels = [_label("a", choice=PairChoice.B), _label("b", choice=PairChoice.B), _label("c", choice=PairChoice.A)]
    [row] = _rows(export_records(campaign, [item], labels))
    assert (row["chosen"], row["rejected"]) == ("right", "left")
    ties = [_label("a", choice=PairChoice.TIE), _label("b", choice=PairChoice.BOTH_BAD)]
    assert list(export_records(campaign, [item], ties, mode=ExportMode.ALL)) == []


def test_thumbs_as_binary_labels():
    campaign = _campaign(TaskKind.THUMBS)
    items = [_item(["good"], 1), _item(["bad"], 2), _item(["split"], 3)]
    labels = [
        _label("a", 1, thumb=1), _label("b", 1, thumb=1),
        _label("a", 2, thumb=0),
        _label("a", 3, thumb=1), _label("b", 3, thumb=0),
    ]  # fmt: skip
    rows = _rows(export_records(campaign, items, labels))
    assert rows == [
        {"prompt": "P", "completion": "good", "label": 1, "campaign": "camp", "item_id": "x1"},
        {"prompt": "P", "completion": "bad", "label": 0, "campaign": "camp", "item_id": "x2"},
    ]
    assert len(list(export_records(campaign, items, labels, mode=ExportMode.ALL))) == 5


def test_redteam_prompts_and_better_answer_pairs():
    campaign = _campaign(TaskKind.REDTEAM)
    items = [_item(["seed answer"], 1, prompt="seed"), _item([], 2, prompt="attack")]
    labels = [
        _label("a", 1, prompt="seed, edited", response="bad answer", harm=3, better_response="I can't help with that."),
        _label("b", 2, prompt="attack", response="meh", harm=0),
    ]
    rows = _rows(export_records(campaign, items, labels))
    assert rows[0] == {
        "prompt": "seed, edited", "response": "bad answer", "harm": 3, "better_response": "I can't help with that.",
        "campaign": "camp", "item_id": "x1", "labeler": "a",
    }  # fmt: skip
    assert rows[1]["harm"] == 0 and "better_response" not in rows[1]
    [pair] = _rows(export_records(campaign, items, labels, ExportKind.PAIRS))
    assert (pair["prompt"], pair["chosen"], pair["rejected"]) == ("seed, edited", "I can't help with that.", "bad answer")


def test_kind_must_fit_the_campaign():
    with pytest.raises(ConfigError, match="rank campaign exports as pairs, rankings"):
        list(export_records(_campaign(TaskKind.RANK), [], [], ExportKind.THUMBS))


def test_write_jsonl_round_trips_unicode_and_html(tmp_path):
    labels = [_label("a", ranks=[1, 2])]
    records = export_records(_campaign(TaskKind.RANK), [_item(["<script>é</script>", "b"])], labels)
    path = tmp_path / "out.jsonl"
    assert write_jsonl(records, path) == 1
    [row] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert row["chosen"] == "<script>é</script>"
    assert not (tmp_path / "out.jsonl.tmp").exists()


def test_identical_completions_make_no_pair():
    labels = [_label("a", ranks=[1, 2, 3])]
    rows = _rows(export_records(_campaign(TaskKind.RANK), [_item(["same", " same ", "other"])], labels))
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("same", "other"), (" same ", "other")]


def test_export_reads_back_with_the_training_loader(tmp_path):
    sources = pytest.importorskip("tether.data.sources")
    labels = [_label("a", ranks=[1, 2, 3]), _label("b", ranks=[1, 3, 2])]
    path = tmp_path / "prefs.jsonl"
    write_jsonl(export_records(_campaign(TaskKind.RANK), [_item(["x", "y", "z"])], labels, mode=ExportMode.ALL), path)
    examples = sources.load_preferences(str(path))
    assert len(examples) == 6 and examples[0].chosen == "x"


def test_gold_items_are_never_exported():
    gold = replace(_item(["x", "y"], item_id=2), gold=LabelData(ranks=[1, 2]))
    labels = [_label("a", item_id=1, ranks=[1, 2]), _label("a", item_id=2, ranks=[1, 2])]
    rows = list(export_records(_campaign(TaskKind.RANK), [_item(["x", "y"]), gold], labels, mode=ExportMode.ALL))
    assert [r.item_id for r in rows] == ["x1"]
