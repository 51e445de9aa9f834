"""Evaluation statistics: diversity, win rates with confidence intervals, bootstrap, calibration.

Pure Python and NumPy: usable on scores and texts from any source.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = [
    "distinct_n",
    "WinRate",
    "win_rate",
    "wilson_interval",
    "bootstrap_ci",
    "ReliabilityBin",
    "reliability_bins",
    "expected_calibration_error",
]

Z_95 = 1.959963984540054  # standard normal quantile at 0.975


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Fraction of distinct n-grams among all n-grams of the texts (whitespace tokens).

    Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation Models", sec. 4.3
    (distinct-1, distinct-2). The n-grams of all texts are pooled; n-grams do not cross texts.

    Args:
        texts: the generated texts.
        n: n-gram length.

    Returns:
        unique n-grams / total n-grams, 0.0 when there are no n-grams.

    Raises:
        ValueError: if `n` < 1.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    ngrams = []
    for text in texts:
        tokens = text.split()
        ngrams.extend(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return len(set(ngrams)) / len(ngrams) if ngrams else 0.0


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion.

    Wilson 1927, "Probable Inference, the Law of Succession, and Statistical Inference":
    (p + z^2 / 2n -/+ z sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n), p = successes / n.

    Args:
        successes: number of successes (may be fractional, e.g. ties counted as half).
        n: number of trials, > 0.
        z: normal quantile; 1.96 for 95%.

    Returns:
        `(low, high)` within [0, 1].

    Raises:
        ValueError: if `n` is not positive.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half_width = z * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0)) / denominator
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


@dataclass(frozen=True)
class WinRate:
    """Head-to-head result of a policy against a baseline on the same prompts."""

    win_rate: float  # (wins + 0.5 ties) / n
    wins: int
    ties: int
    losses: int
    n: int
    ci_low: float  # 95% Wilson score interval of win_rate
    ci_high: float


def win_rate(policy_scores: Sequence[float], baseline_scores: Sequence[float]) -> WinRate:
    """Win rate of the policy over the baseline, ties counted as half a win.

    The interval is the 95% Wilson score interval (Wilson 1927) on (wins + 0.5 ties) out of n.

    Args:
        policy_scores: (N,) score of the policy's response to each prompt.
        baseline_scores: (N,) score of the baseline's response to the same prompts.

    Returns:
        A `WinRate`.

    Raises:
        ValueError: if the inputs are empty or of different lengths.
    """
    policy = np.asarray(policy_scores, dtype=float)
    baseline = np.asarray(baseline_scores, dtype=float)
    if policy.shape != baseline.shape:
        raise ValueError(
            f"policy and baseline have {policy.size} and {baseline.size} scores; they must match"
        )
    if policy.size == 0:
        raise ValueError("win_rate needs at least one pair of scores")
    n = int(policy.size)
    wins = int((policy > baseline).sum())
    ties = int((policy == baseline).sum())
    losses = n - wins - ties
    successes = wins + 0.5 * ties
    low, high = wilson_interval(successes, n)
    return WinRate(successes / n, wins, ties, losses, n, low, high)


def bootstrap_ci(
    values: Sequence[float],
    stat: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a statistic.

    Efron & Tibshirani 1993, "An Introduction to the Bootstrap", ch. 13 (percentile interval).

    Args:
        values: (N,) samples.
        stat: statistic of a 1-D array.
        n_boot: number of resamples.
        seed: seed of the resampling, so reports are reproducible.
        alpha: 1 - confidence level.

    Returns:
        `(low, high)`: the alpha/2 and 1 - alpha/2 quantiles of the resampled statistic.

    Raises:
        ValueError: if `values` is empty.
    """
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, data.size, size=(n_boot, data.size))  # (n_boot, N)
    stats = np.array([stat(data[row]) for row in indices])  # (n_boot,)
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


class ReliabilityBin(NamedTuple):
    """One bin of a reliability diagram; an empty bin has count 0 and confidence = accuracy = 0.0."""

    confidence: float  # mean predicted probability in the bin
    accuracy: float  # fraction of positive labels in the bin
    count: int


def reliability_bins(
    probs: Sequence[float], labels: Sequence[bool | int], n_bins: int = 10
) -> list[ReliabilityBin]:
    """Reliability diagram of binary predictions in equal-width probability bins.

    Guo et al. 2017, "On Calibration of Modern Neural Networks", sec. 2 (reliability diagrams), in
    the binary form: a bin holds the predictions with probability in [k / n_bins, (k + 1) / n_bins)
    (the last bin includes 1.0), and its accuracy is the fraction of positive labels.

    Args:
        probs: (N,) predicted probability that each label is positive, e.g. sigmoid(chosen - rejected).
        labels: (N,) 0/1 or bool outcomes.
        n_bins: number of bins.

    Returns:
        `n_bins` `ReliabilityBin`s, lowest probabilities first.

    Raises:
        ValueError: if lengths differ, the inputs are empty, or a probability is outside [0, 1].
    """
    p, y = _check_binary(probs, labels)
    bin_index = np.minimum((p * n_bins).astype(int), n_bins - 1)  # (N,)
    bins = []
    for k in range(n_bins):
        in_bin = bin_index == k
        count = int(in_bin.sum())
        if count == 0:
            bins.append(ReliabilityBin(0.0, 0.0, 0))
        else:
            bins.append(ReliabilityBin(float(p[in_bin].mean()), float(y[in_bin].mean()), count))
    return bins


