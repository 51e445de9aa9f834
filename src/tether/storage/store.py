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
import math
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, fields
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from tether.storage.db import BUSY_TIMEOUT_MS, WRITE_OPTION, ensure_schema, make_engine, should_retry, transient_fault
from tether.storage.records import (
    Answered,
    Campaign,
    Conflict,
    InvalidValue,
    Item,
    Label,
    LabelData,
    Labeler,
    LabelerProgress,
    LabelVersion,
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
    CampaignMemberRow,
    CampaignRow,
    ItemRow,
    LabelerRow,
    LabelRow,
    LabelVersionRow,
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
# A gold item's n_assigned: above every labelers_per_item, so the queue's ordinary lookups (a level
# below labelers_per_item, over the queue index) never see gold items, and that index finds them.
GOLD_LEVEL = 2**31 - 1
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
        gold_rate: float = 0.1,
        fast_ms: int | None = None,
        members: Sequence[str] = (),
    ) -> Campaign:
        """Creates a campaign with its items (and members) in one transaction.

        Args:
            members: names of the labelers allowed on it; none: open to every labeler.

        Raises:
            Conflict: a campaign with this name exists.
            NotFound: a member is not a labeler (nothing is created).
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
                    gold_rate=gold_rate,
                    fast_ms=fast_ms,
                    created_at=utcnow(),
                )
                s.add(row)
                s.flush()
                _insert_items(s, row.id, items, start=0)
                for member in dict.fromkeys(members):  # each name once
                    s.add(CampaignMemberRow(campaign_id=row.id, labeler_id=_labeler_row_by_name(s, member).id))
                s.flush()
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
        gold_rate: float | None = None,
        fast_ms: int | None = None,
    ) -> Campaign:
        """Changes a campaign's guidelines, status (active/closed), red-team model, gold rate or
        fast-answer threshold (`fast_ms=0`: derive it from the text length again).

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
            if gold_rate is not None:
                row.gold_rate = gold_rate
            if fast_ms is not None:
                row.fast_ms = fast_ms or None
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

    def list_campaigns(self, labeler_id: int | None = None) -> list[Campaign]:
        """Returns every campaign, newest first; with `labeler_id`, only those open to that labeler
        (campaigns without members, and those the labeler is a member of)."""
        with self._tx() as s:
            counts = dict(s.execute(select(ItemRow.campaign_id, func.count()).group_by(ItemRow.campaign_id)).all())
            query = select(CampaignRow).order_by(CampaignRow.id.desc())
            if labeler_id is not None:
                with_members = select(CampaignMemberRow.campaign_id)
                mine = select(CampaignMemberRow.campaign_id).where(CampaignMemberRow.labeler_id == labeler_id)
                query = query.where(CampaignRow.id.not_in(with_members) | CampaignRow.id.in_(mine))
            return [_campaign(r, counts.get(r.id, 0)) for r in s.scalars(query)]

    # ---- members -------------------------------------------------------------------------------

    def list_members(self, campaign_id: int) -> list[Labeler]:
        """Returns the labelers allowed on a campaign, by name (empty: open to every labeler).

        Raises:
            NotFound: no such campaign.
        """
        with self._tx() as s:
            _campaign_row(s, campaign_id)
            query = (
                select(LabelerRow)
                .join(CampaignMemberRow, CampaignMemberRow.labeler_id == LabelerRow.id)
                .where(CampaignMemberRow.campaign_id == campaign_id)
                .order_by(LabelerRow.name)
            )
            return [_labeler(r) for r in s.scalars(query)]

    def can_label(self, campaign_id: int, labeler_id: int) -> bool:
        """True when the campaign is open to the labeler: it has no members, or the labeler is one."""
        with self._tx() as s:
            try:
                _check_member(s, campaign_id, labeler_id)
            except NotFound:
                return False
            return True

    @_retried
    def add_members(self, campaign_id: int, names: Sequence[str]) -> list[Labeler]:
        """Allows labelers on a campaign (already members are left as they are); returns the members.

        Once a campaign has members, only they get its items and may label it.

        Raises:
            NotFound: no such campaign, or a name is not a labeler (nobody is added).
        """
        with self._tx(write=True) as s:
            _campaign_row(s, campaign_id)
            present = set(s.scalars(select(CampaignMemberRow.labeler_id).where(CampaignMemberRow.campaign_id == campaign_id)))
            for name in names:
                labeler = _labeler_row_by_name(s, name)
                if labeler.id not in present:
                    s.add(CampaignMemberRow(campaign_id=campaign_id, labeler_id=labeler.id))
                    present.add(labeler.id)
        return self.list_members(campaign_id)

    @_retried
    def remove_members(self, campaign_id: int, names: Sequence[str]) -> list[Labeler]:
        """Takes labelers off a campaign; returns the members left (none left: open to all again).

        Their labels stay; the tasks they held go back to the pool (as if skipped), unless the
        campaign is left without members (then it is open to them again).

        Raises:
            NotFound: no such campaign, or a name is not a labeler (nobody is removed).
        """
        with self._tx(write=True) as s:
            _campaign_row(s, campaign_id)
            ids = [_labeler_row_by_name(s, name).id for name in names]
            s.execute(
                CampaignMemberRow.__table__.delete().where(
                    CampaignMemberRow.campaign_id == campaign_id, CampaignMemberRow.labeler_id.in_(ids)
                )
            )
            if s.scalar(select(func.count()).select_from(CampaignMemberRow).where(CampaignMemberRow.campaign_id == campaign_id)):
                held = select(AssignmentRow).join(ItemRow, ItemRow.id == AssignmentRow.item_id)
                held = held.where(ItemRow.campaign_id == campaign_id, AssignmentRow.labeler_id.in_(ids), AssignmentRow.status == "open")
                for row in s.scalars(held).all():
                    row.status = "skipped"
                    s.execute(update(ItemRow).where(ItemRow.id == row.item_id, ItemRow.gold.is_(None)).values(n_assigned=ItemRow.n_assigned - 1))
        return self.list_members(campaign_id)

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
        have labelers come first, so items reach their consensus count early. With chance
        `gold_rate`, the new item is a gold item the labeler has not seen (every labeler may get
        every gold item); gold items are only handed out while ordinary ones last.

        Raises:
            NotFound: no such campaign, or the labeler is not one of its members.
        """
        rng = rng or random.Random()
        now = self.clock()
        with self._tx(write=True) as s:
            campaign = _campaign_row(s, campaign_id)
            _check_member(s, campaign_id, labeler_id)
            if self._write_lock is None:  # PostgreSQL: one hand-out at a time per labeler (SQLite: one writer at all)
                s.execute(select(LabelerRow.id).where(LabelerRow.id == labeler_id).with_for_update())
            cutoff = self._sweep_cutoff(now)
            if cutoff is not None:
                _expire_assignments(s, cutoff)
            mine = _own_task(s, campaign_id, labeler_id, campaign.labelers_per_item, now, reopen=campaign.status == "active")
            if mine is not None or campaign.status != "active":
                return mine
            gold_drawn = False
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
                if not gold_drawn:
                    gold_drawn = True
                    if rng.random() < campaign.gold_rate:
                        gold = _gold_candidates(s, campaign_id, labeler_id)
                        rng.shuffle(gold)
                        for item in gold:
                            task = _new_assignment(s, item, labeler_id, rng, now)
                            if task is not None:
                                return task
                for item in candidates:
                    task = _try_assign(s, item, labeler_id, campaign.labelers_per_item, rng, now)
                    if task is not None:
                        return task
            raise Unavailable("too many labelers asked for items at once; nothing was stored, try again")

    @_retried
    def skip(self, assignment_id: int, labeler_id: int) -> None:
        """Gives an open item back to the pool; the labeler gets it again only by `unskip`.

        Raises:
            NotFound: no such assignment for this labeler.
            Conflict: the item was already labeled.
        """
        with self._tx(write=True) as s:
            row = _assignment_row(s, assignment_id, labeler_id, lock=True)
            if row.status == "done":
                raise Conflict("item already labeled; it cannot be skipped")
            if row.status == "open":
                s.execute(update(ItemRow).where(ItemRow.id == row.item_id, ItemRow.gold.is_(None)).values(n_assigned=ItemRow.n_assigned - 1))
            row.status = "skipped"  # an expired one gave its place back already

    @_retried
    def unskip(self, assignment_id: int, labeler_id: int) -> Task:
        """Takes a skipped item back: it is open for the labeler again (and comes before newer items).

        The item's slot is claimed with the same conditional increment as when handing it out, so an
        item that other labelers filled meanwhile is not over-assigned.

        Raises:
            NotFound: no such assignment for this labeler (or no longer a member of its campaign).
            Conflict: the item was not skipped, its campaign is closed, or other labelers took every slot.
        """
        with self._tx(write=True) as s:
            row = _assignment_row(s, assignment_id, labeler_id, lock=True)
            item = s.get(ItemRow, row.item_id)
            campaign = _campaign_row(s, item.campaign_id)
            if row.status != "skipped":
                raise Conflict(f"item {item.external_id!r} is not skipped")
            _check_member(s, campaign.id, labeler_id, what=f"assignment {assignment_id}")
            if campaign.status != "active":
                raise Conflict(f"campaign {campaign.name!r} is closed")
            claimed = s.execute(
                update(ItemRow)
                .where(ItemRow.id == item.id, ItemRow.n_assigned < campaign.labelers_per_item, ItemRow.gold.is_(None))
                .values(n_assigned=ItemRow.n_assigned + 1)
                .execution_options(synchronize_session=False)
            )
            if item.gold is None and claimed.rowcount != 1:  # a gold item takes no slot: every labeler may have it
                raise Conflict(f"item {item.external_id!r} went to other labelers meanwhile; it cannot be taken back")
            row.status = "open"
            row.created_at = self.clock()  # held afresh: the assignment timeout counts from now
            s.refresh(item)
            return Task(assignment_id=row.id, item=_item(item), display_order=json.loads(row.display_order))

    def list_skipped(self, campaign_id: int, labeler_id: int) -> list[Task]:
        """Returns the items the labeler skipped in a campaign, most recently handed out first."""
        with self._tx() as s:
            query = (
                select(AssignmentRow, ItemRow)
                .join(ItemRow, ItemRow.id == AssignmentRow.item_id)
                .where(ItemRow.campaign_id == campaign_id, AssignmentRow.labeler_id == labeler_id, AssignmentRow.status == "skipped")
                .order_by(AssignmentRow.id.desc())
            )
            return [Task(assignment_id=a.id, item=_item(i), display_order=json.loads(a.display_order)) for a, i in s.execute(query).all()]

    def count_available(self, campaign_id: int, labeler_id: int) -> int:
        """Returns how many items the labeler could still get in a campaign (open one included).

        Gold items count as many as the gold rate will likely mix in among the ordinary items
        left, so the number falls by one per task whether a task is gold or not.
        """
        with self._tx() as s:
            campaign = _campaign_row(s, campaign_id)
            per_item = campaign.labelers_per_item
            ordinary = (ItemRow.campaign_id == campaign_id, ItemRow.n_assigned < per_item)  # gold items sit at GOLD_LEVEL
            free = s.scalar(select(func.count()).select_from(ItemRow).where(*ordinary))
            mine_free = s.scalar(  # items with a free place that the labeler had (an expired one they can get again)
                select(func.count())
                .select_from(AssignmentRow)
                .join(ItemRow, ItemRow.id == AssignmentRow.item_id)
                .where(AssignmentRow.labeler_id == labeler_id, AssignmentRow.status != "expired", *ordinary)
            )
            n_open = s.scalar(
                select(func.count())
                .select_from(AssignmentRow)
                .join(ItemRow, ItemRow.id == AssignmentRow.item_id)
                .where(AssignmentRow.labeler_id == labeler_id, ItemRow.campaign_id == campaign_id, AssignmentRow.status == "open")
            )
            left = (free or 0) - (mine_free or 0)
            gold = len(_gold_candidates(s, campaign_id, labeler_id)) if left else 0
            rate = campaign.gold_rate
            expected_gold = gold if rate >= 1 else min(gold, math.ceil(left * rate / (1 - rate)))
            return left + expected_gold + (n_open or 0)

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
            NotFound: no such assignment for this labeler, or the labeler is no longer a member.
            Conflict: the item was skipped, the campaign is closed, or the assignment expired and
                its place went to another labeler.
        """
        for attempt in range(2):
            try:
                with self._tx(write=True) as s:
                    row = _assignment_row(s, assignment_id, labeler_id, lock=True)
                    item = s.get(ItemRow, row.item_id)
                    campaign = _campaign_row(s, item.campaign_id)
                    _check_member(s, campaign.id, labeler_id, what=f"assignment {assignment_id}")
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
            NotFound: no such campaign, or the labeler is not one of its members.
            Conflict: the campaign is closed.
        """
        with self._tx(write=True) as s:
            campaign = _campaign_row(s, campaign_id)
            _check_member(s, campaign_id, labeler_id)
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

    def add_thumb(self, campaign_name: str, item: NewItem, labeler_id: int, thumb: int, guidelines: str = "") -> Label:
        """Stores a thumb up (1) or down (0) on a completion seen outside the queue (the playground).

        The thumbs campaign `campaign_name` is created on first use. The item is found by its external id (the
        same answer thumbed again updates the label) or added, already assigned to the labeler, in the same
        transaction as the label.

        Raises:
            Conflict: the campaign exists with another task kind, or is closed.
        """
        for attempt in range(2):
            try:
                with self._tx(write=True) as s:
                    campaign = s.scalars(select(CampaignRow).where(CampaignRow.name == campaign_name)).first()
                    if campaign is None:
                        campaign = CampaignRow(name=campaign_name, kind=TaskKind.THUMBS.value, guidelines=guidelines, labelers_per_item=1,
                                               status="active", created_at=utcnow())
                        s.add(campaign)
                        s.flush()
                    if campaign.kind != TaskKind.THUMBS.value:
                        raise Conflict(f"campaign {campaign_name!r} is a {campaign.kind} campaign, not thumbs")
                    if campaign.status != "active":
                        raise Conflict(f"campaign {campaign_name!r} is closed")
                    row = s.scalars(select(ItemRow).where(ItemRow.campaign_id == campaign.id, ItemRow.external_id == item.external_id)).first()
                    if row is None:
                        start = s.scalar(select(func.coalesce(func.max(ItemRow.position) + 1, 0)).where(ItemRow.campaign_id == campaign.id))
                        _insert_items(s, campaign.id, [item], start=start or 0)
                        s.flush()
                        row = s.scalars(select(ItemRow).where(ItemRow.campaign_id == campaign.id, ItemRow.external_id == item.external_id)).first()
                    assignment = s.scalars(select(AssignmentRow).where(AssignmentRow.item_id == row.id, AssignmentRow.labeler_id == labeler_id)).first()
                    if assignment is None:
                        s.add(AssignmentRow(item_id=row.id, labeler_id=labeler_id, status="done", display_order="[0]", created_at=utcnow()))
                        s.execute(update(ItemRow).where(ItemRow.id == row.id).values(n_assigned=ItemRow.n_assigned + 1))
                    else:
                        assignment.status = "done"
                    return _upsert_label(s, row, labeler_id, LabelData(thumb=thumb))
            except IntegrityError:  # a parallel first thumb created the campaign or the item: the retry finds it
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

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

    def answered(self, labeler_id: int, assignment_id: int | None = None, limit: int = 500) -> list[Answered]:
        """Returns the labeler's answered items, most recently answered first (or one by assignment).

        Args:
            labeler_id: whose answers.
            assignment_id: only this assignment (empty when it is not the labeler's or not answered).
            limit: at most this many.
        """
        with self._tx() as s:
            n_versions = (
                select(LabelVersionRow.label_id, func.count().label("n")).group_by(LabelVersionRow.label_id).subquery()
            )
            query = (
                select(AssignmentRow, ItemRow, CampaignRow, LabelRow, func.coalesce(n_versions.c.n, 0))
                .join(ItemRow, ItemRow.id == AssignmentRow.item_id)
                .join(CampaignRow, CampaignRow.id == ItemRow.campaign_id)
                .join(LabelRow, (LabelRow.item_id == AssignmentRow.item_id) & (LabelRow.labeler_id == AssignmentRow.labeler_id))
                .outerjoin(n_versions, n_versions.c.label_id == LabelRow.id)
                .where(AssignmentRow.labeler_id == labeler_id, AssignmentRow.status == "done")
                .order_by(LabelRow.updated_at.desc(), LabelRow.id.desc())
                .limit(limit)
            )
            if assignment_id is not None:
                query = query.where(AssignmentRow.id == assignment_id)
            labeler = s.get(LabelerRow, labeler_id)
            name = labeler.name if labeler is not None else ""
            with_members = set(s.scalars(select(CampaignMemberRow.campaign_id).distinct()))
            mine = set(s.scalars(select(CampaignMemberRow.campaign_id).where(CampaignMemberRow.labeler_id == labeler_id)))
            return [
                Answered(
                    task=Task(assignment_id=a.id, item=_item(i), display_order=json.loads(a.display_order)),
                    campaign_id=c.id,
                    campaign_name=c.name,
                    campaign_kind=TaskKind(c.kind),
                    revisable=c.status == "active" and (c.id not in with_members or c.id in mine),
                    label=_label(lab, name),
                    n_versions=n,
                )
                for a, i, c, lab, n in s.execute(query).all()
            ]

    def label_history(self, label_id: int) -> list[LabelVersion]:
        """Returns the earlier versions of a label, oldest first (empty when it was never revised)."""
        with self._tx() as s:
            rows = s.scalars(select(LabelVersionRow).where(LabelVersionRow.label_id == label_id).order_by(LabelVersionRow.id))
            return [_label_version(r) for r in rows]

    def progress(self, campaign_id: int) -> Progress:
        """Returns how far a campaign is, overall and per labeler.

        Gold items are left out of the item and label counts (they are not part of the data).

        Raises:
            NotFound: no such campaign.
        """
        with self._tx() as s:
            campaign = _campaign_row(s, campaign_id)
            n_items = _count_items(s, campaign_id, gold=False)
            ordinary = select(LabelRow.item_id).join(ItemRow, ItemRow.id == LabelRow.item_id)
            ordinary = ordinary.where(LabelRow.campaign_id == campaign_id, ItemRow.gold.is_(None)).subquery()
            per_item = select(ordinary.c.item_id, func.count().label("n")).group_by(ordinary.c.item_id).subquery()
            n_complete = s.scalar(select(func.count()).select_from(per_item).where(per_item.c.n >= campaign.labelers_per_item))
            n_labels = s.scalar(select(func.count()).select_from(ordinary))
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
                gold=_gold_json(new.gold),
                n_assigned=GOLD_LEVEL if new.gold is not None else 0,
            )
        )


def _count_items(s: Session, campaign_id: int, gold: bool | None = None) -> int:
    """Counts a campaign's items: all of them, only gold ones (True) or only ordinary ones (False)."""
    query = select(func.count()).select_from(ItemRow).where(ItemRow.campaign_id == campaign_id)
    if gold is not None:
        query = query.where(ItemRow.gold.is_not(None) if gold else ItemRow.gold.is_(None))
    return s.scalar(query) or 0


def _gold_json(gold: LabelData | None) -> str | None:
    """The stored form of a known answer: the fields that are set, as JSON."""
    if gold is None:
        return None
    return json.dumps({k: (v.value if isinstance(v, PairChoice) else v) for k, v in asdict(gold).items() if v not in (None, "")})


def _labeler_row_by_name(s: Session, name: str) -> LabelerRow:
    row = s.scalars(select(LabelerRow).where(LabelerRow.name == name)).first()
    if row is None:
        raise NotFound(f"labeler {name!r} not found")
    return row


def _check_member(s: Session, campaign_id: int, labeler_id: int, what: str | None = None) -> None:
    """Raises NotFound unless the campaign is open to the labeler (no members, or a member):
    to anyone else the campaign (or the assignment `what`) does not exist."""
    members = set(s.scalars(select(CampaignMemberRow.labeler_id).where(CampaignMemberRow.campaign_id == campaign_id)))
    if members and labeler_id not in members:
        raise NotFound(f"{what or f'campaign {campaign_id}'} not found")


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
    found = s.execute(  # a gold item has no places to give back: its assignments stay open
        select(AssignmentRow.id, AssignmentRow.item_id)
        .join(ItemRow, ItemRow.id == AssignmentRow.item_id)
        .where(AssignmentRow.status == "open", AssignmentRow.created_at < cutoff, ItemRow.gold.is_(None))
        .limit(1000)
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


def _gold_candidates(s: Session, campaign_id: int, labeler_id: int) -> list[ItemRow]:
    """Gold items of the campaign the labeler has not been given yet."""
    mine = select(AssignmentRow.item_id).where(AssignmentRow.labeler_id == labeler_id)
    query = select(ItemRow).where(ItemRow.campaign_id == campaign_id, ItemRow.n_assigned == GOLD_LEVEL, ItemRow.id.not_in(mine))
    return list(s.scalars(query.order_by(ItemRow.position)))


def _try_assign(s: Session, item: ItemRow, labeler_id: int, per_item: int, rng: random.Random, now: datetime) -> Task | None:
    """Claims one slot of `item` for the labeler; None when another request took the last slot."""
    if not _claim_place(s, item.id, per_item):
        return None
    task = _new_assignment(s, item, labeler_id, rng, now)
    if task is None:  # the same labeler got this item in a parallel request
        s.execute(update(ItemRow).where(ItemRow.id == item.id).values(n_assigned=ItemRow.n_assigned - 1))
    return task


def _new_assignment(s: Session, item: ItemRow, labeler_id: int, rng: random.Random, now: datetime) -> Task | None:
    """Hands `item` to the labeler (completions in a fresh random order); None when they already have it."""
    order = list(range(len(json.loads(item.completions))))
    rng.shuffle(order)  # position bias: every labeler sees the completions in a different order
    try:
        with s.begin_nested():
            row = AssignmentRow(item_id=item.id, labeler_id=labeler_id, status="open", display_order=json.dumps(order), created_at=now)
            s.add(row)
    except IntegrityError:
        return None
    s.refresh(item)
    return Task(assignment_id=row.id, item=_item(item), display_order=order)


def _upsert_label(s: Session, item: ItemRow, labeler_id: int, data: LabelData) -> Label:
    row = s.scalars(select(LabelRow).where(LabelRow.item_id == item.id, LabelRow.labeler_id == labeler_id)).first()
    now = utcnow()
    if row is None:
        row = LabelRow(campaign_id=item.campaign_id, item_id=item.id, labeler_id=labeler_id, created_at=now)
        s.add(row)
    elif _label_data(row) != data:
        # a revision: the answer it replaces goes to the label history, so nothing given is lost
        # (a retried identical submission is not a revision)
        s.add(LabelVersionRow(label_id=row.id, **_columns(row, LABEL_DATA_COLUMNS), given_at=row.updated_at, replaced_at=now))
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
    return _record(
        Item, row, completions=json.loads(row.completions), meta=json.loads(row.meta) if row.meta else None, gold=_gold_data(row.gold)
    )


def _gold_data(text: str | None) -> LabelData | None:
    if not text:
        return None
    data = json.loads(text)
    if data.get("choice") is not None:
        data["choice"] = PairChoice(data["choice"])
    return LabelData(**data)


def _labeler(row: LabelerRow) -> Labeler:
    return _record(Labeler, row)


LABEL_DATA_COLUMNS = tuple(f.name for f in fields(LabelData))


def _columns(row: object, names: Sequence[str]) -> dict[str, Any]:
    return {name: getattr(row, name) for name in names}


def _label_data(row: LabelRow | LabelVersionRow) -> LabelData:
    return _record(
        LabelData,
        row,
        ranks=json.loads(row.ranks) if row.ranks else None,
        unusable=json.loads(row.unusable) if row.unusable else None,
        choice=PairChoice(row.choice) if row.choice else None,
        note=row.note or "",
    )


def _label(row: LabelRow, labeler_name: str) -> Label:
    return _record(Label, row, labeler_name=labeler_name, data=_label_data(row))


def _label_version(row: LabelVersionRow) -> LabelVersion:
    return _record(LabelVersion, row, data=_label_data(row))
