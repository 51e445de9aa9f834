"""Policy evaluation on tiny random models: KL, ties, outputs, escaping, tokenizer check."""

import json
from pathlib import Path

import pytest

from tether.config import EvalConfig, GenerationConfig
from tether.errors import ModelError
from tether.eval.policy import evaluate_policies
from tether.models.reward import RewardModel
from tether.models.tiny import tiny_causal_lm, tiny_sequence_classifier

INJECTED = "<script>alert('x')</script> what is 2+2?"
PROMPTS = ["Say hello.", INJECTED, "Name a colour.", "Count to three."]


def save_tiny_lm(path: Path, seed: int = 0, extra_token: str | None = None) -> str:
    model, tok = tiny_causal_lm("llama", seed=seed)
    if extra_token is not None:
        tok.add_tokens([extra_token])
        model.resize_token_embeddings(len(tok))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    rm_model, rm_tok = tiny_sequence_classifier("bert")
    RewardModel(rm_model, rm_tok).save(root / "rm")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return {
        "lm": save_tiny_lm(root / "lm"),
        "lm_other": save_tiny_lm(root / "lm_other", seed=1),
        "rm": str(root / "rm"),
        "prompts": str(prompts),
    }


def make_cfg(models: dict[str, str], out: Path, policy: str | None = None) -> EvalConfig:
    return EvalConfig(
        baseline=models["lm"], policy=policy or models["lm"], prompts=models["prompts"],
        reward_models=[models["rm"]], output_dir=str(out), split="all", device="cpu",
        generation=GenerationConfig(max_new_tokens=8, temperature=0.7, batch_size=4),
    )


def test_same_model_has_zero_kl_and_ties(models, tmp_path):
    result = evaluate_policies(make_cfg(models, tmp_path))
    assert result.n_prompts == len(PROMPTS)
    assert abs(result.kl) < 1e-4
    rm = result.reward_models[0]
    assert rm.baseline_scores == rm.policy_scores
    assert rm.win_rate.ties == len(PROMPTS)
    assert result.to_json()["win_rate"] == 0.5
    assert rm.lc_win_rate.rate == pytest.approx(0.5)  # all ties: equal lengths, equal scores
    assert [s.baseline for s in result.samples] == [s.policy for s in result.samples]


def test_outputs_written_and_escaped(models, tmp_path):
    evaluate_policies(make_cfg(models, tmp_path, policy=models["lm_other"]), kl_budget=100.0)
    data = json.loads((tmp_path / "eval.json").read_text())
    for key in ("n_prompts", "baseline_mean_score", "policy_mean_score", "win_rate", "kl", "reward_models",
                "baseline", "policy", "generation"):
        assert key in data
    assert data["n_prompts"] == len(PROMPTS)
    assert data["reward_models"][0]["path"] == models["rm"]
    lc = data["reward_models"][0]
    assert 0.0 <= lc["lc_win_rate_ci"][0] <= lc["lc_win_rate"] <= lc["lc_win_rate_ci"][1] <= 1.0
    assert data["baseline_mean_score"] == data["reward_models"][0]["baseline_mean_score"]
    assert {"mean_length", "eos_fraction", "distinct_1", "distinct_2", "path"} <= set(data["policy"])
    assert data["generation"]["max_new_tokens"] == 8
    assert data["kl"] == data["kl"] and data["kl"] != 0.0  # finite and not zero for different weights

    assert (tmp_path / "config.yaml").is_file()
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [s["prompt"] for s in samples] == PROMPTS
    assert set(samples[0]["scores"]["rm"]) == {"baseline", "policy"}

    html = (tmp_path / "report.html").read_text()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "data:image/png;base64," in html
    assert "within the budget of 100 nats" in html


def test_different_tokenizers_raise(models, tmp_path):
    other = save_tiny_lm(tmp_path / "lm_extra", extra_token="hello")
    with pytest.raises(ModelError, match="different tokenizers"):
        evaluate_policies(make_cfg(models, tmp_path / "out", policy=other))


def test_the_readme_command_line_runs_with_its_defaults(models, tmp_path):
    """`tether eval --baseline A --policy B --prompts FILE --reward-model R`: split auto takes every prompt when
    nothing is held out, and the held-out part when holdout_fraction is set."""
    from tether.cli import main as cli_main

    out = tmp_path / "cli"
    args = ["eval", "--baseline", models["lm"], "--policy", models["lm"], "--prompts", models["prompts"],
            "--reward-model", models["rm"], "--out", str(out), "device=cpu", "generation.max_new_tokens=4"]
    assert cli_main(args) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["split"] == "all" and result["n_prompts"] == len(PROMPTS)
    assert cli_main(args + ["holdout_fraction=0.5", "overwrite=true"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["split"] == "holdout" and 0 < result["n_prompts"] < len(PROMPTS)


def test_a_baseline_cache_generates_the_baselines_answers_once_and_changes_nothing(models, tmp_path, monkeypatch):
    """baseline_cache: a second evaluation of the same baseline (another policy, as in a loop's next round) reads the
    baseline's answers instead of sampling them; every result is what sampling would have given. Other generation
    settings, or a torn file, sample again."""
    import tether.eval.policy as policy_module

    calls: list[int] = []
    real = policy_module.sample_answers
    monkeypatch.setattr(policy_module, "sample_answers", lambda *a, **k: calls.append(1) or real(*a, **k))

    def run(name: str, cache: bool, **gen):
        cfg = make_cfg(models, tmp_path / name, policy=models["lm_other"])
        cfg = cfg.model_copy(update={"baseline_cache": str(tmp_path / "cache") if cache else None,
                                     "generation": cfg.generation.model_copy(update=gen)})
        return json.loads(json.dumps(evaluate_policies(cfg).to_json()))

    fresh = run("fresh", cache=False)
    assert len(calls) == 2
    first = run("first", cache=True)
    (cached,) = (tmp_path / "cache").iterdir()
    second = run("second", cache=True)
    assert len(calls) == 2 + 2 + 1  # the second evaluation sampled the policy only
    for result in (first, second):
        assert {k: v for k, v in result.items() if k != "output_dir"} == {k: v for k, v in fresh.items() if k != "output_dir"}
    run("hotter", cache=True, temperature=1.0)
    assert len(calls) == 7  # other settings: sampled again
    cached.write_bytes(cached.read_bytes()[:20])  # torn
    assert run("torn", cache=True) == run("torn", cache=True) and len(calls) == 7 + 2 + 1
