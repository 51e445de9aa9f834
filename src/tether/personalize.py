"""`tether personalize`: a model for each person, learnt from that person's own feedback.

Every label in the feedback app carries its labeller, so what one person taught can be kept apart from the crowd:
`tether label export --by-labeler DIR` writes each person's own pairs and thumbs, and this stage trains, for each
person, a LoRA adapter on the shared (aligned) policy:
    1. data        the person's files from DIR/labelers.json; a share of their prompts held out (by a hash of the
                   prompt, so every person holds out the same prompts); pairs train with DPO (Rafailov et al. 2023),
                   thumbs with KTO (Ethayarajh et al. 2024; a person with both: KTO on the thumbs and on the pairs
                   read as a thumbs-up for the chosen and a thumbs-down for the rejected, KTO paper sec. 4.3)
    2. adapters    `tether dpo` from the shared policy, which is also the reference (adapters disabled), so a person
                   with little data stays close to it; only the adapter is written (`model.lora.merge: false`). A
                   person with fewer than `min_examples` training examples gets none and is served the shared policy.
                   With several `search` candidates (learning rate, beta, epochs), each trains on part of the person's
                   training prompts and the one most accurate on the rest (the validation share, never the held-out
                   prompts) is chosen, then trained again on all of them (`refit`)
    3. pooled      one adapter on everyone's training examples together: what a model of the crowd makes of the same
                   labels, the baseline every person's adapter must beat on that person's held-out preferences; its
                   values are searched for in the same way
    4. measure     on each person's held-out pairs, the implicit-reward accuracy (Rafailov et al. 2023, eq. 5:
                   r = beta * (log pi_adapter - log pi_shared), chosen above rejected; ties wrong) of every adapter and
                   of the pooled one, with 95% Wilson intervals; the shared policy's own choice (the higher mean
                   log-probability per token) beside them. Row = adapter, column = whose held-out pairs: the diagonal
                   is each person's own adapter, and off the diagonal the adapters disagree where the people do.

`personalize.json` (read by `tether generate --adapter` and `rollout/personal.py`) names the base and every person's
adapter (or why there is none), their example counts, the accuracy table and the adapters' size against the base's.
A finished person's adapter is skipped when the command runs again (a killed run resumes its newest checkpoint).
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tether.config import DPOConfig, ModelConfig, PersonalizeConfig, dump_config, validate
from tether.data.sources import in_holdout, load_binary_feedback, load_preferences, select, write_jsonl
from tether.data.tokenize import tokenize_pairs
from tether.errors import ConfigError, DataError
from tether.models.load import release_memory, resolve_device, resolve_path
from tether.models.tiny import TINY_NAMES
from tether.precision import resolve_precision
from tether.run import DONE_FILE, console, run_stage, same_config

SUMMARY_FILE = "personalize.json"
LABELERS_INDEX = "labelers.json"  # tether.feedback.export.LABELERS_INDEX (feedback never imports torch, nor we it)
POOLED = "pooled"
SHARED = "shared"  # the shared policy itself: its own choice between two answers
VALIDATION_SALT = "validation\n"  # hashed before the prompt: a split of the training prompts independent of the held-out one


@dataclass
class Person:
    """One labeller's files and what this stage made of them."""

    name: str
    pairs: list[str] = field(default_factory=list)
    thumbs: list[str] = field(default_factory=list)
    kind: str = "pairs"  # what the adapter trains on: pairs (DPO) or kto (thumbs, and pairs as thumbs)
    train_files: list[str] = field(default_factory=list)
    n_train: int = 0
    n_heldout_pairs: int = 0
    adapter: str | None = None
    reason: str | None = None


# --------------------------------------------------------------------------- 1. data


