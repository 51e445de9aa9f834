"""The feedback store: every read and write the app and the command line make to the database.

Concurrency rules, in one place:
- An item is handed out with a conditional increment (`n_assigned < labelers_per_item`), so no
  item gets more labelers than asked for, on SQLite and PostgreSQL alike.
- (item, labeler) is unique for assignments and for labels, so a labeler never gets or answers
  the same item twice, and a retried submission updates the label instead of adding one.
- Every method is one transaction, committed before it returns: a label the app acknowledged is
  on disk.
- A write the database cannot take now (locked by another process past the busy timeout, disk
  full, I/O error, connection lost) is rolled back and raises `Unavailable`: nothing is half
  stored, and the same request succeeds once the fault clears. A transaction that deadlocked or
  failed to serialize with a concurrent one (PostgreSQL) is run again a few times first.
- On PostgreSQL, rows whose state a transaction reads and then changes are locked first
  (`SELECT ... FOR UPDATE`: the labeler handing out a task, the assignment being answered or
  skipped), so concurrent requests of one labeler take turns as SQLite's single writer makes them.
- An open assignment expires after `assignment_timeout_s`: the next task handed out (to anyone)
  gives its place on the item back to the pool. The labeler who comes back late gets the item
  again if nobody took its place, and their answer is stored if the item still has a free place;
  otherwise `Conflict` says what happened.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from tether.storage.db import BUSY_TIMEOUT_MS, WRITE_OPTION, ensure_schema, make_engine, should_retry, transient_fault
from tether.storage.records import (
    Campaign,
    Conflict,
    InvalidValue,
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
    SignedIn,
    Task,
    TaskKind,
    Unavailable,
)
from tether.storage.schema import (
    AssignmentRow,
    CampaignRow,
    ItemRow,
    LabelerRow,
    LabelRow,
    SessionRow,
    SettingRow,
    utcnow,
)

ADMIN_TOKEN_KEY = "admin_token_sha256"
CANDIDATES_PER_TRY = 20
CANDIDATE_ROUNDS = 50  # rounds of candidates next_task tries while concurrent requests take them all
ASSIGNMENT_TIMEOUT_S = 30 * 60  # an item nobody answers goes back to the pool after this long
SESSION_MAX_AGE_S = 30 * 24 * 3600  # a sign-in lasts this long at most (the cookie's max age too)
SWEEP_EVERY_S = 30  # how often next_task looks for expired assignments (one indexed query)
RETRIES = 5  # runs of a transaction that conflicted with a concurrent one, before `Unavailable`
RecordT = TypeVar("RecordT")
P = ParamSpec("P")
R = TypeVar("R")


class _RunAgain(Exception):
    """The transaction lost a conflict with a concurrent one (deadlock, serialization failure) and was rolled back."""


def _retried(method: Callable[P, R]) -> Callable[P, R]:
    """Runs a store method (one transaction) again when it lost a conflict with a concurrent transaction.

    Raises:
        Unavailable: it lost RETRIES times in a row.
    """

    @functools.wraps(method)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        for attempt in range(RETRIES):
            try:
                return method(*args, **kwargs)
            except _RunAgain as exc:
                if attempt == RETRIES - 1:
                    raise Unavailable(f"{exc}; nothing was stored, try again") from exc
                time.sleep(random.uniform(0, 0.01 * 2**attempt))  # let the winner finish
        raise AssertionError("unreachable")

    return run


def hash_token(token: str) -> str:
    """Returns the SHA-256 hex digest under which a token is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """Returns a fresh random sign-in token (32 URL-safe characters)."""
    return secrets.token_urlsafe(24)


