"""Reading campaign files: JSONL, one item per line, `{"prompt", "completions", "id"?, "model"?, "meta"?, "gold"?}`.

A line with `"gold"` is a gold item: its value is the known answer, `{"ranking": [...]}` (rank of
each completion, 1 = best) or `{"best": i}` (index of the preferred completion) for rank and pair
campaigns, `{"choice": "A"|"B"|"tie"|"both_bad"}` for a pair item of two completions, and
`{"thumb": 1|0}` for thumbs. A gold file (`--gold FILE`) holds only gold items; there the answer
may also stand at the top level of the line (`{"prompt", "completions", "best": 0}`), as it may in
a campaign file beside a gold flag (`"gold": true`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from tether.errors import DataError
from tether.feedback.tasks import item_problem
from tether.storage import LabelData, NewItem, PairChoice, TaskKind

GOLD_KEYS = ("ranking", "best", "choice", "thumb")

# item ids are stored in 200 characters; splitting an item into pairs appends ":i-j" to its id
MAX_ID_CHARS = 180


def parse_gold(answer: object, kind: TaskKind, n: int) -> LabelData:
    """Turns the known answer of a gold item into the answer a labeler would give.

    Args:
        answer: the line's `"gold"` object (see the module docstring).
        kind: the campaign's task kind.
        n: completions of the item.

    Returns:
        rank and pair: `ranks` (a pair item of more than two completions is split later, and pairs
        the answer does not order are left out); pair with `choice`: `choice`; thumbs: `thumb`.

    Raises:
        ValueError: the answer does not fit the kind or the item (the message names the key).
    """
    if kind == TaskKind.REDTEAM:
        raise ValueError('"gold": red-team campaigns have no gold items')
    if not isinstance(answer, dict) or len([k for k in GOLD_KEYS if k in answer]) != 1:
        raise ValueError('"gold": must be an object with one of "ranking", "best", "choice", "thumb"')
    if kind == TaskKind.THUMBS:
        if "thumb" not in answer or answer["thumb"] not in (0, 1) or isinstance(answer["thumb"], bool):
            raise ValueError('"gold": a thumbs campaign needs {"thumb": 1} (up) or {"thumb": 0} (down)')
        if n != 1:
            raise ValueError(f'"gold": a gold thumbs item has one completion, got {n}')
        return LabelData(thumb=answer["thumb"])
    if "thumb" in answer:
        raise ValueError(f'"gold": a {kind.value} campaign takes "ranking", "best" or "choice", not "thumb"')
    if "choice" in answer:
        if kind != TaskKind.PAIR or n != 2:
            raise ValueError('"gold": "choice" is for pair items of two completions; use "ranking" or "best"')
        if answer["choice"] not in {c.value for c in PairChoice}:
            raise ValueError('"gold": "choice" must be A, B, tie or both_bad')
        return LabelData(choice=PairChoice(answer["choice"]))
    if "best" in answer:
        best = answer["best"]
        if not isinstance(best, int) or isinstance(best, bool) or not 0 <= best < n:
            raise ValueError(f'"gold": "best" must be the index of a completion, 0 to {n - 1}')
        return LabelData(ranks=[1 if i == best else 2 for i in range(n)])
    ranking = answer["ranking"]
    if not isinstance(ranking, list) or len(ranking) != n or not all(isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= n for r in ranking):
        raise ValueError(f'"gold": "ranking" must give each of the {n} completions a rank from 1 (best) to {n}')
    if len(set(ranking)) < 2:
        raise ValueError('"gold": "ranking" must prefer some completion over another')
    return LabelData(ranks=list(ranking))


def parse_item(obj: object, kind: TaskKind, gold: bool = False) -> NewItem:
    """Turns one decoded JSON line into an item.

    Args:
        obj: the decoded line.
        kind: the campaign's task kind (red-team items may lack completions, even a prompt).
        gold: the line comes from a gold file: it must carry a known answer (under `"gold"` or at
            the top level).

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
    answer = obj.get("gold")
    if answer is True or (gold and answer is None):  # a gold flag, with the answer beside it
        answer = {k: obj[k] for k in GOLD_KEYS if k in obj}
        if not answer:
            raise ValueError('a gold item needs its known answer: "ranking", "best", "choice" or "thumb"')
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
    if answer is not None and answer is not False:
        item = replace(item, gold=parse_gold(answer, kind, len(completions)))
    return item


def parse_campaign_text(text: str, kind: TaskKind, source: str = "<upload>", gold: bool = False) -> list[NewItem]:
    """Parses a whole campaign file.

    Args:
        text: file content (JSONL; blank lines are skipped).
        kind: the campaign's task kind.
        source: file name used in error messages.
        gold: a gold file: every line is a gold item with its known answer.

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
            items.append(parse_item(json.loads(line), kind, gold=gold))
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}:{number}: not valid JSON ({exc.msg})") from None
        except ValueError as exc:
            raise DataError(f"{source}:{number}: {exc}") from None
    if not items and kind != TaskKind.REDTEAM:
        raise DataError(f"{source}: no items; expected one JSON object per line")
    return items


def read_campaign_file(path: str | Path, kind: TaskKind, gold: bool = False) -> list[NewItem]:
    """Reads a campaign file (or with `gold`, a gold file) from disk (see `parse_campaign_text`).

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
    return parse_campaign_text(text, kind, source=str(path), gold=gold)


def parse_prompt_lines(text: str) -> list[str]:
    """Pasted prompts: one per line, blank lines skipped."""
    return [line.strip() for line in text.splitlines() if line.strip()]
