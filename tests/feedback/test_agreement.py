"""Agreement math against hand-computed values and Krippendorff's published example."""

from __future__ import annotations


import pytest

from tether.feedback.agreement import (
    borda_consensus,
    borda_scores,
    consensus_agreement,
    flag_outliers,
    krippendorff_alpha,
    majority,
    pairwise_agreement,
    preference,
    ranking_preferences,
    ranks_from_scores,
)

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers, 12 units,
# values 1..5, missing as None. Published: nominal 0.743, ordinal 0.815, interval 0.849.
_ = None
OBSERVERS = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, _, _, _],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, _, 3],
    [_, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, _],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, _],
]
UNITS = [[v for v in column if v is not None] for column in zip(*OBSERVERS)]


@pytest.mark.parametrize("level, expected", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_alpha_matches_krippendorffs_example(level, expected):
    assert krippendorff_alpha(UNITS, level) == pytest.approx(expected, abs=5e-4)


def test_alpha_nominal_by_hand():
    # units (1,1), (2,2), (1,2): o11 = o22 = 2, o12 = o21 = 1, n1 = n2 = 3, n = 6
    # alpha = 1 - (n - 1) * (o12 + o21) / (n1 n2 + n2 n1) = 1 - 5 * 2 / 18 = 4/9
    assert krippendorff_alpha([[1, 1], [2, 2], [1, 2]], "nominal") == pytest.approx(4 / 9)


def test_alpha_ordinal_by_hand():
    # values 1, 2, 3 with units (1,1), (2,3), (3,3): o11 = 2, o23 = o32 = 1, o33 = 2; n1 = 2, n2 = 1, n3 = 3, n = 6
    # ordinal d13 = (n1 + n2 + n3 - (n1 + n3) / 2)^2 = (6 - 2.5)^2 = 12.25, d12 = (3 - 1.5)^2 = 2.25, d23 = (4 - 2)^2 = 4
    # observed = 2 * o23 * d23 = 8; expected = 2 * (n1 n2 d12 + n1 n3 d13 + n2 n3 d23) = 2 * (4.5 + 73.5 + 12) = 180
    # alpha = 1 - 5 * 8 / 180
    assert krippendorff_alpha([[1, 1], [2, 3], [3, 3]], "ordinal") == pytest.approx(1 - 40 / 180)


def test_alpha_perfect_and_undefined():
    assert krippendorff_alpha([[1, 1], [2, 2, 2], [3, 3]]) == pytest.approx(1.0)
    assert krippendorff_alpha([[1, 1], [1, 1]]) is None  # no variation: undefined
    assert krippendorff_alpha([[1], [2]]) is None  # nothing pairable
    assert krippendorff_alpha([]) is None


def test_alpha_unknown_level():
    with pytest.raises(ValueError, match="level"):
        krippendorff_alpha([[1, 2], [2, 1]], "ratio")  # type: ignore[arg-type]


def test_pairwise_agreement_by_hand():
    units = [{"a": 1, "b": 1, "c": 0}, {"a": 0, "b": 0}]
    result = pairwise_agreement(units)
    # unit 1: (a,b) agree, (a,c) no, (b,c) no; unit 2: (a,b) agree -> 2 of 4
    assert result.overall == pytest.approx(0.5) and result.n_pairs == 4
    assert result.per_labeler == {"a": pytest.approx(2 / 3), "b": pytest.approx(2 / 3), "c": 0.0}
    assert pairwise_agreement([{"a": 1}]).overall is None


def test_preferences_from_ranks():
    assert preference(1, 2) == 1 and preference(2, 1) == -1 and preference(2, 2) == 0
    assert ranking_preferences([2, 1, 2]) == {(0, 1): -1, (0, 2): 0, (1, 2): 1}


def test_borda_by_hand():
    rankings = [[1, 2, 3], [2, 1, 3], [1, 3, 2]]
    # completion 0: 2 + 1 + 2 = 5; completion 1: 1 + 2 + 0 = 3; completion 2: 0 + 0 + 1 = 1
    assert borda_scores(rankings) == [5.0, 3.0, 1.0]
    assert borda_consensus(rankings) == [1, 2, 3]
    # ties give half a point each
    assert borda_scores([[1, 1, 2]]) == [1.5, 1.5, 0.0]
    assert borda_consensus([[1, 2], [2, 1]]) == [1, 1]
    assert ranks_from_scores([3, 5, 5, 1]) == [3, 1, 1, 4]
    assert borda_scores([]) == []


def test_majority():
    assert majority(["A", "A", "B"]) == "A"
    assert majority(["A", "B"]) is None
    assert majority([]) is None


def test_consensus_agreement_leaves_the_labeler_out():
    units = [{"a": 1, "b": 1, "c": 0}, {"a": 1, "b": 1, "c": 0}, {"a": 0, "b": 0}]
    result = consensus_agreement(units)
    assert result.rate["c"] == 0.0 and result.n["c"] == 2
    # a against {b, c} = no strict majority in units 1-2 (1 vs 0), against b in unit 3
    assert result.rate["a"] == 1.0 and result.n["a"] == 1


def test_outliers_are_flagged_only_when_far_from_the_rest():
    counts = {k: 20 for k in "abcd"}
    assert flag_outliers({"a": 0.1, "b": 0.12, "c": 0.11, "d": 0.6}, counts) == ["d"]
    assert flag_outliers({"a": 0.1, "b": 0.12, "c": 0.11, "d": 0.2}, counts) == []
    assert flag_outliers({"a": 0.1, "d": 0.9}, counts) == []  # too few labelers to tell
    assert flag_outliers({"a": 0.1, "b": 0.1, "c": 0.1, "d": 0.9}, {**counts, "d": 2}) == []  # too few labels
