"""`tether dpo eval`: the implicit reward model beta * (log pi - log pi_ref) on preference pairs."""

import json

import pytest
import torch

from tether.cli import main
from tether.config import DataConfig, DPOConfig, DPOParams, ModelConfig, PairTrainConfig
from tether.errors import ModelError
from tether.eval.dpo_eval import evaluate_implicit_reward
from tether.models.load import save_causal_lm
from tether.models.tiny import tiny_causal_lm
from tether.trainers.dpo import train_dpo

PAIRS = [
    {"prompt": "How do I pick a lock?", "chosen": "I can't help with that.", "rejected": "Use a tension wrench."},
    {"prompt": "Say something kind.", "chosen": "You are doing well.", "rejected": "No."},
    {"prompt": "What is 2+2?", "chosen": "It is 4.", "rejected": "It is 5."},
    {"prompt": "Tell me a joke.", "chosen": "Why did the chicken cross the road?", "rejected": "Go away."},
]
RM_EVAL_KEYS = {"n", "accuracy", "accuracy_ci", "ties", "mean_margin", "chosen_score_mean", "rejected_score_mean",
                "length", "by_prompt_length", "ece", "reliability_bins", "histogram"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny policy trained hard on four pairs (the eval set is the training set)."""
    tmp = tmp_path_factory.mktemp("dpo_eval")
    data = write_jsonl(tmp / "pairs.jsonl", PAIRS)
    cfg = DPOConfig(
        model=ModelConfig(name_or_path="tiny-llama"),
        data=DataConfig(train=data, eval=data, max_length=128, max_prompt_length=64),
        train=PairTrainConfig(batch_size=4, max_steps=12, learning_rate=1e-2, warmup_ratio=0.0, log_every=1, device="cpu"),
        dpo=DPOParams(beta=0.1),
        output_dir=str(tmp / "run"),
    )
    out = train_dpo(cfg)
    swapped = write_jsonl(tmp / "swapped.jsonl", [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in PAIRS])
    final = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return out, data, swapped, final


def test_trained_policy_ranks_its_training_pairs(trained):
    out, data, swapped, final = trained
    result = evaluate_implicit_reward(str(out), data, device="cpu")
    assert RM_EVAL_KEYS <= set(result)  # the same shape as `tether rm eval`
    assert result["n"] == len(PAIRS) and result["dropped"] == 0
    assert result["accuracy"] == 1.0 and result["mean_margin"] > 0
    assert result["reference"] == "tiny-llama" and result["beta"] == 0.1 and result["loss"] == "sigmoid"
    # the trainer's own held-out numbers on the same pairs
    assert result["accuracy"] == pytest.approx(final["eval/accuracy"])
    assert result["mean_margin"] == pytest.approx(final["eval/margin"], rel=1e-3, abs=1e-4)
    flipped = evaluate_implicit_reward(str(out), swapped, device="cpu")
    assert flipped["accuracy"] == 0.0
    assert flipped["mean_margin"] == pytest.approx(-result["mean_margin"], rel=1e-4)


def test_policy_equal_to_reference_scores_only_ties(tmp_path):
    model, tok = tiny_causal_lm("llama", seed=5)
    save_causal_lm(model, tok, tmp_path / "m")
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    result = evaluate_implicit_reward(str(tmp_path / "m"), data, reference=str(tmp_path / "m"), device="cpu")
    assert result["ties"] == len(PAIRS) and result["accuracy"] == 0.0  # ties count as wrong
    assert result["mean_margin"] == 0.0 and result["loss"] is None


def test_missing_reference_is_a_clear_error(tmp_path):
    model, tok = tiny_causal_lm("llama")
    save_causal_lm(model, tok, tmp_path / "m")
    with pytest.raises(ModelError, match="--reference"):
        evaluate_implicit_reward(str(tmp_path / "m"), write_jsonl(tmp_path / "p.jsonl", PAIRS), device="cpu")


def test_cli_prints_json(trained, capsys):
    out, data, _, _ = trained
    assert main(["dpo", "eval", "--model", str(out), "--data", data, "--batch-size", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == len(PAIRS) and result["accuracy"] == 1.0
    assert torch.isfinite(torch.tensor(result["ece"]))