class FeedbackStore:
    """Campaigns, items, labelers, assignments and labels in one SQL database.

    Args:
        url: SQLAlchemy database URL (`sqlite:///feedback.db`, `postgresql+psycopg://...`).
        busy_timeout_ms: how long a write waits for another connection's lock before it fails
            with `Unavailable` (SQLite's busy timeout, PostgreSQL's lock_timeout).
        assignment_timeout_s: an open assignment older than this expires and its item goes back
            to the pool; None or 0: assignments never expire.
        clock: returns the current time (timezone-aware UTC); tests pass one they control.

    Raises:
        ConfigError: the database cannot be opened or is newer than this code.
    """

    def __init__(
        self,
        url: str,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
        assignment_timeout_s: float | None = ASSIGNMENT_TIMEOUT_S,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.url = url
        self.busy_timeout_ms = busy_timeout_ms
        self.assignment_timeout_s = assignment_timeout_s or None
        self.clock = clock
        self._next_sweep = clock()  # when next_task next looks for expired assignments
        self.engine = make_engine(url, busy_timeout_ms)
        self.previous_schema_version = ensure_schema(self.engine)
        self._writer = self.engine.execution_options(**{WRITE_OPTION: True})
        # SQLite has one writer at a time: queue this process's writers on a lock rather than
        # letting them poll the busy timeout (fairer, and far lower tail latency under load).
        self._write_lock = threading.Lock() if self.engine.dialect.name == "sqlite" else None

    def close(self) -> None:
        """Closes every pooled connection."""
        self.engine.dispose()

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[Session]:
        """Yields a session inside one transaction, committed on exit (rolled back on error).

        Raises:
            Unavailable: the database cannot take the transaction now (see `transient_fault`).
            InvalidValue: the database refused a value.
        """
        try:
            if write and self._write_lock is not None:
                with self._write_lock:
                    with Session(self._writer, expire_on_commit=False) as session, session.begin():
                        yield session
                return
            with Session(self._writer if write else self.engine, expire_on_commit=False) as session, session.begin():
                yield session
        except IntegrityError:
            raise  # a unique key: the methods answer Conflict or run again
        except PoolTimeout as exc:
            raise Unavailable("no database connection was free in time; nothing was stored, try again") from exc
        except DataError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else "invalid value"
            raise InvalidValue(f"the database cannot store a value of this request ({reason}); nothing was stored") from exc
        except DBAPIError as exc:
            fault = transient_fault(exc, self.engine.dialect.name)
            if fault is None:
                raise
            if write and should_retry(exc):
                raise _RunAgain(fault) from exc  # every write method is `_retried`
            raise Unavailable(f"{fault}; nothing was stored, try again") from exc

    def _sweep_cutoff(self, now: datetime) -> datetime | None:
        """The time before which open assignments have expired, when it is time to look for them again
        (at most every SWEEP_EVERY_S, a tenth of the timeout when that is shorter); else None."""
        if self.assignment_timeout_s is None or now < self._next_sweep:
            return None
        self._next_sweep = now + timedelta(seconds=min(SWEEP_EVERY_S, self.assignment_timeout_s / 10))
        return now - timedelta(seconds=self.assignment_timeout_s)

    # ---- admin token -------------------------------------------------------------------------

    def has_admin_token(self) -> bool:
        """Returns True when an admin token has been set."""
        with self._tx() as s:
            return s.get(SettingRow, ADMIN_TOKEN_KEY) is not None

    @_retried
    def set_admin_token(self, token: str) -> None:
        """Stores (the hash of) the admin token, replacing any previous one; a new token signs out
        the admin's sessions."""
        with self._tx(write=True) as s:
            old = s.get(SettingRow, ADMIN_TOKEN_KEY)
            if old is not None and old.value == hash_token(token):
                return  # the same token again (every start with --admin-token): sessions stay
            s.merge(SettingRow(key=ADMIN_TOKEN_KEY, value=hash_token(token)))
            s.execute(delete(SessionRow).where(SessionRow.labeler_id.is_(None)))

    def is_admin_token(self, token: str) -> bool:
        """Returns True when `token` is the admin token."""
        with self._tx() as s:
            row = s.get(SettingRow, ADMIN_TOKEN_KEY)
            return row is not None and secrets.compare_digest(row.value, hash_token(token))

    # ---- labelers ----------------------------------------------------------------------------

    @_retried
    def add_labeler(self, name: str) -> NewLabeler:
        """Creates a labeler and its sign-in token.

        Raises:
            Conflict: a labeler with this name exists.
        """
        token = new_token()
        try:
            with self._tx(write=True) as s:
                row = LabelerRow(name=name, token_hash=hash_token(token), active=True, created_at=utcnow())
                s.add(row)
                s.flush()
                labeler = _labeler(row)
        except IntegrityError:
            raise Conflict(f"labeler {name!r} already exists") from None
        return NewLabeler(labeler=labeler, token=token)

    @_retried
    def rotate_token(self, labeler_id: int) -> str:
        """Gives a labeler a new token (the old one, and every session signed in with it, stop working).

        Raises:
            NotFound: no such labeler.
        """
        token = new_token()
        with self._tx(write=True) as s:
            row = s.get(LabelerRow, labeler_id)
            if row is None:
                raise NotFound(f"labeler {labeler_id} not found")
            row.token_hash = hash_token(token)
            s.execute(delete(SessionRow).where(SessionRow.labeler_id == labeler_id))
        return token

    @_retried
    def set_labeler_active(self, labeler_id: int, active: bool) -> Labeler:
        """Enables or disables a labeler's sign-in (disabling signs out their sessions).

        Raises:
            NotFound: no such labeler.
        """
        with self._tx(write=True) as s:
            row = s.get(LabelerRow, labeler_id)
            if row is None:
                raise NotFound(f"labeler {labeler_id} not found")
            row.active = active
            if not active:
                s.execute(delete(SessionRow).where(SessionRow.labeler_id == labeler_id))
            return _labeler(row)

    def list_labelers(self) -> list[Labeler]:
        """Returns every labeler, oldest first."""
        with self._tx() as s:
            return [_labeler(r) for r in s.scalars(select(LabelerRow).order_by(LabelerRow.id))]

    def labeler_by_token(self, token: str) -> Labeler | None:
        """Returns the active labeler signed in by `token`, or None."""
        with self._tx() as s:
            row = s.scalars(select(LabelerRow).where(LabelerRow.token_hash == hash_token(token))).first()
            return _labeler(row) if row is not None and row.active else None

    def labeler_by_name(self, name: str) -> Labeler | None:
        """Returns the labeler called `name`, or None."""
        with self._tx() as s:
            row = s.scalars(select(LabelerRow).where(LabelerRow.name == name)).first()
            return _labeler(row) if row is not None else None

    # ---- sign-in sessions --------------------------------------------------------------------

    @_retried
    def create_session(self, labeler_id: int | None) -> str:
        """Starts a sign-in session (the browser keeps its id in a cookie) and returns the id.

        Args:
            labeler_id: the labeler who signed in, or None for the admin.
        """
        session_id = new_token()
        now = self.clock()
        with self._tx(write=True) as s:
            s.execute(delete(SessionRow).where(SessionRow.created_at < now - timedelta(seconds=SESSION_MAX_AGE_S)))
            s.add(SessionRow(id_hash=hash_token(session_id), labeler_id=labeler_id, created_at=now))
        return session_id

    def signed_in(self, session_id: str) -> SignedIn | None:
        """Returns who a session belongs to, or None for an unknown, ended or too old session, or a
        disabled labeler's."""
        oldest = self.clock() - timedelta(seconds=SESSION_MAX_AGE_S)
        with self._tx() as s:
            query = select(SessionRow).where(SessionRow.id_hash == hash_token(session_id), SessionRow.created_at >= oldest)
            row = s.scalars(query).first()
            if row is None:
                return None
            if row.labeler_id is None:
                return SignedIn(session_id=session_id, labeler=None)
            labeler = s.get(LabelerRow, row.labeler_id)
            return SignedIn(session_id=session_id, labeler=_labeler(labeler)) if labeler is not None and labeler.active else None

    @_retried
    def end_session(self, session_id: str) -> None:
        """Ends one session (signing out); an unknown id is ignored."""
        with self._tx(write=True) as s:
            s.execute(delete(SessionRow).where(SessionRow.id_hash == hash_token(session_id)))

    @_retried
    def end_sessions(self, labeler_id: int) -> int:
        """Signs a labeler out everywhere (their token still signs in) and returns how many sessions ended.

        Raises:
            NotFound: no such labeler.
        """
        with self._tx(write=True) as s:
            if s.get(LabelerRow, labeler_id) is None:
                raise NotFound(f"labeler {labeler_id} not found")
            return s.execute(delete(SessionRow).where(SessionRow.labeler_id == labeler_id)).rowcount

    # ---- campaigns and items -----------------------------------------------------------------

    @_retried
    def create_campaign(
        self,
        name: str,
        kind: TaskKind,
        items: Sequence[NewItem],
        guidelines: str = "",
        labelers_per_item: int = 1,
        model_path: str | None = None,
    ) -> Campaign:
        """Creates a campaign with its items in one transaction.

        Raises:
            Conflict: a campaign with this name exists.
        """
        try:
            with self._tx(write=True) as s:
                row = CampaignRow(
                    name=name,
                    kind=kind.value,
                    guidelines=guidelines,
                    labelers_per_item=labelers_per_item,
                    status="active",
                    model_path=model_path,
                    created_at=utcnow(),
                )
                s.add(row)
                s.flush()
                _insert_items(s, row.id, items, start=0)
                return _campaign(row, len(items))
        except IntegrityError:
            raise Conflict(f"campaign {name!r} already exists") from None

    @_retried
    def add_items(self, campaign_id: int, items: Sequence[NewItem]) -> int:
        """Appends items to a campaign and returns how many it now has.

        Raises:
            NotFound: no such campaign.
        """
        with self._tx(write=True) as s:
            _campaign_row(s, campaign_id)
            start = s.scalar(select(func.coalesce(func.max(ItemRow.position) + 1, 0)).where(ItemRow.campaign_id == campaign_id))
            _insert_items(s, campaign_id, items, start=start or 0)
            return _count_items(s, campaign_id)

    @_retried
    def update_campaign(
        self,
        campaign_id: int,
        guidelines: str | None = None,
        status: str | None = None,
        model_path: str | None = None,
    ) -> Campaign:
        """Changes a campaign's guidelines, status (active/closed) or red-team model.

        Raises:
            NotFound: no such campaign.
        """
        with self._tx(write=True) as s:
            row = _campaign_row(s, campaign_id)
            if guidelines is not None:
                row.guidelines = guidelines
            if status is not None:
                row.status = status
            if model_path is not None:
                row.model_path = model_path or None
            return _campaign(row, _count_items(s, campaign_id))

    def get_campaign(self, campaign_id: int, count_items: bool = True) -> Campaign:
        """Returns a campaign by id.

        Args:
            campaign_id: the campaign.
            count_items: fill in n_items (a count over the items; skip it on hot paths).

        Raises:
            NotFound: no such campaign.
        """
        with self._tx() as s:
            return _campaign(_campaign_row(s, campaign_id), _count_items(s, campaign_id) if count_items else 0)

    def campaign_by_name(self, name: str) -> Campaign:
        """Returns a campaign by name.

        Raises:
            NotFound: no such campaign.
        """
        with self._tx() as s:
            row = s.scalars(select(CampaignRow).where(CampaignRow.name == name)).first()
            if row is None:
                raise NotFound(f"campaign {name!r} not found")
            return _campaign(row, _count_items(s, row.id))

    def list_campaigns(self) -> list[Campaign]:
        """Returns every campaign, newest first."""
        with self._tx() as s:
            counts = dict(s.execute(select(ItemRow.campaign_id, func.count()).group_by(ItemRow.campaign_id)).all())
            rows = s.scalars(select(CampaignRow).order_by(CampaignRow.id.desc()))
            return [_campaign(r, counts.get(r.id, 0)) for r in rows]

    def list_items(self, campaign_id: int) -> list[Item]:
        """Returns a campaign's items in order."""
        with self._tx() as s:
            rows = s.scalars(select(ItemRow).where(ItemRow.campaign_id == campaign_id).order_by(ItemRow.position))
            return [_item(r) for r in rows]

    # ---- queue ---------------------------------------------------------------------------------

    @_retried
    def next_task(self, campaign_id: int, labeler_id: int, rng: random.Random | None = None) -> Task | None:
        """Returns the labeler's open task in a campaign, or hands out a new item, or None when done.

        Expired assignments (of anyone) give their places back first. A labeler whose own
        assignment expired gets that item again if nobody took its place. Then items that already
        have labelers come first, so items reach their consensus count early.

        Raises:
            NotFound: no such campaign.
        """
        rng = rng or random.Random()
        now = self.clock()
        with self._tx(write=True) as s:
            campaign = _campaign_row(s, campaign_id)
            if self._write_lock is None:  # PostgreSQL: one hand-out at a time per labeler (SQLite: one writer at all)
                s.execute(select(LabelerRow.id).where(LabelerRow.id == labeler_id).with_for_update())
            cutoff = self._sweep_cutoff(now)
            if cutoff is not None:
                _expire_assignments(s, cutoff)
            mine = _own_task(s, campaign_id, labeler_id, campaign.labelers_per_item, now, reopen=campaign.status == "active")
            if mine is not None or campaign.status != "active":
                return mine
            # On PostgreSQL concurrent requests may take every candidate between the query and the claims:
            # look again (each statement sees the claims committed meanwhile) until none is left.
            for round_ in range(CANDIDATE_ROUNDS):
                # PostgreSQL, first round: lock the candidates, passing over those other requests hold, so that
                # concurrent labelers do not queue on the same item; later rounds see every item again
                skip_locked = round_ == 0 and self._write_lock is None
                candidates = _candidates(s, campaign_id, labeler_id, campaign.labelers_per_item, skip_locked=skip_locked)
                if not candidates:
                    if skip_locked:
                        continue
                    return None
                for item in candidates:
                    task = _try_assign(s, item, labeler_id, campaign.labelers_per_item, rng, now)
                    if task is not None:
                        return task
            raise Unavailable("too many labelers asked for items at once; nothing was stored, try again")

    @_retried
    def skip(self, assignment_id: int, labeler_id: int) -> None:
        """Gives an open item back to the pool; the labeler will not get it again.

        Raises:
            NotFound: no such assignment for this labeler.
            Conflict: the item was already labeled.
        """
        with self._tx(write=True) as s:
            row = _assignment_row(s, assignment_id, labeler_id, lock=True)
            if row.status == "done":
                raise Conflict("item already labeled; it cannot be skipped")
            if row.status == "open":
                s.execute(update(ItemRow).where(ItemRow.id == row.item_id).values(n_assigned=ItemRow.n_assigned - 1))
            row.status = "skipped"  # an expired one gave its place back already

    def count_available(self, campaign_id: int, labeler_id: int) -> int:
        """Returns how many items the labeler could still get in a campaign (open one included)."""
        with self._tx() as s:
            campaign = _campaign_row(s, campaign_id)
            per_item = campaign.labelers_per_item
            free = s.scalar(
                select(func.count()).select_from(ItemRow).where(ItemRow.campaign_id == campaign_id, ItemRow.n_assigned < per_item)
            )
            mine_free = s.scalar(  # items with a free place that the labeler had (an expired one they can get again)
                select(func.count())
                .select_from(AssignmentRow)
                .join(ItemRow, ItemRow.id == AssignmentRow.item_id)
                .where(AssignmentRow.labeler_id == labeler_id, ItemRow.campaign_id == campaign_id, ItemRow.n_assigned < per_item)
                .where(AssignmentRow.status != "expired")
            )
            return (free or 0) - (mine_free or 0) + (1 if _open_task(s, campaign_id, labeler_id) else 0)

    def assignment_item(self, assignment_id: int, labeler_id: int) -> tuple[Campaign, Item]:
        """Returns the campaign and item of one of the labeler's assignments.

        Raises:
            NotFound: no such assignment for this labeler.
        """
        with self._tx() as s:
            row = _assignment_row(s, assignment_id, labeler_id)
            item = s.get(ItemRow, row.item_id)
            return _campaign(_campaign_row(s, item.campaign_id), 0), _item(item)

    # ---- labels --------------------------------------------------------------------------------

    @_retried
    def submit_label(self, assignment_id: int, labeler_id: int, data: LabelData) -> Label:
        """Stores the labeler's answer to an assigned item (a resubmission replaces the answer).

        An answer to an expired assignment is stored when the item still has a free place (it
        takes that place again).

        Raises:
            NotFound: no such assignment for this labeler.
            Conflict: the item was skipped, the campaign is closed, or the assignment expired and
                its place went to another labeler.
        """
        for attempt in range(2):
            try:
                with self._tx(write=True) as s:
                    row = _assignment_row(s, assignment_id, labeler_id, lock=True)
                    item = s.get(ItemRow, row.item_id)
                    campaign = _campaign_row(s, item.campaign_id)
                    if row.status == "skipped":
                        raise Conflict("item was skipped; it cannot be labeled")
                    if campaign.status != "active":
                        raise Conflict(f"campaign {campaign.name!r} is closed")
                    if row.status == "expired" and not _claim_place(s, item.id, campaign.labelers_per_item):
                        raise Conflict(self._expired_message())
                    row.status = "done"
                    return _upsert_label(s, item, labeler_id, data)
            except IntegrityError:
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def _expired_message(self) -> str:
        minutes = f"{self.assignment_timeout_s / 60:g} minutes" if self.assignment_timeout_s else "its time"
        return (
            f"this item was held for you for {minutes} without an answer, then given to another labeler, "
            "and it needs no more labels: your answer was not stored. Go on with the next item."
        )

    @_retried
    def add_free_label(self, campaign_id: int, labeler_id: int, data: LabelData) -> Label:
        """Stores a red-team finding the labeler wrote from scratch: a new item and its label.

        Raises:
            NotFound: no such campaign.
            Conflict: the campaign is closed.
        """
        with self._tx(write=True) as s:
            campaign = _campaign_row(s, campaign_id)
            if campaign.status != "active":
                raise Conflict(f"campaign {campaign.name!r} is closed")
            start = s.scalar(select(func.coalesce(func.max(ItemRow.position) + 1, 0)).where(ItemRow.campaign_id == campaign_id))
            item = ItemRow(
                campaign_id=campaign_id,
                position=start or 0,
                external_id=f"written-{new_token()[:8]}",
                prompt=data.prompt or "",
                completions=json.dumps([data.response] if data.response else []),
                n_assigned=1,
                created_by=labeler_id,
            )
            s.add(item)
            s.flush()
            s.add(AssignmentRow(item_id=item.id, labeler_id=labeler_id, status="done", display_order="[]", created_at=self.clock()))
            return _upsert_label(s, item, labeler_id, data)

    def list_labels(self, campaign_id: int, labeler_id: int | None = None) -> list[Label]:
        """Returns a campaign's labels (optionally one labeler's), in item order."""
        with self._tx() as s:
            query = (
                select(LabelRow, LabelerRow.name)
                .join(LabelerRow, LabelerRow.id == LabelRow.labeler_id)
                .join(ItemRow, ItemRow.id == LabelRow.item_id)
                .where(LabelRow.campaign_id == campaign_id)
                .order_by(ItemRow.position, LabelRow.id)
            )
            if labeler_id is not None:
                query = query.where(LabelRow.labeler_id == labeler_id)
            return [_label(row, name) for row, name in s.execute(query).all()]

    def progress(self, campaign_id: int) -> Progress:
        """Returns how far a campaign is, overall and per labeler.

        Raises:
            NotFound: no such campaign.
        """
        with self._tx() as s:
            campaign = _campaign_row(s, campaign_id)
            n_items = _count_items(s, campaign_id)
            per_item = select(LabelRow.item_id, func.count().label("n")).where(LabelRow.campaign_id == campaign_id)
            per_item = per_item.group_by(LabelRow.item_id).subquery()
            n_complete = s.scalar(select(func.count()).select_from(per_item).where(per_item.c.n >= campaign.labelers_per_item))
            n_labels = s.scalar(select(func.count()).select_from(LabelRow).where(LabelRow.campaign_id == campaign_id))
            return Progress(
                n_items=n_items,
                n_target=n_items * campaign.labelers_per_item,
                n_labels=n_labels or 0,
                n_items_complete=n_complete or 0,
                per_labeler=_per_labeler(s, campaign_id),
            )


# ---- helpers (run inside a transaction) -----------------------------------------------------


def _insert_items(s: Session, campaign_id: int, items: Sequence[NewItem], start: int) -> None:
    for offset, new in enumerate(items):
        position = start + offset
        s.add(
            ItemRow(
                campaign_id=campaign_id,
                position=position,
                external_id=new.external_id if new.external_id is not None else str(position),
                prompt=new.prompt,
                completions=json.dumps(list(new.completions)),
                model=new.model,
                meta=json.dumps(new.meta) if new.meta is not None else None,
                n_assigned=0,
            )
        )


def _count_items(s: Session, campaign_id: int) -> int:
    return s.scalar(select(func.count()).select_from(ItemRow).where(ItemRow.campaign_id == campaign_id)) or 0


def _campaign_row(s: Session, campaign_id: int) -> CampaignRow:
    row = s.get(CampaignRow, campaign_id)
    if row is None:
        raise NotFound(f"campaign {campaign_id} not found")
    return row


def _assignment_row(s: Session, assignment_id: int, labeler_id: int, lock: bool = False) -> AssignmentRow:
    """The labeler's assignment; `lock` for one whose status the transaction changes (PostgreSQL: FOR UPDATE)."""
    row = s.get(AssignmentRow, assignment_id, with_for_update=lock)
    if row is None or row.labeler_id != labeler_id:
        raise NotFound(f"assignment {assignment_id} not found")
    return row


def _open_task(s: Session, campaign_id: int, labeler_id: int) -> Task | None:
    query = (
        select(AssignmentRow, ItemRow)
        .join(ItemRow, ItemRow.id == AssignmentRow.item_id)
        .where(ItemRow.campaign_id == campaign_id, AssignmentRow.labeler_id == labeler_id)
        .where(AssignmentRow.status == "open")
        .order_by(AssignmentRow.id)
        .limit(1)
    )
    found = s.execute(query).first()
    if found is None:
        return None
    assignment, item = found
    return Task(assignment_id=assignment.id, item=_item(item), display_order=json.loads(assignment.display_order))


def _claim_place(s: Session, item_id: int, per_item: int) -> bool:
    """Takes one of the item's places if one is free (the conditional increment); False when all are taken."""
    claimed = s.execute(
        update(ItemRow)
        .where(ItemRow.id == item_id, ItemRow.n_assigned < per_item)
        .values(n_assigned=ItemRow.n_assigned + 1)
        .execution_options(synchronize_session=False)
    )
    return claimed.rowcount == 1


def _expire_assignments(s: Session, cutoff: datetime) -> None:
    """Marks open assignments handed out before `cutoff` expired and gives their places back."""
    found = s.execute(
        select(AssignmentRow.id, AssignmentRow.item_id).where(AssignmentRow.status == "open", AssignmentRow.created_at < cutoff).limit(1000)
    ).all()
    for assignment_id, item_id in found:
        # conditional, so that two requests expiring the same assignment give its place back once
        expired = s.execute(
            update(AssignmentRow)
            .where(AssignmentRow.id == assignment_id, AssignmentRow.status == "open")
            .values(status="expired")
            .execution_options(synchronize_session=False)
        )
        if expired.rowcount == 1:
            s.execute(
                update(ItemRow).where(ItemRow.id == item_id).values(n_assigned=ItemRow.n_assigned - 1).execution_options(synchronize_session=False)
            )


def _own_task(s: Session, campaign_id: int, labeler_id: int, per_item: int, now: datetime, reopen: bool) -> Task | None:
    """The labeler's open task; else, when `reopen`, an item of theirs whose assignment expired and
    that still has a free place, handed to them again (one query either way)."""
    query = (
        select(AssignmentRow, ItemRow)
        .join(ItemRow, ItemRow.id == AssignmentRow.item_id)
        .where(ItemRow.campaign_id == campaign_id, AssignmentRow.labeler_id == labeler_id)
        .where((AssignmentRow.status == "open") | ((AssignmentRow.status == "expired") & (ItemRow.n_assigned < per_item)))
        .order_by((AssignmentRow.status == "open").desc(), AssignmentRow.id)
        .limit(1)
    )
    found = s.execute(query).first()
    if found is None:
        return None
    assignment, item = found
    if assignment.status == "expired":
        if not reopen or not _claim_place(s, item.id, per_item):
            return None
        assignment.status = "open"
        assignment.created_at = now
        s.flush()
        s.refresh(item)
    return Task(assignment_id=assignment.id, item=_item(item), display_order=json.loads(assignment.display_order))


def _candidates(s: Session, campaign_id: int, labeler_id: int, per_item: int, skip_locked: bool = False) -> list[ItemRow]:
    """Items the labeler may take, fullest first (one indexed range per fill level), in file order;
    `skip_locked` (PostgreSQL): locked for this transaction, leaving out items other transactions hold."""
    mine = select(AssignmentRow.item_id).where(AssignmentRow.labeler_id == labeler_id)
    found: list[ItemRow] = []
    for level in range(per_item - 1, -1, -1):
        query = (
            select(ItemRow)
            .where(ItemRow.campaign_id == campaign_id, ItemRow.n_assigned == level, ItemRow.id.not_in(mine))
            .order_by(ItemRow.position)
            .limit(CANDIDATES_PER_TRY - len(found))
        )
        if skip_locked:
            query = query.with_for_update(skip_locked=True)
        found.extend(s.scalars(query))
        if len(found) >= CANDIDATES_PER_TRY:
            break
    return found


def _try_assign(s: Session, item: ItemRow, labeler_id: int, per_item: int, rng: random.Random, now: datetime) -> Task | None:
    """Claims one slot of `item` for the labeler; None when another request took the last slot."""
    if not _claim_place(s, item.id, per_item):
        return None
    order = list(range(len(json.loads(item.completions))))
    rng.shuffle(order)  # position bias: every labeler sees the completions in a different order
    try:
        with s.begin_nested():
            row = AssignmentRow(item_id=item.id, labeler_id=labeler_id, status="open", display_order=json.dumps(order), created_at=now)
            s.add(row)
    except IntegrityError:  # the same labeler got this item in a parallel request
        s.execute(update(ItemRow).where(ItemRow.id == item.id).values(n_assigned=ItemRow.n_assigned - 1))
        return None
    s.refresh(item)
    return Task(assignment_id=row.id, item=_item(item), display_order=order)


def _upsert_label(s: Session, item: ItemRow, labeler_id: int, data: LabelData) -> Label:
    row = s.scalars(select(LabelRow).where(LabelRow.item_id == item.id, LabelRow.labeler_id == labeler_id)).first()
    now = utcnow()
    if row is None:
        row = LabelRow(campaign_id=item.campaign_id, item_id=item.id, labeler_id=labeler_id, created_at=now)
        s.add(row)
    _fill_row(
        row,
        data,
        ranks=json.dumps(data.ranks) if data.ranks is not None else None,
        unusable=json.dumps(data.unusable) if data.unusable is not None else None,
        choice=data.choice.value if data.choice is not None else None,
    )
    row.updated_at = now
    s.flush()
    name = s.get(LabelerRow, labeler_id).name
    return _label(row, name)


def _per_labeler(s: Session, campaign_id: int) -> list[LabelerProgress]:
    query = (
        select(LabelerRow.id, LabelerRow.name, AssignmentRow.status, func.count())
        .join(AssignmentRow, AssignmentRow.labeler_id == LabelerRow.id)
        .join(ItemRow, ItemRow.id == AssignmentRow.item_id)
        .where(ItemRow.campaign_id == campaign_id)
        .group_by(LabelerRow.id, LabelerRow.name, AssignmentRow.status)
    )
    counts: dict[tuple[int, str], dict[str, int]] = {}
    for labeler_id, name, status, n in s.execute(query).all():
        counts.setdefault((labeler_id, name), {})[status] = n
    return [
        LabelerProgress(labeler_id=i, labeler_name=name, n_labels=c.get("done", 0), n_open=c.get("open", 0), n_skipped=c.get("skipped", 0))
        for (i, name), c in sorted(counts.items())
    ]


def _record(cls: type[RecordT], row: object, **converted: Any) -> RecordT:
    """Builds the record `cls` from an ORM row: each field is the row's attribute of the same name,
    except those given in `converted` (values the row keeps in another form: JSON text, enum values)."""
    return cls(**{f.name: getattr(row, f.name) for f in fields(cls) if f.name not in converted}, **converted)


def _fill_row(row: object, record: object, **converted: Any) -> None:
    """Sets the row's columns from the record's fields of the same names, or from `converted`."""
    for name, value in ({f.name: getattr(record, f.name) for f in fields(record)} | converted).items():
        setattr(row, name, value)


def _campaign(row: CampaignRow, n_items: int) -> Campaign:
    return _record(Campaign, row, kind=TaskKind(row.kind), n_items=n_items)


def _item(row: ItemRow) -> Item:
    return _record(Item, row, completions=json.loads(row.completions), meta=json.loads(row.meta) if row.meta else None)


def _labeler(row: LabelerRow) -> Labeler:
    return _record(Labeler, row)


def _label(row: LabelRow, labeler_name: str) -> Label:
    data = _record(
        LabelData,
        row,
        ranks=json.loads(row.ranks) if row.ranks else None,
        unusable=json.loads(row.unusable) if row.unusable else None,
        choice=PairChoice(row.choice) if row.choice else None,
        note=row.note or "",
    )
    return _record(Label, row, labeler_name=labeler_name, data=data)
