"""The job queue, on SQLite and PostgreSQL: two workers never claim the same job, only the holder reports on it,
and a dead worker's job is queued again (then failed after MAX_ATTEMPTS runs)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tether.storage import FeedbackStore, JobQueue, JobStatus
from tether.storage.jobs import MAX_ATTEMPTS
from db_backends import db_url  # noqa: F401  (db_url: every test on SQLite and PostgreSQL)


@pytest.fixture
def store(db_url) -> Iterator[FeedbackStore]:
    s = FeedbackStore(db_url)
    yield s
    s.close()


def test_two_workers_never_claim_the_same_job(db_url):
    """Two workers, each with its own connection pool (as two processes would have), race for 40 jobs."""
    JobQueue(FeedbackStore(db_url)).submit("noop", {})  # creates the schema before the workers open it
    stores = [FeedbackStore(db_url) for _ in range(2)]
    queue = JobQueue(stores[0])
    ids = [queue.submit("noop", {"n": i}).id for i in range(39)]
    ids = [1, *ids]
    claimed: dict[str, list[int]] = {"a": [], "b": []}
    start = threading.Barrier(2)

    def work(name: str, store: FeedbackStore) -> None:
        q = JobQueue(store)
        start.wait()
        while (job := q.claim(name)) is not None:
            claimed[name].append(job.id)

    threads = [threading.Thread(target=work, args=(n, s)) for n, s in zip("ab", stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    together = claimed["a"] + claimed["b"]
    assert sorted(together) == sorted(ids)  # every job claimed, none twice
    for name, got in claimed.items():
        assert all(queue.get(i).claimed_by == name and queue.get(i).status == JobStatus.RUNNING for i in got)


def test_a_claimed_job_is_not_claimed_again(store):
    queue = JobQueue(store)
    job = queue.submit("noop", {"x": 1}, submitted_by="admin")
    got = queue.claim("w1")
    assert got.id == job.id and got.status == JobStatus.RUNNING and got.attempts == 1 and got.params == {"x": 1}
    assert queue.claim("w2") is None
    assert queue.claim("w2", kinds=["other"]) is None


def test_only_the_holder_reports_progress_and_finishes(store):
    queue = JobQueue(store)
    job = queue.submit("noop", {})
    queue.claim("w1")
    assert queue.heartbeat(job.id, "w1", 0.5, "half way", {"partial": [1]})
    got = queue.get(job.id)
    assert (got.progress, got.message, got.result) == (0.5, "half way", {"partial": [1]})
    assert not queue.heartbeat(job.id, "w2", 0.9, "not mine")
    assert not queue.finish(job.id, "w2", {"stolen": True})
    assert queue.finish(job.id, "w1", {"ok": True})
    done = queue.get(job.id)
    assert (done.status, done.progress, done.result) == (JobStatus.DONE, 1.0, {"ok": True}) and done.finished_at is not None
    assert not queue.fail(job.id, "w1", "too late")  # a finished job stays finished
    assert queue.get(job.id).status == JobStatus.DONE


def test_a_dead_workers_job_is_queued_again_then_failed_after_max_attempts(store):
    queue = JobQueue(store)
    job = queue.submit("noop", {})
    queue.claim("dead-1")
    assert queue.requeue_stale(timeout_s=60) == 0  # its heartbeat is fresh
    time.sleep(0.05)
    assert queue.requeue_stale(timeout_s=0.01) == 1
    again = queue.get(job.id)
    assert again.status == JobStatus.QUEUED and again.claimed_by is None and "heartbeat" in again.message
    assert queue.claim("w2").attempts == 2
    assert not queue.finish(job.id, "dead-1", {"late": True})  # the dead worker woke up: its result is refused
    for n in range(3, MAX_ATTEMPTS + 1):
        time.sleep(0.05)
        queue.requeue_stale(timeout_s=0.01)
        assert queue.claim(f"w{n}").attempts == n
    time.sleep(0.05)
    assert queue.requeue_stale(timeout_s=0.01) == 1
    final = queue.get(job.id)
    assert final.status == JobStatus.FAILED and "heartbeat" in final.error

def test_has_queued_looks_without_claiming(store):
    queue = JobQueue(store)
    assert not queue.has_queued()
    job = queue.submit("sample", {})
    assert queue.has_queued() and queue.has_queued(["sample"]) and not queue.has_queued(["generate"])
    assert queue.get(job.id).status == JobStatus.QUEUED
    queue.claim("w1")
    assert not queue.has_queued()


def test_cancel_fails_only_a_job_nobody_took(store):
    queue = JobQueue(store)
    taken, waiting = queue.submit("respond", {}), queue.submit("respond", {})
    assert queue.claim("w1").id == taken.id  # the oldest first
    assert not queue.cancel(taken.id, "nobody waited")
    assert queue.cancel(waiting.id, "nobody waited")
    assert queue.get(waiting.id).status == JobStatus.FAILED and queue.get(waiting.id).error == "nobody waited"
    assert queue.get(taken.id).status == JobStatus.RUNNING
    assert queue.wait(waiting.id, timeout_s=1).status == JobStatus.FAILED


def test_workers_say_they_are_alive(store):
    queue = JobQueue(store)
    assert not queue.worker_seen_within(60)
    queue.mark_alive("w1")
    assert queue.worker_seen_within(60)
    time.sleep(0.05)
    assert not queue.worker_seen_within(0.01)
