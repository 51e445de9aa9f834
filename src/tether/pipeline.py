"""`tether run PIPELINE.yaml`: stages in order, each one's output feeding the next.

A pipeline file:

    output_root: runs/quickstart
    data_dir: ../shared/data          # or the TETHER_DATA_DIR environment variable
    stages:
      - name: sft
        command: sft                   # pretrain | sft | rm | ppo | eval
        config: {model: {name_or_path: "${pretrain.output_dir}"}, data: {train: "${data_dir}/x.jsonl.gz"}}
        # or: config_file: configs/sft.yaml, with `config` applied on top

`extends: other.yaml` runs that pipeline's stages first (with its output_root and data_dir unless this
file sets them), then this file's. `${NAME.output_dir}` is the output of an earlier stage, `${data_dir}` and `${output_root}` the
pipeline's own settings. A stage's `output_dir` defaults to `output_root/NAME`. A stage whose output
directory holds a finished run with the same resolved config is skipped, so re-running a pipeline
resumes after the last finished stage; a stage that reads the output of a stage that ran again runs
again too.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tether.config import CONFIGS, Strict, apply_overrides, dump_config, read_yaml, validate
from tether.errors import ConfigError, DataError
from tether.trainers.common import DONE_FILE, console, finished_with

_REF = re.compile(r"\$\{([A-Za-z0-9_.-]+)\}")


@dataclass
class Stage:
    name: str
    command: str
    raw: dict


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _interpolate(value: Any, env: dict[str, str], where: str) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, env, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, where) for v in value]
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            if m.group(1) not in env:
                raise ConfigError(f"{where}: unknown reference ${{{m.group(1)}}}; known: {', '.join(sorted(env))}")
            return env[m.group(1)]

        return _REF.sub(sub, value)
    return value


def load_pipeline(path: str, overrides: list[str]) -> tuple[dict, list[Stage]]:
    """Read the pipeline file and split `stage.key=value` overrides per stage.

    Raises:
        ConfigError: bad structure, unknown command, duplicate stage name, unknown stage in an override.
    """
    spec = read_yaml(path)
    unknown = set(spec) - {"output_root", "data_dir", "stages", "name", "description", "extends"}
    if unknown:
        raise ConfigError(f"{path}: unknown pipeline key(s) {sorted(unknown)}")
    if spec.get("extends"):
        # the stages of another pipeline first (reused when finished), then this file's own
        base_path = Path(path).parent / spec["extends"]
        if not base_path.is_file():
            base_path = Path(spec["extends"])
        base = read_yaml(base_path)
        spec = {**{k: v for k, v in base.items() if k != "stages"}, **spec,
                "stages": list(base.get("stages") or []) + list(spec.get("stages") or [])}
    stages_raw = spec.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError(f"{path}: 'stages' must be a non-empty list")
    stages, names = [], set()
    for i, s in enumerate(stages_raw):
        if not isinstance(s, dict) or "name" not in s or "command" not in s:
            raise ConfigError(f"{path}: stage {i + 1} needs 'name' and 'command'")
        if s["command"] not in CONFIGS:
            raise ConfigError(f"{path}: stage '{s['name']}': unknown command '{s['command']}' (expected {', '.join(CONFIGS)})")
        if s["name"] in names:
            raise ConfigError(f"{path}: duplicate stage name '{s['name']}'")
        extra = set(s) - {"name", "command", "config", "config_file"}
        if extra:
            raise ConfigError(f"{path}: stage '{s['name']}': unknown key(s) {sorted(extra)}")
        names.add(s["name"])
        raw = read_yaml(s["config_file"]) if s.get("config_file") else {}
        stages.append(Stage(s["name"], s["command"], _deep_merge(raw, s.get("config") or {})))
    globals_: dict = {k: spec[k] for k in ("output_root", "data_dir") if k in spec}
    for text in overrides:
        key, _, value = text.partition("=")
        if key.strip() in ("output_root", "data_dir"):
            globals_[key.strip()] = value.strip()
            continue
        head, _, rest = text.partition(".")
        match = [s for s in stages if s.name == head]
        if not match or not rest:
            raise ConfigError(f"override '{text}': expected STAGE.key=value with STAGE one of {', '.join(names)}")
        stage = match[0]
        stage.raw = apply_overrides(stage.raw, [rest], CONFIGS[stage.command])
    return globals_, stages


def resolve_data_dir(value: str | None) -> str:
    """The data directory: the pipeline's `data_dir`, overridden by $TETHER_DATA_DIR.

    Raises:
        DataError: when it does not exist, saying what to pass.
    """
    data_dir = os.environ.get("TETHER_DATA_DIR") or value or "../shared/data"
    if not Path(data_dir).is_dir():
        raise DataError(
            f"data directory '{data_dir}' not found. The quickstart reads real public data (HH-RLHF harmless pairs, "
            "SFT seed sets); put them in a folder laid out like ../shared/data and pass it with "
            "TETHER_DATA_DIR=/path/to/data or `tether run PIPELINE.yaml data_dir=/path/to/data`"
        )
    return data_dir


def run_pipeline(path: str, overrides: list[str], runners: dict[str, Callable[[Strict], Any]]) -> dict[str, Path]:
    """Run every stage in order; returns each stage's output directory.

    Args:
        path: the pipeline YAML.
        overrides: `STAGE.key=value` (or `data_dir=...`, `output_root=...`).
        runners: command name -> function taking the validated stage config.
    """
    globals_, stages = load_pipeline(path, overrides)
    output_root = str(globals_.get("output_root", "runs/pipeline"))
    env = {"output_root": output_root}
    if any("${data_dir}" in str(s.raw) for s in stages):
        env["data_dir"] = resolve_data_dir(globals_.get("data_dir"))
    outputs: dict[str, Path] = {}
    t_start = time.time()
    ran: set[str] = set()  # stages run now: a stage that reads one of their outputs must run too
    for stage in stages:
        raw = _interpolate(stage.raw, env, f"{path}: stage '{stage.name}'")
        raw.setdefault("output_dir", f"{output_root}/{stage.name}")
        cfg = validate(CONFIGS[stage.command], raw, origin=f"{path}: stage '{stage.name}'")
        out = Path(cfg.output_dir)
        depends_on = {ref.split(".")[0] for ref in _REF.findall(str(stage.raw)) if ref.endswith(".output_dir")}
        if not (depends_on & ran) and finished_with(out, cfg):
            console.print(f"[green]stage {stage.name}: already finished in {out}, skipped[/]")
        else:
            ran.add(stage.name)
            cfg = cfg.model_copy(update={"overwrite": True})  # the pipeline owns its stage directories
            console.print(f"[bold]stage {stage.name} ({stage.command})[/] -> {out}")
            t0 = time.time()
            runners[stage.command](cfg)
            if not (out / DONE_FILE).is_file():
                (out / DONE_FILE).write_text("{}")
            _restore_config(out, cfg)
            console.print(f"stage {stage.name}: {time.time() - t0:.0f}s")
        outputs[stage.name] = out
        env[f"{stage.name}.output_dir"] = str(out)
    console.print(f"pipeline finished in {time.time() - t_start:.0f}s")
    return outputs


def _restore_config(out: Path, cfg: Strict) -> None:
    """Record the config without the pipeline's overwrite flag, so an identical re-run is skipped."""
    (out / "config.yaml").write_text(dump_config(cfg.model_copy(update={"overwrite": False})))
