"""Pretraining smoke tests: a BPE tokenizer and a tiny causal LM from scratch, saved in HF format."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tether.config import ModelConfig, PretrainConfig, validate
from tether.errors import DataError, StageFailed
from tether.models.load import load_causal_lm
from tether.run import DONE_FILE
from tether.trainers import pretrain as pretrain_mod
from tether.trainers.common import plan_steps
from tether.trainers.pretrain import pack, train_pretrain, train_tokenizer, unigram_loss

CPU = torch.device("cpu")
TINY_ARCH = {"vocab_size": 320, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 64}


def pretrain_config(train_file, out, kind: str = "llama", **top) -> PretrainConfig:
    raw = {
        "data": {"train": str(train_file)},
        "arch": {**TINY_ARCH, "kind": kind},
        "block_size": 32,
        "train": {"batch_size": 4, "max_steps": 4, "learning_rate": 3e-3, "log_every": 1, "device": "cpu"},
        "output_dir": str(out),
        "on_chance": "warn",  # a few steps learn nothing; the gate has its own tests below
        **top,
    }
    return validate(PretrainConfig, raw)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_pretrain_writes_a_loadable_model_and_tokenizer(tiny_data, tmp_path, kind):
    out = tmp_path / kind
    assert train_pretrain(pretrain_config(tiny_data["text"], out, kind)) == out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss/lm"]) for r in rows)
    assert math.isfinite(rows[-1]["eval/ppl"])
    assert json.loads((out / DONE_FILE).read_text())["steps"] == 4
    model, tok = load_causal_lm(ModelConfig(name_or_path=str(out)), CPU)
    assert model.config.model_type == kind
    assert len(tok) <= 320 and tok.pad_token_id not in (None, tok.eos_token_id)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)  # no resize was needed
    assert model.generation_config.eos_token_id == tok.eos_token_id
    ids = tok("Say hello.")["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "Say hello."
    with torch.no_grad():
        out_ids = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=3, do_sample=False)
    assert out_ids.shape[1] <= len(ids) + 3


def test_max_chars_limits_the_text(tiny_data, tmp_path):
    out = tmp_path / "p"
    train_pretrain(pretrain_config(tiny_data["text"], out, max_chars=2000))
    assert (out / DONE_FILE).is_file()


def test_too_little_text_is_a_data_error(tmp_path, jsonl):
    f = jsonl(tmp_path / "t.jsonl", [{"text": "tiny"}])
    with pytest.raises(DataError, match="block_size=32"):
        train_pretrain(pretrain_config(f, tmp_path / "out"))


def test_no_text_in_the_fields(tmp_path, jsonl):
    f = jsonl(tmp_path / "t.jsonl", [{"other": "something"}])
    with pytest.raises(DataError, match="no text"):
        train_pretrain(pretrain_config(f, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_tokenizer_and_packing():
    texts = ["hello world, this is text"] * 20
    tok = train_tokenizer(texts, vocab_size=300, model_max_length=64)
    blocks = pack(texts, tok, block_size=16)
    assert blocks.shape[1] == 16 and blocks.shape[0] >= 2
    stream = blocks.flatten().tolist()
    assert stream[0] == tok.bos_token_id and tok.eos_token_id in stream


def test_block_size_longer_than_the_positions(tiny_data, tmp_path):
    from tether.errors import ConfigError

    out = tmp_path / "p"
    with pytest.raises(ConfigError, match="block_size"):
        train_pretrain(pretrain_config(tiny_data["text"], out, kind="gpt2", block_size=100))
    assert not out.exists()


def test_unigram_loss_by_hand():
    # counts of ids 0..2 in the training text: 3, 1, 0 -> add-one: 4, 2, 1 out of 7
    train = torch.tensor([0, 0, 0, 1])
    held_out = torch.tensor([[0, 2]])
    assert unigram_loss(train, held_out, vocab_size=3) == pytest.approx(-(math.log(4 / 7) + math.log(1 / 7)) / 2)


def test_plan_steps_fits_the_budget_with_a_margin():
    assert plan_steps(100, 1.0, 10)[0] == 100  # 100 s of 600: everything fits
    steps, why = plan_steps(300, 4.0, 6)  # 1200 s wanted, 0.9 * 360 s allowed
    assert steps == 81 and "allows 81" in why


def test_a_model_no_better_than_unigram_stops_the_stage_and_is_kept(tiny_data, tmp_path):
    out = tmp_path / "p"
    with pytest.raises(StageFailed, match=r"no better than a unigram model.*on_chance=warn"):
        train_pretrain(pretrain_config(tiny_data["text"], out, on_chance="stop"))
    assert (out / "model.safetensors").is_file() and not (out / DONE_FILE).exists()  # kept, not finished
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["eval/ppl"] >= rows[-1]["eval/unigram_ppl"]


def test_a_model_that_learnt_passes_the_gate(tiny_data, tmp_path):
    out = tmp_path / "p"
    cfg = pretrain_config(tiny_data["text"], out, on_chance="stop")
    cfg.train.max_steps, cfg.train.learning_rate = 80, 1e-2
    train_pretrain(cfg)
    done = json.loads((out / DONE_FILE).read_text())
    assert done["eval/ppl"] < done["eval/unigram_ppl"] and done["warnings"] == []


def test_a_budget_too_small_for_min_steps_fails_before_training(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain_mod, "seconds_per_step", lambda *a: 60.0)  # a step takes a minute here
    out = tmp_path / "p"
    with pytest.raises(StageFailed, match=r"allows only 1 steps, fewer than min_steps=3"):
        train_pretrain(pretrain_config(tiny_data["text"], out, max_minutes=2, min_steps=3))
    assert not (out / "model.safetensors").exists()
    # warn: trains the steps that fit, with the schedule over them
    train_pretrain(pretrain_config(tiny_data["text"], tmp_path / "w", max_minutes=2, min_steps=3, on_time_cap="warn"))
    done = json.loads((tmp_path / "w" / DONE_FILE).read_text())
    assert done["steps"] == done["planned_steps"] == 1


def test_a_time_cap_far_from_the_plan_stops_the_stage(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain_mod, "seconds_per_step", lambda *a: 1e-6)  # measured fast, then the cap hits at once
    out = tmp_path / "p"
    with pytest.raises(StageFailed, match=r"cut training short after 0 of 4 planned steps"):
        train_pretrain(pretrain_config(tiny_data["text"], out, max_minutes=1e-7))
    assert (out / "model.safetensors").is_file() and not (out / DONE_FILE).exists()
    train_pretrain(pretrain_config(tiny_data["text"], tmp_path / "w", max_minutes=1e-7, on_time_cap="warn"))
    assert "cut training short" in json.loads((tmp_path / "w" / DONE_FILE).read_text())["warnings"][0]
