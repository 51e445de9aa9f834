"""SFT smoke tests on a tiny random-init Llama: a few steps, finite loss, the right weights change."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import tether.trainers.sft as sft_mod
from tether.config import ModelConfig, SFTConfig, validate
from tether.errors import ConfigError, DataError, TrainingError
from tether.models.load import load_causal_lm
from tether.models.tiny import tiny_causal_lm
from tether.run import DONE_FILE
from tether.trainers.sft import train_sft

CPU = torch.device("cpu")


def sft_config(train_file, out, **overrides) -> SFTConfig:
    raw = {
        "model": {"name_or_path": "tiny-llama"},
        "data": {"train": str(train_file), "max_length": 96, "max_prompt_length": 64},
        "train": {"batch_size": 4, "max_steps": 3, "learning_rate": 5e-3, "log_every": 1, "device": "cpu", "warmup_ratio": 0.0},
        "output_dir": str(out),
    }
    for key, value in overrides.items():
        node = raw
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return validate(SFTConfig, raw)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def captured(monkeypatch):
    """The model object `train_sft` saves at the end (and at each checkpoint)."""
    seen = []
    real = sft_mod.save_causal_lm

    def save(model, tokenizer, out_dir, merge=True):
        seen.append(model)
        real(model, tokenizer, out_dir, merge)

    monkeypatch.setattr(sft_mod, "save_causal_lm", save)
    return seen


def test_sft_full_finetune(tiny_data, tmp_path, captured):
    out = tmp_path / "sft"
    cfg = sft_config(tiny_data["sft"], out, train__save_every=2)
    assert train_sft(cfg) == out
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["loss/sft"]) for r in rows)
    assert (out / DONE_FILE).is_file() and json.loads((out / DONE_FILE).read_text())["steps"] == 3
    assert (out / "config.yaml").is_file()
    # a complete checkpoint, written atomically
    assert (out / "checkpoints" / "step-2" / "config.json").is_file()
    assert not list((out / "checkpoints").glob("*.tmp"))
    # every weight of a full fine-tune moved; the final directory reloads as the trained model
    init = tiny_causal_lm("llama", seed=0)[0].state_dict()
    trained = captured[-1].state_dict()
    assert all(not torch.equal(init[k], trained[k]) for k in init if k.endswith("q_proj.weight"))
    reloaded, tok = load_causal_lm(ModelConfig(name_or_path=str(out)), CPU)
    for k, v in reloaded.state_dict().items():
        assert torch.equal(v, trained[k]), k
    assert tok.pad_token_id != tok.eos_token_id


def test_sft_loss_goes_down_when_overfitting(tiny_data, tmp_path):
    out = tmp_path / "sft"
    train_sft(sft_config(tiny_data["sft"], out, data__max_samples=4, train__max_steps=5, train__batch_size=4, train__learning_rate=1e-2,
                         train__lr_scheduler="constant"))
    losses = [r["loss/sft"] for r in _metrics(out)]
    assert losses[-1] < losses[0]


def test_sft_lora_changes_only_adapters(tiny_data, tmp_path, captured):
    out = tmp_path / "lora"
    cfg = sft_config(tiny_data["sft"], out, model__lora={"enabled": True, "r": 4, "alpha": 8})
    train_sft(cfg)
    assert all(math.isfinite(r["loss/sft"]) for r in _metrics(out))
    model = captured[-1]
    init = tiny_causal_lm("llama", seed=0)[0].state_dict()
    base, lora_b = {}, []
    for name, p in model.state_dict().items():
        if "lora_B" in name:
            lora_b.append(p)
        elif "lora_" not in name:
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            base[key] = p
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # adapters trained (B starts at zero)
    assert set(base) == set(init)
    for k, p in base.items():
        assert torch.equal(p, init[k]), f"base weight {k} changed"
    # the output is the merged model (plus the adapters) and reloads with the trained behaviour
    assert (out / "adapter" / "adapter_config.json").is_file()
    reloaded, _ = load_causal_lm(ModelConfig(name_or_path=str(out)), CPU)
    x = torch.tensor([[1, 50, 60, 70, 80]])
    with torch.no_grad():
        model.eval()
        a = model(input_ids=x).logits
        b = reloaded.eval()(input_ids=x).logits
    assert (a - b).abs().max() < 1e-4


def test_sft_on_preference_rows_with_eval_file(tiny_data, tmp_path):
    out = tmp_path / "sft"
    cfg = sft_config(tiny_data["prefs"], out, data__eval=str(tiny_data["sft"]), train__eval_every=2)
    train_sft(cfg)
    rows = _metrics(out)
    assert any("eval/loss" in r for r in rows)
    assert math.isfinite(rows[-1]["eval/loss"])


def test_bad_data_stops_before_anything_is_written(tmp_path, jsonl):
    bad = jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "response": "r"}, {"prompt": "p"}])
    out = tmp_path / "out"
    with pytest.raises(DataError, match=f"{bad}:2"):
        train_sft(sft_config(bad, out))
    assert not out.exists()


def test_missing_data_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl"):
        train_sft(sft_config(tmp_path / "nope.jsonl", tmp_path / "out"))


def test_max_length_longer_than_the_context(tiny_data, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="data.max_length=1024.*512"):
        train_sft(sft_config(tiny_data["sft"], out, data__max_length=1024))
    assert not out.exists()


def test_too_long_row_with_truncation_error(tiny_data, tmp_path):
    with pytest.raises(DataError, match=f"{tiny_data['sft']}:\\d+.*max_length=20"):
        train_sft(sft_config(tiny_data["sft"], tmp_path / "out", data__max_length=20, data__truncation="error"))


def test_output_dir_with_a_different_run(tiny_data, tmp_path):
    out = tmp_path / "sft"
    train_sft(sft_config(tiny_data["sft"], out, train__max_steps=1))
    with pytest.raises(ConfigError, match="overwrite"):
        train_sft(sft_config(tiny_data["sft"], out, train__max_steps=2))
    train_sft(sft_config(tiny_data["sft"], out, train__max_steps=2, overwrite=True))
    assert json.loads((out / DONE_FILE).read_text())["steps"] == 2


def _nan_on_call(monkeypatch, n: int):
    real = sft_mod.sft_loss
    calls = {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        value, m = real(*args, **kwargs)
        return (value * float("nan") if calls["n"] >= n else value), m

    monkeypatch.setattr(sft_mod, "sft_loss", loss)


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tiny_data, tmp_path, monkeypatch):
    _nan_on_call(monkeypatch, 3)  # the third optimizer step (one micro-batch per step)
    out = tmp_path / "sft"
    with pytest.raises(TrainingError) as info:
        train_sft(sft_config(tiny_data["sft"], out, train__save_every=1, train__max_steps=4))
    msg = str(info.value)
    assert "nan" in msg and "step" in msg
    assert str(out / "checkpoints" / "step-2") in msg
    assert (out / "checkpoints" / "step-2" / "config.json").is_file()
    assert not (out / DONE_FILE).exists()


def test_nan_step_number_matches_the_metrics_numbering(tiny_data, tmp_path, monkeypatch):
    _nan_on_call(monkeypatch, 3)
    with pytest.raises(TrainingError, match="at step 3"):
        train_sft(sft_config(tiny_data["sft"], tmp_path / "sft", train__save_every=1, train__max_steps=4))


def test_grad_accumulation(tiny_data, tmp_path):
    out = tmp_path / "sft"
    train_sft(sft_config(tiny_data["sft"], out, train__batch_size=2, train__grad_accum_steps=2, train__max_steps=2))
    assert [r["step"] for r in _metrics(out)] == [1, 2]


def test_grad_accumulation_larger_than_an_epoch(tiny_data, tmp_path, monkeypatch):
    real, calls = sft_mod.batches, {"n": 0}

    def counted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 20:
            raise RuntimeError("train_sft is looping over epochs without taking a step")
        return real(*args, **kwargs)

    monkeypatch.setattr(sft_mod, "batches", counted)
    out = tmp_path / "sft"
    train_sft(sft_config(tiny_data["sft"], out, data__max_samples=2, train__batch_size=2, train__grad_accum_steps=2,
                         train__max_steps=2))
    assert (out / DONE_FILE).is_file()
