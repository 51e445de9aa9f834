"""Attack suites: files of prompts with optional categories; XSTest-style files with safe/unsafe labels.

A suite is any file `iter_rows` reads with a `prompt` per row (AdvBench, HarmBench, StrongREJECT in
../shared/data, the feedback app's red-team export, or your own). The category comes from `category_field`
or, by default, the first of `category`, `semantic_category` (HarmBench, Mazeika et al. 2024) or `type`
that the row has. XSTest suites (Röttger et al. 2024) also need `label` = "safe"/"unsafe" (or a boolean
`prompt_is_safe`). A row may carry `better_response` (a human-written safe answer), used for findings pairs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tether.data.sources import iter_rows
from tether.errors import DataError
from tether.redteam.config import SuiteConfig

CATEGORY_FIELDS = ("category", "semantic_category", "type")


@dataclass(frozen=True)
class AttackPrompt:
    """One prompt of a suite (before any transform)."""

    suite: str
    prompt: str
    category: str
    source: str  # file:line
    safe: bool | None = None  # XSTest: True for safe prompts, False for unsafe contrast prompts; None for attacks
    better_response: str | None = None


def _category(data: dict, field: str | None, source: str) -> str:
    if field is not None:
        value = data.get(field)
        if value is None:
            raise DataError(f"{source}: missing category field '{field}'")
        return str(value) or "uncategorised"
    for f in CATEGORY_FIELDS:
        if isinstance(data.get(f), str) and data[f].strip():
            return data[f].strip()
    return "uncategorised"


def _safe(data: dict, source: str) -> bool:
    if isinstance(data.get("prompt_is_safe"), bool):
        return data["prompt_is_safe"]
    label = data.get("label")
    if label in ("safe", "unsafe"):
        return label == "safe"
    raise DataError(f"{source}: an xstest suite row needs label 'safe'/'unsafe' or a boolean prompt_is_safe, got {label!r}")


def load_suite(cfg: SuiteConfig, seed: int = 0) -> list[AttackPrompt]:
    """Read a suite file, less the prompts of `cfg.exclude`; at most `cfg.max_prompts` prompts, a seeded sample
    kept in file order.

    Raises:
        DataError: naming file and line: a row without a string prompt, a missing category field, an xstest row
            without a safe/unsafe label; or a file with no prompts (left after the exclusions).
    """
    excluded = {r.data["prompt"].strip() for path in cfg.exclude for r in iter_rows(path) if isinstance(r.data.get("prompt"), str)}
    rows = []
    for row in iter_rows(cfg.path):
        prompt = row.data.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{row.source}: missing or empty field 'prompt'")
        if prompt.strip() in excluded:
            continue
        better = row.data.get("better_response")
        rows.append(AttackPrompt(
            cfg.name, prompt.strip(), _category(row.data, cfg.category_field, row.source), row.source,
            _safe(row.data, row.source) if cfg.kind == "xstest" else None,
            better.strip() if isinstance(better, str) and better.strip() else None,
        ))
    if not rows:
        raise DataError(f"{cfg.path}: no prompts" + (f" left once those of {', '.join(cfg.exclude)} are excluded" if cfg.exclude else ""))
    if cfg.max_prompts is not None and len(rows) > cfg.max_prompts:
        keep = sorted(random.Random(f"{seed}:{cfg.name}").sample(range(len(rows)), cfg.max_prompts))
        rows = [rows[i] for i in keep]
    return rows


def load_better_responses(paths: str | list[str] | None) -> dict[str, str]:
    """`{prompt: better_response}` from files with both fields (e.g. the feedback app's red-team export).

    Raises:
        DataError: an unreadable file.
    """
    out: dict[str, str] = {}
    for path in [paths] if isinstance(paths, str) else (paths or []):
        for row in iter_rows(path):
            p, b = row.data.get("prompt"), row.data.get("better_response")
            if isinstance(p, str) and isinstance(b, str) and b.strip():
                out.setdefault(p.strip(), b.strip())
    return out
