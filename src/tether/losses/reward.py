"""Reward model loss: the Bradley-Terry model of pairwise preferences."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["bradley_terry_loss"]


def bradley_terry_loss(
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    margin: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Negative log-likelihood that the chosen response beats the rejected one.

    P(chosen > rejected) = sigmoid(r_c - r_r) (Bradley & Terry 1952); the reward-model loss is
    Ouyang et al. 2022 eq. 1, -log sigmoid(r_c - r_r). With `margin` m it is Touvron et al. 2023
    (Llama 2) eq. 2, -log sigmoid(r_c - r_r - m), which asks for a larger gap on clearer preferences.

    Args:
        chosen_scores: (B,) reward-model scores of the preferred responses.
        rejected_scores: (B,) scores of the other responses of the same prompts.
        margin: (B,) or None; required gap per pair.

    Returns:
        `(loss, metrics)`: the scalar mean loss, and `loss/reward`, `rm/accuracy` (fraction of pairs with
        chosen strictly above rejected; a tie counts as wrong), `rm/margin` (mean chosen - rejected),
        `rm/chosen_scores`, `rm/rejected_scores` (means).
    """
    diff = chosen_scores - rejected_scores  # (B,)
    logits = diff if margin is None else diff - margin  # (B,)
    loss = -F.logsigmoid(logits).mean()
    with torch.no_grad():
        metrics = {
            "loss/reward": loss.item(),
            "rm/accuracy": (diff > 0).float().mean().item(),
            "rm/margin": diff.float().mean().item(),
            "rm/chosen_scores": chosen_scores.float().mean().item(),
            "rm/rejected_scores": rejected_scores.float().mean().item(),
        }
    return loss, metrics
