"""The feedback database: campaigns, items, labelers, assignments and labels (SQLAlchemy, no torch)."""

from tether.storage.records import (
    Campaign,
    Conflict,
    Item,
    Label,
    LabelData,
    Labeler,
    LabelerProgress,
    NewItem,
    NewLabeler,
    NotFound,
    PairChoice,
    Progress,
    StoreError,
    Task,
    TaskKind,
    Unavailable,
)
from tether.storage.store import FeedbackStore
from tether.storage.jobs import Job, JobQueue, JobStatus  # noqa: E402  (after the store it builds on)

__all__ = [
    "Campaign",
    "Conflict",
    "FeedbackStore",
    "Item",
    "Job",
    "JobQueue",
    "JobStatus",
    "Label",
    "LabelData",
    "Labeler",
    "LabelerProgress",
    "NewItem",
    "NewLabeler",
    "NotFound",
    "PairChoice",
    "Progress",
    "StoreError",
    "Task",
    "TaskKind",
    "Unavailable",
]
