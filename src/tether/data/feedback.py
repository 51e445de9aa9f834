"""Feedback-app exports as reward-model training data: rankings to pairs, pairs grouped by prompt, thumbs.

A ranking of K completions, `{"prompt", "completions": [...], "ranking": [...]}` with `ranking[i]` the
rank of `completions[i]` (1 = best, equal ranks = a tie), gives all K(K-1)/2 pairs, the better
completion first (Ouyang et al. 2022, InstructGPT, sec. 3.5 and eq. 1). Ties are dropped or kept as
`PreferenceTie` pairs. All pairs of one prompt are trained in the same batch (`group_by_prompt`) so a
single ranking, whose pairs are strongly correlated, counts as one example instead of being seen K(K-1)/2
times per epoch. An optional margin from the rank or rating gap feeds the Llama 2 margin loss (Touvron
et al. 2023, eq. 2).

Thumbs rows `{"prompt", "completion", "label"}` (and raw XSTest labelled completions) train the
classifier reward model.
"""

from __future__ import annotations

from collections import OrderedDict
from itertools import combinations
from typing import Literal

from tether.data.sources import Row, _load, _text, parse_binary_label, parse_preference, xstest_desirable
from tether.errors import DataError
from tether.types import BinaryFeedbackExample, PreferenceExample, PreferenceTie, RankingExample

__all__ = [
    "ranking_pairs",
    "load_rankings",
    "load_reward_pairs",
    "group_by_prompt",
    "grouped_batches",
    "load_thumbs",
]

Ties = Literal["drop", "keep"]


# --------------------------------------------------------------------------- rankings -> pairs


def ranking_pairs(ranking: RankingExample, ties: Ties = "drop", margin_scale: float = 0.0) -> list[PreferenceExample]:
    """All K(K-1)/2 pairs of a ranking, the better completion as `chosen`.

    Ouyang et al. 2022 (InstructGPT) eq. 1: a labeler's ranking of K completions yields K-choose-2
    comparisons. Pairs come in the order of `itertools.combinations` over completion indices.

    Args:
        ranking: the ranked completions of one prompt.
        ties: 'drop' leaves out pairs of equal rank; 'keep' returns them as `PreferenceTie` (target 1/2).
        margin_scale: 0 for no margin; else margin = scale * gap, where gap is the rating difference when
            the ranking has `ratings`, otherwise the rank difference (Touvron et al. 2023, eq. 2).

    Returns:
        `PreferenceExample`s (and `PreferenceTie`s when ties are kept), all with the ranking's source.
    """
    out: list[PreferenceExample] = []
    c, r = ranking.completions, ranking.ranking
    for i, j in combinations(range(len(c)), 2):
        if r[i] == r[j]:
            if ties == "keep":
                out.append(PreferenceTie(ranking.prompt, c[i], c[j], None, ranking.source))
            continue
        better, worse = (i, j) if r[i] < r[j] else (j, i)
        margin = None
        if margin_scale > 0:
            gap = ranking.ratings[better] - ranking.ratings[worse] if ranking.ratings else r[worse] - r[better]
            margin = margin_scale * float(gap)
        out.append(PreferenceExample(ranking.prompt, c[better], c[worse], margin, ranking.source))
    return out


def _parse_ranking(row: Row) -> RankingExample:
    """A `RankingExample` from a raw row, with every problem reported as file:line."""
    prompt = _text(row, "prompt")
    completions, ranks = row.data.get("completions"), row.data.get("ranking")
    if not isinstance(completions, list) or not all(isinstance(x, str) for x in completions):
        raise DataError(f"{row.source}: field 'completions' must be a list of strings")
    if len(completions) < 2:
        raise DataError(f"{row.source}: a ranking needs at least 2 completions, got {len(completions)}")
    if any(not x.strip() for x in completions):
        raise DataError(f"{row.source}: field 'completions' has an empty completion")
    if not isinstance(ranks, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in ranks):
        raise DataError(f"{row.source}: field 'ranking' must be a list of integer ranks (1 = best), got {ranks!r}")
    if len(ranks) != len(completions):
        raise DataError(f"{row.source}: 'ranking' has {len(ranks)} ranks for {len(completions)} completions")
    if min(ranks) < 1:
        raise DataError(f"{row.source}: ranks start at 1 (best), got {min(ranks)}")
    stripped = [x.strip() for x in completions]
    if len(set(stripped)) < len(stripped):
        raise DataError(f"{row.source}: two completions are identical; rank each distinct reply once")
    ratings = row.data.get("ratings")
    if ratings is not None:
        if not isinstance(ratings, list) or len(ratings) != len(completions) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in ratings
        ):
            raise DataError(f"{row.source}: field 'ratings' must be a list of {len(completions)} numbers")
        ratings = tuple(float(x) for x in ratings)
    return RankingExample(prompt, tuple(stripped), tuple(ranks), ratings, row.source)


