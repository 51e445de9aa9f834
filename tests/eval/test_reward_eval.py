"""Reward-model evaluation: hand-computed accuracy, ties, length bias, calibration, report."""

import json
import math
from pathlib import Path

import pytest
import torch

from tether.eval.reward_eval import classifier_stats, evaluate_reward_model, preference_stats, write_reward_report
from tether.models.reward import RewardModel
from tether.models.tiny import tiny_sequence_classifier

# chosen longer (right), chosen longer (right), chosen shorter (wrong), same length (tie: wrong)
ROWS = [
    {"prompt": "p1", "chosen": "a long answer", "rejected": "short"},
    {"prompt": "prompt two", "chosen": "longer reply", "rejected": "brief"},
    {"prompt": "the third prompt", "chosen": "ok", "rejected": "much longer"},
    {"prompt": "<b>fourth</b> prompt here", "chosen": "same", "rejected": "size"},
]


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("rm") / "rm"
    model, tok = tiny_sequence_classifier("bert")
    RewardModel(model, tok).save(path)
    return str(path)


@pytest.fixture
def data(tmp_path) -> str:
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return str(path)


def test_preference_stats_hand_computed():
    stats = preference_stats([2.0, 1.0, 0.0, 3.0], [1.0, 1.0, 1.0, 0.0], [5, 5, 2, 4], [3, 3, 4, 4], [1, 2, 3, 4])
    assert stats["n"] == 4
    assert stats["accuracy"] == 0.5  # the tie (row 2) counts as wrong
    assert stats["ties"] == 1
    assert stats["mean_margin"] == pytest.approx((1 + 0 - 1 + 3) / 4)
    assert stats["length"]["chosen_longer"] == {"n": 2, "accuracy": 0.5}
    assert stats["length"]["chosen_shorter"] == {"n": 1, "accuracy": 0.0}
    assert stats["length"]["same_length"] == {"n": 1, "accuracy": 1.0}
    assert [g["n"] for g in stats["by_prompt_length"]] == [2, 1, 1]
    assert sum(b["count"] for b in stats["reliability_bins"]) == 8  # both orders of 4 pairs
    assert sum(stats["histogram"]["chosen"]) == 4


def test_report_from_hand_made_result(tmp_path):
    result = {"model": "<script>alert(1)</script>", "data": "prefs.jsonl",
              **preference_stats([2.0, 1.0, 0.0, 3.0], [1.0, 1.0, 1.0, 0.0], [5, 5, 2, 4], [3, 3, 4, 4], [1, 2, 3, 4])}
    result["ensemble"] = {"combine": "mean", "k": 1.0, "member_accuracy": [0.5, 0.75], "pair_disagreement": 0.25,
                          "score_std_mean": 0.125, "accuracy_when_agree": {"n": 3, "accuracy": 0.5},
                          "accuracy_when_disagree": {"n": 1, "accuracy": 1.0}}
    html = write_reward_report(tmp_path / "sub" / "r.html", result).read_text(encoding="utf-8")
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count('src="data:image/png;base64,') == 2  # reliability diagram, histograms
    for section in ("Summary", "Length bias", "Accuracy by prompt length", "Calibration", "Score distributions",
                    "Ensemble disagreement"):
        assert f"<h2>{section}</h2>" in html
    assert "higher on 50.0% of 4 pairs" in html and "1 ties counted as wrong" in html
    assert "<td>mean margin</td><td>0.75</td>" in html and "<td>chosen longer</td><td>2</td><td>0.5</td>" in html
    assert "Chosen answer is longer in 50% of pairs." in html and "'the longer answer wins' scores 50.0%" in html
    assert "<td>member 1</td><td>0.75</td>" in html and "mean (k = 1)" in html


def test_classifier_report_from_hand_made_result(tmp_path):
    result = {"model": "cls", "data": "<b>thumbs</b>", "task": "labels",
              **classifier_stats([0.9, 0.2, 0.4, 0.6], [True, False, True, False])}
    html = write_reward_report(tmp_path / "c.html", result).read_text(encoding="utf-8")
    assert "<b>" not in html and "&lt;b&gt;thumbs&lt;/b&gt;" in html
    assert "labels 50.0% of 4 completions correctly, AUROC 0.750" in html and "50% are desirable" in html
    assert "<h2>Calibration of P(desirable)</h2>" in html and html.count('src="data:image/png;base64,') == 2
    assert "Length bias" not in html


