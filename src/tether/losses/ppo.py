"""PPO losses: clipped policy surrogate, clipped value loss, entropy bonus."""

from __future__ import annotations

import torch

from tether.ops import masked_mean

__all__ = ["ppo_policy_loss", "ppo_value_loss"]


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_coef: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate policy loss, averaged over the response tokens.

    Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7:
    L = -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) = max(-A * ratio, -A * clip(ratio)).
    Where the clipped term is taken the gradient is zero, so one rollout cannot push the policy far.

    Args:
        logprobs: (B, T_r) log-probabilities of the response tokens under the current policy (with grad).
        old_logprobs: (B, T_r) the same under the policy that generated the rollout.
        advantages: (B, T_r) advantage estimates (usually whitened GAE).
        response_mask: (B, T_r) bool, True on real response tokens.
        clip_coef: epsilon of the clip range [1 - eps, 1 + eps].

    Returns:
        `(loss, metrics)`: the scalar loss, and `loss/policy`, `policy/approx_kl` (masked mean of
        (ratio - 1) - log ratio, Schulman's k3 estimator of KL(old || new)), `policy/clipfrac` (fraction of
        tokens where the clipped term is the larger loss), `policy/ratio` (masked mean ratio).
    """
    log_ratio = logprobs - old_logprobs.detach()  # (B, T_r)
    ratio = torch.exp(log_ratio)  # (B, T_r)
    advantages = advantages.detach()
    pg_losses1 = -advantages * ratio  # (B, T_r)
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - clip_coef, 1.0 + clip_coef)  # (B, T_r)
    loss = masked_mean(torch.max(pg_losses1, pg_losses2), response_mask)
    with torch.no_grad():
        metrics = {
            "loss/policy": loss.item(),
            "policy/approx_kl": masked_mean((ratio - 1.0) - log_ratio, response_mask).item(),
            "policy/clipfrac": masked_mean((pg_losses2 > pg_losses1).float(), response_mask).item(),
            "policy/ratio": masked_mean(ratio, response_mask).item(),
        }
    return loss, metrics


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    value_clip_coef: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss, averaged over the response tokens.

    The value analogue of the PPO clip, as in the reference PPO implementation (Schulman et al. 2017;
    see Huang et al. 2022, "The 37 Implementation Details of PPO", detail 9):
    L = 0.5 * max((v - R)^2, (v_old + clip(v - v_old, -c, c) - R)^2).

    Args:
        values: (B, T_r) value predictions of the current value model (with grad).
        old_values: (B, T_r) value predictions made at rollout time.
        returns: (B, T_r) regression targets (advantages + old values).
        response_mask: (B, T_r) bool, True on real response tokens.
        value_clip_coef: c, how far a prediction may move from `old_values` before its gradient stops.

    Returns:
        `(loss, metrics)`: the scalar loss, and `loss/value`, `value/clipfrac` (fraction of tokens where the
        clipped error is the larger), `value/mean` (masked mean of `values`).
    """
    old_values = old_values.detach()
    returns = returns.detach()
    value_change = torch.clamp(values - old_values, -value_clip_coef, value_clip_coef)  # (B, T_r)
    values_clipped = old_values + value_change  # (B, T_r)
    vf_losses1 = (values - returns) ** 2  # (B, T_r)
    vf_losses2 = (values_clipped - returns) ** 2  # (B, T_r)
    loss = 0.5 * masked_mean(torch.max(vf_losses1, vf_losses2), response_mask)
    with torch.no_grad():
        metrics = {
            "loss/value": loss.item(),
            "value/clipfrac": masked_mean((vf_losses2 > vf_losses1).float(), response_mask).item(),
            "value/mean": masked_mean(values, response_mask).item(),
        }
    return loss, metrics
