"""The playground's configuration: which models answer, how they are scored, where thumbs go.

A YAML file given to `tether label serve --playground FILE`:

```yaml
models:                      # listed models, in order (optional when `runs` is given)
  - {name: sft, path: runs/sft, kl: 0}
  - {name: ppo, path: runs/ppo, kl: 4.2}
runs: [runs/ppo]             # PPO run directories or `tether loop` directories: their models are added
reward_model: runs/rm        # scores every answer (optional)
judge: runs/judge-rm         # a held-out reward model, scored too (optional)
generation: {max_new_tokens: 64, temperature: 0.7}
campaign: playground         # the thumbs campaign (created on first thumb)
personal: runs/personal      # a `tether personalize` run: each labeller's page /my-model (optional)
```

From a PPO run directory come its reference (the KL reference of `config.yaml`: `reference`, else the
starting `model`) at KL 0, every checkpoint `checkpoints/step-N` with the `objective/kl` that
`metrics.jsonl` logged at step N, and the final policy (when the run is finished) with the last logged KL.
From a `tether loop` directory come the SFT policy (`policy` of its `config.yaml`) at KL 0 and each round's
policy with its `kl_to_sft` from `loop.json`. From a `tether personalize` run (`personal`) come, on a labeller's page
`/my-model`, the shared policy and that labeller's own adapter, side by side; their thumbs go to the thumbs campaign
under their name, so `tether label export --by-labeler` gives them back to the next `tether personalize`.
Nothing here loads a model (no torch): the worker does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tether.config import GenerationConfig
from tether.errors import ConfigError

LOOP_SUMMARY = "loop.json"  # tether.loop.SUMMARY_FILE (tether.loop imports torch)
PERSONAL_SUMMARY = "personalize.json"  # tether.personalize.SUMMARY_FILE
SHARED_NAME = "shared model"
DONE_FILE = "DONE"  # tether.run.DONE_FILE
KL_KEY = "objective/kl"


class PlaygroundModel(BaseModel):
    """One model of the playground."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1, max_length=200, description="shown above its answers and stored as the thumbs' model tag")
    path: str = Field(..., min_length=1, description="model directory (Hugging Face format) or hub id")
    kl: float | None = Field(None, description="KL to the reference (0 for the reference itself); orders the slider")


class PlaygroundConfig(BaseModel):
    """`tether label serve --playground FILE`: the models side by side, their scorers, the thumbs campaign."""

    model_config = ConfigDict(extra="forbid")
    models: list[PlaygroundModel] = Field(default_factory=list, description="models listed one by one")
    runs: list[str] = Field(default_factory=list, description="PPO run directories or `tether loop` directories whose models are added")
    reward_model: str | None = Field(None, description="reward-model directory that scores every answer")
    judge: str | None = Field(None, description="a second (held-out) reward model that scores every answer")
    generation: GenerationConfig = Field(default_factory=lambda: GenerationConfig(max_new_tokens=64, temperature=0.7))
    campaign: str = Field("playground", min_length=1, max_length=200, description="thumbs campaign the thumbs go to")
    seed: int = Field(0, description="sampling seed, the same for every model")
    personal: str | None = Field(None, description="a `tether personalize` output directory: each labeller's /my-model page")

    def personal_models(self, labeler: str) -> tuple[list[PlaygroundModel], dict[str, Any]]:
        """The shared policy and `labeler`'s own adapter (when they have one) of the `personal` run, and the prompt
        format the adapters were trained with ({"prompt_template", "max_prompt_length"}; empty for an older run).

        Raises:
            ConfigError: no `personal` run, or its personalize.json is missing or unreadable.
        """
        if self.personal is None:
            raise ConfigError("no personal models here: the playground file has no `personal:` run")
        summary = Path(self.personal) / PERSONAL_SUMMARY
        try:
            meta = json.loads(summary.read_text(encoding="utf-8"))
            models = [PlaygroundModel(name=SHARED_NAME, path=str(meta["policy"]), kl=0.0)]
            adapter = (meta["people"].get(labeler) or {}).get("adapter")
            prompting = {k: meta[k] for k in ("prompt_template", "max_prompt_length") if meta.get(k) is not None}
        except (OSError, ValueError, KeyError, AttributeError):
            raise ConfigError(f"personal: {summary} is missing or not written by `tether personalize`") from None
        if adapter:
            models.append(PlaygroundModel(name=f"yours ({labeler})", path=str(Path(self.personal) / adapter), kl=None))
        return models, prompting

    def job_params(self, prompt: str, models: list[PlaygroundModel] | None = None, prompting: dict[str, Any] | None = None) -> dict[str, Any]:
        """The parameters of the worker's `generate` job for one prompt (by default every playground model answers;
        `prompting`: the prompt_template and max_prompt_length to answer with, else the default ones)."""
        return {
            "prompt": prompt,
            "models": [m.model_dump() for m in (self.models if models is None else models)],
            "reward_model": self.reward_model,
            "judge": self.judge,
            "generation": self.generation.model_dump(),
            "seed": self.seed,
            **(prompting or {}),
        }


