"""What both benchmark workers share: step clock, token counter, memory, the rule reward and the record.

This module imports only the standard library, torch and transformers, so the tether worker (tether's venv)
and the TRL workers (bench/.venv-trl*, where tether is not installed) use the same code to time and count.

How a step is timed, identically on both sides: each framework runs its own training entry point for
`warmup + steps` steps, and a hook at the end of every step (tether: `RunDir.log`, called once per step;
TRL: `TrainerCallback.on_step_end`) stamps the wall clock (`time.perf_counter()`) and the CPU time of the
process (`time.process_time()`, user + system over all its threads). Step k lasts from the end of step k-1
to the end of step k, so everything the framework does per step is inside (data, generation, scoring,
backward, optimizer, logging); the first `warmup` steps are dropped. On a machine shared with other jobs the
wall time of a step depends on how much CPU the process got; its CPU time much less so, which makes it the
steadier number for comparing two frameworks (with one torch thread it is close to the wall time of an idle
machine).

How tokens and FLOPs are counted: `LlamaModel.forward` (the backbone every causal LM, reward model and value
model of the benchmark runs through) is wrapped once at class level. Each call adds its real (non-pad)
tokens; a call with autograd on counts 6 x N FLOPs per token (forward and backward), one without counts 2 x N,
where N is the parameters in matrix products of the model that owns the backbone (its LM head included for a
causal LM, as in the usual 6ND estimate; attention-score FLOPs are left out).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / ".cache"


def cache_dir() -> Path:
    """Where the models, data, logs and profiles live: bench/.cache, or $BENCH_CACHE."""
    return Path(os.environ.get("BENCH_CACHE", CACHE))


def manifest() -> dict:
    """The cache manifest written by `bench/prepare.py`."""
    path = cache_dir() / "manifest.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `python bench/prepare.py` in tether's venv first")
    return json.loads(path.read_text())


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def letter_reward(prompts, completions, **kwargs) -> list[float]:
    """The rule-based GRPO reward of both sides: the share of characters that are the letter 'e'.

    Takes (prompts, completions) as lists of strings: the signature of a TRL reward function and of a
    tether `reward_model.function`.
    """
    return [c.count("e") / max(len(c), 1) for c in completions]


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


class TokenCounter:
    """Counts tokens and model FLOPs of every backbone forward pass in this process (see the module doc)."""

    def __init__(self):
        self.fwd_tokens = 0  # real tokens through a backbone without autograd
        self.train_tokens = 0  # real tokens through a backbone with autograd on
        self.positions = 0  # all positions, pads included
        self.flops = 0.0
        self.calls = 0
        self._lock = threading.Lock()
        self._n: dict[int, int] = {}

    def install(self) -> "TokenCounter":
        import torch
        from transformers.models.llama.modeling_llama import LlamaModel

        original = LlamaModel.forward
        counter = self

        @functools.wraps(original)
        def forward(module, *args, **kwargs):
            counter._count(module, args, kwargs, torch.is_grad_enabled())
            return original(module, *args, **kwargs)

        LlamaModel.forward = forward
        self._restore = lambda: setattr(LlamaModel, "forward", original)
        return self

    def uninstall(self) -> None:
        restore = getattr(self, "_restore", None)
        if restore is not None:
            restore()
            self._restore = None

    def __enter__(self) -> "TokenCounter":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def _params(self, module) -> int:
        key = id(module)
        if key not in self._n:
            emb = module.get_input_embeddings().weight
            n = sum(p.numel() for p in module.parameters()) - emb.numel()
            archs = getattr(module.config, "architectures", None) or []
            if any(a.endswith("ForCausalLM") for a in archs):
                n += emb.numel()  # the LM head (tied or not, same shape)
            self._n[key] = n
        return self._n[key]

    def _count(self, module, args, kwargs, grad: bool) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        shape = tuple(ids.shape) if ids is not None else tuple(embeds.shape[:2])
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if mask is not None and getattr(mask, "dim", lambda: 0)() == 2:
            real = int(mask[:, -shape[1]:].sum())
        else:
            real = shape[0] * shape[1]
        with self._lock:
            self.calls += 1
            self.positions += shape[0] * shape[1]
            if grad:
                self.train_tokens += real
                self.flops += 6.0 * self._params(module) * real
            else:
                self.fwd_tokens += real
                self.flops += 2.0 * self._params(module) * real

    def snapshot(self) -> dict:
        with self._lock:
            return {"fwd_tokens": self.fwd_tokens, "train_tokens": self.train_tokens, "positions": self.positions,
                    "flops": self.flops, "calls": self.calls}


class StepClock:
    """Wall and CPU time stamps (and token counts) at the end of every step; see the module doc."""

    def __init__(self, counter: TokenCounter | None = None):
        self.counter = counter
        self.marks: list[tuple[float, float, dict]] = []
        self.start = (time.perf_counter(), time.process_time(), self._zero())

    def mark(self) -> None:
        self.marks.append((time.perf_counter(), time.process_time(), self.counter.snapshot() if self.counter else {}))

    def steps(self, warmup: int) -> tuple[list[float], list[float], dict]:
        """Wall seconds and CPU seconds of each step after the first `warmup`, and mean counts per timed step.

        Raises:
            SystemExit: when fewer than warmup + 1 steps were stamped.
        """
        if len(self.marks) < warmup + 1:
            raise SystemExit(f"only {len(self.marks)} steps were timed; need warmup ({warmup}) + at least 1")
        timed = self.marks[warmup - 1 :] if warmup > 0 else [self.start] + self.marks
        wall = [b[0] - a[0] for a, b in zip(timed, timed[1:])]
        cpu = [b[1] - a[1] for a, b in zip(timed, timed[1:])]
        first, last = timed[0][2], timed[-1][2]
        per_step = {k: (last[k] - first[k]) / len(wall) for k in last} if last else {}
        return wall, cpu, per_step

    def _zero(self) -> dict:
        return {k: 0 for k in self.counter.snapshot()} if self.counter else {}


def timed(fn, repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` runs after one warm-up run, in seconds."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def versions() -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    for name in ("transformers", "trl", "peft", "accelerate", "tether"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = getattr(mod, "__version__", "unknown")
    return out


def record(name: str, framework: str, settings: dict, clock: StepClock, rss_floor_mb: float, extra: dict | None = None) -> dict:
    """One worker result: step times, their median, counts per step, peak memory, versions, machine load."""
    seconds, cpu, per_step = clock.steps(settings["warmup"])
    return {
        "name": name,
        "framework": framework,
        "settings": settings,
        "step_s": [round(s, 4) for s in seconds],
        "median_s": statistics.median(seconds),
        "step_cpu_s": [round(s, 4) for s in cpu],
        "median_cpu_s": statistics.median(cpu),
        "per_step": per_step,
        "tokens_per_step": per_step.get("fwd_tokens", 0) + per_step.get("train_tokens", 0),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_after_imports_mb": round(rss_floor_mb, 1),
        "loadavg": os.getloadavg(),
        "versions": versions(),
        **(extra or {}),
    }


def write_result(path: str | None, result: dict) -> None:
    text = json.dumps(result, indent=1)
    if path:
        Path(path).write_text(text)
    else:
        print(text)
