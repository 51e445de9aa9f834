"""Tokenization for every stage: prompt formatting, response masks, truncation and padding.

Conventions:
- A prompt is shown to a causal LM in the Human/Assistant form (`format_prompt`); a reply is appended
  after one space, followed by EOS.
- Training batches are right-padded; generation batches are left-padded so every prompt ends at the
  same column and new tokens line up.
- Prompts that are too long lose tokens from the left (the most recent turns are kept); a response is
  never cut, and a row whose response alone does not fit is an error naming its file and line.
"""

from __future__ import annotations

import re

from dataclasses import dataclass

import torch
from rich.console import Console

from tether.config import DEFAULT_PROMPT_TEMPLATE
from tether.errors import DataError
from tether.types import PreferenceBatch, SFTBatch, SFTExample

_console = Console(stderr=True)


CHAT = "chat"  # data.prompt_template: the tokenizer's own chat template (instruction-tuned models)
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):", re.MULTILINE)


def format_prompt(prompt: str, template: str) -> str:
    """Put a plain prompt into the template; prompts already ending in 'Assistant:' are kept as they are.

    The text form of `chat` (for readers of text, such as a judge's prompt) is the Human/Assistant form."""
    if prompt.rstrip().endswith("Assistant:"):
        return prompt.rstrip()
    return (DEFAULT_PROMPT_TEMPLATE if template == CHAT else template).format(prompt=prompt.strip())


def format_response(response: str, template: str = "") -> str:
    """A reply follows 'Assistant:' after one space; in a chat template it opens the assistant turn as it is."""
    return response.strip() if template == CHAT else " " + response.strip()


def dialogue_messages(prompt: str) -> list[dict[str, str]]:
    """A prompt as chat messages: a Human/Assistant dialogue (HH-RLHF form, ending with an open 'Assistant:') turn
    by turn, a plain prompt as one user message."""
    parts = _TURN.split(prompt.strip())
    if len(parts) < 3:
        return [{"role": "user", "content": prompt.strip()}]
    messages = [{"role": "user" if who == "Human" else "assistant", "content": text.strip()}
                for who, text in zip(parts[1::2], parts[2::2])]
    return [m for m in messages if m["content"]] or [{"role": "user", "content": prompt.strip()}]


def prompt_token_ids(prompt: str, tokenizer, template: str) -> list[int]:
    """The token ids of a prompt as the policy sees it, ending where its reply begins: the text template, or with
    `chat` the tokenizer's chat template with the assistant turn opened.

    Raises:
        DataError: `chat` with a tokenizer that has no chat template.
    """
    if template != CHAT:
        return tokenizer(format_prompt(prompt, template), add_special_tokens=True)["input_ids"]
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("data.prompt_template=chat: this tokenizer has no chat template; use a text template with {prompt}")
    ids = tokenizer.apply_chat_template(dialogue_messages(prompt), add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(ids["input_ids"])


@dataclass
class TokenizedSFT:
    input_ids: list[int]
    loss_mask: list[bool]


def _fit(prompt_ids: list[int], n_response: int, max_length: int, max_prompt_length: int, truncation: str, source: str) -> list[int]:
    """Cut the prompt from the left so prompt + response fits, or raise."""
    room = min(max_prompt_length, max_length - n_response)
    if len(prompt_ids) <= room and len(prompt_ids) + n_response <= max_length:
        return prompt_ids
    if truncation == "error" or room < 1:  # "drop" rows never reach here with room < 1
        raise DataError(
            f"{source}: {len(prompt_ids)} prompt + {n_response} response tokens exceed data.max_length={max_length}"
            + (" (the response alone does not fit)" if room < 1 else "; set data.truncation=left to cut the prompt")
        )
    return prompt_ids[-room:]


def tokenize_sft(examples: list[SFTExample], tokenizer, template: str, max_length: int, max_prompt_length: int, truncation: str) -> list[TokenizedSFT]:
    """Tokenize prompt/response pairs with the loss on response tokens and EOS only.

    Raises:
        DataError: a response longer than `max_length`, or a long prompt with truncation='error'.
    """
    eos = tokenizer.eos_token_id
    out, dropped = [], 0
    for ex in examples:
        prompt_ids = prompt_token_ids(ex.prompt, tokenizer, template)
        response_ids = tokenizer(format_response(ex.response, template), add_special_tokens=False)["input_ids"] + [eos]
        if truncation == "drop" and len(response_ids) >= max_length:
            dropped += 1
            continue
        prompt_ids = _fit(prompt_ids, len(response_ids), max_length, max_prompt_length, truncation, ex.source)
        out.append(TokenizedSFT(prompt_ids + response_ids, [False] * len(prompt_ids) + [True] * len(response_ids)))
    if dropped:
        _console.print(f"[yellow]dropped {dropped} of {len(examples)} examples whose response exceeds max_length={max_length}[/]")
    if examples and not out:
        raise DataError(f"every example is longer than data.max_length={max_length}")
    return out


def collate_sft(items: list[TokenizedSFT], pad_token_id: int) -> SFTBatch:
    """Right-pad tokenized SFT examples into an `SFTBatch`."""
    T = max(len(it.input_ids) for it in items)
    ids = torch.full((len(items), T), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(items), T), dtype=torch.long)
    loss_mask = torch.zeros((len(items), T), dtype=torch.bool)
    for i, it in enumerate(items):
        n = len(it.input_ids)
        ids[i, :n] = torch.tensor(it.input_ids)
        mask[i, :n] = 1
        loss_mask[i, :n] = torch.tensor(it.loss_mask)
    return SFTBatch(ids, mask, loss_mask)


