"""kill -9 a training process, resume it: the same final weights and metrics as an uninterrupted run.

Each case runs the real command line (`python -m tether.cli STAGE --config tiny.yaml`) in a subprocess
on CPU with one thread, waits until checkpoint `step-K` is complete, and sends SIGKILL: no signal
handler runs and nothing is cleaned up, so the process may be anywhere (in a step, logging, or
writing the next checkpoint's `.tmp` directory). The same command with `train.resume=true` then
finishes the run. The uninterrupted reference runs the same command line in this process while the
subprocess trains. Weights are compared with `torch.equal`: CPU kernels on one thread are
deterministic, so a resumed run that restored every state (weights, optimizer, schedule, data
position, RNGs, best eval step) matches bit for bit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import tether
from tether.cli import main as cli_main

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")]

KILL_AT = 4  # SIGKILL once checkpoint step-4 is complete
ONLINE_TRAIN = {"save_every": 2, "num_threads": 1, "device": "cpu", "seed": 0}
TRAIN = {**ONLINE_TRAIN, "log_every": 1}
ROLLOUT = {"max_prompt_length": 32}


def _configs(data: dict[str, Path]) -> dict[str, dict]:
    """Tiny configs, each with enough steps after step-4 that the kill lands mid-run."""
    return {
        "pretrain": {
            "data": {"train": str(data["text"])}, "block_size": 32,
            "arch": {"kind": "llama", "vocab_size": 320, "hidden_size": 64, "num_layers": 2, "num_heads": 4,
                     "intermediate_size": 128, "max_position_embeddings": 64},
            "train": {**TRAIN, "batch_size": 8, "max_steps": 20, "learning_rate": 3e-3},
            "on_chance": "warn",  # 20 tiny steps: resumption is tested here, not the model
        },
        "sft": {
            "model": {"name_or_path": "tiny-llama"}, "data": {"train": str(data["sft"]), "max_length": 64},
            "train": {**TRAIN, "batch_size": 4, "max_steps": 20, "learning_rate": 1e-3},
        },
        "rm": {
            "model": {"name_or_path": "tiny-bert"},
            "data": {"train": str(data["prefs"]), "max_length": 64, "holdout_fraction": 0.3},
            "train": {**TRAIN, "batch_size": 4, "max_steps": 20, "eval_every": 3, "learning_rate": 1e-3},
            "on_chance": "warn",  # a few held-out pairs of a random-init model: resumption is tested, not the model
        },
        "dpo": {
            "model": {"name_or_path": "tiny-llama"},
            "data": {"train": str(data["prefs"]), "max_length": 64, "holdout_fraction": 0.25},
            "train": {**TRAIN, "batch_size": 4, "max_steps": 20, "eval_every": 5, "learning_rate": 1e-3},
        },
        "ppo": {
            "model": {"name_or_path": "tiny-llama"}, "reward_model": {"path": "tiny-bert"},
            "data": {"train": str(data["prompts"]), **ROLLOUT}, "generation": {"max_new_tokens": 6},
            "rollout": {"batch_size": 4, "num_epochs": 1, "num_minibatches": 2, "missing_eos_penalty": None},
            "train": {**ONLINE_TRAIN, "max_steps": 14},
        },
        "grpo": {
            "model": {"name_or_path": "tiny-llama"}, "reward_model": {"path": "tiny-bert"},
            "data": {"train": str(data["prompts"]), **ROLLOUT}, "generation": {"max_new_tokens": 6},
            "rollout": {"batch_size": 2, "num_epochs": 1, "num_minibatches": 2, "missing_eos_penalty": None},
            "grpo": {"group_size": 2},
            "train": {**ONLINE_TRAIN, "max_steps": 14},
        },
    }


def _command(stage: str, config: Path, out: Path, *overrides: str) -> list[str]:
    return [stage, "--config", str(config), f"output_dir={out}", *overrides]


def _env() -> dict[str, str]:
    # COLUMNS: wide console lines, so messages are not wrapped
    return {**os.environ, "PYTHONPATH": str(Path(tether.__file__).parents[1]), "OMP_NUM_THREADS": "1", "COLUMNS": "400"}


def _subprocess(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tether.cli", *args], env=_env(), stdout=log.open("w"), stderr=subprocess.STDOUT)


def _kill_when(proc: subprocess.Popen, checkpoint: Path, timeout: float = 300) -> threading.Thread:
    """A thread that SIGKILLs `proc` as soon as `checkpoint` exists (it appears complete, by a rename)."""

    def watch() -> None:
        deadline = time.time() + timeout
        while proc.poll() is None and time.time() < deadline:
            if checkpoint.is_dir():
                os.kill(proc.pid, signal.SIGKILL)
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _metrics(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


@pytest.mark.parametrize("stage", ["pretrain", "sft", "rm", "dpo", "ppo", "grpo"])
def test_kill_9_then_resume_matches_an_uninterrupted_run(stage, tiny_data, tmp_path):
    cfg = _configs(tiny_data)[stage]
    config = tmp_path / f"{stage}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    full, killed = tmp_path / "full", tmp_path / "killed"

    # 1. the killed run, in a subprocess; the uninterrupted reference meanwhile, here
    proc = _subprocess(_command(stage, config, killed), tmp_path / "killed.log")
    try:
        watcher = _kill_when(proc, killed / "checkpoints" / f"step-{KILL_AT}")
        assert cli_main(_command(stage, config, full)) == 0
        watcher.join(timeout=300)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (tmp_path / "killed.log").read_text()
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed mid-way (exit {proc.returncode}):\n{log[-2000:]}"
    assert not (killed / "DONE").exists()

    # 2. the same command with train.resume=true finishes it
    resumed = subprocess.run(
        [sys.executable, "-m", "tether.cli", *_command(stage, config, killed, "train.resume=true")],
        env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    found = re.search(r"resumed from \S+step-(\d+) \(step (\d+)\)", resumed.stderr)
    assert found, resumed.stderr[-3000:]
    assert KILL_AT <= int(found.group(2)) < cfg["train"]["max_steps"]

    # 3. bit-identical weights, and the same metrics row for row (the rows logged after the checkpoint
    # by the killed process are dropped and logged again)
    weights = sorted(p.name for p in full.glob("*.safetensors"))
    assert weights == sorted(p.name for p in killed.glob("*.safetensors")) and weights
    for name in weights:
        a, b = load_file(full / name), load_file(killed / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after resuming"
    for meta in [*full.glob("tether_*.json"), *full.glob("tokenizer*.json")]:
        assert json.loads(meta.read_text()) == json.loads((killed / meta.name).read_text())
    assert _metrics(full) == _metrics(killed)
    grad_norms = [v for r in _metrics(full) for k, v in r.items() if k.endswith("grad_norm")]
    assert grad_norms and max(grad_norms) > 0  # the weights did move: equal weights are not trivially equal
    assert [r["step"] for r in _metrics(killed)][-1] == cfg["train"]["max_steps"]
