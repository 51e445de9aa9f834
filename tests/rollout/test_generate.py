"""Generation: rollout logprobs equal a fresh forward pass, EOS truncation, left padding."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tether.config import DEFAULT_PROMPT_TEMPLATE, GenerationConfig
from tether.data.tokenize import tokenize_prompts
from tether.models.logprobs import response_logprobs
from tether.models.tiny import tiny_causal_lm
from tether.rollout.generate import decode_responses, generate
from tether.rollout.sample import sample_completions, sample_to_file

CPU = torch.device("cpu")
PROMPTS = ["Hi", "Tell me something long about the weather today, please.", "Name a colour.", "Why?"]


def _prompt_ids(tok, prompts=PROMPTS):
    return tokenize_prompts(prompts, tok, DEFAULT_PROMPT_TEMPLATE, 64)


def _eos_biased(kind: str, bias: float = 5.0):
    """A tiny model whose LM head favours EOS, so responses end at different lengths."""
    model, tok = tiny_causal_lm(kind, seed=0)
    old = model.get_output_embeddings()
    head = nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[tok.eos_token_id] = bias
    model.config.tie_word_embeddings = False
    model.set_output_embeddings(head)
    return model.eval(), tok


def _sequences(gen):
    return torch.cat([gen.prompts, gen.responses], 1), torch.cat([gen.prompt_mask, gen.response_mask.long()], 1)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_rollout_logprobs_equal_a_fresh_forward_pass(kind, temperature):
    model, tok = tiny_causal_lm(kind, seed=0)
    model.eval()
    torch.manual_seed(0)
    gen_cfg = GenerationConfig(max_new_tokens=8, temperature=temperature, batch_size=3)  # two chunks
    gen = generate(model, tok, _prompt_ids(tok), gen_cfg, CPU, return_sampling_logprobs=True)
    seqs, mask = _sequences(gen)
    with torch.no_grad():
        fresh = response_logprobs(model, seqs, mask, gen.prompts.shape[1], temperature)
    assert gen.sampling_logprobs.shape == gen.responses.shape == fresh.shape
    diff = (gen.sampling_logprobs - fresh).abs()[gen.response_mask]
    assert diff.numel() > 0
    assert diff.max() < 1e-4


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_rollout_logprobs_with_early_eos(kind):
    model, tok = _eos_biased(kind)
    torch.manual_seed(1)
    gen = generate(model, tok, _prompt_ids(tok) * 2, GenerationConfig(max_new_tokens=8, temperature=0.7), CPU, True)
    seqs, mask = _sequences(gen)
    with torch.no_grad():
        fresh = response_logprobs(model, seqs, mask, gen.prompts.shape[1], 0.7)
    assert gen.ended.any()
    assert (gen.sampling_logprobs - fresh).abs()[gen.response_mask].max() < 1e-4


def test_eos_truncation_on_a_real_model():
    model, tok = _eos_biased("llama")
    pad, eos = tok.pad_token_id, tok.eos_token_id
    assert pad != eos
    torch.manual_seed(0)
    gen = generate(model, tok, _prompt_ids(tok) * 2, GenerationConfig(max_new_tokens=8), CPU)
    assert gen.ended.any()
    for row, m, ended in zip(gen.responses.tolist(), gen.response_mask.tolist(), gen.ended.tolist()):
        if eos in row:
            k = row.index(eos)
            assert ended
            assert m == [True] * (k + 1) + [False] * (len(row) - k - 1)
            assert all(t == pad for t in row[k + 1 :])
        else:
            assert not ended and all(m) and pad not in row


class _FakePolicy(nn.Module):
    """Returns fixed new tokens, including junk after EOS that must become pad."""

    def __init__(self, new_tokens: torch.Tensor):
        super().__init__()
        self.new_tokens = new_tokens

    def generate(self, input_ids, attention_mask, **kwargs):
        new = self.new_tokens[: input_ids.shape[0]]
        V = 300
        logits = tuple(torch.zeros(new.shape[0], V) for _ in range(new.shape[1]))
        return SimpleNamespace(sequences=torch.cat([input_ids, new], 1), logits=logits)


def test_tokens_after_the_first_eos_become_masked_pad():
    E, P = 7, 9
    tok = SimpleNamespace(pad_token_id=P, eos_token_id=E)
    new = torch.tensor([
        [1, E, 2, E],  # junk after EOS, and a second EOS
        [1, 2, 3, 4],  # never ended
        [E, 5, 5, 5],  # ended at once
    ])
    policy = _FakePolicy(new)
    policy.train()
    gen = generate(policy, tok, [[1, 2], [3], [4, 5, 6]], GenerationConfig(max_new_tokens=4), CPU)
    assert gen.responses.tolist() == [[1, E, P, P], [1, 2, 3, 4], [E, P, P, P]]
    assert gen.response_mask.tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]
    assert gen.ended.tolist() == [True, False, True]
    assert policy.training  # the training mode is restored
    assert gen.prompts.tolist() == [[P, 1, 2], [P, P, 3], [4, 5, 6]]
    assert gen.prompt_mask.tolist() == [[0, 1, 1], [0, 0, 1], [1, 1, 1]]


def test_left_padded_prompt_answers_as_when_alone():
    model, tok = tiny_causal_lm("llama", seed=0)
    model.eval()
    greedy = GenerationConfig(max_new_tokens=8, do_sample=False)
    short, long = _prompt_ids(tok, ["Hi"])[0], _prompt_ids(tok, ["A much longer prompt that needs padding"])[0]
    alone = generate(model, tok, [short], greedy, CPU, return_sampling_logprobs=True)
    batched = generate(model, tok, [long, short], greedy, CPU, return_sampling_logprobs=True)
    assert batched.prompts.shape[1] > alone.prompts.shape[1]
    n = alone.responses.shape[1]
    assert batched.responses[1, :n].tolist() == alone.responses[0].tolist()
    assert (batched.sampling_logprobs[1, :n] - alone.sampling_logprobs[0]).abs().max() < 1e-4
    # and the trainer's forward pass agrees for the padded row
    seqs, mask = _sequences(batched)
    seqs1, mask1 = _sequences(alone)
    with torch.no_grad():
        lp_batched = response_logprobs(model, seqs, mask, batched.prompts.shape[1])[1, :n]
        lp_alone = response_logprobs(model, seqs1, mask1, alone.prompts.shape[1])[0]
    assert (lp_batched - lp_alone).abs().max() < 1e-4


def test_decode_responses_drops_eos_and_pad():
    model, tok = tiny_causal_lm("llama", seed=0)
    hello = tok("Hello", add_special_tokens=False)["input_ids"]
    responses = torch.tensor([hello + [tok.eos_token_id, tok.pad_token_id], hello + [33, 34]])
    mask = torch.tensor([[True] * (len(hello) + 1) + [False], [True] * (len(hello) + 2)])
    assert decode_responses(tok, responses, mask) == ["Hello", "Hello" + tok.decode([33, 34])]


def test_sample_completions_and_campaign_file(tiny_models, tiny_data, tmp_path):
    gen = GenerationConfig(max_new_tokens=4)
    out = sample_completions(tiny_models["llama"], ["Hi", "Bye"], k=3, gen=gen)
    assert len(out) == 2 and all(len(c) == 3 and all(isinstance(s, str) for s in c) for c in out)
    with pytest.raises(ValueError):
        sample_completions(tiny_models["llama"], ["Hi"], k=0)
    n = sample_to_file(tiny_models["llama"], str(tiny_data["prompts"]), 2, str(tmp_path / "c.jsonl"), gen, max_prompts=3)
    rows = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert n == 3 == len(rows)
    assert set(rows[0]) == {"id", "prompt", "completions", "model"} and len(rows[0]["completions"]) == 2
