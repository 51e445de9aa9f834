"""Per-token shaped rewards for PPO: the reward-model score at the last token minus a KL penalty."""

from __future__ import annotations

import torch

from tether.ops import first_true_indices
from tether.rl.kl import kl_estimate

__all__ = ["last_true_indices", "compute_rewards", "fit_length_baseline"]


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


def fit_length_baseline(scores: torch.Tensor, lengths: torch.Tensor) -> tuple[float, float, float]:
    """Least-squares fit scores = intercept + slope * length, and the std of what length leaves unexplained.

    The length-corrected score of a response is (score - intercept - slope * length) / residual_std: the part of the
    reward model's judgement that its length does not predict. A policy then gains nothing by answering longer or
    shorter than the reward model's length bias rewards (the failure ODIN, Chen et al. 2024, trains away in the
    reward model itself; here it is removed from the scores, on samples of the initial policy).

    Args:
        scores: (N,) reward-model scores.
        lengths: (N,) response lengths (characters, for `rollout.length_correction`).

    Returns:
        `(intercept, slope, residual_std)`; the slope is 0 when every length is the same; the std is at least 1e-3.
    """
    x, y = lengths.double(), scores.double()
    var = ((x - x.mean()) ** 2).mean()
    slope = float(((x - x.mean()) * (y - y.mean())).mean() / var) if var > 0 else 0.0
    intercept = float(y.mean() - slope * x.mean())
    residual = y - intercept - slope * x
    return intercept, slope, max(float(residual.std()), 1e-3)
