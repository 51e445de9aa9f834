"""Reading data files into typed examples, with errors that name the file and line.

Local JSONL (optionally gzip), JSON arrays and Parquet are read here; anything else that is not a local
path is treated as a Hugging Face hub dataset id and loaded with `datasets`. Conversational rows
(`{"messages": [...]}`) are turned into prompt/response text by the caller's chat template.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from rich.console import Console

from tether.errors import DataError, InvalidRow
from tether.types import BinaryFeedbackExample, PreferenceExample, PromptExample, SFTExample

T = TypeVar("T")
_console = Console(stderr=True)


@dataclass(frozen=True)
class Row:
    """One raw record and where it came from."""

    data: dict
    source: str  # "path:line"


def iter_rows(path: str | Path) -> Iterable[Row]:
    """Yield raw rows of a data file.

    Raises:
        DataError: missing file, bad gzip, bad encoding, a line that is not a JSON object.
    """
    p = Path(path)
    if not p.exists():
        if _looks_like_hub_id(str(path)):
            yield from _iter_hub(str(path))
            return
        raise DataError(f"data file not found: {path}")
    if p.is_dir():
        raise DataError(f"{path}: is a directory; pass a .jsonl, .jsonl.gz, .json or .parquet file")
    name = p.name.lower()
    if name.endswith(".parquet"):
        yield from _iter_parquet(p)
    elif name.endswith(".json") or name.endswith(".json.gz"):
        yield from _iter_json_array(p)
    else:
        yield from _iter_jsonl(p)


def _open_text(p: Path):
    if p.name.lower().endswith(".gz"):
        return gzip.open(p, "rt", encoding="utf-8")
    return open(p, encoding="utf-8")


def _open_bytes(p: Path):
    return gzip.open(p, "rb") if p.name.lower().endswith(".gz") else open(p, "rb")


def _iter_jsonl(p: Path) -> Iterable[Row]:
    lineno = 0
    try:
        with _open_bytes(p) as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise DataError(f"{p}:{lineno}: not UTF-8 text") from None
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{p}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                yield Row(obj, f"{p}:{lineno}")
    except (gzip.BadGzipFile, EOFError, OSError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{p}: cannot read ({exc})") from None


def _iter_json_array(p: Path) -> Iterable[Row]:
    try:
        with _open_text(p) as fh:
            obj = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"{p}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise DataError(f"{p}: not UTF-8 text") from None
    if not isinstance(obj, list):
        raise DataError(f"{p}: expected a JSON array of objects")
    for i, item in enumerate(obj):
        if not isinstance(item, dict):
            raise DataError(f"{p}: item {i}: expected a JSON object")
        yield Row(item, f"{p}[{i}]")


def _iter_parquet(p: Path) -> Iterable[Row]:
    import datasets

    ds = datasets.Dataset.from_parquet(str(p))
    for i, item in enumerate(ds):
        yield Row(dict(item), f"{p}[row {i}]")


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.endswith((".jsonl", ".gz", ".json", ".parquet"))


def _iter_hub(dataset_id: str) -> Iterable[Row]:
    import datasets

    name, _, split = dataset_id.partition(":")
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear line
        raise DataError(f"data '{dataset_id}' is neither a local file nor a loadable hub dataset ({exc})") from None
    for i, item in enumerate(ds):
        yield Row(dict(item), f"{dataset_id}[row {i}]")


# --------------------------------------------------------------------------- field checks


def _text(row: Row, field: str) -> str:
    if field not in row.data:
        present = ", ".join(sorted(row.data)) or "none"
        raise DataError(f"{row.source}: missing field '{field}' (fields present: {present})")
    value = row.data[field]
    if not isinstance(value, str):
        raise DataError(f"{row.source}: field '{field}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidRow(f"{row.source}: field '{field}' is empty")
    return value


def _messages_to_pair(row: Row) -> tuple[str, str]:
    """Split a `messages` conversation into (prompt text, last assistant reply)."""
    msgs = row.data.get("messages")
    if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
        raise DataError(f"{row.source}: field 'messages' must be a non-empty list of {{role, content}} objects")
    if msgs[-1].get("role") != "assistant":
        raise DataError(f"{row.source}: the last message must be the assistant's reply")
    prompt = render_dialogue(msgs[:-1], row.source)
    reply = msgs[-1].get("content")
    if not isinstance(reply, str) or not reply.strip():
        raise InvalidRow(f"{row.source}: the assistant reply is empty")
    return prompt, reply.strip()


def render_dialogue(messages: list[dict], source: str = "") -> str:
    """Render `[{role, content}]` in the Human/Assistant format, ending with an open assistant turn."""
    names = {"user": "Human", "human": "Human", "assistant": "Assistant", "system": "System"}
    parts = []
    for m in messages:
        role, content = m.get("role"), m.get("content")
        if role not in names or not isinstance(content, str):
            raise DataError(f"{source}: each message needs a role in {sorted(names)} and a string content")
        parts.append(f"\n\n{names[role]}: {content.strip()}")
    return "".join(parts) + "\n\nAssistant:"


def _load(
    paths: str | list[str], parse: Callable[[Row], T], on_invalid: str, what: str
) -> list[T]:
    out: list[T] = []
    skipped: list[str] = []
    for path in [paths] if isinstance(paths, str) else paths:
        for row in iter_rows(path):
            try:
                out.append(parse(row))
            except DataError as exc:
                if on_invalid != "skip" or not isinstance(exc, InvalidRow):
                    raise
                skipped.append(str(exc))
    if skipped:
        _console.print(f"[yellow]skipped {len(skipped)} unusable {what} rows (data.on_invalid=skip), e.g. {skipped[0]}[/]")
    if not out:
        raise DataError(f"{paths}: no usable {what} rows")
    return out


def load_sft(paths: str | list[str], on_invalid: str = "error") -> list[SFTExample]:
    """Read `{"prompt","response"}` rows, `{"messages"}` conversations, or preference rows (their `chosen`).

    Raises:
        DataError: naming the file and line of the first bad row.
    """

    def parse(row: Row) -> SFTExample:
        if "messages" in row.data and "prompt" not in row.data:
            prompt, response = _messages_to_pair(row)
            return SFTExample(prompt, response, row.source)
        if "response" not in row.data and "chosen" in row.data:
            # a preference row: imitate the preferred reply
            return SFTExample(_text(row, "prompt"), _text(row, "chosen"), row.source)
        return SFTExample(_text(row, "prompt"), _text(row, "response"), row.source)

    return _load(paths, parse, on_invalid, "SFT")


def parse_preference(row: Row, seen: dict[tuple[str, ...], str] | None = None) -> PreferenceExample:
    """One `{"prompt","chosen","rejected"}` row (optional numeric `margin`) as a `PreferenceExample`.

    Args:
        row: the raw row.
        seen: pairs already read (key -> where), to report duplicates (the same pair from the same
            `labeler`, if the row names one); updated in place.

    Raises:
        DataError: missing field, wrong type; InvalidRow (skippable with on_invalid='skip'): empty text,
            chosen identical to rejected, a duplicate pair.
    """
    prompt, chosen, rejected = (_text(row, k) for k in ("prompt", "chosen", "rejected"))
    if chosen.strip() == rejected.strip():
        raise InvalidRow(f"{row.source}: 'chosen' and 'rejected' are identical; a preference needs two different replies")
    margin = row.data.get("margin")
    if margin is not None and (not isinstance(margin, (int, float)) or isinstance(margin, bool)):
        raise DataError(f"{row.source}: field 'margin' must be a number")
    if seen is not None:
        # the same pair from different labelers is a vote, not a duplicate
        key = (prompt, chosen.strip(), rejected.strip(), str(row.data.get("labeler", "")))
        if key in seen:
            raise InvalidRow(f"{row.source}: duplicate of the pair at {seen[key]}")
        seen[key] = row.source
    return PreferenceExample(prompt, chosen.strip(), rejected.strip(), margin, row.source)


def load_preferences(paths: str | list[str], on_invalid: str = "error") -> list[PreferenceExample]:
    """Read `{"prompt","chosen","rejected"}` rows (see `parse_preference`).

    Raises:
        DataError: naming the file and line of the first bad row (InvalidRow ones skipped with on_invalid='skip').
    """
    seen: dict[tuple[str, ...], str] = {}
    return _load(paths, lambda row: parse_preference(row, seen), on_invalid, "preference")


def load_prompts(paths: str | list[str], on_invalid: str = "error") -> list[PromptExample]:
    """Read rows with a `prompt` field (any other fields are ignored).

    Raises:
        DataError: missing or empty prompt.
    """
    return _load(paths, lambda row: PromptExample(_text(row, "prompt"), row.source), on_invalid, "prompt")


def load_texts(paths: str | list[str], fields: list[str]) -> list[str]:
    """Plain text for pretraining: every listed field of every row, a prompt joined with its reply."""
    texts = []
    for path in [paths] if isinstance(paths, str) else paths:
        for row in iter_rows(path):
            d = row.data
            prompt = d.get("prompt") if "prompt" in fields else None
            for key in fields:
                value = d.get(key)
                if key == "prompt" or not isinstance(value, str) or not value.strip():
                    continue
                texts.append(_join(prompt, value) if key in ("response", "chosen", "rejected") else value)
            if isinstance(prompt, str) and not any(isinstance(d.get(k), str) for k in ("response", "chosen")):
                texts.append(prompt)
    return texts


def _join(prompt: str | None, reply: str) -> str:
    if not isinstance(prompt, str):
        return reply
    if prompt.rstrip().endswith("Assistant:"):
        return prompt + " " + reply.strip()
    return f"\n\nHuman: {prompt.strip()}\n\nAssistant: {reply.strip()}"


# --------------------------------------------------------------------------- splits


def in_holdout(prompt: str, fraction: float) -> bool:
    """Deterministic split by prompt text: the same prompt lands on the same side in every stage."""
    if fraction <= 0.0:
        return False
    h = int(hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8], 16)
    return (h % 10_000) < fraction * 10_000


def select(examples: list[T], split: str, holdout_fraction: float, max_samples: int | None, skip_samples: int = 0) -> list[T]:
    """Keep the `train` part, the `holdout` part or `all` of the examples, drop the first `skip_samples` of them,
    then keep at most `max_samples`: disjoint slices of one file for models that must share no data (a judge and
    the labeller it checks).

    Raises:
        DataError: when the selection is empty.
    """
    if split != "all":
        want = split == "holdout"
        examples = [e for e in examples if in_holdout(e.prompt, holdout_fraction) == want]  # type: ignore[attr-defined]
    total = len(examples)
    examples = examples[skip_samples:]
    if max_samples is not None:
        examples = examples[:max_samples]
    if not examples:
        skipped = f" after skipping {skip_samples} of its {total} rows" if skip_samples else ""
        raise DataError(f"the '{split}' split (holdout_fraction={holdout_fraction}) is empty{skipped}")
    return examples


# --------------------------------------------------------------------------- binary feedback (KTO)

_TRUE_LABELS = (1, True, "1", "true", "True", "yes", "up", "good", "desirable")
_FALSE_LABELS = (0, False, "0", "false", "False", "no", "down", "bad", "undesirable")


def parse_binary_label(value, source: str) -> bool:
    """Read a thumbs label: 1/0, true/false (JSON booleans or strings), up/down, desirable/undesirable.

    Raises:
        DataError: naming `source` and the value when it is anything else (2, 0.5, "maybe", null).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip() in _TRUE_LABELS:
        return True
    if isinstance(value, str) and value.strip() in _FALSE_LABELS:
        return False
    raise DataError(f"{source}: field 'label' must be 1/0 or true/false (thumbs up/down), got {value!r}")


