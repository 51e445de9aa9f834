"""Reading campaign files: JSONL, one item per line, `{"prompt", "completions", "id"?, "model"?, "meta"?}`."""

from __future__ import annotations

import json
from pathlib import Path

from tether.errors import DataError
from tether.feedback.tasks import item_problem
from tether.storage import NewItem, TaskKind

# item ids are stored in 200 characters; splitting an item into pairs appends ":i-j" to its id
MAX_ID_CHARS = 180


def parse_item(obj: object, kind: TaskKind) -> NewItem:
    """Turns one decoded JSON line into an item.

    Args:
        obj: the decoded line.
        kind: the campaign's task kind (red-team items may lack completions, even a prompt).

    Returns:
        The item.

    Raises:
        ValueError: the line is not a valid item (the message says which key).
    """
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    prompt = obj.get("prompt", "" if kind == TaskKind.REDTEAM else None)
    if not isinstance(prompt, str):
        raise ValueError('"prompt": required, a string')
    completions = obj.get("completions", [])
    if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
        raise ValueError('"completions": must be a list of strings')
    if kind == TaskKind.REDTEAM and "response" in obj and not completions:
        completions = [str(obj["response"])]
    external = obj.get("id")
    if external is not None and len(str(external)) > MAX_ID_CHARS:
        raise ValueError(f'"id": at most {MAX_ID_CHARS} characters')
    meta = obj.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise ValueError('"meta": must be an object')
    model = obj.get("model")
    item = NewItem(
        prompt=prompt,
        completions=completions,
        external_id=str(external) if external is not None else None,
        model=str(model) if model is not None else None,
        meta=meta,
    )
    problem = item_problem(kind, item)
    if problem:
        raise ValueError(problem)
    return item


def parse_campaign_text(text: str, kind: TaskKind, source: str = "<upload>") -> list[NewItem]:
    """Parses a whole campaign file.

    Args:
        text: file content (JSONL; blank lines are skipped).
        kind: the campaign's task kind.
        source: file name used in error messages.

    Returns:
        The items in file order.

    Raises:
        DataError: a line is not JSON or not a valid item (names the file and the line), or the
            file has no item (except red-team campaigns, which may start empty).
    """
    items: list[NewItem] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(parse_item(json.loads(line), kind))
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}:{number}: not valid JSON ({exc.msg})") from None
        except ValueError as exc:
            raise DataError(f"{source}:{number}: {exc}") from None
    if not items and kind != TaskKind.REDTEAM:
        raise DataError(f"{source}: no items; expected one JSON object per line")
    return items


def read_campaign_file(path: str | Path, kind: TaskKind) -> list[NewItem]:
    """Reads a campaign file from disk (see `parse_campaign_text`).

    Raises:
        DataError: the file is missing, unreadable or invalid.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    return parse_campaign_text(text, kind, source=str(path))


def parse_prompt_lines(text: str) -> list[str]:
    """Pasted prompts: one per line, blank lines skipped."""
    return [line.strip() for line in text.splitlines() if line.strip()]
