"""Hand-computed checks of the PPO clipped policy loss, clipped value loss and entropy."""

import math

import pytest
import torch

from tether.losses.ppo import ppo_policy_loss, ppo_value_loss

ONE_TOKEN = torch.ones(1, 1, dtype=torch.bool)


def _policy_case(ratio: float, advantage: float, clip_coef: float = 0.2):
    old = torch.zeros(1, 1)
    logprobs = torch.full((1, 1), math.log(ratio), requires_grad=True)
    advantages = torch.full((1, 1), advantage)
    loss, metrics = ppo_policy_loss(logprobs, old, advantages, ONE_TOKEN, clip_coef)
    loss.backward()
    return loss.item(), logprobs.grad.item(), metrics


def test_ratio_one_gives_minus_mean_advantage():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0]])
    advantages = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[True, True, False]])
    loss, metrics = ppo_policy_loss(logprobs, logprobs.clone(), advantages, mask, 0.2)
    assert loss.item() == pytest.approx(-2.0)  # -(1 + 3) / 2, the masked token ignored
    assert metrics["policy/approx_kl"] == 0.0
    assert metrics["policy/clipfrac"] == 0.0
    assert metrics["policy/ratio"] == pytest.approx(1.0)


def test_positive_advantage_above_clip_is_clipped_with_zero_gradient():
    # ratio 1.5, A = 1: -A r = -1.5, -A clip(r) = -1.2; max is -1.2, a constant
    loss, grad, metrics = _policy_case(1.5, 1.0)
    assert loss == pytest.approx(-1.2)
    assert grad == 0.0
    assert metrics["policy/clipfrac"] == 1.0
    # k3: (r - 1) - log r = 0.5 - 0.4054651
    assert metrics["policy/approx_kl"] == pytest.approx(0.0945349, abs=1e-6)


def test_negative_advantage_above_clip_is_not_clipped():
    # ratio 1.5, A = -1: 1.5 vs 1.2, the unclipped term is the max; d(-A r)/dlogp = -A r = 1.5
    loss, grad, metrics = _policy_case(1.5, -1.0)
    assert loss == pytest.approx(1.5)
    assert grad == pytest.approx(1.5)
    assert metrics["policy/clipfrac"] == 0.0


def test_positive_advantage_below_clip_is_not_clipped():
    # ratio 0.5, A = 1: -0.5 vs -0.8, the max is the unclipped -0.5; gradient -A r = -0.5
    loss, grad, metrics = _policy_case(0.5, 1.0)
    assert loss == pytest.approx(-0.5)
    assert grad == pytest.approx(-0.5)
    assert metrics["policy/clipfrac"] == 0.0


def test_negative_advantage_below_clip_is_clipped_with_zero_gradient():
    # ratio 0.5, A = -1: 0.5 vs 0.8 (clipped at 1 - 0.2), the clipped constant wins
    loss, grad, metrics = _policy_case(0.5, -1.0)
    assert loss == pytest.approx(0.8)
    assert grad == 0.0
    assert metrics["policy/clipfrac"] == 1.0


def test_ratio_inside_clip_range_is_the_plain_surrogate():
    # ratio 1.1 within [0.8, 1.2]: loss -A r = -2.2, gradient -A r = -2.2
    loss, grad, metrics = _policy_case(1.1, 2.0)
    assert loss == pytest.approx(-2.2)
    assert grad == pytest.approx(-2.2)
    assert metrics["policy/clipfrac"] == 0.0


def _value_case(value: float, old_value: float, ret: float, clip: float = 0.5):
    values = torch.tensor([[value]], requires_grad=True)
    old_values, returns = torch.tensor([[old_value]]), torch.tensor([[ret]])
    loss, metrics = ppo_value_loss(values, old_values, returns, ONE_TOKEN, clip)
    loss.backward()
    return loss.item(), values.grad.item(), metrics


def test_value_clipping_takes_the_pessimistic_error():
    # v = 2 moved 1 from old 1, clipped to 1.5: (2 - 3)^2 = 1 vs (1.5 - 3)^2 = 2.25; 0.5 * 2.25
    loss, grad, metrics = _value_case(2.0, 1.0, 3.0)
    assert loss == pytest.approx(1.125)
    assert grad == 0.0  # the clipped prediction does not depend on v
    assert metrics["value/clipfrac"] == 1.0
    assert metrics["value/mean"] == pytest.approx(2.0)


def test_value_inside_clip_range_is_plain_squared_error():
    # v = 1.2 within 0.5 of old 1.0: 0.5 * (1.2 - 3)^2 = 1.62, gradient v - R = -1.8
    loss, grad, metrics = _value_case(1.2, 1.0, 3.0)
    assert loss == pytest.approx(1.62)
    assert grad == pytest.approx(-1.8)
    assert metrics["value/clipfrac"] == 0.0


def test_value_moving_past_the_target_is_not_clipped_when_unclipped_error_is_larger():
    # v = 5 from old 1, R = 3: (5 - 3)^2 = 4 vs (1.5 - 3)^2 = 2.25; the unclipped 4 wins
    loss, grad, metrics = _value_case(5.0, 1.0, 3.0)
    assert loss == pytest.approx(2.0)
    assert grad == pytest.approx(2.0)
    assert metrics["value/clipfrac"] == 0.0


def test_value_loss_ignores_masked_tokens():
    values = torch.tensor([[1.0, 100.0]])
    mask = torch.tensor([[True, False]])
    loss, _ = ppo_value_loss(values, values.clone(), torch.tensor([[3.0, 0.0]]), mask, 0.2)
    assert loss.item() == pytest.approx(0.5 * 4.0)
