"""Hand-computed checks of the masked reductions and log-probability helpers."""

import math

import pytest
import torch

from tether.ops import (
    entropy_from_logits,
    first_true_indices,
    gather_logprobs,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    response_mask_from_eos,
)

VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[True, True, False], [True, False, False]])  # selects 1, 2, 4


def test_masked_sum_and_mean():
    assert masked_sum(VALUES, MASK).item() == pytest.approx(7.0)
    # (1 + 2 + 4) / 3
    assert masked_mean(VALUES, MASK).item() == pytest.approx(7.0 / 3.0)
    # row 0: (1 + 2) / 2, row 1: 4 / 1
    torch.testing.assert_close(masked_mean(VALUES, MASK, dim=1), torch.tensor([1.5, 4.0]))
    torch.testing.assert_close(masked_sum(VALUES, MASK, dim=0), torch.tensor([5.0, 2.0, 0.0]))


def test_masked_mean_of_empty_selection_is_zero_and_ignores_nan():
    values = torch.tensor([[float("nan"), 1.0]])
    mask = torch.tensor([[False, True]])
    assert masked_mean(values, mask).item() == 1.0
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0


def test_masked_var():
    # mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9
    assert masked_var(VALUES, MASK, unbiased=True).item() == pytest.approx(42.0 / 9.0 / 2.0)
    assert masked_var(VALUES, MASK, unbiased=False).item() == pytest.approx(42.0 / 9.0 / 3.0)
    with pytest.raises(ValueError):
        masked_var(VALUES, torch.tensor([[True, False, False], [False, False, False]]))


def test_masked_whiten_mean_zero_std_one_on_masked_entries_only():
    torch.manual_seed(0)
    values = torch.randn(4, 7) * 3.0 + 5.0
    mask = torch.rand(4, 7) > 0.4
    values[~mask] = 1e6  # masked-out entries must not move the statistics
    whitened = masked_whiten(values, mask)
    assert masked_mean(whitened, mask).item() == pytest.approx(0.0, abs=1e-5)
    assert masked_var(whitened, mask).item() == pytest.approx(1.0, abs=1e-4)
    assert torch.all(whitened[~mask] == 0)


def test_masked_whiten_hand_case():
    # entries 1, 2, 4: mean 7/3, unbiased std sqrt(7/3)
    whitened = masked_whiten(VALUES, MASK)
    std = math.sqrt(7.0 / 3.0)
    expected = torch.tensor([[(1 - 7 / 3) / std, (2 - 7 / 3) / std, 0.0], [(4 - 7 / 3) / std, 0.0, 0.0]])
    torch.testing.assert_close(whitened, expected)
    # without shifting, the mean is added back
    unshifted = masked_whiten(VALUES, MASK, shift_mean=False)
    assert unshifted[0, 0].item() == pytest.approx((1 - 7 / 3) / std + 7 / 3, rel=1e-5)


def test_gather_logprobs_hand_case():
    # softmax([0, ln 3]) = [1/4, 3/4]
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])  # (1, 2, 2)
    labels = torch.tensor([[1, 0]])
    expected = torch.tensor([[math.log(0.75), math.log(0.25)]])
    torch.testing.assert_close(gather_logprobs(logits, labels), expected)


def test_gather_logprobs_matches_log_softmax_gather():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11) * 4
    labels = torch.randint(0, 11, (3, 5))
    reference = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(gather_logprobs(logits, labels), reference)


def test_gather_logprobs_bf16_is_computed_in_float32():
    torch.manual_seed(0)
    logits = (torch.randn(2, 4, 50) * 10).to(torch.bfloat16)
    labels = torch.randint(0, 50, (2, 4))
    result = gather_logprobs(logits, labels)
    assert result.dtype == torch.float32
    reference = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(result, reference)


def test_gather_logprobs_is_stable_for_huge_logits():
    logits = torch.tensor([[[1e4, 0.0, -1e4]]])
    result = gather_logprobs(logits, torch.tensor([[1]]))
    assert torch.isfinite(result).all()
    assert result.item() == pytest.approx(-1e4)


def test_entropy_from_logits():
    # uniform over 4 tokens: ln 4; a near one-hot distribution: ~0
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]]])
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([[math.log(4.0), 0.0]]))
    # p = [1/4, 3/4]: H = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.5623351
    two = torch.tensor([[[0.0, math.log(3.0)]]])
    assert entropy_from_logits(two).item() == pytest.approx(0.5623351, abs=1e-6)


def test_first_true_indices():
    bools = torch.tensor([[False, True, True], [False, False, False], [True, False, False]])
    torch.testing.assert_close(first_true_indices(bools), torch.tensor([1, 3, 0]))


def test_response_mask_from_eos():
    eos, pad = 2, 0
    responses = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0], [5, 0, 2, 0], [5, 2, 2, 2]])
    expected = torch.tensor(
        [
            [True, True, False, False],  # EOS at 1 is included
            [True, True, True, True],  # no EOS: ran to the length limit
            [True, False, False, False],  # EOS first: one real token
            [True, True, True, False],  # a pad id before EOS is a real token
            [True, True, False, False],  # only the first EOS counts
        ]
    )
    assert torch.equal(response_mask_from_eos(responses, eos, pad), expected)
    # pad equal to EOS gives the same mask
    same = responses.masked_fill(responses == pad, eos)
    same[3, 1] = 0
    assert torch.equal(response_mask_from_eos(same, eos, eos), expected)