def read_people(cfg: PersonalizeConfig) -> dict[str, Person]:
    """Every labeller of the index (or `cfg.people`) with their pairs and thumbs files.

    Raises:
        ConfigError: no index in `cfg.feedback`, an unreadable index, a person of `cfg.people` not in it.
    """
    root = Path(cfg.feedback)
    index = root / LABELERS_INDEX
    if not index.is_file():
        raise ConfigError(f"feedback: {index} not found (write it with `tether label export --campaign C --by-labeler {root}`)")
    try:
        files = json.loads(index.read_text(encoding="utf-8"))["files"]
        people: dict[str, Person] = {}
        for f in files:
            person = people.setdefault(f["labeler"], Person(f["labeler"]))
            if f["kind"] in ("pairs", "thumbs"):
                getattr(person, f["kind"]).append(str(root / f["path"]))
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"feedback: {index} is not an index written by `tether label export --by-labeler`") from None
    if cfg.people is not None:
        missing = [p for p in cfg.people if p not in people]
        if missing:
            raise ConfigError(f"people: {', '.join(missing)} not in {index} (it lists {', '.join(sorted(people)) or 'nobody'})")
        people = {p: people[p] for p in cfg.people}
    if not people:
        raise ConfigError(f"feedback: {index} lists no labeller")
    clash = sorted(set(people) & {POOLED, SHARED, "__base__"})
    if clash:
        raise ConfigError(f"feedback: a labeller named {clash[0]!r} would share a name with a model of the table; list the others in `people`")
    return people


def prepare_data(cfg: PersonalizeConfig, person: Person, data_dir: Path) -> None:
    """Decide what the person's adapter trains on and count their examples (sets kind, train_files, n_train,
    n_heldout_pairs).

    Raises:
        DataError: an unreadable file (naming it and the line).
    """
    pairs = load_preferences(person.pairs, on_invalid="skip") if person.pairs else []
    person.n_heldout_pairs = len(_split(pairs, "holdout", cfg.holdout_fraction))
    if not person.thumbs:
        person.kind, person.train_files, person.n_train = "pairs", person.pairs, len(_split(pairs, "train", cfg.holdout_fraction))
        return
    path = thumbs_file(person, data_dir)
    person.kind, person.train_files = "kto", [path]
    person.n_train = len(_split(load_binary_feedback(path, on_invalid="skip"), "train", cfg.holdout_fraction))


def thumbs_file(person: Person, data_dir: Path) -> str:
    """Write the person's thumbs and their pairs as thumbs (a chosen answer up, a rejected one down) into one KTO
    file; returns its path."""
    rows = [{"prompt": t.prompt, "completion": t.completion, "label": int(t.label)}
            for t in (load_binary_feedback(person.thumbs, on_invalid="skip") if person.thumbs else [])]
    for p in load_preferences(person.pairs, on_invalid="skip") if person.pairs else []:
        rows += [{"prompt": p.prompt, "completion": p.chosen, "label": 1}, {"prompt": p.prompt, "completion": p.rejected, "label": 0}]
    path = data_dir / f"{_stem(person)}.kto.jsonl"
    _write_jsonl(path, rows)
    return str(path)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")  # a killed run never leaves half a file under the real name
    write_jsonl(tmp, rows)
    tmp.replace(path)


def _split(examples: list, part: str, fraction: float) -> list:
    if fraction == 0:
        return examples if part == "train" else []
    try:
        return select(examples, part, fraction, None)
    except DataError:  # an empty part: nothing of this person's falls there
        return []


def _stem(person: Person) -> str:
    """The directory name of a person (the export's file name, which is safe and unique)."""
    source = (person.pairs or person.thumbs)[0]
    return Path(source).name.removesuffix(".jsonl")


# --------------------------------------------------------------------------- 2-3. adapters


