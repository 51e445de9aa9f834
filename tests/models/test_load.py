"""Loading models and tokenizers: pad tokens, clear errors for unusable directories, tiny names."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tether.config import ModelConfig
from tether.errors import ModelError
from tether.models.load import check_model_path, load_causal_lm, load_tokenizer, resolve_dtype
from tether.models.tiny import BOS, EOS, byte_tokenizer, tiny_causal_lm, tiny_config

CPU = torch.device("cpu")


def _tokenizer_without_pad(pad_is_eos: bool = False) -> PreTrainedTokenizerFast:
    """A byte tokenizer with BOS and EOS but no pad token (or pad = EOS, GPT-2 style)."""
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for t in (BOS, EOS):
        vocab[t] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([BOS, EOS])
    extra = {"pad_token": EOS} if pad_is_eos else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, **extra)


@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_load_tokenizer_adds_a_pad_distinct_from_eos(tmp_path, pad_is_eos):
    raw = _tokenizer_without_pad(pad_is_eos)
    assert (raw.pad_token is None) != pad_is_eos
    raw.save_pretrained(tmp_path)
    tok = load_tokenizer(str(tmp_path))
    assert tok.pad_token is not None
    assert tok.pad_token_id != tok.eos_token_id
    assert len(tok) == len(raw) + 1


def test_load_tokenizer_keeps_a_good_pad(tmp_path):
    raw = byte_tokenizer()
    raw.save_pretrained(tmp_path)
    tok = load_tokenizer(str(tmp_path))
    assert tok.pad_token_id == raw.pad_token_id and len(tok) == len(raw)


def test_load_causal_lm_resizes_for_an_added_pad(tmp_path):
    from transformers import AutoModelForCausalLM

    raw = _tokenizer_without_pad()
    cfg = tiny_config("llama", byte_tokenizer())
    cfg.vocab_size, cfg.pad_token_id = len(raw), None
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    raw.save_pretrained(tmp_path)
    model, tok = load_causal_lm(ModelConfig(name_or_path=str(tmp_path)), CPU)
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == len(raw) + 1
    assert model.config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id


def test_missing_model_dir_names_the_path(tmp_path):
    path = str(tmp_path / "no_such_model")
    with pytest.raises(ModelError, match="not found") as info:
        check_model_path(path)
    assert path in str(info.value)
    with pytest.raises(ModelError) as info:
        load_causal_lm(ModelConfig(name_or_path=path), CPU)
    assert path in str(info.value)


def test_relative_runs_path_is_not_a_hub_id():
    with pytest.raises(ModelError, match="runs/nothing/here"):
        check_model_path("runs/nothing/here")


def test_dir_without_weights_names_the_path(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelError, match="no weights") as info:
        check_model_path(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_dir_without_config_names_the_path(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="config.json") as info:
        check_model_path(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_saved_model_dir_passes(tiny_models):
    check_model_path(tiny_models["llama"])


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_tiny_names_build_random_models(name):
    model, tok = load_causal_lm(ModelConfig(name_or_path=name), CPU, seed=0)
    again, _ = load_causal_lm(ModelConfig(name_or_path=name), CPU, seed=0)
    assert tok.pad_token_id != tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert all(not isinstance(m, torch.nn.Dropout) or m.p == 0.0 for m in model.modules())


def test_tiny_model_seed_changes_weights():
    a, _ = tiny_causal_lm("llama", seed=0)
    b, _ = tiny_causal_lm("llama", seed=1)
    assert not torch.equal(a.get_input_embeddings().weight, b.get_input_embeddings().weight)


def test_dtype_auto_is_float32_on_cpu():
    assert resolve_dtype("auto", CPU) == torch.float32
    assert resolve_dtype("bfloat16", CPU) == torch.bfloat16
