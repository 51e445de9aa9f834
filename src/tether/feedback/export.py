"""Exporting a campaign as the JSONL files `tether rm` and `tether dpo` read.

Formats (one JSON object per line):
- pairs:    {"prompt", "chosen", "rejected", "margin"?, "campaign", "item_id", "labeler"?}
- rankings: {"prompt", "completions", "ranking", "campaign", "item_id", "labeler"?}
            ranking[i] is the rank of completions[i] (1 = best, equal = tie)
- thumbs:   {"prompt", "completion", "label", "campaign", "item_id", "labeler"?}, label 1 up / 0 down
- prompts:  {"prompt", "response"?, "harm"?, "better_response"?, "campaign", "item_id", "labeler"}

Gold items (items with a known answer, see `quality.py`) are never exported.
Mode "consensus" merges the labelers of an item (Borda count for rankings and pair choices, a
pair choice counting as a ranking of two; strict majority for thumbs); mode "all" writes every
labeler's answer, with the labeler's name.

A person's own data (`tether label export --labeler NAME`, or `--by-labeler DIR` for everyone) is mode "all"
restricted to that person's labels: their rankings, pair choices and thumbs, and their own "unusable" flags.
`--by-labeler DIR` writes `DIR/<campaign>/<labeler>.jsonl` per person and records every file in
`DIR/labelers.json` (`tether personalize` reads it); exporting more campaigns into the same DIR adds to it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from enum import Enum
from itertools import combinations
from pathlib import Path

from tether.errors import ConfigError
from tether.feedback.agreement import borda_consensus, borda_scores, majority, preference
from tether.storage import Campaign, Item, Label, PairChoice, TaskKind


class ExportKind(str, Enum):
    """What to write; AUTO picks by task kind (rank, pair -> pairs; thumbs -> thumbs; redteam -> prompts)."""

    AUTO = "auto"
    PAIRS = "pairs"
    RANKINGS = "rankings"
    THUMBS = "thumbs"
    PROMPTS = "prompts"


class ExportMode(str, Enum):
    """Merge labelers into one answer per item, or write every labeler's answer."""

    CONSENSUS = "consensus"
    ALL = "all"


AUTO_KIND = {
    TaskKind.RANK: ExportKind.PAIRS,
    TaskKind.PAIR: ExportKind.PAIRS,
    TaskKind.THUMBS: ExportKind.THUMBS,
    TaskKind.REDTEAM: ExportKind.PROMPTS,
}
ALLOWED = {
    TaskKind.RANK: {ExportKind.PAIRS, ExportKind.RANKINGS},
    TaskKind.PAIR: {ExportKind.PAIRS, ExportKind.RANKINGS},
    TaskKind.THUMBS: {ExportKind.THUMBS},
    TaskKind.REDTEAM: {ExportKind.PROMPTS, ExportKind.PAIRS},
}


@dataclass(frozen=True)
class PreferencePair:
    """A chosen / rejected pair for reward-model training and DPO."""

    prompt: str
    chosen: str
    rejected: str
    campaign: str
    item_id: str
    margin: float | None = None
    labeler: str | None = None


@dataclass(frozen=True)
class RankingRecord:
    """A full ranking of an item's completions."""

    prompt: str
    completions: list[str]
    ranking: list[int]
    campaign: str
    item_id: str
    labeler: str | None = None


@dataclass(frozen=True)
class ThumbRecord:
    """A binary label on one completion (KTO-style data)."""

    prompt: str
    completion: str
    label: int
    campaign: str
    item_id: str
    labeler: str | None = None


@dataclass(frozen=True)
class PromptRecord:
    """A red-team finding: the attack prompt, the model's answer, its harm, a better answer."""

    prompt: str
    campaign: str
    item_id: str
    response: str | None = None
    harm: int | None = None
    better_response: str | None = None
    labeler: str | None = None


ExportRecord = PreferencePair | RankingRecord | ThumbRecord | PromptRecord


def record_json(record: ExportRecord) -> str:
    """One JSONL line for a record; fields that are None are left out."""
    return json.dumps({k: v for k, v in asdict(record).items() if v is not None}, ensure_ascii=False)


def resolve_kind(task: TaskKind, kind: ExportKind) -> ExportKind:
    """Picks the export kind for a campaign.

    Raises:
        ConfigError: the kind does not fit the campaign's task kind.
    """
    chosen = AUTO_KIND[task] if kind == ExportKind.AUTO else kind
    if chosen not in ALLOWED[task]:
        allowed = ", ".join(sorted(k.value for k in ALLOWED[task]))
        raise ConfigError(f"--kind {chosen.value}: a {task.value} campaign exports as {allowed}")
    return chosen