def expected_calibration_error(
    probs: Sequence[float], labels: Sequence[bool | int], n_bins: int = 10
) -> float:
    """Expected calibration error: count-weighted mean gap between accuracy and confidence per bin.

    Naeini et al. 2015, "Obtaining Well Calibrated Probabilities Using Bayesian Binning"; Guo et al.
    2017 eq. 3: ECE = sum_k |B_k| / N * |acc(B_k) - conf(B_k)|, over the bins of `reliability_bins`.

    Args:
        probs: (N,) predicted probability that each label is positive.
        labels: (N,) 0/1 or bool outcomes.
        n_bins: number of equal-width bins.

    Returns:
        ECE in [0, 1].

    Raises:
        ValueError: as `reliability_bins`.
    """
    bins = reliability_bins(probs, labels, n_bins)
    total = sum(b.count for b in bins)
    return float(sum(b.count / total * abs(b.accuracy - b.confidence) for b in bins))


def _check_binary(probs: Sequence[float], labels: Sequence[bool | int]) -> tuple[np.ndarray, np.ndarray]:
    """Validated float arrays of probabilities and 0/1 labels."""
    p = np.asarray(probs, dtype=float)
    y = np.asarray(labels, dtype=float)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"probs and labels must be 1-D of equal length, got {p.shape} and {y.shape}")
    if p.size == 0:
        raise ValueError("calibration needs at least one prediction")
    if np.any((p < 0) | (p > 1)) or np.any(np.isnan(p)):
        raise ValueError("probabilities must lie in [0, 1]")
    return p, y


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve: P(score of a random positive > score of a random negative), ties half.

    Computed from ranks (Mann-Whitney U / (n_pos * n_neg); Hanley & McNeil 1982) with tied scores given
    their average rank.

    Args:
        scores: (N,) higher = more likely positive.
        labels: (N,) 0/1 or bool.

    Returns:
        AUROC in [0, 1], or None when one class is absent.
    """
    scores, labels = np.asarray(scores, float), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size)
    sorted_scores = scores[order]
    i = 0
    while i < scores.size:  # average rank over runs of equal scores
        j = i
        while j + 1 < scores.size and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


class LengthControlledWinRate(NamedTuple):
    """`lc_win_rate`'s result: the length-controlled win rate, its bootstrap interval, and the fitted GLM."""

    rate: float  # sigmoid(intercept): the win rate predicted for answers of equal length
    low: float
    high: float
    intercept: float  # the policy's quality term (logit scale)
    length_coef: float  # weight of tanh(length difference / its std)
    n: int


def _fit_length_glm(outcomes: np.ndarray, x: np.ndarray, l2: float, iterations: int = 50) -> tuple[float, float]:
    """Logistic regression of outcomes (in [0, 1]) on [1, x] by Newton's method, with an L2 penalty on the slope."""
    X = np.stack([np.ones_like(x), x], axis=1)  # (N, 2)
    w = np.zeros(2)
    ridge = np.diag([0.0, l2])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(X @ w)))
        grad = X.T @ (p - outcomes) + ridge @ w
        hess = X.T @ (X * (p * (1 - p))[:, None]) + ridge + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


def lc_win_rate(
    policy_scores: Sequence[float], baseline_scores: Sequence[float], policy_lengths: Sequence[float],
    baseline_lengths: Sequence[float], l2: float = 1.0, n_boot: int = 500, seed: int = 0,
) -> LengthControlledWinRate:
    """Length-controlled win rate of the policy over the baseline (Dubois et al. 2024, "Length-Controlled
    AlpacaEval", eq. 2 with one model pair and no instruction-difficulty term).

    A logistic GLM predicts each preference from the length difference,
    P(policy preferred) = sigmoid(theta + phi * tanh((len_policy - len_baseline) / std)), fitted by maximum
    likelihood (ties count as half a win); the length-controlled win rate is sigmoid(theta), the win rate the model
    predicts when the two answers are equally long. A policy that wins only by writing longer (or shorter)
    answers gets about 0.5. The interval is a percentile bootstrap over prompts (the GLM refitted each time).

    Args:
        policy_scores, baseline_scores: (N,) a judge's scores of the two answers to each prompt.
        policy_lengths, baseline_lengths: (N,) their lengths (tokens or words, the same unit for both).
        l2: ridge penalty on phi, a weak prior N(0, 1 / l2); it keeps the fit finite when length separates the
            outcomes (the longer answer always wins), where the maximum-likelihood phi would be infinite.

    Returns:
        A `LengthControlledWinRate`.

    Raises:
        ValueError: empty or mismatched inputs.
    """
    policy, baseline = np.asarray(policy_scores, float), np.asarray(baseline_scores, float)
    dl = np.asarray(policy_lengths, float) - np.asarray(baseline_lengths, float)
    if not (policy.shape == baseline.shape == dl.shape) or policy.size == 0:
        raise ValueError(f"lc_win_rate needs N > 0 scores and lengths of each answer; got {policy.size}, {baseline.size}, {dl.size}")
    outcomes = (policy > baseline) + 0.5 * (policy == baseline)  # (N,)
    std = dl.std()
    x = np.tanh(dl / std) if std > 0 else np.zeros_like(dl)  # (N,)
    theta, phi = _fit_length_glm(outcomes, x, l2)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, policy.size, policy.size)
        boots.append(1.0 / (1.0 + np.exp(-_fit_length_glm(outcomes[idx], x[idx], l2)[0])))
    low, high = np.quantile(boots, [0.025, 0.975])
    return LengthControlledWinRate(1.0 / (1.0 + np.exp(-theta)), float(low), float(high), theta, phi, int(policy.size))
