"""Reward-model smoke tests on a tiny random-init BERT: Bradley-Terry steps, normalisation, reload."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tether.config import RewardConfig, validate
from tether.data.sources import load_preferences
from tether.errors import ConfigError, DataError, TrainingError
from tether.models.reward import META_FILE, RewardModel
from tether.models.tiny import tiny_sequence_classifier
from tether.run import DONE_FILE
from tether.trainers import reward as rm_mod
from tether.trainers.reward import train_reward

CPU = torch.device("cpu")


def rm_config(train_file, out, data=None, train=None, **top) -> RewardConfig:
    raw = {
        "model": {"name_or_path": "tiny-bert"},
        "data": {"train": str(train_file), "max_length": 64, **(data or {})},
        "train": {"batch_size": 4, "max_steps": 3, "learning_rate": 1e-3, "log_every": 1, "device": "cpu",
                  "warmup_ratio": 0.0, **(train or {})},
        "output_dir": str(out),
        "on_chance": "warn",  # a handful of held-out pairs cannot show skill; the gate has its own tests
        **top,
    }
    return validate(RewardConfig, raw)


def _metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_reward_model_trains_and_reloads(tiny_data, tmp_path):
    out = tmp_path / "rm"
    cfg = rm_config(tiny_data["prefs"], out, data={"holdout_fraction": 0.3}, train={"eval_every": 2})
    assert train_reward(cfg) == out
    rows = _metrics(out)
    assert [r["step"] for r in rows[:3]] == [1, 2, 3]
    assert all(math.isfinite(r["loss/reward"]) for r in rows)
    assert any("eval/accuracy" in r for r in rows)
    assert (out / DONE_FILE).is_file()
    meta = json.loads((out / META_FILE).read_text())
    assert set(meta) == {"gain", "bias", "prompt_template", "max_length", "kind", "positive_index", "pooling"}
    assert meta["max_length"] == 64 and meta["kind"] == "scalar"

    rm = RewardModel.load(str(out), CPU)
    assert (rm.meta.gain, rm.meta.bias) == (meta["gain"], meta["bias"])
    # the backbone was trained
    init = tiny_sequence_classifier("bert", seed=0)[0].state_dict()
    trained = rm.model.state_dict()
    assert not torch.equal(init["classifier.weight"], trained["classifier.weight"])
    assert not torch.equal(init["bert.encoder.layer.0.attention.self.query.weight"], trained["bert.encoder.layer.0.attention.self.query.weight"])
    # normalised: the training replies' scores have mean 0 and std 1
    from tether.data.sources import select

    pairs = select(load_preferences(str(tiny_data["prefs"])), "train", 0.3, None)
    prompts = [p.prompt for p in pairs] * 2
    replies = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    scores = rm.score(prompts, replies)
    assert abs(scores.mean().item()) < 1e-3
    assert abs(scores.std().item() - 1.0) < 1e-3


def test_freeze_layers_keeps_the_lowest_layers(tiny_data, tmp_path):
    out = tmp_path / "rm"
    train_reward(rm_config(tiny_data["prefs"], out, freeze_layers=1, normalize=False))
    init = tiny_sequence_classifier("bert", seed=0)[0].state_dict()
    trained = RewardModel.load(str(out), CPU).model.state_dict()
    for k, v in init.items():
        if k.startswith(("bert.embeddings.", "bert.encoder.layer.0.")):
            assert torch.equal(v, trained[k]), k
    assert not torch.equal(init["bert.encoder.layer.1.output.dense.weight"], trained["bert.encoder.layer.1.output.dense.weight"])
    assert json.loads((out / META_FILE).read_text())["gain"] == 1.0  # normalize=false


def test_lora_reward_model_is_saved_merged(tiny_data, tmp_path):
    out = tmp_path / "rm"
    train_reward(rm_config(tiny_data["prefs"], out, model={"name_or_path": "tiny-bert", "lora": {"enabled": True, "r": 4}}))
    rm = RewardModel.load(str(out), CPU)
    assert torch.isfinite(rm.score(["Hi"], ["Hello"])).all()
    assert not (out / "adapter_config.json").exists()
    # the score head is trained in full (peft keeps it in modules_to_save) and saved with the merged model
    init = tiny_sequence_classifier("bert", seed=0)[0].state_dict()
    assert not torch.equal(init["classifier.weight"], rm.model.state_dict()["classifier.weight"])


def test_identical_pair_stops_before_training(tmp_path, jsonl):
    bad = jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "same", "rejected": "same"}])
    out = tmp_path / "rm"
    with pytest.raises(DataError, match=f"{bad}:2.*identical"):
        train_reward(rm_config(bad, out))
    assert not out.exists()


def test_max_length_longer_than_the_context(tmp_path, jsonl):
    rows = [{"prompt": "p" * 700, "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(4)]
    out = tmp_path / "rm"
    with pytest.raises(ConfigError, match="data.max_length"):
        train_reward(rm_config(jsonl(tmp_path / "long.jsonl", rows), out, data={"max_length": 1024}, train={"max_steps": 1}))
    assert not out.exists()


def test_margin_rows_are_used(tmp_path, jsonl):
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}", "margin": 1.0} for i in range(6)]
    out = tmp_path / "rm"
    train_reward(rm_config(jsonl(tmp_path / "m.jsonl", rows), out, train={"max_steps": 2}))
    assert all(math.isfinite(r["loss/reward"]) for r in _metrics(out))


def test_nan_loss_names_the_step(tiny_data, tmp_path, monkeypatch):
    real = rm_mod.bradley_terry_loss

    def nan_loss(*args, **kwargs):
        loss, m = real(*args, **kwargs)
        return loss * float("nan"), m

    monkeypatch.setattr(rm_mod, "bradley_terry_loss", nan_loss)
    out = tmp_path / "rm"
    with pytest.raises(TrainingError, match="nan at step"):
        train_reward(rm_config(tiny_data["prefs"], out))
    assert not (out / DONE_FILE).exists()


def test_mean_pooling_is_trained_saved_and_reloaded(tiny_data, tmp_path):
    from tether.models.reward import MaskedMeanPooler

    out = tmp_path / "rm_mean"
    train_reward(rm_config(tiny_data["prefs"], out, pooling="mean"))
    assert json.loads((out / META_FILE).read_text())["pooling"] == "mean"
    rm = RewardModel.load(str(out), CPU)
    assert isinstance(rm.model.base_model.pooler, MaskedMeanPooler)
    scores = rm.score(["q", "q"], ["a", "a longer answer"])
    assert torch.isfinite(scores).all() and scores[0] != scores[1]


def test_chance_level_and_interval_by_hand():
    from tether.eval.metrics import wilson_interval
    from tether.trainers.reward import chance_level
    from tether.types import BinaryFeedbackExample, PreferenceExample

    pairs = [PreferenceExample(prompt="p", chosen="a", rejected="b")] * 100
    chance, low, high = chance_level(0.6, pairs)
    assert chance == 0.5 and (low, high) == wilson_interval(60, 100) and low > 0.5
    labelled = [BinaryFeedbackExample(prompt="p", completion="c", label=i < 80) for i in range(100)]
    chance, low, _ = chance_level(0.75, labelled)
    assert chance == pytest.approx(0.8) and low < chance  # below always answering "good"


def test_a_reward_model_no_better_than_chance_stops_the_stage_and_is_kept(tmp_path, jsonl):
    from tether.errors import StageFailed

    # nothing to learn: every reply is chosen once and rejected once, for two prompts that differ by a space
    rows = []
    for i in range(40):
        a, b = f"answer {i} yes", f"answer {i} no"
        rows += [{"prompt": f"question {i}", "chosen": a, "rejected": b}, {"prompt": f"question {i} ", "chosen": b, "rejected": a}]
    out = tmp_path / "rm"
    cfg = rm_config(jsonl(tmp_path / "t.jsonl", rows), out, data={"holdout_fraction": 0.5}, on_chance="stop")
    with pytest.raises(StageFailed, match=r"no better than chance \(0.500\).*on_chance=warn"):
        train_reward(cfg)
    assert (out / META_FILE).is_file() and not (out / DONE_FILE).exists()
