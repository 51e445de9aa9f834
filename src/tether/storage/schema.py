"""Tables of the feedback database (SQLAlchemy ORM) and the schema version they describe.

Campaigns hold items (a prompt and its completions); labelers get items through assignments,
one per (item, labeler), and answer them with labels, also one per (item, labeler); a revised
label keeps each earlier version in the label history. Both unique
constraints are what makes concurrent labeling safe: a labeler can never hold or answer the same
item twice, whatever the timing of requests.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Bump when a table changes, and add the step from the previous version to db.MIGRATIONS.
SCHEMA_VERSION = 6


def utcnow() -> datetime:
    """Returns the current time in UTC (timezone-aware)."""
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of every table."""


class SchemaVersionRow(Base):
    """A single row: the schema version the tables follow."""

    __tablename__ = "schema_version"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)


class SettingRow(Base):
    """Key/value settings of the server (the admin token hash)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class CampaignRow(Base):
    """A labeling campaign: one task kind, guidelines, and how many labelers see each item."""

    __tablename__ = "campaigns"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    guidelines: Mapped[str] = mapped_column(Text, default="")
    labelers_per_item: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # added in schema version 2: model that answers red-team prompts in the app
    model_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    # added in schema version 3: share of a labeler's tasks drawn from the gold items, and the time
    # below which an answer counts as implausibly fast (None: derived from the item's text length)
    gold_rate: Mapped[float] = mapped_column(Float, default=0.1)
    fast_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)


class CampaignMemberRow(Base):
    """A labeler allowed on a campaign; a campaign without members is open to every labeler."""

    __tablename__ = "campaign_members"
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), primary_key=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), primary_key=True, index=True)


class ItemRow(Base):
    """One unit of work: a prompt and its completions (JSON list of strings)."""

    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    external_id: Mapped[str] = mapped_column(String(200))
    prompt: Mapped[str] = mapped_column(Text)
    completions: Mapped[str] = mapped_column(Text, default="[]")
    model: Mapped[str | None] = mapped_column(Text, nullable=True)
    meta: Mapped[str | None] = mapped_column(Text, nullable=True)
    # number of live (open or done) assignments; bounded by the campaign's labelers_per_item
    # (a gold item, which every labeler may get, holds store.GOLD_LEVEL instead: out of the queue's way)
    n_assigned: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("labelers.id"), nullable=True)
    # added in schema version 3: the known answer of a gold item (JSON of its LabelData fields);
    # None for an ordinary item. Gold items measure labelers and are never exported.
    gold: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_items_queue", "campaign_id", "n_assigned", "position"),)


class LabelerRow(Base):
    """A person who labels; signs in with a token of which only the SHA-256 is stored."""

    __tablename__ = "labelers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AssignmentRow(Base):
    """An item handed to a labeler: open, done, skipped or expired; display_order is a JSON permutation.

    An open assignment older than the store's assignment timeout expires: its place on the item
    goes back to the pool (created_at is when it was handed out, or handed out again).
    """

    __tablename__ = "assignments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="open")
    display_order: Mapped[str] = mapped_column(Text, default="[]")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        UniqueConstraint("item_id", "labeler_id", name="uq_assignment"),
        # added in schema version 5: finds the open assignments past their time without a scan
        Index("ix_assignments_status_created", "status", "created_at"),
    )


class LabelRow(Base):
    """A labeler's answer to an item; which columns are set depends on the campaign's kind."""

    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), index=True)
    ranks: Mapped[str | None] = mapped_column(Text, nullable=True)
    unusable: Mapped[str | None] = mapped_column(Text, nullable=True)
    choice: Mapped[str | None] = mapped_column(String(16), nullable=True)
    thumb: Mapped[int | None] = mapped_column(Integer, nullable=True)
    harm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    response: Mapped[str | None] = mapped_column(Text, nullable=True)
    better_response: Mapped[str | None] = mapped_column(Text, nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # added in schema version 2: time the labeler spent on the item
    duration_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)

    __table_args__ = (UniqueConstraint("item_id", "labeler_id", name="uq_label"),)


class LabelVersionRow(Base):
    """An earlier version of a label, kept when the labeler revises it (the label row holds the latest).

    Added in schema version 4.
    """

    __tablename__ = "label_history"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    label_id: Mapped[int] = mapped_column(ForeignKey("labels.id"), index=True)
    ranks: Mapped[str | None] = mapped_column(Text, nullable=True)
    unusable: Mapped[str | None] = mapped_column(Text, nullable=True)
    choice: Mapped[str | None] = mapped_column(String(16), nullable=True)
    thumb: Mapped[int | None] = mapped_column(Integer, nullable=True)
    harm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    response: Mapped[str | None] = mapped_column(Text, nullable=True)
    better_response: Mapped[str | None] = mapped_column(Text, nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    duration_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # when this version was given (the label's updated_at then) and when a revision replaced it
    given_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    replaced_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SessionRow(Base):
    """A browser signed in with a token (added in schema version 5): the cookie holds the session id,
    of which only the SHA-256 is stored. Signing out deletes the row; labeler_id is None for the admin."""

    __tablename__ = "sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    id_hash: Mapped[str] = mapped_column(String(64), unique=True)
    labeler_id: Mapped[int | None] = mapped_column(ForeignKey("labelers.id"), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class JobRow(Base):
    """Model work queued for a worker process (`tether label worker`): sampling a campaign, playground answers.

    A worker claims a queued job by a conditional update (`status = 'queued'`), so two workers never run the
    same job; it writes `heartbeat_at` while the job runs, and a running job whose heartbeat is older than the
    timeout is queued again (its worker died). Added in schema version 6.
    """

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    params: Mapped[str] = mapped_column(Text, default="{}")  # JSON object
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued, running, done, failed
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0 to 1
    message: Mapped[str] = mapped_column(Text, default="")  # what the job is doing now
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON, partial while running
    submitted_by: Mapped[str] = mapped_column(String(200), default="")  # "admin" or "labeler:ID"
    claimed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (Index("ix_jobs_status", "status", "id"),)
