"""Agreement report of a campaign: the pure functions of `agreement` applied to stored labels.

Units compared, by task kind:
- rank: for pairwise agreement, every pair of completions of an item (the preference between
  them: better, worse or tie); for alpha, every completion of an item (its rank, ordinal).
- pair: the item (choice: A, B, tie, both_bad); alpha is ordinal on A < tie < B (both_bad left out).
- thumbs: the item (up or down); alpha on 0/1.
- redteam: items seen by several labelers (the harm rating, ordinal).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable
from dataclasses import dataclass

from tether.feedback.agreement import (
    consensus_agreement,
    flag_outliers,
    krippendorff_alpha,
    pairwise_agreement,
    ranking_preferences,
)
from tether.storage import Label, PairChoice, TaskKind

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
        item_units, item_alpha = _item_units(kind, item_labels)
        units.extend(item_units)
        alpha_units.extend(item_alpha)
    return units, alpha_units


def _item_units(kind: TaskKind, labels: list[Label]) -> tuple[Units, AlphaUnits]:
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
