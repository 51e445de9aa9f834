"""The worker: failures recorded, heartbeats from a side thread, unknown kinds left alone, and a sampling job
end to end on a tiny random-init model (the queue itself: tests/storage/test_job_queue.py)."""

from __future__ import annotations

import threading
import time

import pytest

from tether.feedback.jobs import JobContext
from tether.feedback.worker import run_job, run_worker
from tether.storage import JobQueue, JobStatus, TaskKind


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
    done = JobQueue(store).wait(job.id, timeout_s=300)
    worker.join(timeout=60)
    assert done.status == JobStatus.DONE, done.error
    campaign = store.campaign_by_name("tiny")
    assert done.result == {"campaign_id": campaign.id, "campaign": "tiny", "n_items": 3}
    assert campaign.kind == TaskKind.RANK and campaign.labelers_per_item == 2 and campaign.model_path == tiny_models["llama"]
    items = store.list_items(campaign.id)
    assert [i.prompt for i in items] == params["prompts"]
    assert all(len(i.completions) == 2 and all(isinstance(c, str) for c in i.completions) for i in items)
    assert all(i.model == tiny_models["llama"] for i in items)
