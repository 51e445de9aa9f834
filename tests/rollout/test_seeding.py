"""Per-sample seeded sampling: a response does not depend on its batch, and follows the tempered distribution."""

from __future__ import annotations

import torch

from tether.config import DEFAULT_PROMPT_TEMPLATE, GenerationConfig
from tether.data.tokenize import tokenize_prompts
from tether.models.logprobs import response_logprobs
from tether.models.tiny import tiny_causal_lm
from tether.rollout.generate import generate
from tether.rollout.seeding import SeededSampler, sample_seeds

CPU = torch.device("cpu")
PROMPTS = ["Hi", "Tell me something long about the weather today, please.", "Name a colour.", "Why?"]


def _setup():
    model, tok = tiny_causal_lm("llama", seed=0)
    return model.eval(), tok, tokenize_prompts(PROMPTS, tok, DEFAULT_PROMPT_TEMPLATE, 64)


def test_seeds_depend_on_seed_stream_and_index_only():
    a = sample_seeds(0, "rollout-1", range(4))
    assert a == sample_seeds(0, "rollout-1", range(4)) and len(set(a)) == 4
    assert a[2:] == sample_seeds(0, "rollout-1", range(2, 4))  # a shard's seeds are its slice of the global ones
    assert not set(a) & set(sample_seeds(0, "rollout-2", range(4))) and not set(a) & set(sample_seeds(1, "rollout-1", range(4)))
    assert all(0 <= s < 2**63 for s in a)


def test_a_response_is_the_same_alone_or_in_any_batch():
    model, tok, ids = _setup()
    seeds = sample_seeds(0, "x", range(4))
    gen = GenerationConfig(max_new_tokens=10, temperature=0.9, top_p=0.95)
    together = generate(model, tok, ids, gen.model_copy(update={"batch_size": 4}), CPU, seeds=seeds)
    torch.manual_seed(123)  # the global generator plays no part
    for i in range(4):  # alone: no padding, a batch of one
        alone = generate(model, tok, ids[i : i + 1], gen.model_copy(update={"batch_size": 1}), CPU, seeds=seeds[i : i + 1])
        n = int(alone.response_mask.sum())
        assert torch.equal(alone.responses[0, :n], together.responses[i, :n])
        assert int(together.response_mask[i].sum()) == n
    other = generate(model, tok, ids, gen, CPU, seeds=sample_seeds(1, "x", range(4)))
    assert not torch.equal(other.responses, together.responses)


def test_seeded_rollout_logprobs_equal_a_fresh_forward_pass():
    model, tok, ids = _setup()
    gen = generate(model, tok, ids, GenerationConfig(max_new_tokens=8, temperature=0.7, batch_size=3), CPU,
                   return_sampling_logprobs=True, seeds=sample_seeds(0, "y", range(4)))
    seqs = torch.cat([gen.prompts, gen.responses], 1)
    mask = torch.cat([gen.prompt_mask, gen.response_mask.long()], 1)
    with torch.no_grad():
        fresh = response_logprobs(model, seqs, mask, gen.prompts.shape[1], 0.7)
    assert (gen.sampling_logprobs - fresh).abs()[gen.response_mask].max() < 1e-4


def test_top_k_1_is_greedy():
    model, tok, ids = _setup()
    greedy = generate(model, tok, ids, GenerationConfig(max_new_tokens=6, do_sample=False), CPU)
    seeded = generate(model, tok, ids, GenerationConfig(max_new_tokens=6, top_k=1), CPU, seeds=sample_seeds(0, "z", range(4)))
    assert torch.equal(greedy.responses, seeded.responses)


def test_draws_follow_the_tempered_distribution():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    n, temperature = 4000, 0.8
    sampler = SeededSampler(GenerationConfig(temperature=temperature), sample_seeds(0, "dist", range(n)))
    out = sampler(torch.zeros(n, 1, dtype=torch.long), logits.expand(n, 4).clone())  # (n, V)
    assert torch.isinf(out).sum(-1).eq(3).all()  # one finite entry per row: the drawn token
    freq = torch.bincount(out.argmax(-1), minlength=4).float() / n
    expected = torch.softmax(logits / temperature, -1)
    assert (freq - expected).abs().max() < 0.03  # ~4 standard errors at n = 4000
