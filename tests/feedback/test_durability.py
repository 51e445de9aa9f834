"""kill -9 the server under load: every acknowledged label is in the database afterwards (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

import tether
from conftest import bearer, free_port
from db_backends import db_url  # noqa: F401  (the server on SQLite and on PostgreSQL)
from tether.storage import FeedbackStore

ADMIN = "durability-admin-token"


def _start_server(db_url: str, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(tether.__file__).parents[1])}
    cmd = [sys.executable, "-m", "tether.feedback.cli", "serve", "--db", db_url, "--port", str(port), "--admin-token", ADMIN]
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait_ready(url: str, proc: subprocess.Popen) -> None:
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError("server exited")
        try:
            if httpx.get(url + "/login", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("server did not start")


def _label_forever(url: str, headers: dict[str, str], campaign_id: int, acked: list[int], stop: threading.Event) -> None:
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=10) as c:
            while not stop.is_set():
                task = c.get(f"/api/campaigns/{campaign_id}/next")
                if task.status_code != 200:
                    return
                ack = c.post(f"/api/assignments/{task.json()['assignment_id']}/label", json={"ranks": [2, 1]})
                if ack.status_code == 200:
                    acked.append(ack.json()["label_id"])
    except httpx.TransportError:
        return  # the server was killed mid-request: that label was never acknowledged


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_acknowledged_labels_survive_kill_9(tmp_path, db_url):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start_server(db_url, port, tmp_path / "server.log")
    try:
        _wait_ready(url, proc)
        admin = bearer(ADMIN)
        items = [{"prompt": f"p{i}", "completions": ["a", "b"]} for i in range(5000)]
        campaign = httpx.post(url + "/api/campaigns", json={"name": "d", "kind": "rank", "items": items}, headers=admin, timeout=30).json()
        tokens = [httpx.post(url + "/api/labelers", json={"name": f"l{i}"}, headers=admin).json()["token"] for i in range(6)]
        acked: list[int] = []
        stop = threading.Event()
        threads = [threading.Thread(target=_label_forever, args=(url, bearer(t), campaign["id"], acked, stop)) for t in tokens]
        for t in threads:
            t.start()
        deadline = time.time() + 10
        while len(acked) < 100 and time.time() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # under load, no shutdown
        proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(acked) >= 100
    store = FeedbackStore(db_url)  # reopening recovers the WAL
    stored = {label.id for label in store.list_labels(campaign["id"])}
    store.close()
    assert set(acked) <= stored, f"{len(set(acked) - stored)} acknowledged labels lost"
