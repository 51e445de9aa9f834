"""The LoRA reference (adapters disabled) is exactly the frozen base model, and merged saves reload."""

from __future__ import annotations

import copy

import pytest
import torch

from tether.config import LoRAConfig, ModelConfig
from tether.data.tokenize import left_pad
from tether.errors import ModelError
from tether.models.load import apply_lora, is_peft, load_causal_lm, reference_context, save_causal_lm
from tether.models.logprobs import response_logprobs
from tether.models.tiny import tiny_causal_lm


def _batch(tok, n_response: int = 6, seed: int = 0):
    """Left-padded prompts of different lengths followed by random response tokens."""
    g = torch.Generator().manual_seed(seed)
    prompts = [tok(t)["input_ids"] for t in ["Hi", "A longer prompt here", "Mid size one"]]
    ids, mask = left_pad(prompts, tok.pad_token_id)
    resp = torch.randint(0, 256, (len(prompts), n_response), generator=g)
    resp_mask = torch.ones_like(resp)
    resp_mask[0, 4:] = 0  # one response ended early (right padding)
    resp[0, 4:] = tok.pad_token_id
    return torch.cat([ids, resp], 1), torch.cat([mask, resp_mask], 1), ids.shape[1], resp_mask.bool()


def _perturb_lora(model, seed: int = 1) -> int:
    g = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
                n += 1
    return n


@pytest.fixture(scope="module")
def lora_pair():
    model, tok = tiny_causal_lm("llama", seed=0)
    model.eval()
    ref = copy.deepcopy(model).eval()
    policy = apply_lora(model, LoRAConfig(enabled=True, r=4, alpha=8))
    assert _perturb_lora(policy) > 0
    policy.eval()
    return policy, ref, tok


def test_adapters_disabled_equal_a_frozen_copy(lora_pair):
    policy, ref, tok = lora_pair
    seqs, mask, T_p, resp_mask = _batch(tok)
    with torch.no_grad():
        with reference_context(policy, None):
            lora_ref = response_logprobs(policy, seqs, mask, T_p, temperature=0.7)
        copy_ref = response_logprobs(ref, seqs, mask, T_p, temperature=0.7)
        with reference_context(policy, ref):  # a separate copy: used as it is
            copy_ref2 = response_logprobs(ref, seqs, mask, T_p, temperature=0.7)
        enabled = response_logprobs(policy, seqs, mask, T_p, temperature=0.7)
    assert (lora_ref - copy_ref)[resp_mask].abs().max() < 1e-6
    assert torch.equal(copy_ref, copy_ref2)
    # the adapters are back on after the context, and they do change the policy
    assert (enabled - copy_ref)[resp_mask].abs().max() > 1e-3


def test_lora_trains_only_adapters(lora_pair):
    policy, _, _ = lora_pair
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_no_reference_without_lora():
    model, _ = tiny_causal_lm("llama", seed=0)
    with pytest.raises(ModelError, match="reference"):
        reference_context(model, None)


def test_merged_save_reloads_with_equal_logprobs(lora_pair, tmp_path):
    policy, _, tok = lora_pair
    seqs, mask, T_p, resp_mask = _batch(tok, seed=3)
    with torch.no_grad():
        before = response_logprobs(policy, seqs, mask, T_p)
    save_causal_lm(policy, tok, tmp_path / "out")
    assert (tmp_path / "out" / "config.json").is_file()
    assert list((tmp_path / "out").glob("*.safetensors"))
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "out" / "adapter_config.json").exists()  # the top level is a plain HF model
    # the caller's model keeps its adapters
    assert is_peft(policy)
    reloaded, tok2 = load_causal_lm(ModelConfig(name_or_path=str(tmp_path / "out")), torch.device("cpu"))
    assert not is_peft(reloaded)
    assert tok2.get_vocab() == tok.get_vocab()
    with torch.no_grad():
        after = response_logprobs(reloaded.eval(), seqs, mask, T_p)
        again = response_logprobs(policy, seqs, mask, T_p)
    assert (before - after)[resp_mask].abs().max() < 1e-5
    assert torch.equal(before, again)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_plain_save_reloads_with_equal_logprobs(kind, tmp_path):
    model, tok = tiny_causal_lm(kind, seed=0)
    model.eval()
    seqs, mask, T_p, resp_mask = _batch(tok)
    save_causal_lm(model, tok, tmp_path)
    reloaded, _ = load_causal_lm(ModelConfig(name_or_path=str(tmp_path)), torch.device("cpu"))
    with torch.no_grad():
        a = response_logprobs(model, seqs, mask, T_p)
        b = response_logprobs(reloaded.eval(), seqs, mask, T_p)
    assert (a - b)[resp_mask].abs().max() < 1e-6


