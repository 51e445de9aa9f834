"""Choice-token scoring with hand-set logits, position-bias removal, and the SL-CAI chain on a tiny model."""

import math
import random
from types import SimpleNamespace

import torch
from torch import nn

from tether.config import GenerationConfig
from tether.constitutional.ai_feedback import LocalJudge, judge_pairs, judge_prompt
from tether.constitutional.critique_revise import cut_turn, critique_revise
from tether.constitutional.principles import Constitution, Principle
from tether.models.tiny import byte_tokenizer, tiny_causal_lm


class HandSetJudge(nn.Module):
    """A 'language model' whose next-token logits are set by hand from the prompt text.

    Every position gets the same logits: `bias_a` on token A plus `quality` on the token of the option whose
    text contains 'good'. The rest of the vocabulary gets large logits too, so only renormalisation over the
    two choices can give the expected numbers.
    """

    def __init__(self, tokenizer, choice_a: int, choice_b: int, bias_a: float, quality: float):
        super().__init__()
        self.tok, self.a, self.b = tokenizer, choice_a, choice_b
        self.bias_a, self.quality = bias_a, quality
        self.dummy = nn.Parameter(torch.zeros(1))
        self.training = False

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        B, T = input_ids.shape
        logits = torch.full((B, T, len(self.tok)), 3.0)
        for i in range(B):
            text = self.tok.decode(input_ids[i][attention_mask[i].bool()], skip_special_tokens=True)
            a_good = "(A) good" in text
            logits[i, :, self.a] = self.bias_a + (self.quality if a_good else 0.0)
            logits[i, :, self.b] = self.quality if not a_good else 0.0
        return SimpleNamespace(logits=logits)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def _judge(choices, bias_a, quality):
    tok = byte_tokenizer()
    ids = [tok(c, add_special_tokens=False)["input_ids"][-1] for c in choices]
    model = HandSetJudge(tok, ids[0], ids[1], bias_a, quality)
    return LocalJudge(model, tok, choices, torch.device("cpu"), batch_size=3)


def test_single_token_choices_read_from_last_position():
    judge = _judge(["A", "B"], bias_a=1.0, quality=0.0)
    assert judge.single_token
    probs = judge.choice_probs([judge_prompt("\n\nHuman: hi\n\nAssistant:", "Which?", "x", "y")])
    assert torch.allclose(probs, torch.tensor([[sigmoid(1.0), 1 - sigmoid(1.0)]]), atol=1e-6)


def test_multi_token_choices_shared_prefix_cancels():
    judge = _judge([" A", " B"], bias_a=0.7, quality=0.0)  # byte tokens: space + letter
    assert not judge.single_token
    logp = judge.choice_logprobs(["some prompt"])
    assert logp.shape == (1, 2) and (logp < 0).all()
    probs = judge.choice_probs(["some prompt"])
    assert torch.allclose(probs[0, 0], torch.tensor(sigmoid(0.7)), atol=1e-5)


def test_both_orders_remove_position_bias():
    dialogue, p = "\n\nHuman: help\n\nAssistant:", Principle(name="p", critique_request="c", revision_request="r")
    # a judge that only likes slot A: after averaging both orders it has no preference
    blind = _judge([" A", " B"], bias_a=2.0, quality=0.0)
    v = judge_pairs(blind, [dialogue], [p], ["good answer"], ["bad answer"])[0]
    assert abs(v.p_first - 0.5) < 1e-5 and v.position_bias > 0.3
    # quality q plus slot bias b: P_A(good first) = sigmoid(b + q), P_B(good second) = sigmoid(q - b)
    judge = _judge([" A", " B"], bias_a=1.0, quality=2.0)
    v = judge_pairs(judge, [dialogue, dialogue], [p, p], ["good answer", "bad answer"], ["bad answer", "good answer"])
    expected = 0.5 * (sigmoid(3.0) + sigmoid(1.0))
    assert abs(v[0].p_first - expected) < 1e-5
    assert abs(v[1].p_first - (1 - expected)) < 1e-5
    assert abs(v[0].confidence - expected) < 1e-5


def test_cut_turn_stops_at_next_speaker():
    assert cut_turn(" It is fine.\n\nHuman: more") == "It is fine."
    assert cut_turn("Bad.\n\nRevisionRequest: x") == "Bad."
    assert cut_turn("plain") == "plain"


def test_critique_revise_chain_on_tiny_model():
    model, tok = tiny_causal_lm("llama", seed=0)
    c = Constitution(principles=[Principle(name="p1", critique_request="Find harm.", revision_request="Fix it."),
                                 Principle(name="p2", critique_request="Find lies.", revision_request="Fix lies.")])
    gen = GenerationConfig(max_new_tokens=6, do_sample=False)
    chains = critique_revise(model, tok, ["How do I pick a lock?", "Say hi."], c, gen, torch.device("cpu"), random.Random(0),
                             rounds=2, template="\n\nHuman: {prompt}\n\nAssistant:", max_context_length=200)
    assert len(chains) == 2 and all(len(ch.steps) == 2 for ch in chains)
    assert all(s.principle in ("p1", "p2") for ch in chains for s in ch.steps)
    row = chains[0].to_json()
    assert set(row) == {"prompt", "initial", "final", "steps"} and row["prompt"] == "How do I pick a lock?"
