"""Load test: labels per second the server sustains with many concurrent clients on loopback.

Starts `tether label serve` in a subprocess on a fresh SQLite database, then runs N client
threads that each fetch a task and submit a label in a loop; reports throughput and the p50 and
p99 latency of a label submission (the POST that commits the label).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tether.errors import TetherError
from tether.storage import FeedbackStore, NewItem, TaskKind

ADMIN = "loadtest-admin"


@dataclass(frozen=True)
class LoadResult:
    """Outcome of a load test."""

    clients: int
    seconds: float
    labels: int
    labels_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _prepare(db_url: str, clients: int, n_items: int) -> tuple[int, list[str]]:
    store = FeedbackStore(db_url)
    store.set_admin_token(ADMIN)
    items = [NewItem(prompt=f"prompt {i}", completions=["first answer", "second answer", "third answer"]) for i in range(n_items)]
    campaign = store.create_campaign("load", TaskKind.RANK, items)
    tokens = [store.add_labeler(f"client{i}").token for i in range(clients)]
    store.close()
    return campaign.id, tokens


def _client(url: str, token: str, campaign_id: int, deadline: float, latencies: list[float], errors: list[int]) -> None:
    import httpx

    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        while time.perf_counter() < deadline:
            task = c.get(f"/api/campaigns/{campaign_id}/next")
            if task.status_code != 200:
                errors.append(task.status_code)
                return
            start = time.perf_counter()
            ack = c.post(f"/api/assignments/{task.json()['assignment_id']}/label", json={"ranks": [1, 2, 3]})
            if ack.status_code == 200:
                latencies.append((time.perf_counter() - start) * 1000)
            else:
                errors.append(ack.status_code)


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise TetherError("the server exited during start-up")
        try:
            httpx.get(url + "/login", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise TetherError("the server did not start")


def run_load(clients: int = 50, seconds: float = 10.0, n_items: int = 10_000) -> LoadResult:
    """Runs the load test.

    Args:
        clients: concurrent client threads (one labeler each).
        seconds: how long the clients label.
        n_items: items in the campaign (enough that nobody runs out).

    Returns:
        Throughput and submission latencies.

    Raises:
        TetherError: the server could not be started.
    """
    with tempfile.TemporaryDirectory() as tmp:
        db_url = f"sqlite:///{Path(tmp) / 'load.db'}"
        campaign_id, tokens = _prepare(db_url, clients, n_items)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, "-m", "tether.feedback.cli", "serve", "--db", db_url, "--port", str(port), "--admin-token", ADMIN]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_ready(url, proc)
            latencies: list[float] = []
            errors: list[int] = []
            start = time.perf_counter()
            threads = [threading.Thread(target=_client, args=(url, t, campaign_id, start + seconds, latencies, errors)) for t in tokens]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - start
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    return LoadResult(
        clients=clients,
        seconds=round(elapsed, 2),
        labels=len(latencies),
        labels_per_s=round(len(latencies) / elapsed, 1),
        p50_ms=round(_percentile(latencies, 0.50), 1),
        p99_ms=round(_percentile(latencies, 0.99), 1),
        errors=len(errors),
    )
