"""The job queue and the worker: atomic claims, failures recorded, dead workers' jobs queued again, and a
sampling job end to end on a tiny random-init model."""

from __future__ import annotations

import threading
import time

import pytest

from tether.feedback.jobs import JobContext
from tether.feedback.worker import run_job, run_worker, wait_for
from tether.storage import FeedbackStore, JobQueue, JobStatus, TaskKind
from tether.storage.jobs import MAX_ATTEMPTS


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


def test_a_job_that_raises_is_failed_with_its_message(store):
    queue = JobQueue(store)
    job = queue.submit("explode", {})

    def explode(ctx: JobContext) -> None:
        ctx.progress(0.3, "loading")
        raise RuntimeError("model directory runs/missing not found")

    assert run_worker(store, "w1", once=True, kinds={"explode": explode}) == 1
    failed = queue.get(job.id)
    assert failed.status == JobStatus.FAILED
    assert failed.error == "RuntimeError: model directory runs/missing not found"
    assert failed.progress == pytest.approx(0.3) and failed.finished_at is not None


def test_unknown_kinds_are_left_for_workers_that_run_them(store):
    queue = JobQueue(store)
    job = queue.submit("future-kind", {})
    assert run_worker(store, "w1", once=True, kinds={"noop": lambda ctx: None}) == 0
    assert queue.get(job.id).status == JobStatus.QUEUED
    claimed = queue.claim("w2")
    run_job(queue, claimed, "w2", {"noop": lambda ctx: None})
    assert "unknown job kind 'future-kind'" in queue.get(job.id).error


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


def test_the_heartbeat_thread_keeps_a_slow_job_alive(store):
    queue = JobQueue(store)
    job = queue.submit("slow", {})
    beats = []

    def slow(ctx: JobContext) -> str:
        first = queue.get(ctx.job.id).heartbeat_at
        time.sleep(0.5)
        beats.append(queue.get(ctx.job.id).heartbeat_at > first)
        return "ok"

    run_worker(store, "w1", once=True, heartbeat_s=0.05, kinds={"slow": slow})
    assert beats == [True] and queue.get(job.id).result == "ok"


def test_sampling_job_end_to_end_with_a_tiny_model(store, tiny_models):
    """The admin page's sampling job with a real (tiny, random-init) model: completions sampled, campaign made."""
    params = {"name": "tiny", "kind": "rank", "labelers_per_item": 2, "guidelines": "g", "model_path": tiny_models["llama"],
              "prompts": ["Say hello.", "Name a colour.", "Count to three."], "k": 2}
    job = JobQueue(store).submit("sample", params)
    worker = threading.Thread(target=run_worker, args=(store, "w1"), kwargs={"once": True})
    worker.start()
    done = wait_for(JobQueue(store), job.id, timeout_s=300)
    worker.join(timeout=60)
    assert done.status == JobStatus.DONE, done.error
    campaign = store.campaign_by_name("tiny")
    assert done.result == {"campaign_id": campaign.id, "campaign": "tiny", "n_items": 3}
    assert campaign.kind == TaskKind.RANK and campaign.labelers_per_item == 2 and campaign.model_path == tiny_models["llama"]
    items = store.list_items(campaign.id)
    assert [i.prompt for i in items] == params["prompts"]
    assert all(len(i.completions) == 2 and all(isinstance(c, str) for c in i.completions) for i in items)
    assert all(i.model == tiny_models["llama"] for i in items)
