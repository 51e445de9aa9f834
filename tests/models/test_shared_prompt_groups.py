"""GRPO groups: the completions of one prompt run the prompt once, with the same per-token logprobs and
gradients as the full rows."""

from __future__ import annotations

import pytest
import torch

from tether.config import ModelConfig
from tether.models.load import load_causal_lm
from tether.models.logprobs import response_logprobs
from tether.models.shared_prefix import grouped_response_logprobs, prompt_groups

CPU = torch.device("cpu")
PAD = 258  # the byte tokenizer's pad id


def rollout(prompts: list[list[int]], responses: list[list[int]]):
    """(B, T) sequences of left-padded prompts and right-padded responses, their mask, and T_p."""
    T_p, T_r = max(map(len, prompts)), max(map(len, responses))
    ids = torch.full((len(prompts), T_p + T_r), PAD)
    mask = torch.zeros_like(ids)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, T_p - len(p) : T_p], mask[i, T_p - len(p) : T_p] = torch.tensor(p), 1
        ids[i, T_p : T_p + len(r)], mask[i, T_p : T_p + len(r)] = torch.tensor(r), 1
    return ids, mask, T_p


def case():
    g = torch.Generator().manual_seed(0)
    words = lambda n: torch.randint(3, 250, (n,), generator=g).tolist()  # noqa: E731
    long_prompt, short_prompt = words(14), words(6)
    prompts = [long_prompt] * 3 + [short_prompt] * 3
    responses = [words(5), words(2) + [7, 7], words(1)] + [[9, 9] + words(4), [9, 9] + words(3), words(6)]
    return rollout(prompts, responses)


def test_prompt_groups_gather_rows_with_the_same_prompt():
    ids, mask, T_p = case()
    assert prompt_groups(ids[:, :T_p], mask[:, :T_p]) == [[0, 1, 2], [3, 4, 5]]
    unique = torch.arange(12).view(3, 4) + 3
    assert prompt_groups(unique, torch.ones_like(unique)) is None  # PPO: nothing to share


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_grouped_logprobs_and_gradients_equal_the_full_rows(kind, temperature):
    torch.manual_seed(0)
    model, _ = load_causal_lm(ModelConfig(name_or_path=f"tiny-{kind}"), CPU, dtype=torch.float64, seed=1)
    ids, mask, T_p = case()
    response_mask = mask[:, T_p:].bool()
    groups = prompt_groups(ids[:, :T_p], mask[:, :T_p])
    calls = []
    hook = model.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(kwargs["input_ids"].shape), with_kwargs=True)
    shared = grouped_response_logprobs(model, ids, mask, T_p, groups, PAD, temperature)
    hook.remove()
    assert [tuple(s) for s in calls] == [(2, 14), (6, 6)]  # two prompts once, then six responses
    full = response_logprobs(model, ids, mask, T_p, temperature)
    assert torch.allclose(shared[response_mask], full[response_mask], atol=1e-10)
    assert (shared[~response_mask] == 0).all()

    weights = torch.randn(response_mask.shape, dtype=torch.float64)
    grads = []
    for lp in (grouped_response_logprobs(model, ids, mask, T_p, groups, PAD, temperature),
               response_logprobs(model, ids, mask, T_p, temperature)):
        model.zero_grad()
        (lp * weights * response_mask).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        # llama's RMSNorm computes in float32 even in a float64 model: rounding of ~1e-7 relative to the gradient
        diff, scale = (grads[0][name] - grads[1][name]).abs().max(), grads[1][name].abs().max()
        assert diff <= 1e-6 * scale, (name, float(diff), float(scale))


def test_without_groups_or_agreement_the_full_rows_run():
    model, _ = load_causal_lm(ModelConfig(name_or_path="tiny-llama"), CPU, seed=1)
    ids, mask, T_p = case()
    groups = prompt_groups(ids[:, :T_p], mask[:, :T_p])
    calls = []
    model.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(kwargs["input_ids"].shape), with_kwargs=True)
    grouped_response_logprobs(model, ids, mask, T_p, None, PAD)
    grouped_response_logprobs(model, ids, mask, T_p, groups, PAD, agree=lambda ok: False)  # another process cannot share
    assert [tuple(s) for s in calls] == [tuple(ids.shape)] * 2
