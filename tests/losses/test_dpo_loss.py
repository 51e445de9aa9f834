"""Hand-computed checks of the DPO, IPO and KTO losses."""

import math

import pytest
import torch

from tether.losses.dpo import dpo_loss, ipo_loss, kto_kl_ref_point, kto_loss

LOG2 = math.log(2.0)
SOFTPLUS_MINUS_1 = 0.31326168751822286  # -log sigmoid(1) = log(1 + e^-1)


def _hand_case():
    """chosen, rejected, ref_chosen, ref_rejected with h = (-1 - -2) - (-3 - -2) = 2."""
    return tuple(torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.0))


def test_dpo_is_log_two_when_policy_equals_reference():
    chosen = torch.tensor([-3.0, -10.0], requires_grad=True)
    rejected = torch.tensor([-4.0, -1.0])
    loss, metrics = dpo_loss(chosen, rejected, chosen.detach().clone(), rejected.clone(), beta=0.1)
    assert loss.item() == pytest.approx(LOG2)
    assert metrics["dpo/accuracy"] == 0.0  # equal implicit rewards are not a win
    assert metrics["dpo/margin"] == 0.0
    loss.backward()
    # d/d chosen of mean(-log sigmoid(beta h)) at h = 0: -beta * sigmoid(0) / B = -0.1 * 0.5 / 2
    torch.testing.assert_close(chosen.grad, torch.tensor([-0.025, -0.025]))


def test_dpo_hand_case():
    # h = (-1 - -2) - (-3 - -2) = 2; beta h = 1; loss = -log sigmoid(1)
    loss, metrics = dpo_loss(*_hand_case(), beta=0.5)
    assert loss.item() == pytest.approx(SOFTPLUS_MINUS_1)
    assert metrics["loss/dpo"] == pytest.approx(SOFTPLUS_MINUS_1)
    assert metrics["rewards/chosen"] == pytest.approx(0.5)  # 0.5 * (-1 - -2)
    assert metrics["rewards/rejected"] == pytest.approx(-0.5)  # 0.5 * (-3 - -2)
    assert metrics["dpo/margin"] == pytest.approx(1.0)
    assert metrics["dpo/accuracy"] == 1.0
    assert metrics["logprobs/chosen"] == -1.0
    assert metrics["logprobs/rejected"] == -3.0


def test_label_smoothing_zero_is_plain_dpo():
    torch.manual_seed(0)
    args = [torch.randn(5) for _ in range(4)]
    plain, _ = dpo_loss(*args, beta=0.3)
    smoothed, _ = dpo_loss(*args, beta=0.3, label_smoothing=0.0)
    assert smoothed.item() == plain.item()


def test_label_smoothing_hand_case():
    # x = beta h = 1; -(0.9) log sigmoid(1) - 0.1 log sigmoid(-1)
    # = 0.9 softplus(-1) + 0.1 (1 + softplus(-1)) = softplus(-1) + 0.1
    loss, _ = dpo_loss(*_hand_case(), beta=0.5, label_smoothing=0.1)
    assert loss.item() == pytest.approx(SOFTPLUS_MINUS_1 + 0.1)


def test_label_smoothing_half_is_symmetric_with_minimum_log_two_at_zero():
    # eps = 0.5: 0.5 softplus(-x) + 0.5 softplus(x), even in x, minimum log 2 with zero gradient at x = 0
    zero = torch.zeros(1)
    for x in (0.7, 3.0):
        chosen = torch.tensor([x])
        forward, _ = dpo_loss(chosen, zero, zero, zero, beta=1.0, label_smoothing=0.5)
        backward, _ = dpo_loss(-chosen, zero, zero, zero, beta=1.0, label_smoothing=0.5)
        assert forward.item() == pytest.approx(backward.item())
        assert forward.item() > LOG2
    chosen = torch.zeros(1, requires_grad=True)
    loss, _ = dpo_loss(chosen, zero, zero, zero, beta=1.0, label_smoothing=0.5)
    loss.backward()
    assert loss.item() == pytest.approx(LOG2)
    assert chosen.grad.item() == 0.0


def test_label_smoothing_out_of_range_raises():
    zero = torch.zeros(1)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(zero, zero, zero, zero, beta=0.1, label_smoothing=0.7)


def test_ipo_hand_cases():
    chosen, rejected, ref_chosen, ref_rejected = _hand_case()
    # h = 2; beta = 0.5 -> target 1 / (2 * 0.5) = 1; (2 - 1)^2 = 1
    loss, metrics = ipo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.5)
    assert loss.item() == pytest.approx(1.0)
    assert metrics["loss/ipo"] == pytest.approx(1.0)
    # beta = 0.25 -> target 2 = h: loss 0
    loss, _ = ipo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.25)
    assert loss.item() == pytest.approx(0.0)
    # policy == reference: h = 0, beta = 0.1 -> (0 - 5)^2 = 25
    loss, _ = ipo_loss(chosen, rejected, chosen, rejected, beta=0.1)
    assert loss.item() == pytest.approx(25.0)


def test_ipo_gradient_pushes_h_toward_target():
    chosen = torch.tensor([0.0], requires_grad=True)
    zero = torch.zeros(1)
    loss, _ = ipo_loss(chosen, zero, zero, zero, beta=0.5)
    loss.backward()
    # d/dh (h - 1)^2 at h = 0 is -2
    assert chosen.grad.item() == pytest.approx(-2.0)


def test_kto_hand_case():
    policy = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-2.0, -1.0])  # r = [1, -1]
    labels = torch.tensor([True, False])
    z0 = torch.tensor(0.5)
    # desirable: 1 - sigmoid(1 - 0.5) = 1 - 0.6224593 = 0.3775407
    # undesirable: 1 - sigmoid(0.5 - -1) = 1 - 0.8175745 = 0.1824255
    loss, metrics = kto_loss(policy, ref, labels, z0, beta=1.0)
    assert loss.item() == pytest.approx((0.3775407 + 0.1824255) / 2.0, abs=1e-6)
    assert metrics["rewards/chosen"] == pytest.approx(1.0)
    assert metrics["rewards/rejected"] == pytest.approx(-1.0)
    assert metrics["kto/kl_ref_point"] == pytest.approx(0.5)
    # desirable weight 2: (2 * 0.3775407 + 0.1824255) / 2
    loss, _ = kto_loss(policy, ref, labels, z0, beta=1.0, desirable_weight=2.0)
    assert loss.item() == pytest.approx((0.7550813 + 0.1824255) / 2.0, abs=1e-6)


def test_kto_reference_point_is_clamped_and_detached():
    policy = torch.tensor([-1.0, -2.0], requires_grad=True)
    ref = torch.tensor([-2.0, -1.0])
    labels = torch.tensor([True, False])
    z0 = torch.tensor(-3.0, requires_grad=True)
    # z0 clamps to 0: both terms are 1 - sigmoid(1) = 0.2689414
    loss, _ = kto_loss(policy, ref, labels, z0, beta=1.0)
    assert loss.item() == pytest.approx(0.2689414, abs=1e-6)
    loss.backward()
    assert z0.grad is None
    assert policy.grad is not None


def test_kto_kl_ref_point():
    # mean of [1, -1] is 0; mean of [1, 2] is 1.5; a negative mean clamps to 0
    assert kto_kl_ref_point(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0])).item() == 0.0
    assert kto_kl_ref_point(torch.tensor([0.0, 0.0]), torch.tensor([-1.0, -2.0])).item() == pytest.approx(1.5)
    assert kto_kl_ref_point(torch.tensor([-5.0]), torch.tensor([-1.0])).item() == 0.0