def load_rankings(paths: str | list[str], on_invalid: str = "error") -> list[RankingExample]:
    """Read `{"prompt","completions","ranking"}` rows (optional `ratings`), as the feedback app exports them.

    Raises:
        DataError: naming the file and line of a row with a missing field, a rank list of the wrong
            length, a rank below 1, identical completions, or an empty text.
    """
    return _load(paths, _parse_ranking, on_invalid, "ranking")


def load_reward_pairs(
    paths: str | list[str], on_invalid: str = "error", ties: Ties = "drop", margin_scale: float = 0.0
) -> list[PreferenceExample]:
    """Preference pairs from pair rows, ranking rows, or a mix (detected per row).

    Pair rows `{"prompt","chosen","rejected"}` (optional `margin`) are read as by `load_preferences`; ranking
    rows become their K(K-1)/2 pairs (`ranking_pairs`).

    Raises:
        DataError: as `load_preferences` and `load_rankings`, naming file and line; or no pairs at all
            (e.g. every ranking was a full tie and ties are dropped).
    """
    seen: dict[tuple[str, ...], str] = {}

    def parse(row: Row) -> list[PreferenceExample]:
        if "completions" in row.data or "ranking" in row.data:
            return ranking_pairs(_parse_ranking(row), ties, margin_scale)
        return [parse_preference(row, seen)]

    groups = _load(paths, parse, on_invalid, "preference")
    pairs = [p for group in groups for p in group]
    if not pairs:
        raise DataError(f"{paths}: no pairs (every ranking is a full tie and ties='drop')")
    return pairs


# --------------------------------------------------------------------------- batching by prompt


def group_by_prompt(examples: list[PreferenceExample]) -> list[list[int]]:
    """Indices of the examples grouped by prompt text, groups in order of first appearance."""
    groups: OrderedDict[str, list[int]] = OrderedDict()
    for i, e in enumerate(examples):
        groups.setdefault(e.prompt, []).append(i)
    return list(groups.values())


def grouped_batches(groups: list[list[int]], batch_size: int, order: list[int]) -> list[list[int]]:
    """One epoch of batches of about `batch_size` pairs that never split a prompt's pairs.

    InstructGPT (Ouyang et al. 2022, sec. 3.5): all K(K-1)/2 comparisons of a prompt go in one batch,
    which avoids overfitting to a ranking seen many times per epoch. Groups are packed greedily in the
    given order; a group larger than `batch_size` is a batch of its own (it is never cut).

    Args:
        groups: lists of example indices, one per prompt (`group_by_prompt`).
        batch_size: target pairs per batch.
        order: the order in which to visit the groups (a seeded shuffle, possibly length-grouped).

    Returns:
        Batches of example indices covering every index of the visited groups once.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    for g in order:
        group = groups[g]
        if current and len(current) + len(group) > batch_size:
            batches.append(current)
            current = []
        current = current + group
    if current:
        batches.append(current)
    return batches


# --------------------------------------------------------------------------- thumbs


def load_thumbs(paths: str | list[str], on_invalid: str = "error") -> list[BinaryFeedbackExample]:
    """Labelled completions for the classifier reward model.

    Reads thumbs rows `{"prompt","completion","label"}` (label 1/0, true/false, up/down) and raw XSTest
    labelled completions (rows with `prompt_is_safe`; desirable = full compliance on a safe prompt, full
    refusal on an unsafe one, Röttger et al. 2024), so the shared XSTest file trains without conversion.

    Raises:
        DataError: naming file and line of a row with a missing or empty field or a bad label.
    """

    def parse(row: Row) -> BinaryFeedbackExample:
        prompt, completion = _text(row, "prompt"), _text(row, "completion")
        if "prompt_is_safe" in row.data:
            label = xstest_desirable(row.data, row.source)
        elif "label" in row.data:
            label = parse_binary_label(row.data["label"], row.source)
        else:
            present = ", ".join(sorted(row.data)) or "none"
            raise DataError(f"{row.source}: missing field 'label' (fields present: {present})")
        return BinaryFeedbackExample(prompt, completion.strip(), label, row.source)

    return _load(paths, parse, on_invalid, "labelled completion")