def test_adapter_only_save_loads_on_its_base(tmp_path):
    base, tok = tiny_causal_lm("llama", seed=0)
    save_causal_lm(base, tok, tmp_path / "base")
    model, tok = load_causal_lm(ModelConfig(name_or_path=str(tmp_path / "base")), torch.device("cpu"))
    policy = apply_lora(model, LoRAConfig(enabled=True, r=4, alpha=8))
    _perturb_lora(policy, seed=5)
    policy.eval()
    seqs, mask, T_p, resp_mask = _batch(tok, seed=4)
    with torch.no_grad():
        before = response_logprobs(policy, seqs, mask, T_p)
    save_causal_lm(policy, tok, tmp_path / "person", merge=False)
    out = tmp_path / "person"
    assert not (out / "config.json").exists() and not list(out.glob("*.safetensors"))  # no copy of the base
    adapter_bytes = sum(f.stat().st_size for f in (out / "adapter").iterdir())
    base_bytes = sum(f.stat().st_size for f in (tmp_path / "base").glob("*.safetensors"))
    assert adapter_bytes < base_bytes / 2
    reloaded, _ = load_causal_lm(ModelConfig(name_or_path=str(out)), torch.device("cpu"))
    assert not is_peft(reloaded)
    with torch.no_grad():
        after = response_logprobs(reloaded.eval(), seqs, mask, T_p)
    assert (before - after)[resp_mask].abs().max() < 1e-5
    assert (after - response_logprobs(base.eval(), seqs, mask, T_p))[resp_mask].abs().max() > 1e-3  # the adapter is in it


def test_adapter_directory_with_a_missing_base_is_one_clear_error(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text('{"base_model_name_or_path": "/nowhere/base"}')
    with pytest.raises(ModelError, match="has adapter/adapter_config.json but no adapter weights"):
        load_causal_lm(ModelConfig(name_or_path=str(tmp_path)), torch.device("cpu"))
    (tmp_path / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="model not found: /nowhere/base"):
        load_causal_lm(ModelConfig(name_or_path=str(tmp_path)), torch.device("cpu"))


def test_added_token_rows_are_the_mean_and_the_same_on_every_load(tmp_path):
    from safetensors import safe_open

    from tether.models.load import add_token_rows

    grown = []
    for seed in (1, 2):  # the global random state differs between the two loads
        torch.manual_seed(seed)
        model, tok = tiny_causal_lm("llama", seed=0)
        n = model.get_input_embeddings().weight.shape[0]
        add_token_rows(model, n + 2)
        grown.append(model)
    a, b = (m.get_input_embeddings().weight for m in grown)
    assert a.shape[0] == n + 2 and torch.equal(a, b)
    assert torch.allclose(a[n], a[:n].mean(dim=0)) and torch.equal(a[n], a[n + 1])
    policy = apply_lora(grown[0], LoRAConfig(enabled=True, r=4, alpha=8))
    save_causal_lm(policy, tok, tmp_path / "person", merge=False)
    with safe_open(str(tmp_path / "person" / "adapter" / "adapter_model.safetensors"), "pt") as f:
        assert all("lora_" in key for key in f.keys())  # the grown embeddings are not copied into the adapter
