"""Reward-model losses beyond the plain Bradley-Terry pair: the 2-class classifier head, and tied pairs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tether.ops import upcast

__all__ = ["classifier_loss", "classifier_reward", "tied_bradley_terry_loss"]


def classifier_reward(logits: torch.Tensor, positive_index: int = 1) -> torch.Tensor:
    """The reward of a 2-class classifier reward model: its positive-class logit.

    Args:
        logits: (B, 2) class logits.
        positive_index: the column of the desirable class.

    Returns:
        (B,) float32 scores (float64 for float64 logits).
    """
    return upcast(logits[:, positive_index])


def classifier_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy of a 2-class reward head on labelled completions (label 1 = desirable).

    Args:
        logits: (B, 2) class logits; column 1 is the desirable class.
        labels: (B,) long or bool, 1 where the completion is desirable.

    Returns:
        `(loss, metrics)`: the scalar mean cross-entropy, and `loss/classifier`, `rm/accuracy` (argmax
        equals the label), `rm/positive_fraction` (fraction of labels that are 1).
    """
    labels = labels.long()
    loss = F.cross_entropy(upcast(logits), labels)
    with torch.no_grad():
        metrics = {
            "loss/classifier": loss.item(),
            "rm/accuracy": (logits.argmax(-1) == labels).float().mean().item(),
            "rm/positive_fraction": labels.float().mean().item(),
        }
    return loss, metrics


def tied_bradley_terry_loss(
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    tie: torch.Tensor,
    margin: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley-Terry loss where some pairs are ties, trained toward P(chosen > rejected) = 1/2.

    Strict pairs: Ouyang et al. 2022 eq. 1, -log sigmoid(r_c - r_r - m) (margin m of Touvron et al. 2023
    eq. 2). Tied pairs: the cross-entropy with target 1/2, -(log sigmoid(d) + log sigmoid(-d)) / 2, which
    is minimal at d = 0 (the soft-label form of the Bradley-Terry likelihood); margins do not apply to ties.

    Args:
        chosen_scores, rejected_scores: (B,) scores; for a tie the order is arbitrary.
        tie: (B,) bool, True for tied pairs.
        margin: (B,) or None.

    Returns:
        `(loss, metrics)`: mean loss over all pairs; `loss/reward`, `rm/accuracy` and `rm/margin` over the
        strict pairs only (NaN when there are none), `rm/tie_gap` mean |d| over the ties (0 when none).
    """
    diff = chosen_scores - rejected_scores  # (B,)
    strict_logits = diff if margin is None else diff - margin  # (B,)
    strict = -F.logsigmoid(strict_logits)  # (B,)
    tied = -0.5 * (F.logsigmoid(diff) + F.logsigmoid(-diff))  # (B,)
    per_pair = torch.where(tie, tied, strict)  # (B,)
    loss = per_pair.mean()
    with torch.no_grad():
        keep = ~tie
        n = int(keep.sum())
        metrics = {
            "loss/reward": loss.item(),
            "rm/accuracy": (diff[keep] > 0).float().mean().item() if n else float("nan"),
            "rm/margin": diff[keep].float().mean().item() if n else float("nan"),
            "rm/tie_gap": diff[tie].abs().float().mean().item() if int(tie.sum()) else 0.0,
        }
    return loss, metrics
