"""tether's decode loop samples exactly what HF `generate` samples: tokens, logprobs, masks, random stream."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tether.config import DEFAULT_PROMPT_TEMPLATE, GenerationConfig, LoRAConfig
from tether.data.tokenize import left_pad, tokenize_prompts
from tether.models.load import apply_lora
from tether.models.tiny import tiny_causal_lm
from tether.rollout import decode
from tether.rollout.generate import generate
from tether.rollout.seeding import sample_seeds
from test_generate import _eos_biased  # a tiny model whose LM head favours EOS

CPU = torch.device("cpu")
PROMPTS = ["Hi", "Tell me something long about the weather today, please.", "Name a colour.", "Why?"]
SETTINGS = {
    "temperature": {"temperature": 0.7},
    "top_k": {"top_k": 5},
    "top_p": {"top_p": 0.8, "temperature": 1.3},
    "greedy": {"do_sample": False},
}


def _prompt_ids(tok, prompts=PROMPTS):
    return tokenize_prompts(prompts, tok, DEFAULT_PROMPT_TEMPLATE, 64)


def _both_engines(model, tok, prompt_ids, gen: GenerationConfig, seeds=None, rng_seed: int = 5):
    """The same call with engine=tether and engine=hf, each from the same global RNG state.

    Returns ((tether Generation, next global draw), (hf Generation, next global draw)): the draw after
    generation shows whether both consumed the global random stream alike.
    """
    out = []
    for engine in ("tether", "hf"):
        torch.manual_seed(rng_seed)
        g = generate(model, tok, prompt_ids, gen.model_copy(update={"engine": engine}), CPU, True, seeds)
        out.append((g, torch.rand(3)))
    return out


def _assert_same(a, b):
    (ga, ra), (gb, rb) = a, b
    assert torch.equal(ga.responses, gb.responses)
    assert torch.equal(ga.response_mask, gb.response_mask)
    assert torch.equal(ga.ended, gb.ended)
    assert torch.equal(ga.prompts, gb.prompts) and torch.equal(ga.prompt_mask, gb.prompt_mask)
    assert ga.sampling_logprobs.shape == gb.sampling_logprobs.shape
    assert (ga.sampling_logprobs - gb.sampling_logprobs).abs().max() <= 1e-5
    assert torch.equal(ra, rb)  # the global random stream was consumed alike


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("seeded", [False, True], ids=["global_rng", "seeds"])
def test_same_tokens_and_logprobs_as_hf_generate(kind, setting, seeded):
    model, tok = tiny_causal_lm(kind, seed=0)
    model.eval()
    ids = _prompt_ids(tok)  # four prompt lengths: left padding
    assert len({len(p) for p in ids}) == 4
    gen = GenerationConfig(max_new_tokens=12, batch_size=3, **SETTINGS[setting])  # two chunks, 3 + 1
    seeds = sample_seeds(0, "decode", range(len(ids))) if seeded else None
    tether, hf = _both_engines(model, tok, ids, gen, seeds)
    _assert_same(tether, hf)
    if setting != "greedy":  # a different seed draws other tokens: the comparison is not vacuous
        torch.manual_seed(6)
        other = generate(model, tok, ids, gen, CPU, seeds=sample_seeds(1, "decode", range(4)) if seeded else None)
        assert not torch.equal(other.responses, tether[0].responses)


def test_prompts_without_padding():
    model, tok = tiny_causal_lm("llama", seed=0)
    ids = [p[:6] for p in _prompt_ids(tok, [p for p in PROMPTS if len(p) > 6])]  # equal lengths: no attention mask
    assert len({len(p) for p in ids}) == 1 and left_pad(ids, tok.pad_token_id)[1].all()
    _assert_same(*_both_engines(model.eval(), tok, ids, GenerationConfig(max_new_tokens=10, temperature=0.8)))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_rows_that_stop_early(kind):
    model, tok = _eos_biased(kind, bias=2.5)
    ids = _prompt_ids(tok) * 2
    gen = GenerationConfig(max_new_tokens=16, temperature=0.8, batch_size=8)
    tether, hf = _both_engines(model, tok, ids, gen)
    _assert_same(tether, hf)
    g = tether[0]
    assert g.ended.any() and not g.ended.all()  # some rows stop early, the others run to the limit
    assert g.responses.shape[1] == 16
    after_eos = ~g.response_mask & g.ended.unsqueeze(1)
    assert after_eos.any() and (g.responses[after_eos] == tok.pad_token_id).all()


@pytest.mark.parametrize("seeded", [False, True], ids=["global_rng", "seeds"])
def test_all_rows_stopping_early_ends_the_loop(seeded):
    model, tok = _eos_biased("llama", bias=8.0)
    ids = _prompt_ids(tok)
    gen = GenerationConfig(max_new_tokens=32, temperature=0.9, batch_size=4)
    seeds = sample_seeds(0, "early", range(4)) if seeded else None
    tether, hf = _both_engines(model, tok, ids, gen, seeds)
    _assert_same(tether, hf)
    assert tether[0].ended.all()
    # the loop itself stops at the step where the last row emitted EOS
    x, mask = left_pad(ids, tok.pad_token_id)
    torch.manual_seed(5)
    sampler = None
    if seeded:
        from tether.rollout.seeding import SeededSampler

        sampler = SeededSampler(gen, seeds)
    tokens, logprobs = decode.decode(model, x, mask, gen, tok.pad_token_id, tok.eos_token_id, sampler)
    last_eos = int(tether[0].response_mask.sum(dim=1).max())
    assert logprobs is None
    assert tokens.shape == (4, last_eos) and last_eos < 32
    assert (tokens == tok.eos_token_id).any(dim=1).all()


def test_lora_policy():
    model, tok = tiny_causal_lm("llama", seed=0)
    policy = apply_lora(model, LoRAConfig(enabled=True, r=4, alpha=8))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:  # zero at init, which would make the adapters invisible
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    policy.train()
    assert decode.unsupported(policy) is None
    ids = _prompt_ids(tok)
    gen = GenerationConfig(max_new_tokens=10, temperature=0.9, top_k=20, batch_size=3)
    tether, hf = _both_engines(policy, tok, ids, gen)
    _assert_same(tether, hf)
    assert policy.training  # the training mode is restored
    with policy.disable_adapter():  # the adapters take part: without them the tokens differ
        torch.manual_seed(5)
        plain = generate(policy, tok, ids, gen, CPU)
    assert not torch.equal(plain.responses, tether[0].responses)


def test_bf16_weights_and_bf16_autocast():
    model, tok = tiny_causal_lm("llama", seed=0)
    ids = _prompt_ids(tok)
    gen = GenerationConfig(max_new_tokens=8, temperature=0.9, batch_size=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _assert_same(*_both_engines(model.eval(), tok, ids, gen))
    _assert_same(*_both_engines(copy.deepcopy(model).to(torch.bfloat16).eval(), tok, ids, gen))


def test_results_are_ordinary_tensors_for_training():
    """The loop runs in inference mode; what it returns must still be usable in a training forward pass."""
    model, tok = tiny_causal_lm("llama", seed=0)
    g = generate(model, tok, _prompt_ids(tok), GenerationConfig(max_new_tokens=4), CPU, return_sampling_logprobs=True)
    assert not g.responses.is_inference() and not g.sampling_logprobs.is_inference()
    model.train()
    seqs = torch.cat([g.prompts, g.responses], dim=1)
    model(input_ids=seqs).logits.float().mean().backward()
    assert model.get_input_embeddings().weight.grad is not None


def _count_hf_calls(model, monkeypatch) -> list:
    calls = []
    original = model.generate

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", counting)
    return calls


def test_engine_hf_and_unsupported_models_use_hf_generate(monkeypatch):
    model, tok = tiny_causal_lm("llama", seed=0)
    model.eval()
    calls = _count_hf_calls(model, monkeypatch)
    ids = _prompt_ids(tok)
    generate(model, tok, ids, GenerationConfig(max_new_tokens=4, batch_size=2), CPU)
    assert calls == []  # the loop samples
    generate(model, tok, ids, GenerationConfig(max_new_tokens=4, batch_size=2, engine="hf"), CPU)
    assert len(calls) == 2  # forced: one HF call per chunk

    # a generation_config that adds a logits processor the loop does not apply
    model.generation_config.repetition_penalty = 1.3
    assert "repetition_penalty" in decode.unsupported(model)
    calls.clear()
    torch.manual_seed(0)
    g = generate(model, tok, ids, GenerationConfig(max_new_tokens=6, temperature=0.8), CPU)
    assert len(calls) == 1
    torch.manual_seed(0)
    forced = generate(model, tok, ids, GenerationConfig(max_new_tokens=6, temperature=0.8, engine="hf"), CPU)
    assert torch.equal(g.responses, forced.responses)
    model.generation_config.repetition_penalty = 1.0  # neutral values are fine
    assert decode.unsupported(model) is None


def test_missing_transformers_api_falls_back_to_hf_generate_with_one_warning(monkeypatch):
    """A transformers release without the cache API the loop needs: HF generate samples, one warning says why."""
    from transformers.cache_utils import DynamicLayer

    assert decode._missing_transformers_api() is None  # the installed release has what the loop needs
    monkeypatch.setattr(DynamicLayer, "lazy_initialization", None)
    assert "lazy_initialization" in decode._missing_transformers_api()
    monkeypatch.undo()

    model, tok = tiny_causal_lm("llama", seed=0)
    model.eval()
    calls = _count_hf_calls(model, monkeypatch)
    monkeypatch.setattr(decode, "TRANSFORMERS_API_MISSING", "transformers 9.0: DynamicLayer has no update()")
    monkeypatch.setattr(decode, "_warned", set())
    assert decode.unsupported(model) == "transformers 9.0: DynamicLayer has no update()"
    ids = _prompt_ids(tok)
    with pytest.warns(RuntimeWarning, match="decode loop is off.*no update"):
        generate(model, tok, ids, GenerationConfig(max_new_tokens=4, batch_size=2), CPU)
    assert len(calls) == 2  # one HF call per chunk
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call stays quiet
        generate(model, tok, ids, GenerationConfig(max_new_tokens=4, batch_size=2), CPU)
    assert len(calls) == 4


def test_cache_keyword_follows_the_model_signature():
    class Old(nn.Module):
        def forward(self, input_ids, past_key_values=None):
            return input_ids

    class New(nn.Module):
        def forward(self, input_ids, cache=None, **kwargs):
            return input_ids

    assert decode.cache_kwarg(Old()) == "past_key_values"
    assert decode.cache_kwarg(New()) == "cache"
    assert decode.cache_kwarg(nn.Linear(2, 2)) is None


def test_unsupported_names_what_the_loop_cannot_do():
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2))
    assert "encoder-decoder" in decode.unsupported(t5)
    assert "generation config" in decode.unsupported(nn.Linear(2, 2))
    model, _ = tiny_causal_lm("gpt2", seed=0)
    assert decode.unsupported(model) is None
    model.generation_config.no_repeat_ngram_size = 3
    assert "no_repeat_ngram_size" in decode.unsupported(model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("seeded", [False, True], ids=["global_rng", "seeds"])
def test_same_tokens_as_hf_generate_on_cuda(seeded):
    model, tok = tiny_causal_lm("llama", seed=0)
    model = model.to("cuda", torch.bfloat16).eval()
    ids = _prompt_ids(tok)
    gen = GenerationConfig(max_new_tokens=16, temperature=0.9, top_p=0.9, batch_size=3)
    seeds = sample_seeds(0, "cuda", range(4)) if seeded else None
    out = []
    for engine in ("tether", "hf"):
        torch.manual_seed(5)
        g = generate(model, tok, ids, gen.model_copy(update={"engine": engine}), torch.device("cuda"), True, seeds)
        out.append((g, torch.rand(3, device="cuda")))
    _assert_same(*out)
    assert out[0][0].responses.device.type == "cuda"
