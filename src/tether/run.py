"""The run directory every stage writes, the console it prints to, and progress lines.

A run directory holds `config.yaml` (the resolved config), `metrics.jsonl` (one JSON object per logged
step), `checkpoints/step-N/` (written to a temporary name, then renamed, so a half-written checkpoint
is never picked up) and, at the end, the final model in Hugging Face format plus a `DONE` marker.
Nothing here imports torch: the pipeline, the evaluators and the red-team runner use it as the trainers do.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tether.config import Strict, dump_config, validate
from tether.errors import ConfigError, TrainingError
from tether.tracking import open_sinks

console = Console(stderr=True, soft_wrap=True)  # a line per message in log files, not wrapped at 80 columns
DONE_FILE = "DONE"


class RunDir:
    """A run directory: resolved config, metrics log, checkpoints, final model.

    With several processes (`dist`, a `Distributed`) every process reads the directory, and only the
    main one writes: `log`, `checkpoint` and `finish` do nothing on the others. The dashboards of
    `train.report_to` (`tether/tracking.py`) get every row `log` writes; `finish` closes them (and so does
    the end of the process, after a failure).

    Raises:
        ConfigError: when `path` already holds a different run and `overwrite` is False, or a dashboard of
            `train.report_to` cannot be opened.
    """

    def __init__(self, path: str | Path, cfg: Strict, overwrite: bool = False, dist=None):
        self.path = Path(path)
        self.config_text = dump_config(cfg)
        self.resume_from: Path | None = None
        self.main = dist is None or dist.is_main
        self.sharded = dist is not None and dist.sharded
        existing = self.path / "config.yaml"
        same_run = existing.is_file() and same_config(existing.read_text(), cfg)
        if existing.is_file() and not same_run and not overwrite:
            raise ConfigError(
                f"output_dir {self.path} already holds a different run (its config.yaml differs); "
                "choose another output_dir or set overwrite=true"
            )
        self.metrics_path = self.path / "metrics.jsonl"
        train = getattr(cfg, "train", None)
        if getattr(train, "resume", False) and same_run:
            self.resume_from = self.last_checkpoint()
        if dist is not None:
            dist.wait()  # every process has read the directory before the main one changes it
        if self.main:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / DONE_FILE).unlink(missing_ok=True)
            existing.write_text(self.config_text)
            if dist is not None:  # what train.precision resolved to on this hardware, and why
                dist.precision.write(self.path)
                console.print(f"{dist.stage}: {dist.precision.describe()}")
            if self.resume_from is not None:
                self._truncate_metrics(self.resume_from)
            else:
                shutil.rmtree(self.path / "checkpoints", ignore_errors=True)
                self.metrics_path.write_text("")
        self.sinks = open_sinks(
            getattr(train, "report_to", []), self.path, self.path.name, cfg.model_dump(mode="json"), enabled=self.main,
            resume_step=checkpoint_step(self.resume_from) if self.resume_from is not None else None,
        )
        atexit.register(self.sinks.close)
        self.start = time.time()

    def _truncate_metrics(self, checkpoint: Path) -> None:
        """Keep the metrics rows logged before `checkpoint` was written (the rows after it will be logged again).

        A checkpoint records how many rows there were (`METRICS_ROWS_FILE`); older ones without it keep
        the rows up to their step.
        """
        rows = [r for r in (self.metrics_path.read_text().splitlines() if self.metrics_path.is_file() else []) if r.strip()]
        counted = checkpoint / METRICS_ROWS_FILE
        if counted.is_file():
            kept = rows[: int(counted.read_text())]
        else:
            kept = [r for r in rows if json.loads(r).get("step", 0) <= checkpoint_step(checkpoint)]
        self.metrics_path.write_text("".join(r + "\n" for r in kept))

    def _metrics_rows(self) -> int:
        if not self.metrics_path.is_file():
            return 0
        return sum(1 for r in self.metrics_path.read_text().splitlines() if r.strip())

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append one line of metrics (floats) for `step`."""
        if not self.main:
            return
        row = {"step": step, "time": round(time.time() - self.start, 3)}
        row.update({k: (float(v) if v is not None else None) for k, v in metrics.items()})
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        self.sinks.log(step, metrics)

    def checkpoint(self, step: int, save: Callable[[Path], None], keep: int = 2) -> Path:
        """Write a checkpoint atomically: into `step-N.tmp`, then rename to `step-N`."""
        root = self.path / "checkpoints"
        tmp, final = root / f"step-{step}.tmp", root / f"step-{step}"
        if self.sharded:
            raise TrainingError(f"step {step}: no checkpoint: each process holds only a shard of the parameters")
        if not self.main:
            return final
        root.mkdir(exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        save(tmp)
        (tmp / METRICS_ROWS_FILE).write_text(str(self._metrics_rows()))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(root.glob("step-*[0-9]"), key=lambda p: int(p.name.split("-")[1]))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint (a `.tmp` one is half-written and never picked)."""
        root = self.path / "checkpoints"
        done = sorted(root.glob("step-*[0-9]"), key=checkpoint_step) if root.is_dir() else []
        done = [d for d in done if (d / STATE_FILE).is_file()]
        return done[-1] if done else None

    def finish(self, summary: dict | None = None) -> None:
        """Mark the run finished (`DONE` holds the summary) and close its dashboards."""
        self.sinks.close()
        if self.main:
            (self.path / DONE_FILE).write_text(json.dumps(summary or {}, indent=2))


def finished_with(out: Path, cfg: Strict) -> bool:
    """True when `out` holds a finished run of the same config (see `same_config`)."""
    saved = out / "config.yaml"
    return is_done(out) and saved.is_file() and same_config(saved.read_text(), cfg)


def run_stage(name: str, schema: type[Strict], raw: dict, runner: Callable, where: str) -> Path:
    """Run a stage inside a bigger job (a loop's round, a person's adapter) unless its output directory holds a
    finished run of the same config; a killed run continues from its newest checkpoint (train.resume).

    Raises:
        ConfigError: `raw` does not validate against `schema` (naming `where` and the stage).
    """
    cfg = validate(schema, raw, origin=f"{where}: {name}")
    out = Path(cfg.output_dir)
    if finished_with(out, cfg):
        console.print(f"{name} in {out} is done; skipped")
        return out
    return Path(runner(cfg))


def same_config(saved_text: str, cfg: Strict) -> bool:
    """True when a saved config.yaml describes the same run as `cfg`.

    The saved text is validated against the current schema, so keys added since (with their defaults) do
    not make an old run look different; `overwrite`, `train.resume`, `train.share_prompt` and `train.report_to` may differ
    between a run and its resumption and are ignored. A saved config that no longer validates is a different run.
    """
    try:
        old = type(cfg).model_validate(yaml.safe_load(saved_text) or {})
    except (ValidationError, yaml.YAMLError):
        return False
    return _normalised(old) == _normalised(cfg)


def _normalised(cfg: Strict) -> dict:
    data = cfg.model_dump(mode="json")
    data.pop("overwrite", None)
    if isinstance(data.get("train"), dict):
        data["train"].pop("resume", None)
        data["train"].pop("share_prompt", None)  # the same results either way (up to rounding)
        data["train"].pop("report_to", None)  # dashboards beside the run, not part of it
    return data


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[1])


STATE_FILE = "trainer_state.pt"
METRICS_ROWS_FILE = "metrics_rows"


def is_done(path: str | Path) -> bool:
    """True when `path` holds a finished run."""
    return (Path(path) / DONE_FILE).is_file()


class LineProgress:
    """What `progress()` gives when stderr is not a terminal (a log file, CI, nohup): a plain line per task
    every `every` seconds and at the end, with the step, the rate, the time left and the key metrics.
    The same `add_task` / `update` calls as rich's `Progress`."""

    def __init__(self, every: float = 30.0):
        self.every = every
        self.tasks: dict[int, dict] = {}

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        for task in self.tasks.values():
            if task["printed"] != task["completed"]:
                self._print(task)

    def add_task(self, description: str, total: int, completed: int = 0, info: str = "") -> int:
        now = time.time()
        self.tasks[len(self.tasks)] = dict(description=description, total=total, completed=completed, start_step=completed,
                                           info=info, start=now, last=now, printed=completed)
        return len(self.tasks) - 1

    def update(self, task_id: int, advance: int = 0, completed: int | None = None, info: str | None = None) -> None:
        task = self.tasks[task_id]
        task["completed"] = completed if completed is not None else task["completed"] + advance
        if info is not None:
            task["info"] = info
        now = time.time()
        if now - task["last"] >= self.every or task["completed"] >= task["total"]:
            task["last"] = now
            self._print(task)

    def _print(self, task: dict) -> None:
        task["printed"] = task["completed"]
        elapsed = time.time() - task["start"]
        done = task["completed"] - task["start_step"]
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (task["total"] - task["completed"]) / rate if rate > 0 else float("nan")
        eta = f"{left / 60:.1f} min left" if math.isfinite(left) else "time left unknown"
        console.print(
            f"{task['description']}: step {task['completed']}/{task['total']}, {rate * 60:.1f} steps/min, {eta}"
            + (f", {task['info']}" if task["info"] else ""),
            highlight=False,
        )


def progress() -> Progress | LineProgress:
    """A rich progress bar on stderr, or plain progress lines when stderr is not a terminal."""
    if not console.is_terminal:
        return LineProgress()
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )


def fmt(metrics: dict[str, float], keys: list[str]) -> str:
    return " ".join(f"{k.split('/')[-1]}={metrics[k]:.3g}" for k in keys if k in metrics and metrics[k] is not None)
