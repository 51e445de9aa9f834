"""`tether label worker` and `tether label serve --with-worker / --playground` from the command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from conftest import free_port

from tether.feedback.cli import main
from tether.storage import FeedbackStore, JobQueue, JobStatus


def _fake_sampler(model_path, prompts, k):
    return [[f"{model_path} says {j} to {p}" for j in range(k)] for p in prompts]


def test_worker_once_runs_the_queued_jobs(db_url, monkeypatch, capsys):
    import tether.feedback.service as service

    monkeypatch.setattr(service, "_sampler", lambda: _fake_sampler)
    store = FeedbackStore(db_url)
    queue = JobQueue(store)
    ok = queue.submit("respond", {"model_path": "m", "prompt": "hi"})
    assert main(["worker", "--db", db_url, "--once", "--name", "cli-worker"]) == 0
    assert queue.get(ok.id).result == {"response": "m says 0 to hi"} and queue.get(ok.id).claimed_by == "cli-worker"
    assert "stopped after 1 job(s)" in capsys.readouterr().out


def test_worker_and_serve_options_are_checked(db_url, tmp_path, capsys):
    assert main(["worker", "--db", db_url, "--heartbeat-s", "30", "--stale-s", "10"]) == 1
    assert "--stale-s: must be longer than --heartbeat-s" in capsys.readouterr().err
    assert main(["serve", "--db", db_url, "--playground", str(tmp_path / "missing.yaml")]) == 1
    assert "--playground" in capsys.readouterr().err


def test_playground_command_prints_the_resolved_models(tmp_path, capsys):
    path = tmp_path / "pg.yaml"
    path.write_text("models:\n  - {name: sft, path: runs/sft, kl: 0}\n  - {name: ppo, path: runs/ppo, kl: 1.25}\nreward_model: runs/rm\n")
    assert main(["playground", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["sft\tKL 0\truns/sft\tSFT", "ppo\tKL 1.25\truns/ppo\taligned", "reward model: runs/rm  judge: none  thumbs campaign: playground"]
    path.write_text("models: []\n")
    assert main(["playground", str(path)]) == 1
    assert "no models" in capsys.readouterr().err


def test_serve_with_worker_runs_jobs_and_stops_its_worker(db_url, tmp_path):
    """The server starts a worker process; a job that fails there is recorded with its error; stopping the
    server stops the worker."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tether.feedback.cli", "serve", "--db", db_url, "--port", str(port), "--admin-token", "tok", "--with-worker"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/login", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        store = FeedbackStore(db_url)
        queue = JobQueue(store)
        job = queue.wait(queue.submit("respond", {"model_path": str(tmp_path / "no-such-model"), "prompt": "hi"}).id, timeout_s=120)
        assert job.status == JobStatus.FAILED and "no-such-model" in job.error
        worker_pid = int(job.claimed_by.rsplit(":", 1)[1])
        assert worker_pid != server.pid
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    try:
        os.kill(worker_pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive, "the worker outlived the server"
