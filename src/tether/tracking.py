"""Metrics sinks beside `metrics.jsonl`: TensorBoard, Weights & Biases and Trackio, chosen by `train.report_to`.

`metrics.jsonl` in the run directory stays the record of a run; a sink is a copy for a dashboard. The names
follow transformers' `TrainingArguments.report_to`. Each sink's package is optional and imported only when
the sink is opened; a missing one is a `ConfigError` before training starts. A sink that fails while
logging warns once and is switched off, so a dashboard outage never stops training.

    with open_sinks(["tensorboard"], run_dir, run_name="ppo", config=cfg.model_dump(mode="json")) as sinks:
        sinks.log(step, {"objective/kl": 0.12, "loss/policy": -0.03})
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from tether.errors import ConfigError

KEY = "train.report_to"
REPORT_TO = ("none", "tensorboard", "wandb", "trackio")
TENSORBOARD_DIR = "tensorboard"  # inside the run directory


class Sink(Protocol):
    """One open dashboard: `log` takes finite floats keyed by metric name (`objective/kl`)."""

    def log(self, step: int, scalars: dict[str, float]) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class _Kind:
    requirement: str  # what `pip install` needs; pyproject.toml's extra of the same name says the same
    open: Callable[[Path, str, dict, int | None], Sink]  # (run_dir, run_name, config, resume_step)


class Sinks:
    """The sinks of one run (possibly none). `log` and `close` never raise because of a sink.

    A sink whose `log` raises is closed, reported once with `warnings.warn` (RuntimeWarning) and left out of
    later calls. `log` after `close` does nothing, `close` may be called again, and `with` closes on exit.
    """

    def __init__(self, sinks: dict[str, Sink] | None = None):
        self._sinks = dict(sinks or {})

    @property
    def names(self) -> tuple[str, ...]:
        """The names (from `REPORT_TO`) of the sinks still open, in the order they were asked for."""
        return tuple(self._sinks)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Send one row of metrics for optimizer step `step` to every open sink.

        Values that are not finite real numbers (None, NaN, inf, strings) are left out; a row left empty is
        not sent. Keys are passed on as they are (`objective/kl` is the tag or chart name).
        """
        scalars = finite_scalars(metrics) if self._sinks else {}
        if not scalars:
            return
        for name, sink in list(self._sinks.items()):
            try:
                sink.log(step, scalars)
            except Exception as exc:  # a dashboard problem must not stop training
                del self._sinks[name]
                warnings.warn(
                    f"{KEY}: the {name} sink failed at step {step} ({type(exc).__name__}: {exc}) and is off for "
                    "the rest of the run; metrics.jsonl still has every row",
                    RuntimeWarning,
                    stacklevel=2,
                )
                _close_quietly(sink)

    def close(self) -> None:
        """Flush and close every sink (W&B and Trackio runs are finished). A sink that fails to close warns."""
        sinks, self._sinks = self._sinks, {}
        for name, sink in sinks.items():
            if not _close_quietly(sink):
                warnings.warn(f"{KEY}: the {name} sink did not close cleanly", RuntimeWarning, stacklevel=2)

    def __enter__(self) -> Sinks:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_sinks(
    report_to: Sequence[str] | str,
    run_dir: Path,
    run_name: str,
    config: dict,
    enabled: bool = True,
    *,
    resume_step: int | None = None,
) -> Sinks:
    """Open the sinks named in `report_to` for the run in `run_dir`.

    Args:
        report_to: names from `REPORT_TO` (a single name is accepted too); `[]` or `["none"]` opens nothing.
        run_dir: the run directory; TensorBoard writes its event files to `run_dir / "tensorboard"`, W&B its
            local files under `run_dir / "wandb"`.
        run_name: the run's name on W&B and Trackio.
        config: the resolved config as a JSON-able dict, shown beside the metrics.
        enabled: False on every process but the main one in distributed training: the names and packages are
            still checked (so every process fails alike), and nothing is opened.
        resume_step: when the run resumes from a checkpoint, that checkpoint's step: TensorBoard hides the points
            an interrupted attempt logged after it, which are logged again (W&B and Trackio start a new run).

    Returns:
        The open `Sinks`; close it (or use it in a `with` block) when training ends.

    Raises:
        ConfigError: for a name not in `REPORT_TO`, "none" beside other names, a sink whose package is not
            installed or does not import (the message says what to pip install), or a sink that fails to start
            (W&B without a login, say); sinks opened before it are closed again.
    """
    names = check_report_to(report_to)
    if not enabled:
        return Sinks()
    run_dir = Path(run_dir)
    opened = Sinks()
    for name in names:
        try:
            opened._sinks[name] = _KINDS[name].open(run_dir, run_name, config, resume_step)
        except ConfigError:
            opened.close()
            raise
        except Exception as exc:
            opened.close()
            raise ConfigError(f"{KEY}: the {name} sink could not start: {type(exc).__name__}: {exc}") from exc
    return opened


