"""Forward passes that turn token sequences into per-token log-probabilities.

Position ids are computed from the attention mask (left padding shifts every prompt), exactly as
`generate` does, so logprobs recomputed here equal those seen while sampling.
"""

from __future__ import annotations

import torch
from torch import nn

from tether.ops import entropy_from_logits, gather_logprobs, upcast


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only: (B, T) -> (B, T), pads get position 1 like `generate`."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 1)


def forward_logits(model: nn.Module, sequences: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits of a causal LM for left- or right-padded sequences: (B, T) -> (B, T, V)."""
    out = model(input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    return out.logits


def response_logprobs(
    model: nn.Module,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
):
    """Log-probabilities of the response tokens of `sequences` under `model`.

    The same temperature that divided the logits while sampling divides them here (DESIGN.md 6.1).

    Args:
        sequences: (B, T) prompt (left-padded, length `prompt_length`) followed by the response.
        attention_mask: (B, T).
        prompt_length: T_p, the column where responses start.
        temperature: sampling temperature.
        with_entropy: also return the per-token entropy of the tempered distribution.

    Returns:
        logprobs (B, T_r), and entropy (B, T_r) if `with_entropy`.
    """
    logits = forward_logits(model, sequences, attention_mask)  # (B, T, V)
    logits = upcast(logits[:, prompt_length - 1 : -1]) / temperature  # (B, T_r, V) predicts responses
    labels = sequences[:, prompt_length:]  # (B, T_r)
    logprobs = gather_logprobs(logits, labels)  # (B, T_r)
    if with_entropy:
        return logprobs, entropy_from_logits(logits)
    return logprobs


def sequence_logprobs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Sum (or mean) of log p(token) over the `loss_mask` tokens of right-padded sequences.

    Args:
        input_ids, attention_mask: (B, T).
        loss_mask: (B, T) bool, True on tokens whose logprob counts (the response).
        average: mean per token instead of sum.

    Returns:
        (B,) float32.
    """
    logits = upcast(forward_logits(model, input_ids, attention_mask)[:, :-1])  # (B, T-1, V)
    logprobs = gather_logprobs(logits, input_ids[:, 1:])  # (B, T-1)
    mask = loss_mask[:, 1:].to(logprobs.dtype)
    total = (logprobs * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total
