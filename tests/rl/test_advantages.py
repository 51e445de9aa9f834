"""Hand-computed checks of GAE, advantage whitening and the group baselines."""

import math

import pytest
import torch

from tether.rl.advantages import compute_gae, group_relative_advantages, rloo_advantages


def test_gae_with_gamma_lambda_one_is_reward_to_go_minus_values():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, 1.0, 1.5]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    advantages, returns = compute_gae(rewards, values, mask, gamma=1.0, gae_lambda=1.0)
    # reward-to-go [6, 5, 3] minus values
    torch.testing.assert_close(advantages, torch.tensor([[5.5, 4.0, 1.5]]))
    torch.testing.assert_close(returns, torch.tensor([[6.0, 5.0, 3.0]]))


def test_gae_ignores_rewards_and_values_after_the_last_real_token():
    rewards = torch.tensor([[1.0, 2.0, 100.0]])
    values = torch.tensor([[0.5, 1.0, 50.0]])
    mask = torch.tensor([[True, True, False]])
    advantages, returns = compute_gae(rewards, values, mask, gamma=1.0, gae_lambda=1.0)
    # reward-to-go [3, 2]; the value after token 1 is 0
    torch.testing.assert_close(advantages, torch.tensor([[2.5, 1.0, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[3.0, 2.0, 0.0]]))


def test_gae_three_token_hand_example():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.9, gae_lambda=0.95)
    # deltas: d2 = 1 + 0.9 * 0 - 0.7 = 0.3; d1 = 0 + 0.9 * 0.7 - 0.6 = 0.03; d0 = 0.9 * 0.6 - 0.5 = 0.04
    # gamma * lambda = 0.855: A2 = 0.3; A1 = 0.03 + 0.855 * 0.3 = 0.2865;
    # A0 = 0.04 + 0.855 * 0.2865 = 0.2849575
    torch.testing.assert_close(advantages, torch.tensor([[0.2849575, 0.2865, 0.3]]))
    torch.testing.assert_close(returns, torch.tensor([[0.7849575, 0.8865, 1.0]]))


def _slow_gae(rewards, values, mask, gamma, gae_lambda):
    """One row at a time over python floats, the recursion written out."""
    batch, length = rewards.shape
    advantages = [[0.0] * length for _ in range(batch)]
    for b in range(batch):
        n = int(mask[b].sum())
        last_advantage = 0.0
        for t in reversed(range(n)):
            next_value = float(values[b, t + 1]) if t + 1 < n else 0.0
            delta = float(rewards[b, t]) + gamma * next_value - float(values[b, t])
            last_advantage = delta + gamma * gae_lambda * last_advantage
            advantages[b][t] = last_advantage
    advantages = torch.tensor(advantages, dtype=torch.float64)
    return advantages, torch.where(mask, advantages + values, torch.zeros_like(values))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_matches_slow_reference_on_random_masked_inputs(seed):
    generator = torch.Generator().manual_seed(seed)
    batch, length = 6, 9
    rewards = torch.randn(batch, length, generator=generator, dtype=torch.float64)
    values = torch.randn(batch, length, generator=generator, dtype=torch.float64)
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T_r) prefix masks
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.97, gae_lambda=0.9)
    expected_advantages, expected_returns = _slow_gae(rewards, values, mask, 0.97, 0.9)
    torch.testing.assert_close(advantages, expected_advantages)
    torch.testing.assert_close(returns, expected_returns)


def test_group_relative_advantages():
    scores = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    # group 1: mean 2, population std sqrt(2/3); group 2 all equal: 0
    s = 1.0 / math.sqrt(2.0 / 3.0)
    expected = torch.tensor([-s, 0.0, s, 0.0, 0.0, 0.0])
    torch.testing.assert_close(group_relative_advantages(scores, 3), expected, atol=1e-5, rtol=1e-5)
    centred = group_relative_advantages(scores, 3, normalize_std=False)
    torch.testing.assert_close(centred, torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError):
        group_relative_advantages(scores, 4)


def test_rloo_advantages():
    # 1 - (2 + 3) / 2 = -1.5; 2 - (1 + 3) / 2 = 0; 3 - (1 + 2) / 2 = 1.5; a pair: +-(a - b)
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 2.0])
    torch.testing.assert_close(rloo_advantages(scores, 3), torch.tensor([-1.5, 0.0, 1.5, 3.0, -3.0, 0.0]))
    torch.testing.assert_close(rloo_advantages(torch.tensor([1.0, 4.0]), 2), torch.tensor([-3.0, 3.0]))
    with pytest.raises(ValueError):
        rloo_advantages(scores, 1)
    with pytest.raises(ValueError):
        rloo_advantages(scores, 4)