def check_report_to(report_to: Sequence[str] | str) -> tuple[str, ...]:
    """The sink names in `report_to`, checked: known, each package installed; "none" and repeats dropped.

    Imports nothing (a config check can call it cheaply).

    Raises:
        ConfigError: for an unknown name, "none" beside other names, or a sink whose package is not installed.
    """
    given = [report_to] if isinstance(report_to, str) else list(report_to)
    unknown = [n for n in given if n not in REPORT_TO]
    if unknown:
        raise ConfigError(f"{KEY}: unknown sink {', '.join(map(repr, unknown))}; allowed: {', '.join(REPORT_TO)}")
    names = tuple(dict.fromkeys(n for n in given if n != "none"))
    if names and "none" in given:
        raise ConfigError(f"{KEY}: 'none' cannot stand beside other sinks ({', '.join(names)})")
    for name in names:
        if not _installed(name):  # each sink's package has the sink's name
            raise _missing(name, "it is not installed")
    return names


def finite_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The entries of `metrics` that are finite real numbers, as floats (0-d tensors and NumPy scalars too)."""
    out = {}
    for key, value in metrics.items():
        if value is None or isinstance(value, (str, bytes)):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[key] = number
    return out


def _installed(package: str) -> bool:
    if package in sys.modules:  # imported already, or blocked with None
        return sys.modules[package] is not None
    return importlib.util.find_spec(package) is not None


def _missing(name: str, why: str) -> ConfigError:
    return ConfigError(f'{KEY}: the {name} sink needs the {name} package, but {why}; '
                       f'install it with: pip install "{_KINDS[name].requirement}" (or the tether[{name}] extra)')


def _import(name: str, module: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise _missing(name, f"it does not import ({exc})") from exc


def _close_quietly(sink: Sink) -> bool:
    try:
        sink.close()
        return True
    except Exception:
        return False


class _TensorBoard:
    """Scalars in `run_dir/tensorboard` (`tensorboard --logdir` on it or on a folder of runs); the config as text."""

    def __init__(self, run_dir: Path, run_name: str, config: dict, resume_step: int | None):
        summary = _import("tensorboard", "torch.utils.tensorboard")
        purge_step = None if resume_step is None else resume_step + 1  # TensorBoard hides older points from here
        self.writer = summary.SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=purge_step)
        self.writer.add_text("config", _config_markdown(config), global_step=0)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    """A W&B run in project $WANDB_PROJECT (default "tether"); wandb itself reads WANDB_MODE, WANDB_ENTITY etc."""

    def __init__(self, run_dir: Path, run_name: str, config: dict, resume_step: int | None):
        wandb = _import("wandb", "wandb")
        run_dir.mkdir(parents=True, exist_ok=True)
        project = os.environ.get("WANDB_PROJECT", "tether")
        # create_new: a run of its own even when another is active (a pipeline runs several stages in one process)
        self.run = wandb.init(project=project, name=run_name, dir=str(run_dir), config=config, reinit="create_new")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class _Trackio:
    """Trackio's current run (it keeps one at a time) in project $TRACKIO_PROJECT (default "tether"), stored
    where trackio keeps its data ($TRACKIO_DIR, or a Hugging Face Space with $TRACKIO_SPACE_ID)."""

    def __init__(self, run_dir: Path, run_name: str, config: dict, resume_step: int | None):
        self.trackio = _import("trackio", "trackio")
        self.trackio.init(project=os.environ.get("TRACKIO_PROJECT", "tether"), name=run_name, config=config)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.trackio.log(scalars, step=step)

    def close(self) -> None:
        self.trackio.finish()  # finishes the run and forgets it, so trackio does not finish it again at exit


def _config_markdown(config: dict) -> str:
    """The config as an indented (Markdown code) block of JSON, as TensorBoard's text tab shows it."""
    text = json.dumps(config, indent=2, sort_keys=True, default=str)
    return "\n".join("    " + line for line in text.splitlines())


_KINDS: dict[str, _Kind] = {
    "tensorboard": _Kind("tensorboard>=2.18", _TensorBoard),
    "wandb": _Kind("wandb>=0.19.10", _Wandb),
    "trackio": _Kind("trackio>=0.10", _Trackio),
}