def load_playground(path: str | Path) -> PlaygroundConfig:
    """Reads a playground YAML file and adds the models of its `runs` (after the listed ones).

    Relative paths are taken relative to the file's directory when they exist there.

    Raises:
        ConfigError: unreadable file, unknown or invalid keys, a run directory that is neither a PPO run
            nor a loop, or no models at all.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"--playground {path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--playground {path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--playground {path}: expected a mapping of keys (models, runs, reward_model, ...)")
    try:
        cfg = PlaygroundConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"--playground {path}: {problems}") from None
    base = path.parent

    def local(p: str | None) -> str | None:
        return str(base / p) if p is not None and not Path(p).is_absolute() and (base / p).exists() else p

    models = [m.model_copy(update={"path": local(m.path)}) for m in cfg.models]
    for run in cfg.runs:
        models.extend(run_models(local(run) or run))
    if not models and cfg.personal is None:
        raise ConfigError(f"--playground {path}: no models: list some under `models`, give `runs`, or a `personal` run")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"--playground {path}: model names must differ, got {sorted({n for n in names if names.count(n) > 1})} twice")
    personal = local(cfg.personal)
    if personal is not None and not (Path(personal) / PERSONAL_SUMMARY).is_file():
        raise ConfigError(f"--playground {path}: personal: {personal} has no {PERSONAL_SUMMARY} (not a `tether personalize` run)")
    return cfg.model_copy(update={"models": models, "reward_model": local(cfg.reward_model), "judge": local(cfg.judge), "personal": personal})


def run_models(run: str | Path) -> list[PlaygroundModel]:
    """The models of a PPO run directory or a `tether loop` directory, reference first (see the module doc).

    Raises:
        ConfigError: the directory is neither.
    """
    run = Path(run)
    config = _yaml(run / "config.yaml")
    prefix = run.name
    if (run / LOOP_SUMMARY).is_file():
        rows = json.loads((run / LOOP_SUMMARY).read_text(encoding="utf-8")).get("rounds", [])
        models = [PlaygroundModel(name=f"{prefix}: SFT", path=str(config["policy"]), kl=0.0)] if config.get("policy") else []
        models += [PlaygroundModel(name=f"{prefix}: round {row['round']}", path=str(row["policy"]), kl=row.get("kl_to_sft")) for row in rows]
        return models
    if not (run / "metrics.jsonl").is_file() or "model" not in config:
        raise ConfigError(f"playground runs: {run} is neither a PPO run directory (config.yaml, metrics.jsonl) nor a `tether loop` directory (loop.json)")
    kl_at = {}
    last_kl = None
    for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get(KL_KEY) is not None:
                kl_at[row.get("step")] = last_kl = row[KL_KEY]
    reference = config.get("reference") or config["model"].get("name_or_path")
    models = [PlaygroundModel(name=f"{prefix}: reference", path=str(reference), kl=0.0)]
    root = run / "checkpoints"
    steps = sorted(int(d.name.split("-")[1]) for d in root.glob("step-*[0-9]") if (d / "config.json").is_file()) if root.is_dir() else []
    models += [PlaygroundModel(name=f"{prefix}: step {s}", path=str(root / f"step-{s}"), kl=kl_at.get(s)) for s in steps]
    if (run / DONE_FILE).is_file() and (run / "config.json").is_file():
        summary = json.loads((run / DONE_FILE).read_text(encoding="utf-8") or "{}")
        models.append(PlaygroundModel(name=f"{prefix}: final", path=str(run), kl=summary.get(KL_KEY, last_kl)))
    return models


def _yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError:
        raise ConfigError(f"playground runs: {path.parent} has no readable config.yaml: not a run directory") from None
    return data if isinstance(data, dict) else {}