def dpo_config(cfg: PersonalizeConfig, files: list[str], kind: str, out: Path, values: dict | None = None,
               validation: str | None = None) -> dict:
    """A person's (or the pooled) `tether dpo` config: the `dpo:` section's keys, then the shared policy as the
    starting point and the reference (LoRA with the adapters disabled), only the adapter written, and the files.

    `values` are a search candidate's (learning_rate, beta, epochs); with `validation` (a file of the validation
    share) the files already hold only training examples, and the run is evaluated on that file."""
    raw = copy.deepcopy(cfg.dpo)
    values = values or {}
    model = raw.get("model", {})
    raw["model"] = {**model, "name_or_path": cfg.policy, "lora": {"r": 8, "alpha": 16, **model.get("lora", {}), "enabled": True, "merge": False}}
    split = {"eval": validation, "holdout_fraction": 0.0} if validation else {"holdout_fraction": cfg.holdout_fraction}
    raw["data"] = {"on_invalid": "skip", **raw.get("data", {}), "train": files, **split}
    params = raw.get("dpo", {})
    if kind == "kto":
        params = {**params, "loss": "kto"}
    elif params.get("loss") == "kto":
        raise ConfigError("dpo.dpo.loss=kto: a person's pairs train with DPO (sigmoid) or IPO; thumbs choose KTO by themselves")
    raw["dpo"] = {**params, "reference": "lora", **({"beta": values["beta"]} if "beta" in values else {})}
    raw["train"] = {**raw.get("train", {}), "resume": True, **{k: values[k] for k in ("learning_rate", "epochs") if k in values}}
    return {**raw, "output_dir": str(out), "overwrite": True}


def validation_split(files: list[str], kind: str, cfg: PersonalizeConfig, stem: Path) -> tuple[str, str, int] | None:
    """Split the training part of `files` (what is not held out) by a second hash of the prompt into the examples
    the search's candidates train on and those that choose among them; writes `stem.fit.jsonl` and
    `stem.validation.jsonl` and returns their paths and the number of validation examples, or None when either share
    would be empty.

    Raises:
        DataError: an unreadable file (naming it and the line)."""
    train = _split(load_binary_feedback(files, on_invalid="skip") if kind == "kto" else load_preferences(files, on_invalid="skip"),
                   "train", cfg.holdout_fraction)
    shares: dict[str, list] = {"fit": [], "validation": []}
    for e in train:
        shares["validation" if in_holdout(VALIDATION_SALT + e.prompt, cfg.validation_fraction) else "fit"].append(e)
    if not all(shares.values()):
        return None
    paths = []
    for part, rows in shares.items():
        path = stem.with_name(f"{stem.name}.{part}.jsonl")
        _write_jsonl(path, [_row(e, kind) for e in rows])
        paths.append(str(path))
    return paths[0], paths[1], len(shares["validation"])


def _row(e, kind: str) -> dict:
    if kind == "kto":
        return {"prompt": e.prompt, "completion": e.completion, "label": int(e.label)}
    return {"prompt": e.prompt, "chosen": e.chosen, "rejected": e.rejected, **({"margin": e.margin} if e.margin is not None else {})}


def train_adapter(cfg: PersonalizeConfig, name: str, files: list[str], kind: str, run_dir: Path, out: Path) -> tuple[str, dict | None]:
    """Train one adapter (a person's or the pooled one). With several `search` candidates, each trains on the fit
    share of the training examples and is scored by its accuracy on the validation share (DPO: the implicit reward
    ranks the pair as the person did; KTO: its sign agrees with the thumb); the best (the first listed among equals)
    is trained again on all the training examples (`refit`), or is itself the adapter.

    Returns:
        (run directory, the search's record or None when there was none)
    """
    from tether.trainers.dpo import train_dpo

    candidates = cfg.search.candidates()
    shares = validation_split(files, kind, cfg, out / "data" / run_dir.name) if len(candidates) > 1 else None
    if len(candidates) > 1 and shares is None:
        console.print(f"personalize: {name}: too few prompts for a validation share of {cfg.validation_fraction}: no search, "
                      f"the first candidate {candidates[0]}")
    if shares is None:
        return str(run_stage("dpo", DPOConfig, dpo_config(cfg, files, kind, run_dir, candidates[0]), train_dpo, str(out))), None
    fit, validation, n_validation = shares
    tried = []
    for i, values in enumerate(candidates):
        console.print(f"personalize: {name}: candidate {i + 1}/{len(candidates)} {values}")
        run = run_stage("dpo", DPOConfig, dpo_config(cfg, [fit], kind, run_dir / "search" / str(i), values, validation), train_dpo, str(out))
        done = json.loads((run / DONE_FILE).read_text())
        tried.append({**values, "accuracy": done.get("eval/accuracy"), "kl": done.get("eval/kl"), "run": str(run.relative_to(out))})
    best = max(range(len(tried)), key=lambda i: (tried[i]["accuracy"] or 0.0, -i))
    console.print(f"personalize: {name}: chose {candidates[best]} (validation accuracy {tried[best]['accuracy']:.2f})")
    record = {"validation_examples": n_validation, "tried": tried, "chosen": best}
    if not cfg.refit:
        return str(out / tried[best]["run"]), record
    return str(run_stage("dpo", DPOConfig, dpo_config(cfg, files, kind, run_dir, candidates[best]), train_dpo, str(out))), record


