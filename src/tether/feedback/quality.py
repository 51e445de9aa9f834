"""Agreement report of a campaign: the pure functions of `agreement` applied to stored labels.

Units compared, by task kind:
- rank: for pairwise agreement, every pair of completions of an item (the preference between
  them: better, worse or tie); for alpha, every completion of an item (its rank, ordinal).
- pair: the item (choice: A, B, tie, both_bad); alpha is ordinal on A < tie < B (both_bad left out).
- thumbs: the item (up or down); alpha on 0/1.
- redteam: items seen by several labelers (the harm rating, ordinal).

Screening, from the same labels:
- Gold accuracy: on gold items (items with a known answer, mixed into every labeler's queue), the
  share of a labeler's answers that match the known answer, with a 95% Wilson score interval
  (E. B. Wilson, "Probable inference, the law of succession, and statistical inference", 1927).
  rank: correct when every two completions the known ranking orders are ordered the same way;
  pair: the same choice; thumbs: the same thumb.
- Fast answers: an answer given in less time than the item's threshold: the campaign's `fast_ms`,
  or `FAST_FLOOR_MS` + `FAST_MS_PER_CHAR` per character of the prompt and completions (about 100
  characters a second: faster than anyone reads).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from tether.feedback.agreement import (
    consensus_agreement,
    flag_outliers,
    krippendorff_alpha,
    pairwise_agreement,
    ranking_preferences,
)
from tether.storage import Campaign, Item, Label, LabelData, PairChoice, TaskKind

FAST_FLOOR_MS = 2_000  # no answer to a task is plausible in less (reading the prompt at all)
FAST_MS_PER_CHAR = 10  # ... plus 10 ms per character shown: about 100 characters a second
GOLD_PASS = 0.7  # a labeler fails gold when the interval's upper bound lies below this accuracy
FAST_SHARE = 0.25  # a labeler is flagged fast when more than this share of timed answers is
WILSON_Z = 1.96  # 95% interval

PAIR_SCALE = {PairChoice.A: 0.0, PairChoice.TIE: 1.0, PairChoice.B: 2.0}

Units = list[dict[str, Hashable]]
AlphaUnits = list[dict[str, float]]


@dataclass(frozen=True)
class LabelerQuality:
    """One labeler's numbers in a campaign.

    pairwise: agreement with other labelers on shared units. consensus: agreement with the
    majority of the other labelers. alpha_without: the campaign's alpha with this labeler left
    out (much higher than the campaign's alpha: this labeler lowers agreement).
    """

    name: str
    n_labels: int
    pairwise: float | None
    consensus: float | None
    n_compared: int
    alpha_without: float | None
    outlier: bool


@dataclass(frozen=True)
class AgreementReport:
    """Agreement of a campaign: overall numbers and one row per labeler."""

    n_items_multi: int
    n_pairs: int
    pairwise: float | None
    alpha: float | None
    alpha_level: str
    labelers: list[LabelerQuality]
    outliers: list[str]


def judgment_units(kind: TaskKind, labels: list[Label]) -> tuple[Units, AlphaUnits]:
    """Groups labels into compared units (for pairwise agreement) and alpha units.

    Returns:
        (units, alpha_units): each a list of {labeler name: value}, one entry per unit.
    """
    by_item: dict[int, list[Label]] = defaultdict(list)
    for label in labels:
        by_item[label.item_id].append(label)
    units: Units = []
    alpha_units: AlphaUnits = []
    for item_labels in by_item.values():
        if len(item_labels) < 2:
            continue
        item_units, item_alpha = item_units_of(kind, item_labels)
        units.extend(item_units)
        alpha_units.extend(item_alpha)
    return units, alpha_units


def item_units_of(kind: TaskKind, labels: list[Label]) -> tuple[Units, AlphaUnits]:
    """The compared units and alpha units of one item's labels (see the module docstring)."""
    if kind == TaskKind.RANK:
        prefs = {lab.labeler_name: ranking_preferences(lab.data.ranks or []) for lab in labels}
        keys = sorted({k for p in prefs.values() for k in p})
        units: Units = [{name: p[k] for name, p in prefs.items() if k in p} for k in keys]
        size = max(len(lab.data.ranks or []) for lab in labels)
        alpha = [{lab.labeler_name: float(lab.data.ranks[i]) for lab in labels if lab.data.ranks} for i in range(size)]
        return units, alpha
    if kind == TaskKind.PAIR:
        unit = {lab.labeler_name: lab.data.choice.value for lab in labels if lab.data.choice}
        alpha_unit = {lab.labeler_name: PAIR_SCALE[lab.data.choice] for lab in labels if lab.data.choice in PAIR_SCALE}
        return [unit], [alpha_unit]
    if kind == TaskKind.THUMBS:
        unit = {lab.labeler_name: lab.data.thumb for lab in labels if lab.data.thumb is not None}
        return [unit], [{k: float(v) for k, v in unit.items()}]
    unit = {lab.labeler_name: lab.data.harm for lab in labels if lab.data.harm is not None}
    return [unit], [{k: float(v) for k, v in unit.items()}]


def ordinary_labels(items: Sequence[Item], labels: Sequence[Label]) -> list[Label]:
    """The labels on ordinary items: gold items are judged by their known answer, not by agreement."""
    gold = {item.id for item in items if item.gold is not None}
    return [label for label in labels if label.item_id not in gold]


def _alpha(units: AlphaUnits, without: str | None = None) -> float | None:
    return krippendorff_alpha([[v for k, v in u.items() if k != without] for u in units], level="ordinal")


def agreement_report(kind: TaskKind, labels: list[Label], min_count: int = 5) -> AgreementReport:
    """Computes a campaign's agreement report.

    Args:
        kind: the campaign's task kind.
        labels: all its labels.
        min_count: compared units a labeler needs before being judged an outlier.

    Returns:
        The report; numbers are None where nothing could be compared.
    """
    units, alpha_units = judgment_units(kind, labels)
    pairwise = pairwise_agreement(units)
    consensus = consensus_agreement(units)
    disagreement = {k: 1.0 - v for k, v in consensus.rate.items()}
    outliers = flag_outliers(disagreement, consensus.n, min_count=min_count)
    counts: dict[str, int] = defaultdict(int)
    for label in labels:
        counts[label.labeler_name] += 1
    rows = [
        LabelerQuality(
            name=name,
            n_labels=n,
            pairwise=pairwise.per_labeler.get(name),
            consensus=consensus.rate.get(name),
            n_compared=consensus.n.get(name, 0),
            alpha_without=_alpha(alpha_units, without=name),
            outlier=name in outliers,
        )
        for name, n in sorted(counts.items())
    ]
    per_item = Counter(lab.item_id for lab in labels)
    n_multi = sum(1 for n in per_item.values() if n > 1)
    return AgreementReport(
        n_items_multi=n_multi,
        n_pairs=pairwise.n_pairs,
        pairwise=pairwise.overall,
        alpha=_alpha(alpha_units),
        alpha_level="ordinal",
        labelers=rows,
        outliers=outliers,
    )


# ---- screening: gold accuracy and fast answers --------------------------------------------------


def wilson_interval(k: int, n: int, z: float = WILSON_Z) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion k / n (95% by default); None when n is 0.

    center = (p + z^2 / 2n) / (1 + z^2 / n), half width = z sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n).
    """
    if n <= 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def gold_correct(kind: TaskKind, gold: LabelData, answer: LabelData) -> bool:
    """True when an answer matches a gold item's known answer (see the module docstring)."""
    if kind == TaskKind.RANK:
        if not answer.ranks or not gold.ranks or len(answer.ranks) != len(gold.ranks):
            return False
        known = ranking_preferences(gold.ranks)
        given = ranking_preferences(answer.ranks)
        return all(given[pair] == sign for pair, sign in known.items() if sign != 0)
    if kind == TaskKind.PAIR:
        return answer.choice is not None and answer.choice == gold.choice
    if kind == TaskKind.THUMBS:
        return answer.thumb is not None and answer.thumb == gold.thumb
    return False


