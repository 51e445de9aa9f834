"""Direct preference losses: DPO (with conservative label smoothing), IPO and KTO.

All take sequence log-probabilities, i.e. per-token log-probabilities summed over the response tokens
(shape (B,)), from the policy and from the frozen reference policy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dpo_loss", "ipo_loss", "kto_loss", "kto_kl_ref_point"]


def _preference_metrics(
    chosen_logprobs: torch.Tensor,
    rejected_logprobs: torch.Tensor,
    ref_chosen_logprobs: torch.Tensor,
    ref_rejected_logprobs: torch.Tensor,
    beta: float,
) -> dict[str, float]:
    """Implicit rewards beta * (policy - ref) of both responses and how often chosen wins."""
    with torch.no_grad():
        chosen_rewards = beta * (chosen_logprobs - ref_chosen_logprobs).float()  # (B,)
        rejected_rewards = beta * (rejected_logprobs - ref_rejected_logprobs).float()  # (B,)
        return {
            "dpo/accuracy": (chosen_rewards > rejected_rewards).float().mean().item(),
            "dpo/margin": (chosen_rewards - rejected_rewards).mean().item(),
            "rewards/chosen": chosen_rewards.mean().item(),
            "rewards/rejected": rejected_rewards.mean().item(),
            "logprobs/chosen": chosen_logprobs.float().mean().item(),
            "logprobs/rejected": rejected_logprobs.float().mean().item(),
        }


def _log_ratio_difference(
    chosen_logprobs: torch.Tensor,
    rejected_logprobs: torch.Tensor,
    ref_chosen_logprobs: torch.Tensor,
    ref_rejected_logprobs: torch.Tensor,
) -> torch.Tensor:
    """h = log pi(y_w)/pi_ref(y_w) - log pi(y_l)/pi_ref(y_l), per pair: (B,)."""
    chosen_log_ratio = chosen_logprobs - ref_chosen_logprobs.detach()  # (B,)
    rejected_log_ratio = rejected_logprobs - ref_rejected_logprobs.detach()  # (B,)
    return chosen_log_ratio - rejected_log_ratio


def dpo_loss(
    chosen_logprobs: torch.Tensor,
    rejected_logprobs: torch.Tensor,
    ref_chosen_logprobs: torch.Tensor,
    ref_rejected_logprobs: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Direct Preference Optimization loss, optionally with conservative label smoothing.

    Rafailov et al. 2023, "Direct Preference Optimization", eq. 7: -log sigmoid(beta * h), with h the
    difference of policy-to-reference log-ratios of the chosen and rejected responses. With label
    smoothing eps (the preference label is assumed flipped with probability eps, "conservative DPO",
    Mitchell 2023): -(1 - eps) log sigmoid(beta * h) - eps log sigmoid(-beta * h).

    Args:
        chosen_logprobs: (B,) policy log-probability of each chosen response, summed over its tokens.
        rejected_logprobs: (B,) the same for the rejected responses.
        ref_chosen_logprobs: (B,) reference policy log-probability of the chosen responses.
        ref_rejected_logprobs: (B,) reference policy log-probability of the rejected responses.
        beta: strength of the implicit KL constraint to the reference.
        label_smoothing: eps in [0, 0.5]; 0 is plain DPO.

    Returns:
        `(loss, metrics)`: the scalar mean loss, and `loss/dpo`, `dpo/accuracy` (fraction of pairs whose
        chosen implicit reward is strictly larger), `dpo/margin` (mean chosen - rejected implicit reward),
        `rewards/chosen`, `rewards/rejected` (mean beta * (policy - ref)), `logprobs/chosen`,
        `logprobs/rejected` (mean policy log-probabilities).

    Raises:
        ValueError: if `label_smoothing` is outside [0, 0.5].
    """
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    logits = beta * _log_ratio_difference(
        chosen_logprobs, rejected_logprobs, ref_chosen_logprobs, ref_rejected_logprobs
    )  # (B,)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)  # (B,)
    loss = losses.mean()
    metrics = {"loss/dpo": loss.item()}
    metrics.update(
        _preference_metrics(
            chosen_logprobs, rejected_logprobs, ref_chosen_logprobs, ref_rejected_logprobs, beta
        )
    )
    return loss, metrics


