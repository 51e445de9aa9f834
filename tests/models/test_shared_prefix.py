"""Shared-prompt forward (key/value cache reuse): same scores, logprobs and gradients as full sequences."""

from __future__ import annotations

import pytest
import torch

from tether.config import ModelConfig
from tether.data.tokenize import reward_texts, tokenize_for_reward
from tether.models import shared_prefix as sp
from tether.models.load import load_causal_lm
from tether.models.logprobs import sequence_logprobs
from tether.models.reward import RewardMeta, load_sequence_classifier
from tether.models.shared_prefix import (
    can_share, common_prefix_length, is_causal_decoder, pair_groups, pair_split, shared_sequence_logits,
    shared_sequence_logprobs, split_shared_prefix,
)
from tether.trainers.reward import text_scores

CPU = torch.device("cpu")
PAD = 258  # the byte tokenizer's pad id
TEMPLATE = "\n\nHuman: {prompt}\n\nAssistant:"


def policy(kind: str, seed: int = 0):
    model, tok = load_causal_lm(ModelConfig(name_or_path=f"tiny-{kind}"), CPU, dtype=torch.float32, seed=seed)
    assert tok.pad_token_id == PAD
    return model


def padded(rows: list[list[int]], scored_from: list[int], left: bool = False):
    """(N, T) ids, attention mask and loss mask (True from column `scored_from[i]` of row i's real tokens)."""
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), PAD)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    loss = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, (r, s) in enumerate(zip(rows, scored_from)):
        cols = slice(T - len(r), T) if left else slice(0, len(r))
        ids[i, cols], mask[i, cols] = torch.tensor(r), 1
        loss[i, cols] = torch.arange(len(r)) >= s
    return ids, mask, loss


def pair_batch(seed: int = 0):
    """Three pairs with different prompt lengths: one whose replies start with the same 3 tokens, and one
    with no common prefix at all; rows 0..2 chosen, 3..5 rejected."""
    g = torch.Generator().manual_seed(seed)
    tok = lambda n: torch.randint(3, 250, (n,), generator=g).tolist()  # noqa: E731
    p0, p1 = tok(6), tok(11)
    same = tok(3)
    chosen = [p0 + tok(5), p1 + same + tok(4), tok(7)]
    rejected = [p0 + tok(8), p1 + same + tok(2), tok(9)]
    prompt_len = [6, 11, 2, 6, 11, 2]
    return chosen + rejected, prompt_len


# --------------------------------------------------------------------------- which models share


def test_causal_decoders_share_and_encoders_do_not():
    from peft import LoraConfig, get_peft_model

    llama, gpt2 = policy("llama"), policy("gpt2")
    bert, _ = load_sequence_classifier("tiny-bert")
    llama_rm, _ = load_sequence_classifier("tiny-llama")
    assert is_causal_decoder(llama) and is_causal_decoder(gpt2) and is_causal_decoder(llama_rm)
    assert not is_causal_decoder(bert) and not can_share(bert)
    lora = get_peft_model(llama, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert can_share(lora)
    enable = getattr(llama_rm, "activation_checkpointing_enable", None) or llama_rm.gradient_checkpointing_enable
    enable()
    llama_rm.train()
    assert not can_share(llama_rm)  # checkpointing turns the cache off while training
    llama_rm.eval()
    assert can_share(llama_rm)


# --------------------------------------------------------------------------- splitting


def test_split_is_the_longest_common_prefix_cut_at_the_limits():
    rows, prompt_len = pair_batch()
    assert common_prefix_length([rows[1], rows[4]]) == 14  # prompt 11 + 3 equal reply tokens
    ids, mask, _ = padded(rows, prompt_len)
    split = split_shared_prefix(ids, mask, [[i, 3 + i] for i in range(3)], PAD, limits=prompt_len, min_saving=0.0)
    # pair 2 has no common prefix: two single rows, each with its own first tokens (up to its limit 2)
    assert split.prefix_mask.sum(-1).tolist() == [6, 11, 2, 2]
    assert split.group.tolist() == [0, 1, 2, 0, 1, 3]
    for i, r in enumerate(rows):  # prefix + continuation give the row back, token for token
        p = split.prefix_ids[split.group[i]][split.prefix_mask[split.group[i]].bool()]
        s = split.suffix_ids[i][split.suffix_mask[i].bool()]
        assert torch.cat([p, s]).tolist() == r
    no_limit = split_shared_prefix(ids, mask, [[i, 3 + i] for i in range(3)], PAD, min_saving=0.0)
    assert no_limit.prefix_mask.sum(-1).tolist()[:2] == [6, 14]


def test_split_refuses_when_it_does_not_pay_or_cannot_cut():
    rows, prompt_len = pair_batch()
    ids, mask, _ = padded(rows, prompt_len)
    singles = [[i] for i in range(6)]
    assert split_shared_prefix(ids, mask, singles, PAD) is None  # nothing shared: no saving
    one_token, _, _ = padded([[5], [5]], [0, 0])
    assert split_shared_prefix(one_token, torch.ones_like(one_token), [[0, 1]], PAD) is None


def test_pair_groups_join_a_rankings_completions():
    assert pair_groups([(0, 1), (0, 2), (3, 4)], 6) == [[0, 1, 2], [3, 4], [5]]


# --------------------------------------------------------------------------- DPO logprobs


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("left", [False, True])
def test_shared_logprobs_and_gradients_equal_full_sequences(kind, left):
    model = policy(kind, seed=1)
    rows, prompt_len = pair_batch()
    right = padded(rows, prompt_len)  # sequence_logprobs reads right-padded rows
    ids, mask, loss = padded(rows, prompt_len, left=left)
    split = split_shared_prefix(ids, mask, [[i, 3 + i] for i in range(3)], PAD, limits=prompt_len, min_saving=0.0)

    full = sequence_logprobs(model, *right)
    full.sum().backward()
    full_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    shared = shared_sequence_logprobs(model, split, loss)
    shared.sum().backward()
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, full_grads[n], atol=1e-5, rtol=1e-4, msg=n)
    # averages too (IPO)
    with torch.no_grad():
        torch.testing.assert_close(shared_sequence_logprobs(model, split, loss, average=True),
                                   sequence_logprobs(model, *right, average=True), atol=1e-5, rtol=1e-5)


