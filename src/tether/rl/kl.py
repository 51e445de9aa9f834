"""Per-token KL estimators and the KL coefficient controllers of RLHF.

The KL penalty keeps the policy close to the reference policy: the reward model is only trustworthy
near the distribution it was trained on.
"""

from __future__ import annotations

import torch

__all__ = [
    "KL_KINDS",
    "kl_estimate",
    "FixedKLController",
    "AdaptiveKLController",
    "make_kl_controller",
]

KL_KINDS = ("k1", "k2", "k3")


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || ref_policy) from log-probabilities of sampled tokens.

    Schulman 2020, "Approximating KL Divergence" (http://joschu.net/blog/kl-approx.html), with
    log r = ref - logp for tokens sampled from the policy:
    k1 = -log r = logp - ref (unbiased, can be negative); k2 = 0.5 (log r)^2 (biased, low variance,
    >= 0); k3 = r - 1 - log r (unbiased, >= 0).

    Args:
        logprobs: (B, T_r) policy log-probabilities of the sampled tokens.
        ref_logprobs: (B, T_r) reference log-probabilities of the same tokens.
        kind: "k1", "k2" or "k3".

    Returns:
        (B, T_r) per-token estimates; the caller masks padding.

    Raises:
        ValueError: if `kind` is not one of "k1", "k2", "k3".
    """
    log_ratio = ref_logprobs - logprobs  # (B, T_r) log r
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(log_ratio) - log_ratio  # expm1 keeps small ratios accurate
    raise ValueError(f"unknown KL estimator kind {kind!r}; valid kinds are {', '.join(KL_KINDS)}")


class FixedKLController:
    """A constant KL coefficient (Ziegler et al. 2019, "Fine-Tuning Language Models from Human
    Preferences", eq. 2 with a fixed beta)."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Does nothing: the coefficient is fixed."""

    def state_dict(self) -> dict[str, float]:
        """The coefficient, for checkpoints."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restores the coefficient from `state_dict()`."""
        self.value = float(state["value"])


class AdaptiveKLController:
    """A KL coefficient steered toward a target KL.

    Ziegler et al. 2019, sec. 2.2 (the controller of eq. 2's beta):
    e = clip(KL / KL_target - 1, -0.2, 0.2); beta <- beta * (1 + K_beta * e) with K_beta = n_steps / horizon.
    A KL above target raises the coefficient, one below target lowers it, by at most 20% per horizon.
    """

    def __init__(self, init_kl_coef: float, target_kl: float, horizon: int) -> None:
        """Args:
            init_kl_coef: starting coefficient.
            target_kl: the KL (in nats per sequence, as the caller measures it) to steer toward.
            horizon: number of samples over which the full proportional correction applies.

        Raises:
            ValueError: if `target_kl` or `horizon` is not positive.
        """
        if target_kl <= 0:
            raise ValueError(f"target_kl must be positive, got {target_kl}")
        if horizon <= 0:
            raise ValueError(f"horizon must be positive, got {horizon}")
        self.value = float(init_kl_coef)
        self.target_kl = float(target_kl)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Moves the coefficient after a batch of `n_steps` samples with mean KL `current_kl`."""
        proportional_error = min(max(current_kl / self.target_kl - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        """Coefficient, target and horizon, for checkpoints."""
        return {"value": self.value, "target_kl": self.target_kl, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restores the controller from `state_dict()`."""
        self.value = float(state["value"])
        self.target_kl = float(state.get("target_kl", self.target_kl))
        self.horizon = int(state.get("horizon", self.horizon))


def make_kl_controller(
    kl_coef: float, adaptive: bool, target_kl: float | None = None, horizon: int | None = None
) -> FixedKLController | AdaptiveKLController:
    """Builds the controller a config asks for.

    Args:
        kl_coef: the fixed coefficient, or the initial one when adaptive.
        adaptive: use `AdaptiveKLController`.
        target_kl: required when adaptive.
        horizon: required when adaptive.

    Returns:
        A `FixedKLController` or an `AdaptiveKLController`.

    Raises:
        ValueError: if adaptive and `target_kl` or `horizon` is missing or not positive.
    """
    if not adaptive:
        return FixedKLController(kl_coef)
    if target_kl is None or horizon is None:
        raise ValueError("an adaptive KL controller needs target_kl and horizon")
    return AdaptiveKLController(kl_coef, target_kl, horizon)
