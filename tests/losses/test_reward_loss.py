"""Hand-computed checks of the Bradley-Terry reward-model loss."""

import math

import pytest
import torch

from tether.losses.reward import bradley_terry_loss


def test_equal_scores_give_log_two_and_ties_count_as_wrong():
    scores = torch.tensor([0.3, -1.0, 2.0])
    loss, metrics = bradley_terry_loss(scores, scores.clone())
    # -log sigmoid(0) = log 2
    assert loss.item() == pytest.approx(math.log(2.0))
    assert metrics["rm/accuracy"] == 0.0
    assert metrics["rm/margin"] == 0.0


def test_hand_case_and_metrics():
    chosen = torch.tensor([2.0, 0.0, 1.0])
    rejected = torch.tensor([1.0, 0.0, 3.0])
    loss, metrics = bradley_terry_loss(chosen, rejected)
    # differences 1, 0, -2: softplus(-1) = 0.3132617, softplus(0) = 0.6931472, softplus(2) = 2.1269280
    assert loss.item() == pytest.approx((0.3132617 + 0.6931472 + 2.1269280) / 3.0, abs=1e-6)
    assert metrics["rm/accuracy"] == pytest.approx(1.0 / 3.0)  # the tie is wrong
    assert metrics["rm/margin"] == pytest.approx(-1.0 / 3.0)
    assert metrics["rm/chosen_scores"] == pytest.approx(1.0)
    assert metrics["rm/rejected_scores"] == pytest.approx(4.0 / 3.0)
    assert metrics["loss/reward"] == pytest.approx(loss.item())


def test_margin_shifts_the_logit():
    # difference 1 minus margin 1 is 0: log 2; accuracy still uses the raw difference
    loss, metrics = bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]), margin=torch.tensor([1.0]))
    assert loss.item() == pytest.approx(math.log(2.0))
    assert metrics["rm/accuracy"] == 1.0


def test_gradient_at_equal_scores():
    chosen = torch.zeros(2, requires_grad=True)
    rejected = torch.zeros(2, requires_grad=True)
    loss, _ = bradley_terry_loss(chosen, rejected)
    loss.backward()
    # d/dc mean(-log sigmoid(c - r)) = -sigmoid(-(c - r)) / B = -0.5 / 2
    torch.testing.assert_close(chosen.grad, torch.tensor([-0.25, -0.25]))
    torch.testing.assert_close(rejected.grad, torch.tensor([0.25, 0.25]))
