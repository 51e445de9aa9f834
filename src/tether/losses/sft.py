"""Supervised fine-tuning loss: token-level cross-entropy on the response tokens."""

from __future__ import annotations

import math

import torch

from tether.ops import gather_logprobs, masked_mean

__all__ = ["sft_loss"]


def sft_loss(
    logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean negative log-likelihood of `labels` over the positions where `loss_mask` is True.

    Maximum-likelihood fine-tuning on demonstrations (Ouyang et al. 2022, "Training language models to
    follow instructions with human feedback", sec. 3.5 "Supervised fine-tuning").

    Args:
        logits: (B, T, V); `logits[:, t]` already predicts `labels[:, t]` (the caller shifts).
        labels: (B, T) long target ids; any value where `loss_mask` is False (e.g. -100) is ignored.
        loss_mask: (B, T) bool, True on the tokens that are trained on (usually the response).

    Returns:
        `(loss, metrics)`: the scalar mean cross-entropy per trained token, and `loss/sft`,
        `sft/ppl` (exp of the loss), `sft/tokens` (number of trained tokens).
    """
    loss_mask = loss_mask.bool()
    safe_labels = torch.where(loss_mask, labels, torch.zeros_like(labels))  # (B, T) ignore ids may be -100
    nll = -gather_logprobs(logits, safe_labels)  # (B, T)
    loss = masked_mean(nll, loss_mask)
    loss_value = loss.item()
    metrics = {
        "loss/sft": loss_value,
        "sft/ppl": math.exp(min(loss_value, 50.0)),  # capped so an early blow-up logs a number, not inf
        "sft/tokens": float(loss_mask.sum().item()),
    }
    return loss, metrics
