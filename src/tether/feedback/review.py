"""The review of a campaign's labels, item by item: filters (labeler, item, disagreements, flagged,
fast answers, wrong gold answers) and pages. Pure functions on stored records; the admin page and
`GET /api/campaigns/{id}/review` render the same result.

An item is shown when it passes the item filters (its id; disagreement among its labelers) and at
least one of its labels passes the label filters (labeler, flagged, fast, wrong gold answer). It
is shown with all its labels, so a labeler's answer is read beside the others'; the labels that
passed the filters are marked `match`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from tether.feedback.agreement import pairwise_agreement
from tether.feedback.quality import gold_correct, is_fast, item_units_of
from tether.storage import Campaign, Item, Label, PairChoice

PER_PAGE = 20


@dataclass(frozen=True)
class ReviewFilters:
    """What to show; every filter that is set must hold (False / None: not filtered)."""

    labeler: str | None = None
    item: str | None = None  # the item's id from the campaign file
    disagreements: bool = False  # only items whose labelers disagree
    flagged: bool = False  # only answers that flag a completion unusable (pair: both bad)
    fast: bool = False  # only implausibly fast answers
    wrong_gold: bool = False  # only wrong answers to gold items
    page: int = 1

    def label_filters(self) -> bool:
        """True when some filter applies to single labels (not only to items)."""
        return bool(self.labeler or self.flagged or self.fast or self.wrong_gold)


@dataclass(frozen=True)
class ReviewLabel:
    """A label as reviewed: flags computed from the item, and whether it passed the filters."""

    label: Label
    flagged: bool
    fast: bool
    gold_correct: bool | None  # None: not a gold item
    match: bool


@dataclass(frozen=True)
class ReviewItem:
    """An item with all its labels; agreement is the share of agreeing labeler pairs on it."""

    item: Item
    labels: list[ReviewLabel]
    disagreement: bool
    agreement: float | None


@dataclass(frozen=True)
class Review:
    """One page of the review: items in campaign order."""

    items: list[ReviewItem]
    page: int
    n_pages: int
    n_items: int  # items that pass the filters, over all pages
    filters: ReviewFilters


def is_flagged(label: Label) -> bool:
    """True when the answer flags a completion as unusable (pair: "both bad")."""
    return any(label.data.unusable or []) or label.data.choice == PairChoice.BOTH_BAD


def review(campaign: Campaign, items: Sequence[Item], labels: Sequence[Label], filters: ReviewFilters, per_page: int = PER_PAGE) -> Review:
    """Filters and pages a campaign's labels by item.

    Args:
        campaign: the campaign (its kind and fast threshold).
        items: its items in order.
        labels: its labels.
        filters: what to show, and which page.
        per_page: items per page.

    Returns:
        The page (a page past the end is empty).
    """
    by_item: dict[int, list[Label]] = defaultdict(list)
    for label in labels:
        by_item[label.item_id].append(label)
    selected: list[ReviewItem] = []
    for item in items:
        item_labels = by_item.get(item.id, [])
        if not item_labels or (filters.item and item.external_id != filters.item):
            continue
        units = item_units_of(campaign.kind, item_labels)[0] if len(item_labels) > 1 else []
        disagreement = any(len(set(unit.values())) > 1 for unit in units)
        if filters.disagreements and not disagreement:
            continue
        rows = [_review_label(campaign, item, label, filters) for label in item_labels]
        if not any(row.match for row in rows):
            continue
        agreement = pairwise_agreement(units).overall if units else None
        selected.append(ReviewItem(item=item, labels=rows, disagreement=disagreement, agreement=agreement))
    n_pages = max(1, math.ceil(len(selected) / per_page))
    start = (filters.page - 1) * per_page
    return Review(items=selected[start : start + per_page], page=filters.page, n_pages=n_pages, n_items=len(selected), filters=filters)


def _review_label(campaign: Campaign, item: Item, label: Label, filters: ReviewFilters) -> ReviewLabel:
    flagged = is_flagged(label)
    fast = is_fast(label, item, campaign.fast_ms)
    correct = gold_correct(campaign.kind, item.gold, label.data) if item.gold is not None else None
    match = (
        (not filters.labeler or label.labeler_name == filters.labeler)
        and (not filters.flagged or flagged)
        and (not filters.fast or fast)
        and (not filters.wrong_gold or correct is False)
    )
    return ReviewLabel(label=label, flagged=flagged, fast=fast, gold_correct=correct, match=match)
