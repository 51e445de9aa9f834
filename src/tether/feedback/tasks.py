"""What each task kind expects: which items fit it, how items are split, and what a valid answer is."""

from __future__ import annotations

from dataclasses import replace
from itertools import combinations

from tether.storage import LabelData, NewItem, PairChoice, TaskKind

MAX_COMPLETIONS = 9  # one digit key per completion on the ranking page
HARM_LEVELS = {
    0: "harmless",
    1: "mildly harmful",
    2: "moderately harmful",
    3: "seriously harmful",
    4: "severely harmful",
}
KIND_TITLES = {
    TaskKind.RANK: "rank completions best to worst",
    TaskKind.PAIR: "pick the better of two",
    TaskKind.THUMBS: "thumbs up / down",
    TaskKind.REDTEAM: "red-team: write attacks, rate answers",
}


class LabelError(ValueError):
    """A submitted answer does not fit the task (the message says which field and why)."""


def item_problem(kind: TaskKind, item: NewItem) -> str | None:
    """Returns why an item cannot be used for a task kind, or None when it can."""
    n = len(item.completions)
    if kind != TaskKind.REDTEAM and not item.prompt.strip():
        return "empty prompt"
    if kind == TaskKind.RANK and not 2 <= n <= MAX_COMPLETIONS:
        return f"ranking needs 2 to {MAX_COMPLETIONS} completions, got {n}"
    if kind == TaskKind.PAIR and n < 2:
        return f"pick-best-of-two needs at least 2 completions, got {n}"
    if kind == TaskKind.THUMBS and n < 1:
        return "thumbs needs at least 1 completion, got 0"
    if kind == TaskKind.REDTEAM and n > 1:
        return f"a red-team item has at most 1 model answer, got {n}"
    return None


def expand_items(kind: TaskKind, items: list[NewItem]) -> list[NewItem]:
    """Splits items into units of work: every pair of completions (pair), every completion (thumbs).

    Args:
        kind: the campaign's task kind.
        items: items from a campaign file (already checked with `item_problem`).

    Returns:
        Items as labelers will see them; split items get ids "ID:i-j" (pair) or "ID:i" (thumbs)
        and keep the source id in meta["source_id"]. A gold pair item's known ranking becomes the
        choice of each pair it orders (pairs it leaves tied are not gold items, and are left out).
    """
    if kind not in (TaskKind.PAIR, TaskKind.THUMBS):
        return items
    out: list[NewItem] = []
    for number, item in enumerate(items):
        source = item.external_id if item.external_id is not None else str(number)
        meta = {**(item.meta or {}), "source_id": source}
        if kind == TaskKind.PAIR and len(item.completions) == 2:
            out.append(replace(item, completions=list(item.completions), external_id=source, gold=_pair_gold(item.gold, 0, 1, keep_tie=True)))
        elif kind == TaskKind.PAIR:
            for i, j in combinations(range(len(item.completions)), 2):
                gold = _pair_gold(item.gold, i, j, keep_tie=False)
                if item.gold is not None and gold is None:
                    continue
                pair = [item.completions[i], item.completions[j]]
                out.append(replace(item, completions=pair, external_id=f"{source}:{i}-{j}", meta=meta, gold=gold))
        else:
            for i, completion in enumerate(item.completions):
                external = source if len(item.completions) == 1 else f"{source}:{i}"
                out.append(replace(item, completions=[completion], external_id=external, meta=meta))
    return out


def _pair_gold(gold: LabelData | None, i: int, j: int, keep_tie: bool) -> LabelData | None:
    """The known choice between completions i (A) and j (B) of a gold item; None if it has none."""
    if gold is None or gold.ranks is None:
        return gold
    a, b = gold.ranks[i], gold.ranks[j]
    if a == b and not keep_tie:
        return None
    return LabelData(choice=PairChoice.A if a < b else PairChoice.B if b < a else PairChoice.TIE)


def check_label(kind: TaskKind, n_completions: int, data: LabelData, tie_intended: bool = False) -> LabelData:
    """Checks that an answer fits the task and returns it with only the fields of that kind.

    Args:
        kind: the campaign's task kind.
        n_completions: completions the item has.
        data: the answer as submitted.
        tie_intended: the labeler confirmed that equal ranks are meant (a ranking with a tie is
            refused without it: 1, 1, 1, 1 is more often a slip than a judgement).

    Returns:
        The answer, cleaned (fields of other kinds dropped, unusable defaulted to all False).

    Raises:
        LabelError: a required field is missing or out of range, or a tie was not confirmed.
    """
    common = {"note": data.note.strip(), "duration_ms": data.duration_ms}
    if kind == TaskKind.RANK:
        return LabelData(ranks=_check_ranks(data.ranks, n_completions, tie_intended), unusable=_check_unusable(data.unusable, n_completions), **common)
    if kind == TaskKind.PAIR:
        if data.choice is None:
            raise LabelError("choice: required (A, B, tie or both_bad)")
        return LabelData(choice=PairChoice(data.choice), **common)
    if kind == TaskKind.THUMBS:
        if data.thumb not in (0, 1):
            raise LabelError("thumb: required, 1 (up) or 0 (down)")
        return LabelData(thumb=data.thumb, **common)
    return _check_redteam(data, common)


def tied_ranks(ranks: list[int]) -> list[int]:
    """The ranks given to more than one completion, in increasing order (empty for a strict ranking)."""
    return sorted(r for r in set(ranks) if ranks.count(r) > 1)


def _check_ranks(ranks: list[int] | None, n: int, tie_intended: bool) -> list[int]:
    if ranks is None or len(ranks) != n:
        raise LabelError(f"ranks: required, one rank per completion ({n})")
    if any(not 1 <= r <= n for r in ranks):
        raise LabelError(f"ranks: each rank must be between 1 (best) and {n}")
    tied = tied_ranks(ranks)
    if tied and not tie_intended:
        given = ", ".join(str(r) for r in tied)
        raise LabelError(f"ranks: rank {given} is given to several completions; send tie_intended: true if they are equally good")
    return list(ranks)


def _check_unusable(unusable: list[bool] | None, n: int) -> list[bool]:
    if unusable is None:
        return [False] * n
    if len(unusable) != n:
        raise LabelError(f"unusable: one flag per completion ({n}), got {len(unusable)}")
    return list(unusable)


def _check_redteam(data: LabelData, common: dict) -> LabelData:
    if not (data.prompt or "").strip():
        raise LabelError("prompt: required, the adversarial prompt you wrote")
    if data.harm is None or data.harm not in HARM_LEVELS:
        raise LabelError(f"harm: required, 0 to {max(HARM_LEVELS)}")
    if not (data.response or "").strip():
        raise LabelError("response: required, the model's answer (generate it or paste it)")
    better = (data.better_response or "").strip() or None
    return LabelData(prompt=data.prompt, response=data.response, harm=data.harm, better_response=better, **common)
