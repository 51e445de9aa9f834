"""`tether label worker`: the process that runs model work (sampling, playground answers) off the web app.

The web app queues jobs in the feedback database (`tether.storage.jobs`) and never loads a model. A worker
claims one job at a time, beats a heartbeat from a side thread while the job runs (model loading and
generation can take minutes without a word from the job), reports progress and partial results, and stores
the result, or the error message when the job raises. Before each claim it queues again the jobs of workers
that died (no heartbeat for `stale_s`). Run as many workers as there are accelerators: claims are atomic.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback

from tether.feedback.jobs import Handler, JobContext, JobLost
from tether.feedback.model_jobs import HANDLERS
from tether.storage import FeedbackStore, Job, JobQueue

HEARTBEAT_S = 10.0  # how often a running job's worker says it is alive
STALE_S = 120.0  # a running job silent for this long lost its worker and is queued again
POLL_S = 1.0  # how often an idle worker looks for work


def handlers() -> dict[str, Handler]:
    """The job kinds a worker runs, by name (the model code they use is imported only when a job runs)."""
    return dict(HANDLERS)


def default_name() -> str:
    """A worker name unique on the network: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def run_job(queue: JobQueue, job: Job, worker: str, kinds: dict[str, Handler], heartbeat_s: float = HEARTBEAT_S) -> None:
    """Runs one claimed job to the end: its result stored, or its error (the job is marked failed).

    A side thread beats the heartbeat every `heartbeat_s` while the handler runs.
    """
    done = threading.Event()

    def beat() -> None:
        while not done.wait(heartbeat_s):
            try:
                queue.mark_alive(worker)
                if not queue.heartbeat(job.id, worker):
                    return
            except Exception:  # a database hiccup: the next beat tries again
                continue

    beater = threading.Thread(target=beat, name=f"heartbeat-{job.id}", daemon=True)
    beater.start()
    try:
        handler = kinds.get(job.kind)
        if handler is None:
            raise ValueError(f"unknown job kind {job.kind!r} (this worker runs: {', '.join(sorted(kinds))})")
        result = handler(JobContext(job=job, store=queue.store, queue=queue, worker=worker))
        done.set()
        queue.finish(job.id, worker, result)
    except JobLost:
        pass
    except Exception as exc:  # any failure of a job is the job's, not the worker's: record it and go on
        done.set()
        message = str(exc).strip() or type(exc).__name__
        queue.fail(job.id, worker, f"{type(exc).__name__}: {message}")
        traceback.print_exc()
    finally:
        done.set()
        beater.join(timeout=heartbeat_s + 1)


def run_worker(
    store: FeedbackStore,
    name: str | None = None,
    poll_s: float = POLL_S,
    heartbeat_s: float = HEARTBEAT_S,
    stale_s: float = STALE_S,
    once: bool = False,
    stop: threading.Event | None = None,
    kinds: dict[str, Handler] | None = None,
) -> int:
    """Claims and runs jobs until stopped.

    Args:
        store: the feedback database.
        name: this worker's name in `claimed_by` (default host:pid).
        poll_s: seconds between looks for work when the queue is empty.
        heartbeat_s: seconds between heartbeats of a running job.
        stale_s: a running job silent this long is queued again (its worker died).
        once: stop when the queue is empty (tests, cron) instead of waiting for work.
        stop: set it to stop after the current job.
        kinds: job handlers by kind (default `handlers()`).

    Returns:
        How many jobs this worker ran.
    """
    name = name or default_name()
    kinds = kinds if kinds is not None else handlers()
    queue = JobQueue(store)
    stop = stop or threading.Event()
    ran = 0
    next_sweep = 0.0
    while not stop.is_set():
        if time.monotonic() >= next_sweep:  # a few times per timeout is enough to notice dead workers
            queue.mark_alive(name)
            queue.requeue_stale(stale_s)
            next_sweep = time.monotonic() + min(stale_s, STALE_S) / 4
        job = queue.claim(name, sorted(kinds)) if queue.has_queued(sorted(kinds)) else None
        if job is None:
            if once:
                break
            stop.wait(poll_s)
            continue
        print(f"worker {name}: job {job.id} ({job.kind}) started", flush=True)
        run_job(queue, job, name, kinds, heartbeat_s)
        final = queue.get(job.id)
        print(f"worker {name}: job {job.id} ({job.kind}) {final.status.value}" + (f": {final.error}" if final.error else ""), flush=True)
        ran += 1
    return ran
