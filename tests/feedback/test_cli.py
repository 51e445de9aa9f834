"""`tether label ...` commands: import, export, labelers, user errors as one line and exit code 1."""

from __future__ import annotations

import json

import pytest

from tether.feedback.cli import main
from tether.storage import FeedbackStore, LabelData


@pytest.fixture
def campaign_file(tmp_path):
    path = tmp_path / "campaign.jsonl"
    rows = [{"prompt": f"p{i}", "completions": ["good", "bad", "ugly"], "id": f"q{i}", "model": "sft"} for i in range(3)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_import_label_export_round_trip(tmp_path, db_url, campaign_file, capsys):
    guidelines = tmp_path / "guide.md"
    guidelines.write_text("Prefer the correct answer.", encoding="utf-8")
    args = ["--db", db_url]
    assert main(["import", str(campaign_file), "--name", "demo", "--kind", "rank", "--labelers-per-item", "2", "--guidelines", str(guidelines), *args]) == 0
    assert "3 items" in capsys.readouterr().out
    assert main(["add-labeler", "ann", *args]) == 0
    token = capsys.readouterr().out.split()[-1]
    store = FeedbackStore(db_url)
    ann = store.labeler_by_token(token)
    campaign = store.campaign_by_name("demo")
    assert campaign.guidelines == "Prefer the correct answer." and campaign.labelers_per_item == 2
    while (task := store.next_task(campaign.id, ann.id)) is not None:
        store.submit_label(task.assignment_id, ann.id, LabelData(ranks=[1, 2, 3]))
    out = tmp_path / "pairs.jsonl"
    assert main(["export", "--campaign", "demo", "--out", str(out), *args]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 9 and rows[0]["chosen"] == "good" and rows[0]["rejected"] == "bad"
    assert main(["export", "--campaign", "demo", "--out", str(out), "--kind", "rankings", "--mode", "all", *args]) == 0
    assert json.loads(out.read_text().splitlines()[0])["ranking"] == [1, 2, 3]
    assert main(["campaigns", *args]) == 0 and "demo" in capsys.readouterr().out
    assert main(["agreement", "--campaign", "demo", *args]) == 0
    assert main(["import", str(campaign_file), "--name", "demo", "--append", *args]) == 0
    assert FeedbackStore(db_url).campaign_by_name("demo").n_items == 6


def test_thumbs_import_splits_completions(db_url, campaign_file):
    assert main(["import", str(campaign_file), "--name", "t", "--kind", "thumbs", "--db", db_url]) == 0
    assert FeedbackStore(db_url).campaign_by_name("t").n_items == 9


@pytest.mark.parametrize(
    "argv, message",
    [
        (["export", "--campaign", "nope", "--out", "x.jsonl"], "campaign 'nope' not found"),
        (["import", "missing.jsonl", "--name", "x"], "missing.jsonl: file not found"),
        (["new-token", "nobody"], "labeler 'nobody' not found"),
    ],
)
def test_user_errors_are_one_line(db_url, argv, message, capsys):
    assert main([*argv, "--db", db_url]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_bad_line_names_file_and_line(tmp_path, db_url, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "completions": ["a", "b"]}\n{"prompt": "p", "completions": "ab"}\n', encoding="utf-8")
    assert main(["import", str(path), "--name", "x", "--db", db_url]) == 1
    assert f"{path}:2: " in capsys.readouterr().err


def test_duplicate_names_and_wrong_kind(db_url, campaign_file, capsys):
    assert main(["import", str(campaign_file), "--name", "x", "--db", db_url]) == 0
    assert main(["import", str(campaign_file), "--name", "x", "--db", db_url]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["export", "--campaign", "x", "--out", "o.jsonl", "--kind", "thumbs", "--db", db_url]) == 1
    assert main(["add-labeler", "ann", "--db", db_url]) == 0
    assert main(["add-labeler", "ann", "--db", db_url]) == 1


def test_admin_token_and_new_token(db_url, capsys):
    assert main(["admin-token", "--db", db_url]) == 0
    token = capsys.readouterr().out.split()[-1]
    assert FeedbackStore(db_url).is_admin_token(token)
    main(["add-labeler", "ann", "--db", db_url])
    old = capsys.readouterr().out.split()[-1]
    assert main(["new-token", "ann", "--db", db_url]) == 0
    new = capsys.readouterr().out.split()[-1]
    store = FeedbackStore(db_url)
    assert store.labeler_by_token(old) is None and store.labeler_by_token(new).name == "ann"


def test_bad_database_url(capsys):
    assert main(["campaigns", "--db", "nonsense://"]) == 1
    assert "--db" in capsys.readouterr().err


def test_bench_runs_a_short_load_test(capsys):
    assert main(["bench", "--clients", "2", "--seconds", "0.5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["clients"] == 2 and result["labels"] > 0 and result["errors"] == 0
