"""Hand-computed checks of the KL-shaped per-token rewards."""

import pytest
import torch

from tether.rl.rewards import compute_rewards, last_true_indices


def test_score_at_last_real_token_minus_kl_elsewhere():
    scores = torch.tensor([1.0, 2.0])
    logprobs = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -2.0, -3.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    rewards, kl = compute_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.1)
    # k1 = logp - ref: row 0 [0.5, 0, -0.5 -> masked 0], row 1 [0, -1, -2]
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, 0.0], [0.0, -1.0, -2.0]]))
    # -0.1 * kl, plus the score at index 1 (row 0) and index 2 (row 1)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 1.0, 0.0], [0.0, 0.1, 2.2]]))


def test_zero_kl_coef_gives_score_only():
    scores = torch.tensor([3.0, -1.0])
    mask = torch.tensor([[True, False, False], [True, True, False]])
    logprobs = torch.randn(2, 3)
    rewards, _ = compute_rewards(scores, logprobs, torch.randn(2, 3), mask, kl_coef=0.0)
    torch.testing.assert_close(rewards, torch.tensor([[3.0, 0.0, 0.0], [0.0, -1.0, 0.0]]))


def test_row_without_real_token_raises():
    mask = torch.tensor([[True, False], [False, False]])
    with pytest.raises(ValueError, match="rows \\[1\\]"):
        compute_rewards(torch.zeros(2), torch.zeros(2, 2), torch.zeros(2, 2), mask, kl_coef=0.1)


def test_last_true_indices():
    mask = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])
    torch.testing.assert_close(last_true_indices(mask), torch.tensor([1, 2, -1]))


def test_fit_length_baseline_hand_case():
    # scores = 1 + 2 * length + residuals (0.5, -0.5, -0.5, 0.5); the residuals sum to 0 and are orthogonal to the
    # lengths, so least squares returns intercept 1 and slope 2 exactly, and their std sqrt(1 / 3) (n - 1 in the divisor)
    from tether.rl.rewards import fit_length_baseline

    lengths = torch.tensor([1, 2, 3, 4])
    scores = 1 + 2 * lengths.double() + torch.tensor([0.5, -0.5, -0.5, 0.5], dtype=torch.float64)
    intercept, slope, std = fit_length_baseline(scores.float(), lengths)
    assert intercept == pytest.approx(1.0, abs=1e-6) and slope == pytest.approx(2.0, abs=1e-6)
    assert std == pytest.approx((1 / 3) ** 0.5, abs=1e-6)
    assert fit_length_baseline(torch.tensor([1.0, 3.0]), torch.tensor([5, 5]))[:2] == (2.0, 0.0)  # one length: no slope
