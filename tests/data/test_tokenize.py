"""Tokenization: response masks, EOS, truncation rules and padding sides."""

from __future__ import annotations

import pytest
import torch

from tether.config import DEFAULT_PROMPT_TEMPLATE
from tether.data.tokenize import (
    collate_sft, format_prompt, left_pad, reward_texts, tokenize_for_reward, tokenize_prompts, tokenize_sft,
)
from tether.errors import DataError
from tether.models.tiny import byte_tokenizer
from tether.types import SFTExample

T = DEFAULT_PROMPT_TEMPLATE


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def test_format_prompt_keeps_dialogues():
    assert format_prompt(" Hi ", T) == "\n\nHuman: Hi\n\nAssistant:"
    dialogue = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant: "
    assert format_prompt(dialogue, T) == dialogue.rstrip()


def test_sft_mask_covers_response_and_eos_only(tok):
    (item,) = tokenize_sft([SFTExample("Hi", "Yo")], tok, T, max_length=64, max_prompt_length=48, truncation="error")
    prompt_ids = tok(format_prompt("Hi", T))["input_ids"]
    assert item.input_ids[0] == tok.bos_token_id
    assert item.input_ids[-1] == tok.eos_token_id
    assert item.input_ids[: len(prompt_ids)] == prompt_ids
    assert tok.decode(item.input_ids[len(prompt_ids) : -1]) == " Yo"
    assert item.loss_mask == [False] * len(prompt_ids) + [True] * 4  # " ", "Y", "o", EOS


def test_long_prompt_is_cut_from_the_left(tok):
    prompt = "x" * 100 + " recent question"
    (item,) = tokenize_sft([SFTExample(prompt, "ok")], tok, T, max_length=40, max_prompt_length=36, truncation="left")
    assert len(item.input_ids) <= 40
    assert tok.decode(item.input_ids).endswith("recent question\n\nAssistant: ok<|endoftext|>")
    assert sum(item.loss_mask) == 4


def test_max_prompt_length_caps_the_prompt(tok):
    (item,) = tokenize_sft([SFTExample("y" * 50, "ok")], tok, T, max_length=200, max_prompt_length=20, truncation="left")
    assert item.loss_mask.index(True) == 20


def test_too_long_with_truncation_error_names_the_row(tok):
    ex = SFTExample("x" * 100, "ok", source="data.jsonl:7")
    with pytest.raises(DataError) as info:
        tokenize_sft([ex], tok, T, max_length=40, max_prompt_length=36, truncation="error")
    msg = str(info.value)
    assert "data.jsonl:7" in msg and "max_length=40" in msg


def test_response_that_does_not_fit_is_an_error_with_left(tok):
    ex = SFTExample("p", "r" * 60, source="data.jsonl:3")
    with pytest.raises(DataError, match="data.jsonl:3.*response alone"):
        tokenize_sft([ex], tok, T, max_length=40, max_prompt_length=36, truncation="left")


def test_drop_skips_rows_whose_response_does_not_fit(tok):
    rows = [SFTExample("p", "r" * 60, "f:1"), SFTExample("p", "ok", "f:2"), SFTExample("x" * 100, "ok", "f:3")]
    items = tokenize_sft(rows, tok, T, max_length=40, max_prompt_length=36, truncation="drop")
    assert len(items) == 2  # the long prompt is cut, the long response dropped
    assert all(len(it.input_ids) <= 40 for it in items)
    with pytest.raises(DataError, match="every example"):
        tokenize_sft(rows[:1], tok, T, max_length=40, max_prompt_length=36, truncation="drop")


def test_collate_sft_right_pads(tok):
    items = tokenize_sft([SFTExample("a", "b"), SFTExample("longer prompt", "longer reply")], tok, T, 128, 64, "error")
    b = collate_sft(items, tok.pad_token_id)
    n0 = len(items[0].input_ids)
    assert b.input_ids.shape == (2, len(items[1].input_ids))
    assert (b.input_ids[0, n0:] == tok.pad_token_id).all()
    assert b.attention_mask[0].sum() == n0 and b.attention_mask[1].all()
    assert not b.loss_mask[0, n0:].any()


def test_prompts_are_left_padded_and_cut_from_the_left(tok):
    ids = tokenize_prompts(["short", "a much longer prompt " * 5], tok, T, max_prompt_length=30)
    assert len(ids[1]) == 30 and ids[1][-1] == tok(format_prompt("x", T))["input_ids"][-1]
    x, mask = left_pad(ids, tok.pad_token_id)
    assert x.shape == (2, 30)
    n0 = len(ids[0])
    assert (x[0, : 30 - n0] == tok.pad_token_id).all() and x[0, 30 - n0 :].tolist() == ids[0]
    assert mask[0].tolist() == [0] * (30 - n0) + [1] * n0


def test_reward_inputs_keep_the_reply_when_cut(tok):
    texts = reward_texts(["q" * 200], ["the answer"], T)
    assert texts[0].endswith("Assistant: the answer")
    ids, mask = tokenize_for_reward(tok, texts, max_length=32)
    assert ids.shape == (1, 32) and mask.all()
    assert tok.decode(ids[0]).endswith("Assistant: the answer")
    assert tok.truncation_side == "right"  # restored


def test_reward_inputs_are_right_padded(tok):
    ids, mask = tokenize_for_reward(tok, ["a", "a longer text"], max_length=64)
    assert mask[0, 0] == 1 and mask[0, -1] == 0
    assert (ids[0][mask[0] == 0] == tok.pad_token_id).all()
    assert torch.equal(mask[1], torch.ones_like(mask[1]))