def train_adapters(cfg: PersonalizeConfig, people: dict[str, Person], out: Path) -> tuple[dict[str, str], dict[str, dict]]:
    """Train every person's adapter (and the pooled one).

    Returns:
        (name -> run directory of those trained, name -> the search's record where there was one)
    """
    trained: dict[str, str] = {}
    searches: dict[str, dict] = {}
    for person in people.values():
        if person.n_train < cfg.min_examples:
            person.reason = f"{person.n_train} training examples, fewer than min_examples={cfg.min_examples}: served the shared policy"
            console.print(f"personalize: {person.name}: {person.reason}")
            continue
        console.print(f"personalize: {person.name}: {person.n_train} training examples ({person.kind})")
        run, searched = train_adapter(cfg, person.name, person.train_files, person.kind, out / "people" / _stem(person), out)
        person.adapter = str(Path(run).relative_to(out))
        trained[person.name] = run
        if searched:
            searches[person.name] = searched
    if cfg.pooled and len(trained) >= 2:
        kind = "kto" if any(people[n].kind == "kto" for n in trained) else "pairs"  # with any thumbs, everyone's as thumbs
        files = [f for n in trained for f in (people[n].train_files if people[n].kind == kind else [thumbs_file(people[n], out / "data")])]
        console.print(f"personalize: the pooled adapter, on {len(trained)} people's examples together")
        trained[POOLED], searched = train_adapter(cfg, POOLED, files, kind, out / POOLED, out)
        if searched:
            searches[POOLED] = searched
    return trained, searches


# --------------------------------------------------------------------------- 4. measure


@torch.no_grad()
def measure(cfg: PersonalizeConfig, dcfg: DPOConfig, people: dict[str, Person], adapters: dict[str, str]) -> dict:
    """Implicit-reward accuracy of every adapter on every person's held-out pairs, and the shared policy's own choice.

    Returns:
        {model name: {person: {"accuracy", "ci": [lo, hi], "n"}}}, model names: the people with an adapter,
        `pooled`, and `shared`.
    """
    from tether.eval.dpo_eval import pair_logprobs
    from tether.eval.metrics import wilson_interval
    from tether.models.adapters import load_with_adapters

    device = resolve_device(dcfg.train.device)
    model, tokenizer = load_with_adapters(cfg.policy, adapters, device)
    precision = resolve_precision(dcfg.train.precision, device)  # the adapters' own training precision (bf16 where native)
    d, bs, pad = dcfg.data, cfg.batch_size, tokenizer.pad_token_id
    table: dict[str, dict] = {name: {} for name in [*adapters, SHARED]}
    for person in people.values():
        held = _split(load_preferences(person.pairs, on_invalid="skip"), "holdout", cfg.holdout_fraction) if person.pairs else []
        items = tokenize_pairs(held, tokenizer, d.prompt_template, d.max_length, d.max_prompt_length, "drop") if held else []
        if not items:
            continue
        with model.disable_adapter() if adapters else contextlib.nullcontext(), precision.autocast():
            ref_chosen, ref_rejected = pair_logprobs(model, items, pad, bs, False, device)
        n_chosen, n_rejected = (torch.tensor([max(sum(getattr(it, side).loss_mask), 1) for it in items]) for side in ("chosen", "rejected"))
        outcomes = {SHARED: ref_chosen / n_chosen > ref_rejected / n_rejected}  # mean log-probability per reply token
        for name in adapters:
            model.set_adapter(name)
            with precision.autocast():
                chosen, rejected = pair_logprobs(model, items, pad, bs, False, device)
            outcomes[name] = (chosen - ref_chosen) - (rejected - ref_rejected) > 0  # implicit reward margin (beta > 0)
        for name, correct in outcomes.items():
            k, n = int(correct.sum()), len(items)
            table[name][person.name] = {"accuracy": k / n, "ci": list(wilson_interval(k, n)), "n": n}
    del model
    release_memory(device)
    return table


