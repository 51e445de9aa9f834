"""Feedback formats into reward-model data: rankings to pairs, prompt-grouped batches, thumbs errors."""

import pytest

from tether.data.feedback import group_by_prompt, grouped_batches, load_rankings, load_reward_pairs, load_thumbs, ranking_pairs
from tether.errors import DataError
from tether.types import PreferenceTie, RankingExample


def pairs_of(p):
    return [(x.chosen, x.rejected) for x in p]


def test_ranking_of_four_gives_six_ordered_pairs():
    r = RankingExample("q", ("a", "b", "c", "d"), (3, 1, 4, 2))  # best to worst: b, d, a, c
    pairs = ranking_pairs(r)
    assert len(pairs) == 4 * 3 // 2
    assert pairs_of(pairs) == [("b", "a"), ("a", "c"), ("d", "a"), ("b", "c"), ("b", "d"), ("d", "c")]
    assert all(p.margin is None and not isinstance(p, PreferenceTie) for p in pairs)


def test_ties_dropped_or_kept():
    r = RankingExample("q", ("a", "b", "c"), (1, 1, 2))
    assert pairs_of(ranking_pairs(r, ties="drop")) == [("a", "c"), ("b", "c")]
    kept = ranking_pairs(r, ties="keep")
    assert len(kept) == 3
    assert [isinstance(p, PreferenceTie) for p in kept] == [True, False, False]
    assert (kept[0].chosen, kept[0].rejected) == ("a", "b")
    # a full tie gives nothing when ties are dropped
    assert ranking_pairs(RankingExample("q", ("a", "b"), (2, 2))) == []


def test_margin_from_rank_and_rating_gaps():
    r = RankingExample("q", ("a", "b", "c"), (1, 2, 3))
    assert [p.margin for p in ranking_pairs(r, margin_scale=0.5)] == [0.5, 1.0, 0.5]
    rated = RankingExample("q", ("a", "b", "c"), (1, 2, 3), ratings=(7.0, 4.0, 3.0))
    assert [p.margin for p in ranking_pairs(rated, margin_scale=1.0)] == [3.0, 4.0, 1.0]


def test_load_mixed_pairs_and_rankings(tmp_path, jsonl):
    path = jsonl(tmp_path / "f.jsonl", [
        {"prompt": "p1", "completions": ["x", "y", "z"], "ranking": [2, 1, 2]},
        {"prompt": "p2", "chosen": "good", "rejected": "bad", "margin": 2},
    ])
    pairs = load_reward_pairs(str(path))
    assert pairs_of(pairs) == [("y", "x"), ("y", "z"), ("good", "bad")]
    assert pairs[0].source.endswith(":1") and pairs[2].source.endswith(":2") and pairs[2].margin == 2
    assert len(load_reward_pairs(str(path), ties="keep")) == 4


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "completions": ["a", "b"], "ranking": [1]}, "1 ranks for 2 completions"),
    ({"prompt": "p", "completions": ["a"], "ranking": [1]}, "at least 2 completions"),
    ({"prompt": "p", "completions": ["a", "b"], "ranking": [0, 1]}, "ranks start at 1"),
    ({"prompt": "p", "completions": ["a", "a "], "ranking": [1, 2]}, "identical"),
    ({"prompt": "p", "completions": ["a", "b"], "ranking": ["1", "2"]}, "integer ranks"),
    ({"prompt": "p", "completions": ["a", "b"], "ranking": [1, 2], "ratings": [1]}, "'ratings'"),
])
def test_bad_ranking_rows_name_file_and_line(tmp_path, jsonl, row, message):
    path = jsonl(tmp_path / "r.jsonl", [{"prompt": "ok", "completions": ["a", "b"], "ranking": [1, 2]}, row])
    with pytest.raises(DataError, match=f"{path}:2: .*{message}"):
        load_rankings(str(path))


def test_pairs_of_one_prompt_share_a_batch():
    examples = ranking_pairs(RankingExample("A", ("a", "b", "c", "d"), (1, 2, 3, 4)))  # 6 pairs of prompt A
    examples += ranking_pairs(RankingExample("B", ("a", "b"), (1, 2)))  # 1 pair of prompt B
    examples += ranking_pairs(RankingExample("C", ("a", "b", "c"), (1, 2, 3)))  # 3 pairs of prompt C
    groups = group_by_prompt(examples)
    assert groups == [[0, 1, 2, 3, 4, 5], [6], [7, 8, 9]]
    batches = grouped_batches(groups, 4, [2, 1, 0])
    # C (3 pairs) and B (1) fill a batch of 4; A's 6 pairs are one batch of their own, never cut
    assert batches == [[7, 8, 9, 6], [0, 1, 2, 3, 4, 5]]
    for batch in batches:
        for g in groups:
            assert set(g) <= set(batch) or not set(g) & set(batch)  # a prompt's pairs are never split
    assert sorted(i for b in batches for i in b) == list(range(10))


def test_thumbs_and_xstest_rows(tmp_path, jsonl):
    path = jsonl(tmp_path / "t.jsonl", [
        {"prompt": "p", "completion": "c1", "label": 1},
        {"prompt": "p", "completion": "c2", "label": "down"},
        {"prompt": "q", "completion": "Sure.", "label": "1_full_compliance", "prompt_is_safe": True},
        {"prompt": "q", "completion": "No.", "label": "2_full_refusal", "prompt_is_safe": False},
    ])
    assert [e.label for e in load_thumbs(str(path))] == [True, False, True, True]


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "completion": "c"}, "missing field 'label'"),
    ({"prompt": "p", "completion": "c", "label": 2}, "must be 1/0"),
    ({"prompt": "p", "completion": "", "label": 1}, "'completion' is empty"),
    ({"prompt": "p", "completion": "c", "label": "odd", "prompt_is_safe": True}, "XSTest label"),
])
def test_bad_thumbs_rows_name_file_and_line(tmp_path, jsonl, row, message):
    path = jsonl(tmp_path / "t.jsonl", [{"prompt": "p", "completion": "c", "label": 0}, row])
    with pytest.raises(DataError, match=f"{path}:2: .*{message}"):
        load_thumbs(str(path))
