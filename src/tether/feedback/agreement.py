"""Inter-annotator agreement and consensus: pure functions on plain values, no database.

- Krippendorff's alpha: K. Krippendorff, "Computing Krippendorff's Alpha-Reliability" (2011),
  coincidence-matrix form, alpha = 1 - (n - 1) * sum_ck o_ck d_ck / sum_ck n_c n_k d_ck, with
  the nominal, ordinal and interval difference functions d_ck.
- Pairwise agreement: the fraction of pairs of labelers who judged the same unit the same way.
- Borda count: a completion scores one point per completion ranked below it and half a point per
  completion tied with it; consensus ranks follow the summed scores.
- Outliers: labelers whose disagreement with the consensus of the others lies far above the
  median labeler's (robust: median + 3 scaled MADs, at least `min_gap`).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Literal

Level = Literal["nominal", "ordinal", "interval"]


def krippendorff_alpha(units: Sequence[Sequence[float]], level: Level = "ordinal") -> float | None:
    """Krippendorff's alpha for reliability data given unit by unit.

    Args:
        units: for each unit, the values the coders gave it (missing values left out). Units with
            fewer than two values are not pairable and are ignored.
        level: metric of the values: "nominal", "ordinal" (ranks) or "interval".

    Returns:
        Alpha in (-inf, 1]; 1 is perfect agreement, 0 is chance. None when undefined: no unit
        has two values, or every value is the same (no expected disagreement).
    """
    pairable = [list(u) for u in units if len(u) >= 2]
    values = sorted({v for u in pairable for v in u})
    if len(values) < 2:
        return None
    index = {v: i for i, v in enumerate(values)}
    size = len(values)
    coincidences = [[0.0] * size for _ in range(size)]
    for unit in pairable:
        weight = 1.0 / (len(unit) - 1)
        for a, b in combinations(range(len(unit)), 2):
            c, k = index[unit[a]], index[unit[b]]
            coincidences[c][k] += weight
            coincidences[k][c] += weight
    marginals = [sum(row) for row in coincidences]
    total = sum(marginals)
    delta = _difference(level, values, marginals)
    observed = sum(coincidences[c][k] * delta[c][k] for c in range(size) for k in range(size))
    expected = sum(marginals[c] * marginals[k] * delta[c][k] for c in range(size) for k in range(size))
    if expected == 0:
        return None
    return 1.0 - (total - 1) * observed / expected


def _difference(level: Level, values: list[float], marginals: list[float]) -> list[list[float]]:
    """The squared difference d_ck between every two values, for the given level of measurement."""
    size = len(values)
    if level == "nominal":
        return [[0.0 if c == k else 1.0 for k in range(size)] for c in range(size)]
    if level == "interval":
        return [[(values[c] - values[k]) ** 2 for k in range(size)] for c in range(size)]
    if level != "ordinal":
        raise ValueError(f"unknown level {level!r}; expected nominal, ordinal or interval")
    delta = [[0.0] * size for _ in range(size)]
    for c in range(size):
        for k in range(c + 1, size):
            between = sum(marginals[c : k + 1]) - (marginals[c] + marginals[k]) / 2
            delta[c][k] = delta[k][c] = between**2
    return delta


@dataclass(frozen=True)
class PairwiseAgreement:
    """Share of agreeing labeler pairs, overall and for each labeler.

    overall: agreeing pairs / all pairs (None without any pair). per_labeler[name]: the same over
    the pairs that include that labeler. n_pairs: number of compared pairs.
    """

    overall: float | None
    per_labeler: dict[str, float]
    n_pairs: int


def pairwise_agreement(units: Sequence[Mapping[str, Hashable]]) -> PairwiseAgreement:
    """Pairwise percent agreement.

    Args:
        units: for each unit, labeler name -> the value that labeler gave (compared with ==).

    Returns:
        PairwiseAgreement over every pair of labelers who judged the same unit.
    """
    agree: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    n_agree = n_pairs = 0
    for unit in units:
        for a, b in combinations(sorted(unit), 2):
            same = unit[a] == unit[b]
            n_pairs += 1
            n_agree += same
            for name in (a, b):
                seen[name] += 1
                agree[name] += same
    overall = n_agree / n_pairs if n_pairs else None
    return PairwiseAgreement(overall=overall, per_labeler={k: agree[k] / seen[k] for k in sorted(seen)}, n_pairs=n_pairs)


def preference(rank_a: int, rank_b: int) -> int:
    """Returns 1 if rank_a is better (smaller) than rank_b, -1 if worse, 0 for a tie."""
    return (rank_a < rank_b) - (rank_a > rank_b)


def ranking_preferences(ranks: Sequence[int]) -> dict[tuple[int, int], int]:
    """Turns a ranking into the preference between every two completions.

    Args:
        ranks: ranks[i] is the rank of completion i (1 = best, equal = tie).

    Returns:
        {(i, j): preference(ranks[i], ranks[j])} for every i < j.
    """
    return {(i, j): preference(ranks[i], ranks[j]) for i, j in combinations(range(len(ranks)), 2)}


def borda_scores(rankings: Sequence[Sequence[int]]) -> list[float]:
    """Borda count of several rankings of the same completions.

    Args:
        rankings: each ranks[i] is the rank of completion i (1 = best, equal = tie).

    Returns:
        scores[i]: summed over rankings, the number of completions ranked below i plus half the
        number tied with i.
    """
    if not rankings:
        return []
    size = len(rankings[0])
    scores = [0.0] * size
    for ranks in rankings:
        for i in range(size):
            scores[i] += sum(1.0 if ranks[i] < ranks[j] else 0.5 if ranks[i] == ranks[j] else 0.0 for j in range(size) if j != i)
    return scores


def ranks_from_scores(scores: Sequence[float]) -> list[int]:
    """Competition ranks from scores (higher is better): [3, 5, 5, 1] -> [3, 1, 1, 4]."""
    return [1 + sum(other > score for other in scores) for score in scores]


def borda_consensus(rankings: Sequence[Sequence[int]]) -> list[int]:
    """Consensus ranking by Borda count; equal scores are tied. Returns ranks (1 = best)."""
    return ranks_from_scores(borda_scores(rankings))


def majority(values: Sequence[Hashable]) -> Hashable | None:
    """Returns the value given by more than half of the votes, or None without a strict majority."""
    if not values:
        return None
    value, count = Counter(values).most_common(1)[0]
    return value if 2 * count > len(values) else None


@dataclass(frozen=True)
class ConsensusAgreement:
    """How often each labeler agrees with the strict majority of the other labelers.

    rate[name]: agreeing units / compared units. n[name]: compared units (units where the others
    had a strict majority).
    """

    rate: dict[str, float]
    n: dict[str, int]


def consensus_agreement(units: Sequence[Mapping[str, Hashable]]) -> ConsensusAgreement:
    """Leave-one-out agreement with the consensus: each labeler against the majority of the others.

    Leaving the labeler out keeps a labeler from agreeing with a consensus they tipped.

    Args:
        units: for each unit, labeler name -> value.

    Returns:
        ConsensusAgreement per labeler (labelers never compared are absent).
    """
    agree: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    for unit in units:
        for name, value in unit.items():
            others = majority([v for other, v in unit.items() if other != name])
            if others is None:
                continue
            seen[name] += 1
            agree[name] += value == others
    return ConsensusAgreement(rate={k: agree[k] / seen[k] for k in sorted(seen)}, n=dict(sorted(seen.items())))


def flag_outliers(
    disagreement: Mapping[str, float],
    counts: Mapping[str, int],
    min_count: int = 5,
    min_labelers: int = 3,
    min_gap: float = 0.15,
) -> list[str]:
    """Labelers who disagree with the consensus far more than the others.

    Flagged when disagreement > median + max(3 * 1.4826 * MAD, min_gap), computed over labelers
    with at least `min_count` compared units, and only when there are `min_labelers` of them.

    Args:
        disagreement: labeler -> 1 - rate of agreement with the consensus.
        counts: labeler -> number of compared units.
        min_count: fewer compared units than this and a labeler is neither judged nor counted.
        min_labelers: fewer eligible labelers than this and no one is flagged.
        min_gap: smallest excess over the median that counts as far.

    Returns:
        Names of flagged labelers, sorted.
    """
    eligible = {k: v for k, v in disagreement.items() if counts.get(k, 0) >= min_count}
    if len(eligible) < min_labelers:
        return []
    median = statistics.median(eligible.values())
    mad = statistics.median(abs(v - median) for v in eligible.values())
    threshold = median + max(3 * 1.4826 * mad, min_gap)
    return sorted(k for k, v in eligible.items() if v > threshold)