def export_records(
    campaign: Campaign, items: list[Item], labels: list[Label], kind: ExportKind = ExportKind.AUTO, mode: ExportMode = ExportMode.CONSENSUS
) -> Iterator[ExportRecord]:
    """Builds the export of a campaign.

    Args:
        campaign: the campaign.
        items: its items.
        labels: its labels (a snapshot; exporting while labeling goes on is fine).
        kind: what to write.
        mode: consensus or all.

    Returns:
        Records in item order.

    Raises:
        ConfigError: the kind does not fit the campaign.
    """
    kind = resolve_kind(campaign.kind, kind)
    by_item: dict[int, list[Label]] = defaultdict(list)
    for label in labels:
        by_item[label.item_id].append(label)
    for item in items:
        item_labels = by_item.get(item.id)
        if not item_labels or item.gold is not None:  # gold items measure labelers; they are not data
            continue
        yield from _item_records(campaign, item, item_labels, kind, mode)


def _item_records(campaign: Campaign, item: Item, labels: list[Label], kind: ExportKind, mode: ExportMode) -> Iterable[ExportRecord]:
    if campaign.kind == TaskKind.REDTEAM:
        return _redteam(campaign, item, labels, kind)
    if campaign.kind == TaskKind.THUMBS:
        return _thumbs(campaign, item, labels, mode)
    rankings = [(lab.labeler_name, _as_ranks(campaign.kind, lab)) for lab in labels]
    rankings = [(name, ranks) for name, ranks in rankings if ranks is not None]
    unusable = _unusable_by_majority(labels, len(item.completions))
    if kind == ExportKind.RANKINGS:
        return _rankings(campaign, item, rankings, mode)
    return _pairs(campaign, item, rankings, unusable, mode)


def _as_ranks(task: TaskKind, label: Label) -> list[int] | None:
    """A pair choice as a ranking of its two completions; both_bad gives no preference."""
    if task == TaskKind.RANK:
        return label.data.ranks
    return {PairChoice.A: [1, 2], PairChoice.B: [2, 1], PairChoice.TIE: [1, 1]}.get(label.data.choice)


def _unusable_by_majority(labels: list[Label], size: int) -> list[bool]:
    flags = [lab.data.unusable for lab in labels if lab.data.unusable]
    return [2 * sum(f[i] for f in flags) > len(labels) for i in range(size)]


def _pairs(campaign: Campaign, item: Item, rankings: list[tuple[str, list[int]]], unusable: list[bool], mode: ExportMode) -> Iterator[PreferencePair]:
    """Every pair (better, worse); a completion most labelers flagged unusable is never chosen,
    and two identical completions make no pair.

    The margin is the preference strength in (0, 1]: the Borda score difference over its maximum
    (consensus), or the rank difference over its maximum (one labeler).
    """
    size = len(item.completions)
    if not rankings or size < 2:
        return
    if mode == ExportMode.CONSENSUS:
        scores = borda_scores([ranks for _, ranks in rankings])
        sources: list[tuple[str | None, list[int]]] = [(None, borda_consensus([ranks for _, ranks in rankings]))]
    else:
        sources = [(name, ranks) for name, ranks in rankings]
    for labeler, ranks in sources:
        for i, j in combinations(range(size), 2):
            sign = preference(ranks[i], ranks[j])
            if sign == 0:
                continue
            win, lose = (i, j) if sign > 0 else (j, i)
            if unusable[win] or _same_text(item.completions[win], item.completions[lose]):
                continue
            if labeler is None:
                margin = (scores[win] - scores[lose]) / (len(rankings) * (size - 1))
            else:
                margin = (ranks[lose] - ranks[win]) / (size - 1)
            yield PreferencePair(
                item.prompt, item.completions[win], item.completions[lose], campaign.name, item.external_id, round(margin, 4), labeler
            )


def _same_text(a: str, b: str) -> bool:
    """Identical replies (up to surrounding space) make no preference; trainers reject such pairs."""
    return a.strip() == b.strip()


def _rankings(campaign: Campaign, item: Item, rankings: list[tuple[str, list[int]]], mode: ExportMode) -> Iterator[RankingRecord]:
    if not rankings:
        return
    if mode == ExportMode.CONSENSUS:
        consensus = borda_consensus([ranks for _, ranks in rankings])
        yield RankingRecord(item.prompt, list(item.completions), consensus, campaign.name, item.external_id)
        return
    for name, ranks in rankings:
        yield RankingRecord(item.prompt, list(item.completions), list(ranks), campaign.name, item.external_id, name)


