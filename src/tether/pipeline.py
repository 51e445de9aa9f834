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

`plans:` sizes a pipeline to the machine. Each plan has a name, a time budget (`budget_minutes`), the
measured minutes of each stage on a reference machine (`reference_minutes`) with the time of one training
step of the probe model there (`reference_step_seconds`), and dotted `STAGE.key: value` overrides. At start, `tether run` times a few training steps of the probe model
(the quickstart's 5M-parameter Llama, in the precision `train.precision=auto` picks here), scales each plan's
reference minutes by the ratio of step times, prints the estimate, and takes the first plan that fits its
budget (the last one if none does, with a warning). The choice is written to `output_root/plan.json` and
kept by later runs of the same pipeline, so finished stages stay finished; `plan=NAME` chooses by hand.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import Field

from tether.config import Strict, apply_overrides, dump_config, read_yaml, validate
from tether.errors import ConfigError, DataError
from tether.run import DONE_FILE, console, finished_with
from tether.stages import STAGES, schema

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
    unknown = set(spec) - {"output_root", "data_dir", "stages", "name", "description", "extends", "plans"}
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
        if s["command"] not in STAGES:
            raise ConfigError(f"{path}: stage '{s['name']}': unknown command '{s['command']}' (expected {', '.join(STAGES)})")
        if s["name"] in names:
            raise ConfigError(f"{path}: duplicate stage name '{s['name']}'")
        extra = set(s) - {"name", "command", "config", "config_file"}
        if extra:
            raise ConfigError(f"{path}: stage '{s['name']}': unknown key(s) {sorted(extra)}")
        names.add(s["name"])
        raw = read_yaml(s["config_file"]) if s.get("config_file") else {}
        stages.append(Stage(s["name"], s["command"], _deep_merge(raw, s.get("config") or {})))
    globals_: dict = {k: spec[k] for k in ("output_root", "data_dir", "plans") if k in spec}
    for text in overrides:
        key, _, value = text.partition("=")
        if key.strip() in ("output_root", "data_dir", "plan"):
            globals_[key.strip()] = value.strip()
            continue
        head, _, rest = text.partition(".")
        match = [s for s in stages if s.name == head]
        if not match or not rest:
            raise ConfigError(f"override '{text}': expected STAGE.key=value with STAGE one of {', '.join(names)}")
        stage = match[0]
        stage.raw = apply_overrides(stage.raw, [rest], schema(stage.command))
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
        env["data_dir"] = resolve_data_dir(globals_.get("data_dir"))  # before measuring: a missing folder fails at once
    if globals_.get("plans"):
        plan = choose_plan(path, globals_["plans"], globals_.get("plan"), Path(output_root), stages)
        apply_plan(path, plan, stages, given={o.partition("=")[0].strip() for o in overrides})
    elif globals_.get("plan"):
        raise ConfigError(f"plan={globals_['plan']}: {path} declares no plans")
    outputs: dict[str, Path] = {}
    t_start = time.time()
    ran: set[str] = set()  # stages run now: a stage that reads one of their outputs must run too
    for stage in stages:
        raw = _interpolate(stage.raw, env, f"{path}: stage '{stage.name}'")
        raw.setdefault("output_dir", f"{output_root}/{stage.name}")
        cfg = validate(schema(stage.command), raw, origin=f"{path}: stage '{stage.name}'")
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


# --------------------------------------------------------------------------- plans: the pipeline sized to the machine

PLAN_FILE = "plan.json"
PROBE_BATCH = 16  # the probe model trains on 16 blocks of PretrainConfig's default 256 tokens


class Plan(Strict):
    """One way to run a pipeline: overrides, a time budget, and stage times measured on a reference machine."""

    name: str
    budget_minutes: float = Field(..., gt=0, description="the longest this plan should take")
    overrides: dict[str, Any] = Field(default_factory=dict, description="STAGE.key: value, applied to the stages")
    reference_step_seconds: float = Field(..., gt=0, description="a training step of the probe model on the reference machine")
    reference_minutes: dict[str, float] = Field(..., description="minutes of each stage on the reference machine")
    reference_machine: str = Field("", description="the machine and precision the reference times were measured with")

    def estimate(self, step_seconds: float, caps: dict[str, float]) -> dict[str, float]:
        """Minutes of each stage here: the reference minutes times the ratio of step times, at most the stage's
        own time cap (a stage that fits its steps to `max_minutes`)."""
        ratio = step_seconds / self.reference_step_seconds
        return {k: min(v * ratio, caps.get(k, float("inf"))) for k, v in self.reference_minutes.items()}


def probe_step_seconds() -> tuple[float, str]:
    """Seconds of one training step (forward and backward) of the probe model, a 5M-parameter Llama on 16 x 256
    tokens (the quickstart's base model), in the precision `auto` picks on this machine; and that precision."""
    import torch

    from tether.config import PretrainConfig
    from tether.models.load import resolve_device
    from tether.precision import resolve_precision
    from tether.trainers.pretrain import build_model, seconds_per_step

    device = resolve_device("auto")
    cfg = PretrainConfig(data={"train": "-"}, output_dir="-")
    vocab = cfg.arch.vocab_size

    class _Vocab:  # what build_model reads of a tokenizer
        pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

        def __len__(self):
            return vocab

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(cfg, _Vocab()).to(device)
        batch = torch.randint(3, vocab, (PROBE_BATCH, cfg.block_size), device=device)
        seconds = seconds_per_step(model, batch, cfg, device)
    return seconds, resolve_precision("auto", device).describe()


def choose_plan(path: str, raw_plans: list, wanted: str | None, output_root: Path, stages: list[Stage]) -> Plan:
    """The plan to run: `wanted`, else the one an earlier run of this pipeline chose, else the first whose
    estimated time here fits its budget.

    Raises:
        ConfigError: a malformed `plans` list or an unknown plan name.
    """
    import json

    if not isinstance(raw_plans, list) or not raw_plans:
        raise ConfigError(f"{path}: 'plans' must be a non-empty list")
    plans = [validate(Plan, p, origin=f"{path}: plan {i + 1}") for i, p in enumerate(raw_plans)]
    by_name = {p.name: p for p in plans}
    record = output_root / PLAN_FILE
    if wanted is None and record.is_file():
        earlier = json.loads(record.read_text()).get("plan")
        if earlier in by_name:
            console.print(f"plan '{earlier}', as chosen by the earlier run ({record}; plan=NAME chooses another)")
            return by_name[earlier]
    if wanted is not None and wanted not in by_name:
        raise ConfigError(f"plan={wanted}: {path} has the plans {', '.join(by_name)}")
    t0 = time.time()
    step_seconds, precision = probe_step_seconds()
    console.print(f"measured in {time.time() - t0:.0f}s: a training step of the probe model takes {step_seconds:.2f} s here ({precision})")
    chosen = by_name[wanted] if wanted else None
    for plan in plans:
        minutes = plan.estimate(step_seconds, _stage_caps(plan, stages))
        total = sum(minutes.values())
        fits = total <= plan.budget_minutes
        console.print(
            f"plan '{plan.name}': about {total:.0f} min ({', '.join(f'{k} {v:.1f}' for k, v in minutes.items())}), "
            f"budget {plan.budget_minutes:g} min{'' if fits else ': too slow here'}"
        )
        if chosen is None and fits:
            chosen = plan
    unmeasured = sorted({s.name for s in stages} - set().union(*(p.reference_minutes for p in plans)))
    if unmeasured:
        console.print(f"(stages without reference times, not in the estimates: {', '.join(unmeasured)})")
    if chosen is None:
        chosen = plans[-1]
        console.print(f"[yellow]no plan fits its budget on this machine: running '{chosen.name}', which will take longer[/]")
    console.print(f"[bold]running plan '{chosen.name}'[/]")
    output_root.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"plan": chosen.name, "probe_step_seconds": step_seconds, "precision": precision}, indent=2) + "\n")
    return chosen


