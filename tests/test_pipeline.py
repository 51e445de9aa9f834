"""`tether run`: a tiny pretrain -> sft -> rm -> ppo -> eval pipeline end to end, and skipping finished stages."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from tether.cli import runners
from tether.errors import ConfigError, DataError
from tether.pipeline import load_pipeline, run_pipeline

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
STAGES = ["pretrain", "sft", "rm", "ppo", "eval"]
EVAL_KEYS = {"n_prompts", "baseline_mean_score", "policy_mean_score", "win_rate", "kl"}


def tiny_pipeline(root: Path, data: dict[str, Path]) -> Path:
    """A pipeline of tiny models on the tiny data files, every stage a few steps."""
    cpu = {"device": "cpu"}
    spec = {
        "output_root": str(root / "runs"),
        "stages": [
            {"name": "pretrain", "command": "pretrain", "config": {
                "data": {"train": str(data["text"])},
                "arch": {"kind": "llama", "vocab_size": 320, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                         "intermediate_size": 64, "max_position_embeddings": 128},
                "block_size": 32,
                "train": {"batch_size": 4, "max_steps": 5, "learning_rate": 3e-3, **cpu},
                "on_chance": "warn",  # 5 steps learn nothing; test_a_failed_gate_stops_the_pipeline keeps the default
            }},
            {"name": "sft", "command": "sft", "config": {
                "model": {"name_or_path": "${pretrain.output_dir}"},
                "data": {"train": str(data["sft"]), "max_length": 96, "max_prompt_length": 64},
                "train": {"batch_size": 4, "max_steps": 3, "learning_rate": 1e-3, **cpu},
            }},
            {"name": "rm", "command": "rm", "config": {
                "model": {"name_or_path": "tiny-bert"},
                "data": {"train": str(data["prefs"]), "max_length": 64},
                "train": {"batch_size": 4, "max_steps": 2, "learning_rate": 1e-3, **cpu},
            }},
            {"name": "ppo", "command": "ppo", "config": {
                "model": {"name_or_path": "${sft.output_dir}"},
                "reward_model": {"path": "${rm.output_dir}", "max_length": 64},
                "data": {"train": str(data["prompts"]), "max_samples": 8, "max_prompt_length": 48},
                "generation": {"max_new_tokens": 8},
                "rollout": {"batch_size": 4, "num_epochs": 1, "num_minibatches": 2},
                "train": {"max_steps": 2, "learning_rate": 1e-3, **cpu},
            }},
            {"name": "eval", "command": "eval", "config": {
                "baseline": "${sft.output_dir}", "policy": "${ppo.output_dir}", "prompts": str(data["prompts"]),
                "split": "all", "max_prompts": 4, "reward_models": ["${rm.output_dir}"],
                "train_metrics": "${ppo.output_dir}/metrics.jsonl", "max_prompt_length": 48,
                "generation": {"max_new_tokens": 8}, "device": "cpu",
            }},
        ],
    }
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def counting_runners(calls: list[str], fail: set[str] = frozenset()) -> dict:
    real = runners()

    def wrap(name):
        def run(cfg):
            calls.append(name)
            if name in fail:
                raise AssertionError(f"stage {name} ran again although it had finished")
            return real[name](cfg)

        return run

    return {name: wrap(name) for name in real}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_data):
    """The tiny pipeline, run once."""
    root = tmp_path_factory.mktemp("pipeline")
    path = tiny_pipeline(root, tiny_data)
    calls: list[str] = []
    outputs = run_pipeline(str(path), [], counting_runners(calls))
    return path, outputs, calls


def test_tiny_pipeline_end_to_end(finished):
    path, outputs, calls = finished
    assert calls == STAGES
    assert list(outputs) == STAGES
    for name in STAGES:
        assert (outputs[name] / "DONE").is_file(), name
        assert (outputs[name] / "config.yaml").is_file(), name
    for name in ("pretrain", "sft", "ppo"):
        assert (outputs[name] / "config.json").is_file() and list(outputs[name].glob("*.safetensors")), name
    assert (outputs["rm"] / "tether_reward.json").is_file()
    result = json.loads((outputs["eval"] / "eval.json").read_text())
    assert EVAL_KEYS <= set(result)
    assert result["n_prompts"] == 4
    for key in EVAL_KEYS - {"n_prompts"}:
        assert math.isfinite(result[key]), key
    assert 0.0 <= result["win_rate"] <= 1.0
    assert (outputs["eval"] / "report.html").is_file()
    # each stage read the previous stage's output
    sft_cfg = yaml.safe_load((outputs["sft"] / "config.yaml").read_text())
    assert sft_cfg["model"]["name_or_path"] == str(outputs["pretrain"])
    ppo_cfg = yaml.safe_load((outputs["ppo"] / "config.yaml").read_text())
    assert ppo_cfg["model"]["name_or_path"] == str(outputs["sft"])
    assert ppo_cfg["reward_model"]["path"] == str(outputs["rm"])


def test_second_run_skips_finished_training_stages(finished):
    path, outputs, _ = finished
    mtimes = {n: (outputs[n] / "DONE").stat().st_mtime_ns for n in STAGES[:4]}
    calls: list[str] = []
    again = run_pipeline(str(path), [], counting_runners(calls, fail={"pretrain", "sft", "rm", "ppo"}))
    assert again == outputs
    assert not set(calls) & {"pretrain", "sft", "rm", "ppo"}
    assert {n: (outputs[n] / "DONE").stat().st_mtime_ns for n in STAGES[:4]} == mtimes


def test_second_run_skips_every_stage(finished):
    path, outputs, _ = finished
    calls: list[str] = []
    run_pipeline(str(path), [], counting_runners(calls, fail=set(STAGES)))
    assert calls == []


def test_a_failed_gate_stops_the_pipeline(tmp_path, tiny_data):
    from tether.errors import StageFailed

    path = tiny_pipeline(tmp_path, tiny_data)
    calls: list[str] = []
    with pytest.raises(StageFailed, match="no better than a unigram model"):
        run_pipeline(str(path), ["pretrain.on_chance=stop"], counting_runners(calls))
    assert calls == ["pretrain"]  # nothing was built on the garbage model
    out = tmp_path / "runs" / "pretrain"
    assert (out / "config.yaml").is_file() and not (out / "DONE").exists()


def test_changing_a_stage_reruns_the_stages_after_it(tmp_path, tiny_data):
    path = tiny_pipeline(tmp_path, tiny_data)
    run_pipeline(str(path), [], runners())
    calls: list[str] = []
    run_pipeline(str(path), ["sft.train.learning_rate=2e-3"], counting_runners(calls, fail={"pretrain", "rm"}))
    assert calls[:2] == ["sft", "ppo"]


# --------------------------------------------------------------------------- pipeline file errors


def _write(tmp_path, spec) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"stages": []}, "non-empty list"),
        ({"stages": [{"name": "a"}]}, "needs 'name' and 'command'"),
        ({"stages": [{"name": "a", "command": "train"}]}, "unknown command 'train'"),
        ({"stages": [{"name": "a", "command": "sft"}, {"name": "a", "command": "rm"}]}, "duplicate stage name 'a'"),
        ({"stages": [{"name": "a", "command": "sft", "confg": {}}]}, "confg"),
        ({"stagez": [], "stages": [{"name": "a", "command": "sft"}]}, "stagez"),
    ],
)
def test_bad_pipeline_files(tmp_path, spec, expected):
    with pytest.raises(ConfigError, match=expected):
        load_pipeline(_write(tmp_path, spec), [])


def test_unknown_key_in_a_stage_override(tmp_path):
    path = _write(tmp_path, {"stages": [{"name": "s", "command": "sft", "config": {}}]})
    with pytest.raises(ConfigError, match="train.learning_rat"):
        load_pipeline(path, ["s.train.learning_rat=1"])
    with pytest.raises(ConfigError, match="STAGE.key=value"):
        load_pipeline(path, ["nostage.train.seed=1"])
    _, stages = load_pipeline(path, ["s.train.seed=3"])
    assert stages[0].raw == {"train": {"seed": 3}}


@pytest.mark.parametrize("override", ["data_dir=/some/where", "data_dir=../shared/data", "output_root=runs/v1.2"])
def test_global_overrides(tmp_path, override):
    path = _write(tmp_path, {"stages": [{"name": "s", "command": "sft", "config": {}}]})
    globals_, _ = load_pipeline(path, [override])
    key, value = override.split("=", 1)
    assert globals_[key] == value


def test_unknown_reference(tmp_path):
    path = _write(tmp_path, {"output_root": str(tmp_path / "r"), "stages": [
        {"name": "s", "command": "sft", "config": {"model": {"name_or_path": "${pre.output_dir}"}, "data": {"train": "x.jsonl"}}},
    ]})
    with pytest.raises(ConfigError, match=r"\$\{pre.output_dir\}"):
        run_pipeline(path, [], runners())


def test_stage_config_error_names_the_stage(tmp_path):
    path = _write(tmp_path, {"output_root": str(tmp_path / "r"), "stages": [
        {"name": "mysft", "command": "sft", "config": {"model": {"name_or_path": "tiny-llama"}, "data": {"train": "x.jsonl"}, "train": {"batch_size": -1}}},
    ]})
    with pytest.raises(ConfigError, match="mysft.*train.batch_size"):
        run_pipeline(path, [], runners())


def test_missing_data_dir_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.delenv("TETHER_DATA_DIR", raising=False)
    path = _write(tmp_path, {"data_dir": str(tmp_path / "no_data"), "stages": [
        {"name": "s", "command": "sft", "config": {"data": {"train": "${data_dir}/x.jsonl"}}},
    ]})
    with pytest.raises(DataError, match="TETHER_DATA_DIR"):
        run_pipeline(path, [], runners())


# --------------------------------------------------------------------------- real data (slow)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} not found")
def test_tiny_configs_chained_on_real_data(tmp_path):
    """configs/*_tiny.yaml chained into one pipeline on a small slice of ../shared/data."""
    configs = REPO_ROOT / "configs"
    harmless = "${data_dir}/hh_harmless_base/train.jsonl.gz"
    seed_sft = "${data_dir}/self_instruct_seed_sft/data.jsonl.gz"
    spec = {
        "output_root": str(tmp_path / "runs"),
        "data_dir": str(SHARED_DATA),
        "stages": [
            {"name": "pretrain", "command": "pretrain", "config_file": str(configs / "pretrain_tiny.yaml"), "config": {
                "data": {"train": [seed_sft]}, "max_chars": 20000, "train": {"max_steps": 5},
                "output_dir": "${output_root}/pretrain", "on_chance": "warn",  # 5 steps: the plumbing, not the model
            }},
            {"name": "sft", "command": "sft", "config_file": str(configs / "sft_tiny.yaml"), "config": {
                "model": {"name_or_path": "${pretrain.output_dir}"},
                "data": {"train": seed_sft, "max_samples": 16, "max_length": 256, "max_prompt_length": 128},
                "train": {"max_steps": 3}, "output_dir": "${output_root}/sft",
            }},
            {"name": "rm", "command": "rm", "config_file": str(configs / "rm_tiny.yaml"), "config": {
                "data": {"train": harmless, "max_samples": 16}, "train": {"max_steps": 3},
                "output_dir": "${output_root}/rm",
            }},
            {"name": "ppo", "command": "ppo", "config_file": str(configs / "ppo_tiny.yaml"), "config": {
                "model": {"name_or_path": "${sft.output_dir}"},
                "reward_model": {"path": "${rm.output_dir}"},
                "data": {"train": harmless, "max_samples": 16},
                "generation": {"max_new_tokens": 8},
                "rollout": {"batch_size": 4}, "train": {"max_steps": 2}, "output_dir": "${output_root}/ppo",
            }},
            {"name": "eval", "command": "eval", "config": {
                "baseline": "${sft.output_dir}", "policy": "${ppo.output_dir}", "prompts": harmless,
                "split": "holdout", "holdout_fraction": 0.1, "max_prompts": 4,
                "reward_models": ["${rm.output_dir}"], "train_metrics": "${ppo.output_dir}/metrics.jsonl",
                "max_prompt_length": 96, "generation": {"max_new_tokens": 8},
            }},
        ],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    outputs = run_pipeline(str(path), [], runners())
    for name, out in outputs.items():
        assert out.is_relative_to(tmp_path), (name, out)  # nothing written into the repository's runs/
        assert (out / "DONE").is_file(), name
    result = json.loads((outputs["eval"] / "eval.json").read_text())
    assert EVAL_KEYS <= set(result) and result["n_prompts"] == 4
    assert all(math.isfinite(result[k]) for k in EVAL_KEYS)