def _thumbs(campaign: Campaign, item: Item, labels: list[Label], mode: ExportMode) -> Iterator[ThumbRecord]:
    completion = item.completions[0]
    if mode == ExportMode.CONSENSUS:
        vote = majority([lab.data.thumb for lab in labels if lab.data.thumb is not None])
        if vote is not None:
            yield ThumbRecord(item.prompt, completion, int(vote), campaign.name, item.external_id)
        return
    for lab in labels:
        if lab.data.thumb is not None:
            yield ThumbRecord(item.prompt, completion, lab.data.thumb, campaign.name, item.external_id, lab.labeler_name)


def _redteam(campaign: Campaign, item: Item, labels: list[Label], kind: ExportKind) -> Iterator[ExportRecord]:
    """Red-team answers are each a finding of their own: every labeler's is written."""
    for lab in labels:
        prompt = lab.data.prompt or item.prompt
        response = lab.data.response or (item.completions[0] if item.completions else None)
        if kind == ExportKind.PROMPTS:
            yield PromptRecord(prompt, campaign.name, item.external_id, response, lab.data.harm, lab.data.better_response, lab.labeler_name)
        elif lab.data.better_response and response and not _same_text(lab.data.better_response, response):
            yield PreferencePair(prompt, lab.data.better_response, response, campaign.name, item.external_id, None, lab.labeler_name)


def write_jsonl(records: Iterable[ExportRecord], path: str | Path) -> int:
    """Writes records as JSONL (atomically: a temporary file renamed at the end).

    Returns:
        Number of lines written.

    Raises:
        ConfigError: the file cannot be written.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for record in records:
                f.write(record_json(record) + "\n")
                count += 1
        tmp.replace(path)
    except OSError as exc:
        raise ConfigError(f"--out {path}: cannot write ({exc.strerror})") from None
    return count


LABELERS_INDEX = "labelers.json"  # tether.trainers.personalize reads it


def labels_of(labels: list[Label], labeler: str) -> list[Label]:
    """The labels one person gave.

    Raises:
        ConfigError: the person gave none in this snapshot.
    """
    own = [lab for lab in labels if lab.labeler_name == labeler]
    if not own:
        names = sorted({lab.labeler_name for lab in labels})
        raise ConfigError(f"--labeler {labeler!r}: no labels in this campaign (labelers with labels: {', '.join(names) or 'none'})")
    return own


def file_stem(name: str) -> str:
    """A file name for a labeler or campaign name: the name itself when it is safe, else a cleaned form plus a
    hash of the name, so two names never share a file."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "_"
    return clean if clean == name else f"{clean}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def export_by_labeler(
    campaign: Campaign, items: list[Item], labels: list[Label], kind: ExportKind, out_dir: str | Path
) -> dict[str, int]:
    """Write each labeler's own records to `out_dir/<campaign>/<labeler>.jsonl` and list them in the index.

    The index (`labelers.json`: {"files": [{"labeler", "campaign", "kind", "path", "records"}]}) keeps the files of
    other campaigns exported into the same directory and replaces this campaign's.

    Returns:
        Records written per labeler (labelers whose labels give no record, e.g. only ties, have an empty file).

    Raises:
        ConfigError: `out_dir` is a file, cannot be written, or its index is not one this function wrote.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--by-labeler {out}: is a file, not a directory")
    index_path = out / LABELERS_INDEX
    files = _read_index(index_path)
    kind = resolve_kind(campaign.kind, kind)
    sub = out / file_stem(campaign.name)
    try:
        sub.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--by-labeler {out}: cannot write ({exc.strerror})") from None
    counts: dict[str, int] = {}
    files = [f for f in files if f["campaign"] != campaign.name]
    for name in sorted({lab.labeler_name for lab in labels}):
        path = sub / f"{file_stem(name)}.jsonl"
        own = [lab for lab in labels if lab.labeler_name == name]
        counts[name] = write_jsonl(export_records(campaign, items, own, kind, ExportMode.ALL), path)
        files.append({"labeler": name, "campaign": campaign.name, "kind": kind.value, "path": str(path.relative_to(out)), "records": counts[name]})
    tmp = index_path.with_name(index_path.name + ".tmp")
    tmp.write_text(json.dumps({"files": files}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(index_path)
    return counts


def _read_index(path: Path) -> list[dict]:
    if not path.exists():
        return []
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        if not all({"labeler", "campaign", "kind", "path", "records"} <= set(f) for f in files):
            raise KeyError("files")
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path}: not an index written by `tether label export --by-labeler`") from None
    return files