def _stage_caps(plan: Plan, stages: list[Stage]) -> dict[str, float]:
    """The time caps (`max_minutes`) of the stages under `plan`: the plan's own, else the stage config's."""
    caps = {s.name: float(s.raw["max_minutes"]) for s in stages if isinstance(s.raw.get("max_minutes"), (int, float))}
    caps.update({k.split(".")[0]: float(v) for k, v in plan.overrides.items() if k.count(".") == 1 and k.endswith(".max_minutes")})
    return caps


def apply_plan(path: str, plan: Plan, stages: list[Stage], given: set[str] = frozenset()) -> None:
    """Apply the plan's `STAGE.key: value` overrides to the stages, except the keys in `given` (set on the
    command line, which wins).

    Raises:
        ConfigError: an override naming an unknown stage or key.
    """
    import json

    names = {s.name: s for s in stages}
    for key, value in plan.overrides.items():
        if key in given:
            continue
        head, _, rest = key.partition(".")
        if head not in names or not rest:
            raise ConfigError(f"{path}: plan '{plan.name}': override '{key}' must be STAGE.key with STAGE one of {', '.join(names)}")
        stage = names[head]
        stage.raw = apply_overrides(stage.raw, [f"{rest}={json.dumps(value)}"], schema(stage.command))  # JSON is YAML
