"""The job queue in the feedback database: model work the web app hands to `tether label worker` processes.

The web app never loads a model; it queues a job (a kind and JSON parameters) and pages poll its progress.
Workers claim jobs, beat a heartbeat while they run, and store a result or the error. The rules:
- A queued job is claimed by a conditional update (`... WHERE id = ? AND status = 'queued'`, then a check
  that one row changed), after a `SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL: two workers never run the
  same job, on SQLite and PostgreSQL alike.
- Only the worker that holds a job (`claimed_by`) can report progress on it, finish it or fail it: a worker
  whose job was taken away from it (stale, re-queued) cannot overwrite the new run's result.
- A running job whose heartbeat is older than a timeout lost its worker; it is queued again, up to
  `MAX_ATTEMPTS` runs in all, then marked failed (a job that kills every worker that takes it).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from sqlalchemy import select, update

from tether.storage.records import NotFound
from tether.storage.schema import JobRow, SettingRow, utcnow
from tether.storage.store import FeedbackStore

MAX_ATTEMPTS = 3
WORKER_SEEN_KEY = "worker_seen"  # settings row: the last worker that said it was alive, and when
MAX_LIST = 200


class JobStatus(str, Enum):
    """Where a job is: waiting, taken by a worker, finished, or failed with an error."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class Job:
    """A job as stored; `params` and `result` are the decoded JSON."""

    id: int
    kind: str
    params: dict[str, Any]
    status: JobStatus
    progress: float
    message: str
    error: str | None
    result: Any
    submitted_by: str
    claimed_by: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None


