"""Per-token shaped rewards for PPO: the reward-model score at the last token minus a KL penalty."""

from __future__ import annotations

import torch

from tether.ops import first_true_indices
from tether.rl.kl import kl_estimate

__all__ = ["last_true_indices", "compute_rewards"]


def last_true_indices(response_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True entry of each row.

    Args:
        response_mask: (B, T_r) bool, usually a prefix mask (True then False).

    Returns:
        (B,) long; -1 for a row with no True entry.
    """
    length = response_mask.shape[-1]
    from_end = first_true_indices(response_mask.bool().flip(-1))  # (B,) length where none
    return length - 1 - from_end


def compute_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shaped per-token rewards: -kl_coef * KL on every response token, plus the score on the last one.

    Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", eq. 2 and Stiennon et al.
    2020, "Learning to summarize from human feedback", eq. 1: R(x, y) = r(x, y) - beta log(pi(y|x) /
    pi_ref(y|x)), with the log-ratio spread over tokens (k1 estimator per token) and r at the end.

    Args:
        scores: (B,) reward-model score of each response.
        logprobs: (B, T_r) policy log-probabilities of the response tokens at rollout time.
        ref_logprobs: (B, T_r) reference log-probabilities of the same tokens.
        response_mask: (B, T_r) bool prefix mask, True on real response tokens.
        kl_coef: beta, weight of the KL penalty.

    Returns:
        `(rewards, kl)`, both (B, T_r) and 0 outside `response_mask`; `kl` is the per-token k1 estimate.

    Raises:
        ValueError: if a row of `response_mask` has no True entry (there is no token to put the score on).
    """
    response_mask = response_mask.bool()
    if not response_mask.any(dim=-1).all():
        empty = (~response_mask.any(dim=-1)).nonzero().flatten().tolist()
        raise ValueError(f"response_mask has no real token in rows {empty}")
    kl = kl_estimate(logprobs, ref_logprobs, kind="k1")  # (B, T_r)
    kl = torch.where(response_mask, kl, torch.zeros_like(kl))  # (B, T_r)
    rewards = -kl_coef * kl  # (B, T_r)
    last = last_true_indices(response_mask)  # (B,)
    rows = torch.arange(rewards.shape[0], device=rewards.device)  # (B,)
    rewards = rewards.index_put((rows, last), scores.to(rewards.dtype), accumulate=True)
    return rewards, kl
