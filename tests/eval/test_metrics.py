"""Hand-computed checks of the evaluation statistics."""

import numpy as np
import pytest

from tether.eval.metrics import (
    bootstrap_ci,
    distinct_n,
    expected_calibration_error,
    reliability_bins,
    wilson_interval,
    win_rate,
)


def test_distinct_n_hand_example():
    texts = ["the cat sat", "the cat ran"]
    # unigrams: the cat sat the cat ran -> 4 unique of 6
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    # bigrams: (the cat) (cat sat) (the cat) (cat ran) -> 3 unique of 4; none crosses texts
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(texts, 3) == 1.0
    assert distinct_n(texts, 4) == 0.0
    assert distinct_n([], 1) == 0.0
    with pytest.raises(ValueError):
        distinct_n(texts, 0)


def test_wilson_interval_known_case():
    # 8 of 10 at 95%: the textbook Wilson interval is (0.4902, 0.9433)
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)
    # 0 of 10 keeps a positive upper bound z^2 / (n + z^2) = 3.8415 / 13.8415
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(0.2775, abs=1e-4)


def test_win_rate_counts_ties_as_half():
    result = win_rate([3, 2, 1, 5, 0], [1, 2, 2, 4, 0])
    # wins at 0 and 3, ties at 1 and 4, a loss at 2: (2 + 0.5 * 2) / 5
    assert (result.wins, result.ties, result.losses, result.n) == (2, 2, 1, 5)
    assert result.win_rate == pytest.approx(0.6)
    assert (result.ci_low, result.ci_high) == pytest.approx(wilson_interval(3.0, 5))
    assert result.ci_low < 0.6 < result.ci_high


def test_win_rate_rejects_bad_input():
    with pytest.raises(ValueError):
        win_rate([], [])
    with pytest.raises(ValueError):
        win_rate([1.0, 2.0], [1.0])


def test_bootstrap_ci():
    assert bootstrap_ci([2.0] * 10) == (2.0, 2.0)
    rng = np.random.default_rng(1)
    values = rng.normal(1.0, 1.0, size=400)
    low, high = bootstrap_ci(values)
    assert low < values.mean() < high
    # the standard error is about 1 / sqrt(400) = 0.05, so the 95% interval is about 0.2 wide
    assert 0.12 < high - low < 0.28
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_expected_calibration_error_hand_cases():
    # bin [0.1, 0.2): confidence 0.15, accuracy 0, gap 0.15; bin [0.9, 1.0]: confidence 0.95, accuracy 1,
    # gap 0.05; half the predictions in each: 0.5 * 0.15 + 0.5 * 0.05 = 0.1
    assert expected_calibration_error([0.15, 0.15, 0.95, 0.95], [0, 0, 1, 1]) == pytest.approx(0.1)
    # confidence 0.25 and one positive in four: perfectly calibrated
    assert expected_calibration_error([0.25] * 4, [1, 0, 0, 0]) == pytest.approx(0.0)
    # two bins: |1 - 0.85| * 2/3 + |0 - 0.35| * 1/3 = 0.1 + 0.1166667
    assert expected_calibration_error([0.85, 0.85, 0.35], [True, True, False]) == pytest.approx(0.2166667)


def test_reliability_bins():
    bins = reliability_bins([0.05, 0.15, 0.15, 1.0], [0, 1, 0, 1], n_bins=10)
    assert len(bins) == 10
    assert bins[0] == (0.05, 0.0, 1)
    confidence, accuracy, count = bins[1]
    assert (confidence, accuracy, count) == (pytest.approx(0.15), 0.5, 2)
    assert bins[9].count == 1  # probability 1.0 lands in the last bin
    assert sum(b.count for b in bins) == 4
    with pytest.raises(ValueError):
        reliability_bins([1.5], [1])
    with pytest.raises(ValueError):
        reliability_bins([0.5, 0.5], [1])


def test_length_controlled_win_rate_matches_the_hand_computed_glm():
    # 10 prompts where the policy answers 5 tokens longer (it wins 8), 10 where it answers 5 shorter (it wins 4).
    # The GLM sigmoid(theta + phi * tanh(dl / std)) is saturated by two groups: sigmoid(theta + phi t) = 0.8 and
    # sigmoid(theta - phi t) = 0.4, so theta = (logit 0.8 + logit 0.4) / 2 and the LC win rate is sigmoid(theta).
    from tether.eval.metrics import lc_win_rate

    policy = [1.0] * 8 + [0.0] * 2 + [1.0] * 4 + [0.0] * 6
    lengths = [10] * 10 + [0] * 10
    lc = lc_win_rate(policy, [0.5] * 20, lengths, [5] * 20, l2=0.0, n_boot=50)
    theta = (np.log(0.8 / 0.2) + np.log(0.4 / 0.6)) / 2
    assert lc.intercept == pytest.approx(theta, abs=1e-8)
    assert lc.rate == pytest.approx(1 / (1 + np.exp(-theta)), abs=1e-8)  # 0.620, against a raw win rate of 0.6
    assert lc.length_coef > 0 and lc.n == 20 and lc.low <= lc.rate <= lc.high


def test_a_policy_that_wins_only_by_length_gets_about_one_half():
    from tether.eval.metrics import lc_win_rate

    rng = np.random.default_rng(0)
    dl = rng.normal(0, 10, 400)
    wins = (rng.random(400) < 1 / (1 + np.exp(-2 * np.tanh(dl / dl.std())))).astype(float)  # preference = length only
    lc = lc_win_rate(wins, [0.5] * 400, 50 + dl, [50] * 400, n_boot=100)
    assert abs(lc.rate - 0.5) < 0.06 and lc.low < 0.5 < lc.high
    long = lc_win_rate(np.ones(400) * (dl > 0), [0.5] * 400, 50 + dl, [50] * 400, n_boot=20)  # longer always wins
    assert abs(long.rate - 0.5) < 0.05 and long.length_coef > 3


def test_length_controlled_win_rate_equals_the_raw_one_when_length_does_not_matter():
    from tether.eval.metrics import lc_win_rate

    rng = np.random.default_rng(1)
    wins = (rng.random(400) < 0.7).astype(float)
    lc = lc_win_rate(wins, [0.5] * 400, rng.integers(1, 60, 400), [30] * 400, n_boot=100)
    assert lc.rate == pytest.approx(wins.mean(), abs=0.02)
    with pytest.raises(ValueError, match="lc_win_rate needs"):
        lc_win_rate([1.0], [0.0, 1.0], [1], [1])
