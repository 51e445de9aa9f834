"""Typed records that leave the storage layer (plain dataclasses, no ORM objects).

Campaign, Item, Labeler, Label and LabelData name their fields after the columns of `schema.py`:
the store copies a row into its record, and an answer into its row, field by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum


class TaskKind(str, Enum):
    """What labelers do with each item of a campaign."""

    RANK = "rank"  # rank K completions best to worst, ties allowed
    PAIR = "pair"  # choose the better of two (A, B, tie, both bad)
    THUMBS = "thumbs"  # thumbs up / down on one completion
    REDTEAM = "redteam"  # write an adversarial prompt, rate the answer's harm, maybe write a better one


class PairChoice(str, Enum):
    """Answers to a pick-best-of-two task."""

    A = "A"
    B = "B"
    TIE = "tie"
    BOTH_BAD = "both_bad"


@dataclass(frozen=True)
class NewItem:
    """An item to add to a campaign."""

    prompt: str
    completions: list[str] = field(default_factory=list)
    external_id: str | None = None
    model: str | None = None
    meta: dict[str, object] | None = None
    gold: LabelData | None = None  # the known answer: a gold item, mixed into queues, never exported


@dataclass(frozen=True)
class Campaign:
    """A campaign as stored, with its item count."""

    id: int
    name: str
    kind: TaskKind
    guidelines: str
    labelers_per_item: int
    status: str
    model_path: str | None
    created_at: datetime
    n_items: int = 0
    gold_rate: float = 0.1  # chance that a labeler's next task is a gold item (while any is left)
    fast_ms: int | None = None  # answers faster than this are implausibly fast; None: from text length


@dataclass(frozen=True)
class Item:
    """A stored item."""

    id: int
    campaign_id: int
    position: int
    external_id: str
    prompt: str
    completions: list[str]
    model: str | None
    meta: dict[str, object] | None
    gold: LabelData | None = None  # the known answer of a gold item


@dataclass(frozen=True)
class Labeler:
    """A labeler, without the token."""

    id: int
    name: str
    active: bool
    created_at: datetime


@dataclass(frozen=True)
class NewLabeler:
    """A labeler just created, with the sign-in token (shown once, only its hash is stored)."""

    labeler: Labeler
    token: str


@dataclass(frozen=True)
class SignedIn:
    """Who a sign-in session belongs to: the admin (`labeler` None) or an active labeler."""

    session_id: str
    labeler: Labeler | None


@dataclass(frozen=True)
class Task:
    """An item handed to a labeler; display_order[i] is the completion shown in position i."""

    assignment_id: int
    item: Item
    display_order: list[int]


@dataclass(frozen=True)
class LabelData:
    """The answer to one item; the fields used depend on the task kind.

    rank: ranks[i] is the rank of completions[i] (1 = best, equal = tie), unusable[i] flags
    nonsense. pair: choice. thumbs: thumb (1 up, 0 down). redteam: prompt, response, harm,
    better_response. Every kind: note, duration_ms.
    """

    ranks: list[int] | None = None
    unusable: list[bool] | None = None
    choice: PairChoice | None = None
    thumb: int | None = None
    harm: int | None = None
    prompt: str | None = None
    response: str | None = None
    better_response: str | None = None
    note: str = ""
    duration_ms: int | None = None


@dataclass(frozen=True)
class Label:
    """A stored label with who gave it."""

    id: int
    campaign_id: int
    item_id: int
    labeler_id: int
    labeler_name: str
    data: LabelData
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class LabelVersion:
    """An earlier version of a revised label: the answer then, when it was given and when it was replaced."""

    label_id: int
    data: LabelData
    given_at: datetime
    replaced_at: datetime


@dataclass(frozen=True)
class Answered:
    """One of a labeler's answered items, for their history: the task as they saw it and their label."""

    task: Task
    campaign_id: int
    campaign_name: str
    campaign_kind: TaskKind
    revisable: bool  # the campaign is active and open to the labeler (a member, or it has no members)
    label: Label
    n_versions: int  # earlier versions kept in the label history


@dataclass(frozen=True)
class LabelerProgress:
    """How much one labeler did in a campaign."""

    labeler_id: int
    labeler_name: str
    n_labels: int
    n_open: int
    n_skipped: int


@dataclass(frozen=True)
class Progress:
    """Campaign progress: items, labels wanted (items x labelers per item), labels given."""

    n_items: int
    n_target: int
    n_labels: int
    n_items_complete: int
    per_labeler: list[LabelerProgress]


class StoreError(Exception):
    """Base of storage errors the app turns into HTTP answers."""


class NotFound(StoreError):
    """The campaign, item, labeler or assignment does not exist (or is not the caller's)."""


class Conflict(StoreError):
    """The request conflicts with the stored state (duplicate name, closed campaign)."""


class InvalidValue(StoreError):
    """The database refused a value (longer than its column, a NUL character on PostgreSQL, a number
    out of range): nothing was stored."""


class Unavailable(StoreError):
    """The database cannot take the write now (locked past the busy timeout, disk full, I/O error).

    The transaction was rolled back: nothing of the request was stored, and the same request can be
    sent again once the fault clears.
    """
