"""Where tether's time goes in one PPO or GRPO iteration: phase timers, cProfile and torch.profiler.

    python bench/profile_tether.py ppo            # the `ppo` benchmark's settings
    python bench/profile_tether.py grpo '{"group": 4}'

Runs the tether worker's training (same config, same step clock) with CPU-time timers (process time, one
torch thread: steady on a shared machine) around the pieces of an iteration, each counted exclusive of the
timers inside it:

    generate              HF generate inside tether's rollout (sampling logprobs included)
    policy fwd (rollout)  the fresh logprob pass of the policy before the update
    ref fwd               reference logprobs (frozen copy, or the LoRA base with adapters off)
    value fwd (rollout)   values of the rollout
    reward                reward-model scoring (re-tokenisation included) or the rule function
    policy fwd (train)    policy forward passes with autograd, and value fwd (train) likewise
    backward              loss.backward()
    clip / optimizer      clip_grad_norm_ and AdamW.step
    other                 the rest of the step: losses, GAE, metrics, logging, Python

The phase table is per timed step (warm-up excluded). Then a cProfile of the timed steps (top functions by
own time) and a torch.profiler table of one step (top operators by self CPU time) go to
bench/.cache/profile_<label>.txt; the phase table is also written to bench/.cache/profile_<label>.json.
"""

from __future__ import annotations

import argparse
import cProfile
import contextlib
import io
import json
import os
import pstats
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import worker_tether  # noqa: E402


class Phases:
    """Exclusive CPU time per phase: a timer's time minus that of the timers nested in it."""

    def __init__(self):
        self.total = defaultdict(float)
        self.stack: list[list] = []  # [name, start, child time]
        self.enabled = False

    @contextlib.contextmanager
    def phase(self, name: str):
        if not self.enabled:
            yield
            return
        self.stack.append([name, time.process_time(), 0.0])
        try:
            yield
        finally:
            name, start, child = self.stack.pop()
            spent = time.process_time() - start
            self.total[name] += spent - child
            if self.stack:
                self.stack[-1][2] += spent

    def wrap(self, fn, name):
        def wrapper(*args, **kwargs):
            label = name(*args, **kwargs) if callable(name) else name
            with self.phase(label):
                return fn(*args, **kwargs)

        return wrapper


def instrument(p: Phases, state: dict) -> None:
    """Wrap the pieces of tether's PPO/GRPO iteration with phase timers."""
    import torch

    import tether.trainers.grpo as grpo
    import tether.trainers.ppo as ppo
    from tether.models.heads import ValueModel
    from tether.models.reward import FunctionReward, RewardModel

    from tether.rollout.backends import HFBackend

    HFBackend.generate = p.wrap(HFBackend.generate, "generate")
    ppo.decode_responses = p.wrap(ppo.decode_responses, "reward")
    real_ref_ctx = ppo.reference_context

    @contextlib.contextmanager
    def ref_ctx(*args, **kwargs):
        state["in_ref"] = True
        try:
            with real_ref_ctx(*args, **kwargs):
                yield
        finally:
            state["in_ref"] = False

    ppo.reference_context = ref_ctx

    def logprob_phase(*args, **kwargs):
        if torch.is_grad_enabled():
            return "policy fwd (train)"
        return "ref fwd" if state.get("in_ref") else "policy fwd (rollout)"

    ppo.response_logprobs = p.wrap(ppo.response_logprobs, logprob_phase)
    for mod in (ppo, grpo):
        mod.grouped_response_logprobs = p.wrap(mod.grouped_response_logprobs, logprob_phase)
    ValueModel.forward = p.wrap(ValueModel.forward, lambda *a, **k: "value fwd (train)" if torch.is_grad_enabled() else "value fwd (rollout)")
    RewardModel.score = p.wrap(RewardModel.score, "reward")
    FunctionReward.score = p.wrap(FunctionReward.score, "reward")
    torch.Tensor.backward = p.wrap(torch.Tensor.backward, "backward")
    torch.nn.utils.clip_grad_norm_ = p.wrap(torch.nn.utils.clip_grad_norm_, "clip")
    torch.optim.AdamW.step = p.wrap(torch.optim.AdamW.step, "optimizer")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=["ppo", "grpo"])
    ap.add_argument("settings", nargs="?", default="{}")
    ap.add_argument("--label", help="output name (default: the benchmark name)")
    args = ap.parse_args()
    s = worker_tether.settings_for(args.name, json.loads(args.settings))
    harness.set_threads(s["threads"])
    import torch

    label = args.label or args.name
    phases, state = Phases(), {}
    instrument(phases, state)
    clock = harness.StepClock()
    profiler = cProfile.Profile()
    step_totals: list[dict] = []
    torch_table = {}

    class Clock(harness.StepClock):
        """Starts the timers and profilers after the warm-up steps; one step under torch.profiler at the end."""

        def mark(self):
            super().mark()
            n = len(self.marks)
            step_totals.append(dict(phases.total))
            if n == s["warmup"]:
                phases.enabled = True
                profiler.enable()
            if n == s["warmup"] + s["steps"] - 1:
                profiler.disable()
                phases.enabled = False
                state["torch_prof"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                state["torch_prof"].__enter__()
            if n == s["warmup"] + s["steps"]:
                state["torch_prof"].__exit__(None, None, None)
                torch_table["text"] = state["torch_prof"].key_averages().table(sort_by="self_cpu_time_total", row_limit=25)

    clock = Clock()
    worker_tether.run_training(args.name, s, clock)
    profiled_steps = s["steps"] - 1  # the last timed step runs under torch.profiler instead
    wall, cpu, _ = clock.steps(s["warmup"])
    step_s = sum(cpu[:profiled_steps]) / profiled_steps
    wall_s = sum(wall[:profiled_steps]) / profiled_steps
    per_step = {k: v / profiled_steps for k, v in phases.total.items()}
    per_step["other"] = step_s - sum(per_step.values())
    rows = sorted(per_step.items(), key=lambda kv: -kv[1])
    table = "\n".join(f"{k:<22} {v:8.3f} s  {100 * v / step_s:5.1f}%" for k, v in rows)
    header = f"tether {args.name} {json.dumps(s)}\nper step (phase timers on): {step_s:.3f} s CPU, {wall_s:.3f} s wall\n"
    stats = io.StringIO()
    pstats.Stats(profiler, stream=stats).sort_stats("tottime").print_stats(30)
    out = harness.cache_dir() / f"profile_{label}.txt"
    out.write_text(header + table + "\n\n== cProfile (own time)\n" + stats.getvalue() + "\n== torch.profiler, one step\n" + torch_table.get("text", ""))
    (harness.cache_dir() / f"profile_{label}.json").write_text(json.dumps(
        {"settings": s, "step_cpu_s": step_s, "step_wall_s": wall_s, "phases_cpu_s": dict(rows), "loadavg": list(os.getloadavg())}, indent=1))
    print(header + table)
    print(f"details: {out}")


if __name__ == "__main__":
    main()