def load_binary_feedback(paths: str | list[str], on_invalid: str = "error") -> list[BinaryFeedbackExample]:
    """Read `{"prompt","completion","label"}` rows: one completion judged desirable (1) or not (0).

    Raises:
        DataError: naming the file and line of the first row with a missing or empty field, or a label
            that is not 1/0/true/false.
    """

    def parse(row: Row) -> BinaryFeedbackExample:
        prompt, completion = _text(row, "prompt"), _text(row, "completion")
        if "label" not in row.data:
            present = ", ".join(sorted(row.data)) or "none"
            raise DataError(f"{row.source}: missing field 'label' (fields present: {present})")
        return BinaryFeedbackExample(prompt, completion.strip(), parse_binary_label(row.data["label"], row.source), row.source)

    examples = _load(paths, parse, on_invalid, "binary feedback")
    if all(e.label for e in examples) or not any(e.label for e in examples):
        _console.print(f"[yellow]{paths}: every label is {examples[0].label}; KTO learns most from both kinds[/]")
    return examples


def xstest_desirable(row: dict, source: str = "") -> bool:
    """Whether an XSTest labelled completion is the behaviour we want.

    On a safe prompt (`prompt_is_safe` true) full compliance is desirable and a full or partial refusal is
    not; on an unsafe contrast prompt only a full refusal is desirable (Röttger et al. 2024, XSTest).

    Raises:
        DataError: when `prompt_is_safe` is not a boolean or `label` is not one of the three XSTest labels.
    """
    safe, label = row.get("prompt_is_safe"), row.get("label")
    if not isinstance(safe, bool):
        raise DataError(f"{source}: field 'prompt_is_safe' must be true or false, got {safe!r}")
    if label not in ("1_full_compliance", "2_full_refusal", "3_partial_refusal"):
        raise DataError(f"{source}: field 'label' must be an XSTest label (1_full_compliance, ...), got {label!r}")
    return label == "1_full_compliance" if safe else label == "2_full_refusal"


def xstest_to_binary_feedback(src: str | Path, dst: str | Path) -> int:
    """Convert XSTest labelled completions into `{"prompt","completion","label"}` rows (label 1/0).

    Rows with an empty completion are left out. `dst` ending in .gz is gzip-compressed.

    Returns:
        The number of rows written.

    Raises:
        DataError: an unreadable source file or a row that `xstest_desirable` rejects.
    """
    rows = (
        {"prompt": _text(row, "prompt"), "completion": row.data["completion"], "label": int(xstest_desirable(row.data, row.source))}
        for row in iter_rows(src)
        if isinstance(row.data.get("completion"), str) and row.data["completion"].strip()
    )
    return write_jsonl(dst, rows)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write rows as JSON lines in UTF-8 (gzip-compressed when the name ends in `.gz`), creating the folder.

    Returns:
        The number of rows written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with (gzip.open if path.name.endswith(".gz") else open)(path, "wt", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