def ipo_loss(
    chosen_logprobs: torch.Tensor,
    rejected_logprobs: torch.Tensor,
    ref_chosen_logprobs: torch.Tensor,
    ref_rejected_logprobs: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Identity Preference Optimization loss: squared distance of h from 1 / (2 beta).

    Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences",
    eq. 17: (h - 1 / (2 tau))^2 with tau = `beta`. Unlike DPO the loss does not keep falling as h grows,
    so it does not overfit deterministic preferences.

    The function uses whatever log-probabilities it is given. IPO is commonly run on the mean
    log-probability per token rather than the sum (the target 1 / (2 beta) then stays on the scale of one
    token); the caller chooses by what it passes.

    Args:
        chosen_logprobs: (B,) policy log-probability of each chosen response (sum or per-token mean).
        rejected_logprobs: (B,) the same for the rejected responses.
        ref_chosen_logprobs: (B,) reference log-probability of the chosen responses, same reduction.
        ref_rejected_logprobs: (B,) reference log-probability of the rejected responses, same reduction.
        beta: tau of the paper; the regularisation strength.

    Returns:
        `(loss, metrics)`: the scalar mean loss, and `loss/ipo`, `loss/dpo` (the same number, the loss of
        the preference trainer whichever variant runs) and the `dpo/*`, `rewards/*`, `logprobs/*` keys of
        `dpo_loss`.

    Raises:
        ValueError: if `beta` is not positive.
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive for IPO, got {beta}")
    h = _log_ratio_difference(
        chosen_logprobs, rejected_logprobs, ref_chosen_logprobs, ref_rejected_logprobs
    )  # (B,)
    loss = ((h - 1.0 / (2.0 * beta)) ** 2).mean()
    metrics = {"loss/ipo": loss.item(), "loss/dpo": loss.item()}
    metrics.update(
        _preference_metrics(
            chosen_logprobs, rejected_logprobs, ref_chosen_logprobs, ref_rejected_logprobs, beta
        )
    )
    return loss, metrics


def kto_kl_ref_point(policy_logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Batch estimate of the KTO reference point z0 = max(0, mean log pi(y|x) / pi_ref(y|x)).

    Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", sec. 4.1: z0 is
    estimated on mismatched pairs (x_i, y_j), i != j, so that it reflects the policy's KL to the reference
    rather than the examples being trained; pass log-probabilities of such pairs.

    Args:
        policy_logprobs: (B,) policy sequence log-probabilities of mismatched completions.
        ref_logprobs: (B,) reference sequence log-probabilities of the same.

    Returns:
        Scalar tensor, detached and clamped at 0.
    """
    return (policy_logprobs - ref_logprobs).detach().mean().clamp(min=0.0)


def kto_loss(
    policy_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    labels: torch.Tensor,
    kl_ref_point: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Kahneman-Tversky Optimization loss for unpaired desirable / undesirable completions.

    Ethayarajh et al. 2024, eq. 8, with r = log pi(y|x) - log pi_ref(y|x) and z0 the KL reference point:
    desirable: lambda_D * (1 - sigmoid(beta * (r - z0)));
    undesirable: lambda_U * (1 - sigmoid(beta * (z0 - r))).
    z0 is detached and clamped at 0: no gradient flows through it.

    Args:
        policy_logprobs: (B,) policy log-probability of each completion, summed over its tokens.
        ref_logprobs: (B,) reference log-probability of each completion.
        labels: (B,) bool, True for a desirable (thumbs-up) completion.
        kl_ref_point: scalar tensor z0, e.g. from `kto_kl_ref_point`.
        beta: risk-aversion / KL strength.
        desirable_weight: lambda_D.
        undesirable_weight: lambda_U.

    Returns:
        `(loss, metrics)`: the scalar mean loss over the batch, and `loss/kto`, `loss/dpo` (the same
        number), `kto/kl_ref_point`, `rewards/chosen`, `rewards/rejected` (mean beta * r over desirable /
        undesirable completions, 0 when there are none), `logprobs/chosen`, `logprobs/rejected` (likewise
        for the policy log-probabilities).
    """
    labels = labels.bool()
    z0 = kl_ref_point.detach().clamp(min=0.0)
    log_ratio = policy_logprobs - ref_logprobs.detach()  # (B,)
    desirable_losses = desirable_weight * (1.0 - torch.sigmoid(beta * (log_ratio - z0)))  # (B,)
    undesirable_losses = undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - log_ratio)))  # (B,)
    loss = torch.where(labels, desirable_losses, undesirable_losses).mean()
    with torch.no_grad():
        rewards = beta * log_ratio.float()  # (B,)
        metrics = {
            "loss/kto": loss.item(),
            "loss/dpo": loss.item(),
            "kto/kl_ref_point": float(z0.item()),
            "rewards/chosen": _mean_where(rewards, labels),
            "rewards/rejected": _mean_where(rewards, ~labels),
            "logprobs/chosen": _mean_where(policy_logprobs.float(), labels),
            "logprobs/rejected": _mean_where(policy_logprobs.float(), ~labels),
        }
    return loss, metrics


def _mean_where(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of `values` where `mask` is True, 0.0 when none is."""
    count = int(mask.sum())
    return values[mask].sum().item() / count if count else 0.0
