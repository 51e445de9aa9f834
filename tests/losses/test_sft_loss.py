"""Hand-computed checks of the SFT cross-entropy."""

import math

import pytest
import torch

from tether.losses.sft import sft_loss


def test_uniform_logits_give_log_vocab_and_ppl_vocab():
    logits = torch.zeros(2, 3, 4)
    labels = torch.tensor([[0, 1, 2], [3, 0, -100]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    loss, metrics = sft_loss(logits, labels, mask)
    assert loss.item() == pytest.approx(math.log(4.0))
    assert metrics["loss/sft"] == pytest.approx(math.log(4.0))
    assert metrics["sft/ppl"] == pytest.approx(4.0)
    assert metrics["sft/tokens"] == 5.0


def test_hand_case_only_masked_positions_count():
    # softmax([0, ln 3]) = [1/4, 3/4]: nll of label 1 is ln(4/3), of label 0 is ln 4
    logits = torch.tensor([[[0.0, math.log(3.0)]] * 3])  # (1, 3, 2)
    labels = torch.tensor([[1, 0, 1]])
    mask = torch.tensor([[True, True, False]])
    loss, _ = sft_loss(logits, labels, mask)
    assert loss.item() == pytest.approx((math.log(4.0 / 3.0) + math.log(4.0)) / 2.0)


def test_gradient_flows_only_through_masked_positions():
    logits = torch.zeros(1, 2, 3, requires_grad=True)
    loss, _ = sft_loss(logits, torch.tensor([[0, 1]]), torch.tensor([[True, False]]))
    loss.backward()
    # d/dz of -log softmax(z)_0 at z = 0 is softmax - onehot = [1/3 - 1, 1/3, 1/3]
    torch.testing.assert_close(logits.grad[0, 0], torch.tensor([-2 / 3, 1 / 3, 1 / 3]))
    assert torch.all(logits.grad[0, 1] == 0)
