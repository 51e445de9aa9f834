"""Logprobs computed on the scored positions only equal those from the full logits."""

import pytest
import torch
from torch import nn

from tether.models.logprobs import (
    accepts_logits_to_keep, first_scored_column, position_ids_from_mask, response_logprobs, sequence_logprobs,
)
from tether.models.tiny import tiny_causal_lm


def full_logprobs(model, ids, mask, temperature=1.0):
    """log p(token t | tokens < t) for t >= 1 from the full (B, T, V) logits: (B, T-1)."""
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits.float() / temperature
    return torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


class NoKeep(nn.Module):
    """A causal LM whose forward has no `logits_to_keep` (all logits, always)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask, position_ids=None, use_cache=False):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache)


@pytest.fixture(params=["llama", "gpt2", "no_keep"])
def model(request):
    m, _ = tiny_causal_lm("gpt2" if request.param == "gpt2" else "llama", seed=3)
    m.eval()
    return NoKeep(m) if request.param == "no_keep" else m


def batch(T_p=5, T_r=4, B=3, V=259):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V - 3, (B, T_p + T_r), generator=g)
    mask = torch.ones(B, T_p + T_r, dtype=torch.long)
    mask[0, :2] = 0  # a left-padded prompt
    return ids, mask


def test_only_hf_models_report_logits_to_keep(model):
    assert accepts_logits_to_keep(model) == (not isinstance(model, NoKeep))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_response_logprobs_equal_the_full_logits(model, temperature):
    ids, mask = batch()
    head = (model.inner if isinstance(model, NoKeep) else model).get_output_embeddings()
    positions = []
    hook = head.register_forward_hook(lambda mod, inp, out: positions.append(inp[0].shape[1]))
    with torch.no_grad():
        got, entropy = response_logprobs(model, ids, mask, prompt_length=5, temperature=temperature, with_entropy=True)
    hook.remove()
    with torch.no_grad():
        want = full_logprobs(model, ids, mask, temperature)[:, 4:]  # tokens 5..8
    assert positions == [9 if isinstance(model, NoKeep) else 5]  # the LM head skips the prompt where it can
    assert got.shape == (3, 4) and entropy.shape == (3, 4)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_sequence_logprobs_sum_the_scored_tokens(model):
    ids, mask = batch(T_p=4, T_r=5)
    loss_mask = torch.zeros_like(ids, dtype=torch.bool)
    loss_mask[0, 6:] = True  # rows whose replies start at different columns
    loss_mask[1, 5:8] = True
    loss_mask[2, 7:] = True
    with torch.no_grad():
        got = sequence_logprobs(model, ids, mask, loss_mask)
        want = (full_logprobs(model, ids, mask) * loss_mask[:, 1:]).sum(-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_entropy_without_grad_keeps_logprob_gradients():
    m, _ = tiny_causal_lm("llama", seed=3)
    ids, mask = batch()
    logprobs, entropy = response_logprobs(m, ids, mask, prompt_length=5, with_entropy=True, entropy_grad=False)
    assert logprobs.requires_grad and not entropy.requires_grad


def test_first_scored_column():
    loss_mask = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 1, 1, 0]], dtype=torch.bool)
    assert first_scored_column(loss_mask) == 2
    assert first_scored_column(torch.zeros(2, 5, dtype=torch.bool)) == 5
    assert first_scored_column(torch.ones(2, 5, dtype=torch.bool)) == 1  # column 0 is never predicted