def test_pair_split_stops_at_the_first_scored_token():
    rows, prompt_len = pair_batch()
    ids, mask, loss = padded(rows, prompt_len)
    split = pair_split(ids, mask, loss, PAD)
    assert split is not None
    assert split.prefix_mask.sum(-1).tolist()[:2] == [6, 11]  # not 14: the 3 equal reply tokens are scored
    assert bool(split.cut(loss).any(-1).all())  # every scored token is in a continuation


def test_pads_do_not_change_real_results():
    model = policy("llama", seed=2)
    rows, prompt_len = pair_batch()
    ids, mask, loss = padded(rows, prompt_len)
    split = pair_split(ids, mask, loss, PAD)
    with torch.no_grad():
        before = shared_sequence_logprobs(model, split, loss)
        split.prefix_ids[split.prefix_mask == 0] = 7  # other tokens under the padding
        split.suffix_ids[split.suffix_mask == 0] = 9
        after = shared_sequence_logprobs(model, split, loss)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- reward-model scores


def rm_texts():
    prompts = ["What is 2+2?", "Tell me a joke, please, a long one.", "Hi"]
    replies = [["It is 4.", "It is 5."], ["Why did the chicken cross the road?", "No."], ["Hello!", "Go away.", "Hi there."]]
    texts, groups = [], []
    for p, rs in zip(prompts, replies):
        groups.append(list(range(len(texts), len(texts) + len(rs))))
        texts += reward_texts([p] * len(rs), rs, TEMPLATE)
    return texts, groups


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_reward_scores_and_gradients_equal_full_sequences(one_process, kind):
    model, tok = load_sequence_classifier(f"tiny-{kind}", seed=3)
    texts, groups = rm_texts()
    meta = RewardMeta()
    full = text_scores(model, tok, texts, meta, 128, CPU, one_process)
    full.pow(2).sum().backward()
    full_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ids, mask = tokenize_for_reward(tok, texts, 128)
    split = split_shared_prefix(ids, mask, groups, tok.pad_token_id)
    assert split is not None and split.prefix_ids.shape[0] == 3  # one prompt pass per group (a ranking of 3 too)
    shared = shared_sequence_logits(model, split)[:, 0]
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text_scores(model, tok, texts, meta, 128, CPU, one_process, groups), full.detach(), atol=1e-5, rtol=1e-5)
    shared.pow(2).sum().backward()
    assert full_grads
    for n, p in model.named_parameters():
        if n in full_grads:
            torch.testing.assert_close(p.grad, full_grads[n], atol=1e-5, rtol=1e-4, msg=n)


def test_left_truncated_pairs_share_only_what_is_common():
    model, tok = load_sequence_classifier("tiny-llama", seed=4)
    texts = reward_texts(["x" * 80] * 2, ["short", "a reply long enough to push the prompt out further"], TEMPLATE)
    ids, mask = tokenize_for_reward(tok, texts, 64)  # both cut from the left, by different amounts
    rows = [ids[i][mask[i].bool()].tolist() for i in range(2)]
    assert common_prefix_length(rows) < 4  # BOS and little else
    split = split_shared_prefix(ids, mask, [[0, 1]], tok.pad_token_id, min_saving=-1.0)  # forced, though it saves nothing
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(shared_sequence_logits(model, split), full, atol=1e-5, rtol=1e-5)
    assert split_shared_prefix(ids, mask, [[0, 1]], tok.pad_token_id) is None  # by default: full rows


def test_encoders_keep_the_full_sequence_path(one_process, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an encoder must not take the shared-prefix path")

    monkeypatch.setattr(sp, "shared_sequence_logits", refuse)
    texts, groups = rm_texts()
    for pooling in ("model", "mean"):
        model, tok = load_sequence_classifier("tiny-bert", seed=5, pooling=pooling)
        with torch.no_grad():
            plain = text_scores(model, tok, texts, RewardMeta(pooling=pooling), 64, CPU, one_process)
            grouped = text_scores(model, tok, texts, RewardMeta(pooling=pooling), 64, CPU, one_process, groups)
        assert torch.equal(plain, grouped)
