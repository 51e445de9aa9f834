"""Forward passes that turn token sequences into per-token log-probabilities.

Position ids are computed from the attention mask (left padding shifts every prompt), exactly as
`generate` does, so logprobs recomputed here equal those seen while sampling.

Only the positions whose next token is scored go through the LM head (`logits_to_keep` of Hugging Face
causal LMs): with a vocabulary of V and a hidden size of H the head costs V x H multiply-adds per position,
often a large share of a small model's compute, and prompt positions need none of it.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from tether.ops import entropy_from_logits, gather_logprobs, upcast


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only: (B, T) -> (B, T), pads get position 1 like `generate`."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 1)


_KEEPS_LOGITS: dict[type, bool] = {}


def accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether the causal LM (or the model under a peft wrapper) can compute logits of the last positions only."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kind = type(base)
    if kind not in _KEEPS_LOGITS:
        _KEEPS_LOGITS[kind] = "logits_to_keep" in inspect.signature(base.forward).parameters
    return _KEEPS_LOGITS[kind]


def forward_logits(model: nn.Module, sequences: torch.Tensor, attention_mask: torch.Tensor, keep: int | None = None) -> torch.Tensor:
    """Logits of a causal LM for left- or right-padded sequences: (B, T) -> (B, T, V).

    Args:
        keep: when set, only the logits of the last `keep` positions are needed; a model that supports it
            computes just those and the result is (B, keep, V). Other models return all T positions, so
            callers slice the last `keep` themselves (`[:, -keep:]` is right either way).
    """
    extra = {"logits_to_keep": keep} if keep is not None and 0 < keep < sequences.shape[1] and accepts_logits_to_keep(model) else {}
    out = model(input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask), use_cache=False, **extra)
    return out.logits


def response_logprobs(
    model: nn.Module,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = True,
):
    """Log-probabilities of the response tokens of `sequences` under `model`.

    The same temperature that divided the logits while sampling divides them here (docs/architecture.md 6.1).

    Args:
        sequences: (B, T) prompt (left-padded, length `prompt_length`) followed by the response.
        attention_mask: (B, T).
        prompt_length: T_p, the column where responses start.
        temperature: sampling temperature.
        with_entropy: also return the per-token entropy of the tempered distribution.
        entropy_grad: let gradients flow through the entropy; False when it is only reported (no entropy
            bonus), which spares a backward pass through the (B, T_r, V) softmax.

    Returns:
        logprobs (B, T_r), and entropy (B, T_r) if `with_entropy`.
    """
    T_r = sequences.shape[1] - prompt_length
    logits = upcast(forward_logits(model, sequences, attention_mask, keep=T_r + 1)[:, -(T_r + 1) : -1])  # (B, T_r, V) predicts responses
    if temperature != 1.0:
        logits = logits / temperature
    labels = sequences[:, prompt_length:]  # (B, T_r)
    logprobs = gather_logprobs(logits, labels)  # (B, T_r)
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            return logprobs, entropy_from_logits(logits)
    return logprobs


def first_scored_column(loss_mask: torch.Tensor) -> int:
    """The first column (at least 1) in which any row of a (B, T) `loss_mask` is True; T if none is.

    Tokens before it are never scored, so the logits that would predict them need not be computed.
    """
    cols = loss_mask[:, 1:].any(dim=0).nonzero()
    return int(cols[0]) + 1 if len(cols) else loss_mask.shape[1]


def sequence_logprobs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Sum (or mean) of log p(token) over the `loss_mask` tokens of right-padded sequences.

    Args:
        input_ids, attention_mask: (B, T).
        loss_mask: (B, T) bool, True on tokens whose logprob counts (the response).
        average: mean per token instead of sum.

    Returns:
        (B,) float32.
    """
    start = first_scored_column(loss_mask)
    keep = input_ids.shape[1] - start + 1  # positions start-1 .. T-1 predict tokens start .. T (the last is unused)
    logits = upcast(forward_logits(model, input_ids, attention_mask, keep=keep)[:, -keep:-1])  # (B, T-start, V)
    logprobs = gather_logprobs(logits, input_ids[:, start:])  # (B, T-start)
    mask = loss_mask[:, start:].to(logprobs.dtype)
    total = (logprobs * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total
