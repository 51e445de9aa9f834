"""Advantage estimators: GAE for PPO, group baselines for GRPO and RLOO."""

from __future__ import annotations

import torch


__all__ = ["compute_gae", "group_relative_advantages", "rloo_advantages"]


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation over the response tokens.

    Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage Estimation",
    eq. 16: A_t = sum_l (gamma lambda)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t, computed by the
    backward recursion A_t = delta_t + gamma lambda A_{t+1}. The episode ends at the last real token:
    rewards and values outside `response_mask` are treated as 0, so the value after the last token is 0.

    Args:
        rewards: (B, T_r) shaped per-token rewards.
        values: (B, T_r) value estimates at rollout time.
        response_mask: (B, T_r) bool prefix mask, True on real response tokens.
        gamma: discount factor.
        gae_lambda: GAE lambda; 1 gives Monte-Carlo returns minus values, 0 gives one-step TD errors.

    Returns:
        `(advantages, returns)`, both (B, T_r), 0 outside `response_mask`; returns = advantages + values.
    """
    mask = response_mask.bool()
    rewards = torch.where(mask, rewards, torch.zeros_like(rewards))  # (B, T_r)
    values = torch.where(mask, values, torch.zeros_like(values))  # (B, T_r)
    length = rewards.shape[-1]
    advantages_reversed = []
    next_value = torch.zeros_like(values[:, 0])  # (B,)
    next_advantage = torch.zeros_like(values[:, 0])  # (B,)
    for t in reversed(range(length)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        next_advantage = delta + gamma * gae_lambda * next_advantage  # (B,)
        next_value = values[:, t]
        advantages_reversed.append(next_advantage)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)  # (B, T_r)
    advantages = torch.where(mask, advantages, torch.zeros_like(advantages))  # (B, T_r)
    returns = advantages + values  # (B, T_r) values are already 0 outside the mask
    return advantages, returns


def _grouped(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Scores (B,) as (B / group_size, group_size); rows of one prompt are contiguous."""
    if group_size < 1 or scores.shape[0] % group_size:
        raise ValueError(
            f"batch of {scores.shape[0]} scores cannot be split into groups of {group_size}"
        )
    return scores.reshape(-1, group_size)


def group_relative_advantages(
    scores: torch.Tensor, group_size: int, normalize_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Group-relative advantages: each score minus its group's mean, optionally over the group's std.

    Shao et al. 2024, "DeepSeekMath" (GRPO), sec. 4.1.2, outcome supervision:
    A_i = (r_i - mean(r)) / std(r) over the G completions of one prompt. The std is the population std
    (divide by G); `eps` keeps a group of identical scores at advantage 0.

    Args:
        scores: (B,) with B = n_prompts * group_size; the completions of a prompt are contiguous.
        group_size: G, completions per prompt.
        normalize_std: divide by the group std (False gives the mean-centred variant).
        eps: added to the std.

    Returns:
        (B,) advantages, one per completion (to be broadcast over its tokens).

    Raises:
        ValueError: if B is not a multiple of `group_size`.
    """
    groups = _grouped(scores, group_size)  # (B / G, G)
    centred = groups - groups.mean(dim=1, keepdim=True)  # (B / G, G)
    if normalize_std:
        centred = centred / (groups.std(dim=1, unbiased=False, keepdim=True) + eps)
    return centred.reshape(-1)


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out advantages: each score minus the mean of the other scores of its group.

    Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from
    Human Feedback in LLMs", sec. 3.2 (RLOO, Kool et al. 2019): A_i = r_i - 1/(k-1) sum_{j != i} r_j.

    Args:
        scores: (B,) with B = n_prompts * group_size; the completions of a prompt are contiguous.
        group_size: k >= 2, completions per prompt.

    Returns:
        (B,) advantages.

    Raises:
        ValueError: if `group_size` < 2 or B is not a multiple of it.
    """
    if group_size < 2:
        raise ValueError(f"RLOO needs at least 2 completions per prompt, got group_size={group_size}")
    groups = _grouped(scores, group_size)  # (B / k, k)
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)  # (B / k, k)
    return (groups - baseline).reshape(-1)
