"""What a job handler gets from the worker that runs it (`tether.feedback.worker`), and how it reports progress."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tether.storage import FeedbackStore, Job, JobQueue


class JobLost(Exception):
    """The job is no longer this worker's (re-queued after missed heartbeats): stop working on it."""


@dataclass
class JobContext:
    """What a job handler gets: the job (kind, params), the store, and a way to report progress."""

    job: Job
    store: FeedbackStore
    queue: JobQueue
    worker: str

    @property
    def params(self) -> dict[str, Any]:
        """The job's parameters (decoded JSON)."""
        return self.job.params

    def progress(self, fraction: float, message: str, result: Any = None) -> None:
        """Reports progress (0 to 1), what the job does now, and optionally a partial result pages can show.

        Raises:
            JobLost: the job was taken from this worker; the handler stops.
        """
        if not self.queue.heartbeat(self.job.id, self.worker, fraction, message, result):
            raise JobLost(f"job {self.job.id} is no longer held by {self.worker}")


Handler = Callable[[JobContext], Any]