def fast_threshold_ms(item: Item, fast_ms: int | None) -> int:
    """The time below which an answer to `item` is implausibly fast (the campaign's `fast_ms`, or
    derived from the text the labeler has to read)."""
    if fast_ms:
        return fast_ms
    chars = len(item.prompt) + sum(len(c) for c in item.completions)
    return FAST_FLOOR_MS + FAST_MS_PER_CHAR * chars


def is_fast(label: Label, item: Item, fast_ms: int | None) -> bool:
    """True when the label was answered faster than the item's threshold (untimed: False)."""
    duration = label.data.duration_ms
    return duration is not None and duration < fast_threshold_ms(item, fast_ms)


@dataclass(frozen=True)
class LabelerScreening:
    """One labeler's gold accuracy and answering speed in a campaign.

    accuracy is n_correct / n_gold with its 95% Wilson interval (low, high); None without gold
    answers. fails_gold: the interval lies entirely below `GOLD_PASS`. fast: more than `FAST_SHARE`
    of the timed answers were implausibly fast.
    """

    name: str
    n_gold: int
    n_correct: int
    accuracy: float | None
    low: float | None
    high: float | None
    n_timed: int
    n_fast: int
    median_ms: float | None
    fails_gold: bool
    fast: bool


@dataclass(frozen=True)
class QualityReport:
    """Screening of a campaign's labelers: gold accuracy and fast answers, one row per labeler."""

    n_gold_items: int
    gold_rate: float
    fast_ms: int | None
    labelers: list[LabelerScreening] = field(default_factory=list)