class JobQueue:
    """Jobs in the feedback database of `store` (same engine, same transactions and fault handling).

    Args:
        store: the feedback store whose database holds the `jobs` table.
    """

    def __init__(self, store: FeedbackStore) -> None:
        self.store = store

    def submit(self, kind: str, params: dict[str, Any], submitted_by: str = "") -> Job:
        """Queues a job and returns it (committed)."""
        with self.store._tx(write=True) as s:
            row = JobRow(kind=kind, params=json.dumps(params), status=JobStatus.QUEUED.value, progress=0.0, message="queued",
                         submitted_by=submitted_by, attempts=0, created_at=utcnow())
            s.add(row)
            s.flush()
            return _job(row)

    def get(self, job_id: int) -> Job:
        """Returns a job by id.

        Raises:
            NotFound: no such job.
        """
        with self.store._tx() as s:
            row = s.get(JobRow, job_id)
            if row is None:
                raise NotFound(f"job {job_id} not found")
            return _job(row)

    def list(self, limit: int = 50, kind: str | None = None) -> list[Job]:
        """Returns the newest jobs first (at most `limit`, capped at MAX_LIST), optionally of one kind."""
        with self.store._tx() as s:
            query = select(JobRow).order_by(JobRow.id.desc()).limit(max(1, min(limit, MAX_LIST)))
            if kind is not None:
                query = query.where(JobRow.kind == kind)
            return [_job(r) for r in s.scalars(query)]

    def has_queued(self, kinds: list[str] | None = None) -> bool:
        """True when a job (of `kinds`, if given) waits; a read, so idle workers polling take no write lock."""
        with self.store._tx() as s:
            query = select(JobRow.id).where(JobRow.status == JobStatus.QUEUED.value).limit(1)
            if kinds is not None:
                query = query.where(JobRow.kind.in_(kinds))
            return s.scalar(query) is not None

    def claim(self, worker: str, kinds: list[str] | None = None) -> Job | None:
        """Takes the oldest queued job (of `kinds`, if given) for `worker`; None when nothing is queued.

        Safe with any number of workers: the job moves to running only if it was still queued (the update's
        row count says whether this worker won), and on PostgreSQL the candidate row is locked with SKIP LOCKED
        so concurrent workers look at different rows instead of waiting on each other.
        """
        with self.store._tx(write=True) as s:
            for _ in range(10):  # lost races: try the next candidate
                query = select(JobRow.id).where(JobRow.status == JobStatus.QUEUED.value).order_by(JobRow.id).limit(1)
                if kinds is not None:
                    query = query.where(JobRow.kind.in_(kinds))
                if s.bind.dialect.name == "postgresql":
                    query = query.with_for_update(skip_locked=True)
                job_id = s.scalar(query)
                if job_id is None:
                    return None
                now = utcnow()
                claimed = s.execute(
                    update(JobRow)
                    .where(JobRow.id == job_id, JobRow.status == JobStatus.QUEUED.value)
                    .values(status=JobStatus.RUNNING.value, claimed_by=worker, started_at=now, heartbeat_at=now,
                            attempts=JobRow.attempts + 1, message="started", error=None)
                    .execution_options(synchronize_session=False)
                )
                if claimed.rowcount == 1:
                    return _job(s.get(JobRow, job_id, populate_existing=True))
            return None

    def heartbeat(self, job_id: int, worker: str, progress: float | None = None, message: str | None = None,
                  result: Any = None) -> bool:
        """Records that `worker` is alive on the job, with its progress (0 to 1), a message and a partial result.

        Returns:
            False when the job is no longer this worker's (re-queued after a missed heartbeat, or finished).
        """
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if progress is not None:
            values["progress"] = min(1.0, max(0.0, float(progress)))
        if message is not None:
            values["message"] = message
        if result is not None:
            values["result"] = json.dumps(result)
        return self._update_own(job_id, worker, values)

    def finish(self, job_id: int, worker: str, result: Any) -> bool:
        """Marks the worker's job done with its result; False when the job is no longer this worker's."""
        values = {"status": JobStatus.DONE.value, "progress": 1.0, "message": "done", "result": json.dumps(result),
                  "finished_at": utcnow(), "heartbeat_at": utcnow()}
        return self._update_own(job_id, worker, values)

    def fail(self, job_id: int, worker: str, error: str) -> bool:
        """Marks the worker's job failed with the error message; False when the job is no longer this worker's."""
        values = {"status": JobStatus.FAILED.value, "message": "failed", "error": error, "finished_at": utcnow(), "heartbeat_at": utcnow()}
        return self._update_own(job_id, worker, values)

    def requeue_stale(self, timeout_s: float) -> int:
        """Queues again the running jobs whose heartbeat is older than `timeout_s` (their worker died), or fails
        those that already ran MAX_ATTEMPTS times. Returns how many jobs were re-queued or failed."""
        cutoff = utcnow() - timedelta(seconds=timeout_s)
        stale = (JobRow.status == JobStatus.RUNNING.value) & (JobRow.heartbeat_at < cutoff)
        with self.store._tx(write=True) as s:
            failed = s.execute(
                update(JobRow).where(stale, JobRow.attempts >= MAX_ATTEMPTS)
                .values(status=JobStatus.FAILED.value, message="failed", finished_at=utcnow(),
                        error=f"the worker stopped sending heartbeats {MAX_ATTEMPTS} times (killed, or out of memory?)")
                .execution_options(synchronize_session=False)
            ).rowcount
            queued = s.execute(
                update(JobRow).where(stale, JobRow.attempts < MAX_ATTEMPTS)
                .values(status=JobStatus.QUEUED.value, claimed_by=None, message="queued again: its worker stopped sending heartbeats")
                .execution_options(synchronize_session=False)
            ).rowcount
            return (failed or 0) + (queued or 0)

    def cancel(self, job_id: int, reason: str) -> bool:
        """Fails a job that no worker has taken yet (nobody waits for it any more); False when it was taken."""
        with self.store._tx(write=True) as s:
            changed = s.execute(
                update(JobRow).where(JobRow.id == job_id, JobRow.status == JobStatus.QUEUED.value)
                .values(status=JobStatus.FAILED.value, message="cancelled", error=reason, finished_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            return changed.rowcount == 1

    def wait(self, job_id: int, timeout_s: float, poll_s: float = 0.1) -> Job:
        """Polls a job until it is done or failed, or `timeout_s` passed; returns it as it then is."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.get(job_id)
            if job.status in (JobStatus.DONE, JobStatus.FAILED) or time.monotonic() > deadline:
                return job
            time.sleep(poll_s)

    def mark_alive(self, worker: str) -> None:
        """Records that a worker runs (workers call it as they poll and while they work)."""
        with self.store._tx(write=True) as s:
            s.merge(SettingRow(key=WORKER_SEEN_KEY, value=json.dumps({"worker": worker, "at": utcnow().isoformat()})))

    def worker_seen_within(self, seconds: float) -> bool:
        """True when some worker said it was alive in the last `seconds`."""
        with self.store._tx() as s:
            row = s.get(SettingRow, WORKER_SEEN_KEY)
        if row is None:
            return False
        seen = datetime.fromisoformat(json.loads(row.value)["at"])
        return utcnow() - seen <= timedelta(seconds=seconds)

    def _update_own(self, job_id: int, worker: str, values: dict[str, Any]) -> bool:
        with self.store._tx(write=True) as s:
            changed = s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.claimed_by == worker, JobRow.status == JobStatus.RUNNING.value)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            return changed.rowcount == 1


def _job(row: JobRow) -> Job:
    return Job(
        id=row.id, kind=row.kind, params=json.loads(row.params or "{}"), status=JobStatus(row.status), progress=row.progress or 0.0,
        message=row.message or "", error=row.error, result=json.loads(row.result) if row.result else None,
        submitted_by=row.submitted_by or "", claimed_by=row.claimed_by, attempts=row.attempts or 0, created_at=row.created_at,
        started_at=row.started_at, heartbeat_at=row.heartbeat_at, finished_at=row.finished_at,
    )