def test_calibration_of_a_perfectly_calibrated_case():
    # logit log(3): p = 0.75; 3 right and 1 wrong at that confidence is exactly calibrated
    d = math.log(3.0)
    stats = preference_stats([d, d, d, 0.0], [0.0, 0.0, 0.0, d], [1] * 4, [1] * 4, [1] * 4)
    assert stats["accuracy"] == 0.75
    assert stats["ece"] == pytest.approx(0.0, abs=1e-9)


def test_evaluate_with_controlled_scores(rm_dir, data, tmp_path, monkeypatch):
    # score = length of the reply: the model is a pure length preference
    def by_length(self, prompts, responses, batch_size=32, max_length=None):
        return torch.tensor([float(len(r)) for r in responses])

    monkeypatch.setattr(RewardModel, "score", by_length)
    result = evaluate_reward_model(rm_dir, data, device="cpu")
    assert result["n"] == 4 and result["ties"] == 1
    assert result["accuracy"] == 0.5
    assert result["length"]["chosen_longer"] == {"n": 2, "accuracy": 1.0}
    assert result["length"]["chosen_shorter"] == {"n": 1, "accuracy": 0.0}
    assert result["length"]["same_length"] == {"n": 1, "accuracy": 0.0}
    assert result["length"]["score_length_correlation"] == pytest.approx(1.0)

    out = write_reward_report(tmp_path / "rm_report.html", result)
    html = out.read_text()
    assert "data:image/png;base64," in html and "50.0%" in html


def test_evaluate_real_tiny_model_gives_valid_json(rm_dir, data):
    result = evaluate_reward_model(rm_dir, data, batch_size=2, device="cpu")
    text = json.dumps(result, allow_nan=False)
    assert json.loads(text)["n"] == 4
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["ece"] <= 1.0
    assert result["model"] == rm_dir and Path(result["data"]).name == "prefs.jsonl"


# --------------------------------------------------------------------------- ensembles, classifiers, JSON keys


def test_auroc_hand_cases():
    from tether.eval.metrics import auroc

    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auroc([0.5, 0.5], [0, 1]) == 0.5  # a tie counts half
    assert auroc([0.1, 0.2], [1, 1]) is None


def test_rm_eval_json_keys_and_ensemble_disagreement(rm_dir, data, tmp_path):
    from tether.models.reward import write_ensemble_manifest

    result = evaluate_reward_model(rm_dir, data, device="cpu")
    for key in ("accuracy", "accuracy_ci", "length", "length_baselines", "by_prompt_length", "ece", "reliability_bins",
                "histogram", "chosen_score_mean", "rejected_score_mean", "model_kind"):
        assert key in result, key
    assert result["length_baselines"] == {"longer_wins": 0.5, "shorter_wins": 0.25}
    ens = tmp_path / "ens"
    write_ensemble_manifest(ens, [rm_dir, rm_dir], "conservative", 1.0)
    out = evaluate_reward_model(str(ens), data, device="cpu")
    assert out["model_kind"] == "ensemble"
    e = out["ensemble"]
    assert e["members"] == 2 and e["pair_disagreement"] == 0.0 and e["score_std_mean"] == pytest.approx(0.0, abs=1e-6)
    assert out["accuracy"] == result["accuracy"]
    html = write_reward_report(tmp_path / "r.html", out).read_text()
    assert "Ensemble disagreement" in html
    json.dumps(out)


def test_classifier_eval_on_labelled_completions(tmp_path, monkeypatch):
    from tether.models.reward import RewardMeta

    model, tok = tiny_sequence_classifier("bert", num_labels=2)
    path = tmp_path / "cls"
    RewardModel(model, tok, RewardMeta(kind="classifier")).save(path)
    rows = [{"prompt": "p", "completion": c, "label": y} for c, y in [("a", 1), ("bb", 0), ("ccc", 1), ("dddd", 0)]]
    file = tmp_path / "thumbs.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    probs = {"a": 0.9, "bb": 0.2, "ccc": 0.4, "dddd": 0.6}
    monkeypatch.setattr(RewardModel, "class_probs", lambda self, p, r, *a: torch.tensor([probs[x] for x in r]))
    result = evaluate_reward_model(str(path), str(file), device="cpu")
    assert result["task"] == "labels" and result["model_kind"] == "classifier"
    assert result["accuracy"] == 0.5 and result["auroc"] == 0.75 and result["n"] == 4
    assert "data:image/png;base64," in write_reward_report(tmp_path / "c.html", result).read_text()


def test_cli_rm_eval_json(rm_dir, data, capsys):
    from tether.cli import main

    assert main(["rm", "eval", "--model", rm_dir, "--data", data, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 4 and "length_baselines" in out and "reliability_bins" in out