def quality_report(campaign: Campaign, items: Sequence[Item], labels: Sequence[Label]) -> QualityReport:
    """Screens a campaign's labelers: accuracy on gold items and implausibly fast answers.

    Args:
        campaign: the campaign (its kind, gold rate and fast threshold).
        items: its items, gold items included.
        labels: its labels.

    Returns:
        The report, one row per labeler with at least one label, by name.
    """
    by_id = {item.id: item for item in items}
    gold: dict[str, list[bool]] = defaultdict(list)
    timed: dict[str, list[int]] = defaultdict(list)
    fast: Counter[str] = Counter()
    names = set()
    for label in labels:
        item = by_id.get(label.item_id)
        if item is None:
            continue
        name = label.labeler_name
        names.add(name)
        if item.gold is not None:
            gold[name].append(gold_correct(campaign.kind, item.gold, label.data))
        if label.data.duration_ms is not None:
            timed[name].append(label.data.duration_ms)
            fast[name] += is_fast(label, item, campaign.fast_ms)
    rows = []
    for name in sorted(names):
        answers = gold.get(name, [])
        interval = wilson_interval(sum(answers), len(answers))
        times = timed.get(name, [])
        rows.append(
            LabelerScreening(
                name=name,
                n_gold=len(answers),
                n_correct=sum(answers),
                accuracy=sum(answers) / len(answers) if answers else None,
                low=interval[0] if interval else None,
                high=interval[1] if interval else None,
                n_timed=len(times),
                n_fast=fast[name],
                median_ms=statistics.median(times) if times else None,
                fails_gold=interval is not None and interval[1] < GOLD_PASS,
                fast=bool(times) and fast[name] > FAST_SHARE * len(times),
            )
        )
    n_gold_items = sum(1 for item in items if item.gold is not None)
    return QualityReport(n_gold_items=n_gold_items, gold_rate=campaign.gold_rate, fast_ms=campaign.fast_ms, labelers=rows)


@dataclass(frozen=True)
class Screened:
    """Labels kept for export, and what was dropped: labelers below the gold accuracy, fast answers."""

    labels: list[Label]
    dropped_labelers: list[str]
    n_fast_dropped: int


def screen_labels(
    campaign: Campaign, items: Sequence[Item], labels: Sequence[Label], min_gold_accuracy: float | None = None, exclude_fast: bool = False
) -> Screened:
    """Drops the labels that screening rejects, and every label on a gold item.

    Args:
        campaign: the campaign.
        items: its items, gold items included.
        labels: its labels.
        min_gold_accuracy: drop every label of a labeler whose gold accuracy is below this
            (labelers who answered no gold item are kept: nothing is known against them).
        exclude_fast: drop each answer given faster than its item's threshold.

    Returns:
        The labels to export, who was dropped, and how many fast answers were.
    """
    by_id = {item.id: item for item in items}
    dropped: list[str] = []
    if min_gold_accuracy is not None:
        report = quality_report(campaign, items, labels)
        dropped = [row.name for row in report.labelers if row.accuracy is not None and row.accuracy < min_gold_accuracy]
    kept = []
    n_fast = 0
    for label in labels:
        item = by_id.get(label.item_id)
        if item is None or item.gold is not None or label.labeler_name in dropped:
            continue
        if exclude_fast and is_fast(label, item, campaign.fast_ms):
            n_fast += 1
            continue
        kept.append(label)
    return Screened(labels=kept, dropped_labelers=dropped, n_fast_dropped=n_fast)