def tokenize_prompts(prompts: list[str], tokenizer, template: str, max_prompt_length: int) -> list[list[int]]:
    """Token ids of formatted prompts, cut from the left to `max_prompt_length`."""
    out = []
    for p in prompts:
        out.append(prompt_token_ids(p, tokenizer, template)[-max_prompt_length:])
    return out


def left_pad(seqs: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists. Returns (ids (B, T), attention_mask (B, T))."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, T - len(s):] = torch.tensor(s)
            mask[i, T - len(s):] = 1
    return ids, mask


def reward_texts(prompts: list[str], responses: list[str], template: str) -> list[str]:
    """The text a reward model reads: the formatted prompt followed by the reply."""
    return [format_prompt(p, template) + format_response(r) for p, r in zip(prompts, responses)]


def tokenize_for_reward(tokenizer, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded reward-model inputs; long texts lose tokens from the left so the reply is kept.

    Returns:
        (input_ids (B, T), attention_mask (B, T)).
    """
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        enc = tokenizer(texts, max_length=max_length, truncation=True, padding=True, return_tensors="pt")
    finally:
        tokenizer.truncation_side = side
    return enc["input_ids"], enc["attention_mask"]


def collate_preferences(tokenizer, chosen_texts: list[str], rejected_texts: list[str], max_length: int, margins: list[float | None] | None = None) -> PreferenceBatch:
    """Tokenize chosen and rejected texts for a reward model."""
    c_ids, c_mask = tokenize_for_reward(tokenizer, chosen_texts, max_length)
    r_ids, r_mask = tokenize_for_reward(tokenizer, rejected_texts, max_length)
    margin = None
    if margins is not None and any(m is not None for m in margins):
        margin = torch.tensor([m or 0.0 for m in margins], dtype=torch.float32)
    return PreferenceBatch(c_ids, c_mask, r_ids, r_mask, margin)


# --------------------------------------------------------------------------- policy preference pairs (DPO) and thumbs (KTO)


@dataclass
class TokenizedPair:
    """A preference pair for a policy: the same (possibly cut) prompt, then each reply and EOS."""

    chosen: TokenizedSFT
    rejected: TokenizedSFT
    index: int  # position of the example in its list: the key of cached reference logprobs


@dataclass
class TokenizedFeedback:
    """A judged completion for KTO, kept as prompt and reply ids so replies can be paired with other prompts."""

    prompt_ids: list[int]
    completion_ids: list[int]  # reply tokens and EOS
    label: bool
    index: int
    kl_completion_ids: list[int] | None = None  # another example's reply, for the KTO reference point


def _reply_ids(tokenizer, reply: str, template: str = "") -> list[int]:
    return tokenizer(format_response(reply, template), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def tokenize_pairs(examples: list, tokenizer, template: str, max_length: int, max_prompt_length: int, truncation: str) -> list[TokenizedPair]:
    """Tokenize preference examples for a policy: loss mask on reply tokens and EOS, prompt cut from the left.

    Both replies share one prompt, cut so that the longer reply fits in `max_length`.

    Args:
        examples: `PreferenceExample`s.
        truncation: as `data.truncation`: left, drop (skip pairs whose longer reply alone does not fit) or error.

    Returns:
        One `TokenizedPair` per kept example; `index` is its position in `examples`.

    Raises:
        DataError: a reply longer than `max_length` (unless dropped), or a long prompt with truncation='error'.
    """
    out, dropped = [], 0
    for i, ex in enumerate(examples):
        prompt_ids = prompt_token_ids(ex.prompt, tokenizer, template)
        chosen_ids, rejected_ids = _reply_ids(tokenizer, ex.chosen, template), _reply_ids(tokenizer, ex.rejected, template)
        longest = max(len(chosen_ids), len(rejected_ids))
        if truncation == "drop" and longest >= max_length:
            dropped += 1
            continue
        prompt_ids = _fit(prompt_ids, longest, max_length, max_prompt_length, truncation, ex.source)
        prompt_mask = [False] * len(prompt_ids)
        out.append(TokenizedPair(
            TokenizedSFT(prompt_ids + chosen_ids, prompt_mask + [True] * len(chosen_ids)),
            TokenizedSFT(prompt_ids + rejected_ids, prompt_mask + [True] * len(rejected_ids)),
            i,
        ))
    if dropped:
        _console.print(f"[yellow]dropped {dropped} of {len(examples)} pairs whose longer reply exceeds max_length={max_length}[/]")
    if examples and not out:
        raise DataError(f"every pair is longer than data.max_length={max_length}")
    return out


def collate_pairs(items: list[TokenizedPair], pad_token_id: int) -> PreferenceBatch:
    """Right-pad chosen and rejected sequences to one common length (so they can be concatenated).

    Returns:
        A `PreferenceBatch` with `chosen_*` and `rejected_*` ids, attention masks and loss masks, all (B, T).
    """
    both = collate_sft([it.chosen for it in items] + [it.rejected for it in items], pad_token_id)  # (2B, T)
    B = len(items)
    return PreferenceBatch(
        both.input_ids[:B], both.attention_mask[:B], both.input_ids[B:], both.attention_mask[B:],
        chosen_loss_mask=both.loss_mask[:B], rejected_loss_mask=both.loss_mask[B:],
    )


def tokenize_feedback(examples: list, tokenizer, template: str, max_length: int, max_prompt_length: int, truncation: str, seed: int = 0) -> list[TokenizedFeedback]:
    """Tokenize binary-feedback examples and give each a mismatched reply for the KTO reference point.

    The mismatched reply of example i is the reply of another example with a different prompt, fixed once
    here (a seeded shuffle), so its reference logprob can be cached like any other.

    Args:
        examples: `BinaryFeedbackExample`s.
        truncation: left, drop or error, as `data.truncation`.

    Raises:
        DataError: a completion longer than `max_length` (unless dropped), a long prompt with
            truncation='error', or nothing left.
    """
    import random

    out, dropped = [], 0
    for i, ex in enumerate(examples):
        prompt_ids = prompt_token_ids(ex.prompt, tokenizer, template)
        completion_ids = _reply_ids(tokenizer, ex.completion, template)
        if truncation == "drop" and len(completion_ids) >= max_length:
            dropped += 1
            continue
        prompt_ids = _fit(prompt_ids, len(completion_ids), max_length, max_prompt_length, truncation, ex.source)
        out.append(TokenizedFeedback(prompt_ids, completion_ids, ex.label, i))
    if dropped:
        _console.print(f"[yellow]dropped {dropped} of {len(examples)} completions longer than max_length={max_length}[/]")
    if examples and not out:
        raise DataError(f"every completion is longer than data.max_length={max_length}")
    order = list(range(len(out)))
    random.Random(seed).shuffle(order)
    for k, j in enumerate(order):
        partner = out[order[(k + 1) % len(order)]]
        if len(out) > 1 and partner.prompt_ids == out[j].prompt_ids:
            partner = out[order[(k + 2) % len(order)]] if len(out) > 2 else partner
        out[j].kl_completion_ids = partner.completion_ids
    return out


def feedback_sequences(items: list[TokenizedFeedback], max_length: int, mismatched: bool = False) -> list[TokenizedSFT]:
    """Prompt + completion sequences of judged examples, or of each prompt with its mismatched reply.

    A mismatched reply may be longer than the example's own, so the prompt is cut again from the left to
    keep the sequence within `max_length`.
    """
    out = []
    for it in items:
        reply = it.kl_completion_ids if mismatched and it.kl_completion_ids is not None else it.completion_ids
        prompt = it.prompt_ids[-max(1, max_length - len(reply)):]
        out.append(TokenizedSFT(prompt + reply, [False] * len(prompt) + [True] * len(reply)))
    return out