def adapter_bytes(run_dir: str | Path) -> int:
    """Bytes of an adapter's weight files."""
    return sum(f.stat().st_size for f in (Path(run_dir) / "adapter").glob("adapter_model.*"))


def base_bytes(policy: str) -> int:
    """Bytes of the shared policy's weight files (0 when they are not files in a directory)."""
    folder = Path(resolve_path(policy))
    return sum(f.stat().st_size for pattern in ("*.safetensors", "*.bin") for f in folder.glob(pattern)) if folder.is_dir() else 0


# --------------------------------------------------------------------------- the stage


def run_personalize(cfg: PersonalizeConfig) -> Path:
    """Train an adapter per person and measure it; returns the output directory (with personalize.json).

    Raises:
        ConfigError: a tiny random policy (no shared base to hold adapters), a missing or bad index, unknown people, an
            output_dir that is a file or holds a different run, a `dpo:` section that does not validate.
        DataError, ModelError, TrainingError: from a person's data or training; finished adapters stay done.
    """
    if cfg.policy in TINY_NAMES:
        raise ConfigError(f"policy: {cfg.policy} is built at random on each load; save it first and give its directory")
    out = Path(cfg.output_dir)
    if out.is_file():
        raise ConfigError(f"output_dir {out} is a file")
    saved = out / "config.yaml"
    if not cfg.overwrite and saved.is_file() and not same_config(saved.read_text(), cfg):
        raise ConfigError(f"output_dir {out} holds a different run (its config.yaml differs); choose another output_dir or set overwrite=true")
    dcfg = validate(DPOConfig, dpo_config(cfg, [], "pairs", out / "_"), origin=f"{out}: dpo")  # a bad key fails before any training
    for values in cfg.search.candidates()[1:]:
        validate(DPOConfig, dpo_config(cfg, [], "pairs", out / "_", values), origin=f"{out}: search {values}")

    # 1. data
    people = read_people(cfg)
    for person in people.values():
        prepare_data(cfg, person, out / "data")
    out.mkdir(parents=True, exist_ok=True)
    (out / DONE_FILE).unlink(missing_ok=True)
    saved.write_text(dump_config(cfg))

    # 2-3. adapters
    runs, searches = train_adapters(cfg, people, out)

    # 4. measure
    table = measure(cfg, dcfg, people, runs) if runs else {}
    summary = {
        "policy": cfg.policy,
        "prompt_template": dcfg.data.prompt_template,
        "max_prompt_length": dcfg.data.max_prompt_length,
        "people": {
            p.name: {"adapter": p.adapter, "reason": p.reason, "kind": p.kind, "train_examples": p.n_train,
                     "heldout_pairs": p.n_heldout_pairs, "adapter_bytes": adapter_bytes(runs[p.name]) if p.name in runs else 0}
            for p in people.values()
        },
        "pooled": str(Path(runs[POOLED]).relative_to(out)) if POOLED in runs else None,
        "search": searches,
        "base_bytes": base_bytes(cfg.policy),
        "accuracy": table,
    }
    tmp = out / (SUMMARY_FILE + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(out / SUMMARY_FILE)
    (out / DONE_FILE).write_text(json.dumps({"people": len(people), "adapters": sum(p.adapter is not None for p in people.values())}))
    for name in people:
        own, pooled = table.get(name, {}).get(name), table.get(POOLED, {}).get(name)
        if own:
            vs = f" (pooled: {pooled['accuracy']:.2f})" if pooled else ""
            console.print(f"personalize: {name}: held-out accuracy {own['accuracy']:.2f} [{own['ci'][0]:.2f}, {own['ci'][1]:.2f}] on {own['n']} pairs{vs}")
    console.print(f"personalize: done, {out / SUMMARY_FILE}")
    return out
