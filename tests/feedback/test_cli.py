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


def _two_people_rank(db_url, campaign_file, thumbs_file=None):
    """ann ranks every item good > bad > ugly, bo the other way round; returns their ids."""
    args = ["--db", db_url]
    assert main(["import", str(campaign_file), "--name", "demo", "--kind", "rank", "--labelers-per-item", "2", *args]) == 0
    store = FeedbackStore(db_url)
    campaign = store.campaign_by_name("demo")
    for name, ranks in (("ann", [1, 2, 3]), ("bo/ø", [3, 2, 1])):
        person = store.add_labeler(name).labeler
        while (task := store.next_task(campaign.id, person.id)) is not None:
            store.submit_label(task.assignment_id, person.id, LabelData(ranks=ranks))
    return args


def test_export_one_labelers_own_pairs(tmp_path, db_url, campaign_file, capsys):
    args = _two_people_rank(db_url, campaign_file)
    out = tmp_path / "bo.jsonl"
    assert main(["export", "--campaign", "demo", "--labeler", "bo/ø", "--out", str(out), *args]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    # 3 items x 3 pairs, every one the reverse of ann's, all tagged with bo
    assert len(rows) == 9 and {r["labeler"] for r in rows} == {"bo/ø"}
    assert {(r["chosen"], r["rejected"]) for r in rows} == {("ugly", "bad"), ("ugly", "good"), ("bad", "good")}
    # the consensus of the two is a tie on every pair: nothing to export; each person's own file is not
    assert main(["export", "--campaign", "demo", "--out", str(tmp_path / "c.jsonl"), *args]) == 0
    assert (tmp_path / "c.jsonl").read_text() == ""
    assert main(["export", "--campaign", "demo", "--labeler", "cy", "--out", str(out), *args]) == 1
    assert "--labeler 'cy': no labels in this campaign (labelers with labels: ann, bo/ø)" in capsys.readouterr().err


def test_export_by_labeler_writes_a_file_each_and_an_index(tmp_path, db_url, campaign_file, capsys):
    args = _two_people_rank(db_url, campaign_file)
    out = tmp_path / "people"
    assert main(["export", "--campaign", "demo", "--by-labeler", str(out), *args]) == 0
    index = json.loads((out / "labelers.json").read_text(encoding="utf-8"))["files"]
    assert [(f["labeler"], f["campaign"], f["kind"], f["records"]) for f in index] == [("ann", "demo", "pairs", 9), ("bo/ø", "demo", "pairs", 9)]
    assert index[0]["path"] == "demo/ann.jsonl" and index[1]["path"].startswith("demo/bo__-")  # unsafe name: cleaned + hash
    ann = [json.loads(line) for line in (out / index[0]["path"]).read_text().splitlines()]
    assert {(r["chosen"], r["rejected"]) for r in ann} == {("good", "bad"), ("good", "ugly"), ("bad", "ugly")}
    # a thumbs campaign exported into the same directory is added; exporting demo again replaces only demo's entries
    thumbs = tmp_path / "thumbs.jsonl"
    thumbs.write_text(json.dumps({"prompt": "p", "completions": ["a"]}) + "\n", encoding="utf-8")
    assert main(["import", str(thumbs), "--name", "t", "--kind", "thumbs", *args]) == 0
    store = FeedbackStore(db_url)
    ann_id = store.labeler_by_name("ann").id
    task = store.next_task(store.campaign_by_name("t").id, ann_id)
    store.submit_label(task.assignment_id, ann_id, LabelData(thumb=1))
    assert main(["export", "--campaign", "t", "--by-labeler", str(out), *args]) == 0
    assert main(["export", "--campaign", "demo", "--by-labeler", str(out), *args]) == 0
    index = json.loads((out / "labelers.json").read_text(encoding="utf-8"))["files"]
    assert sorted((f["labeler"], f["campaign"], f["kind"]) for f in index) == [("ann", "demo", "pairs"), ("ann", "t", "thumbs"), ("bo/ø", "demo", "pairs")]
    assert json.loads((out / "t" / "ann.jsonl").read_text())["label"] == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "give one of --out FILE and --by-labeler DIR"),
        (["--out", "x.jsonl", "--by-labeler", "d"], "give one of --out FILE and --by-labeler DIR"),
        (["--by-labeler", "d", "--labeler", "ann"], "--labeler and --by-labeler: give one"),
    ],
)
def test_export_by_labeler_argument_errors(db_url, campaign_file, extra, message, capsys):
    assert main(["export", "--campaign", "demo", *extra, "--db", db_url]) == 1
    assert message in capsys.readouterr().err


def test_export_by_labeler_into_a_file_is_refused(tmp_path, db_url, campaign_file, capsys):
    args = _two_people_rank(db_url, campaign_file)
    target = tmp_path / "file"
    target.write_text("keep me")
    assert main(["export", "--campaign", "demo", "--by-labeler", str(target), *args]) == 1
    assert f"--by-labeler {target}: is a file, not a directory" in capsys.readouterr().err and target.read_text() == "keep me"
