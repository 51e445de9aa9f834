"""Hand-computed checks of the KL estimators and the KL controllers."""

import math

import pytest
import torch

from tether.rl.kl import AdaptiveKLController, FixedKLController, kl_estimate, make_kl_controller

KINDS = ("k1", "k2", "k3")


@pytest.mark.parametrize("kind", KINDS)
def test_zero_kl_for_equal_logprobs(kind):
    logprobs = torch.tensor([[-0.1, -2.0, -7.5]])
    assert torch.all(kl_estimate(logprobs, logprobs.clone(), kind) == 0)


def test_hand_values():
    # p = 0.5, p_ref = 0.25: log r = ln(0.25 / 0.5) = -ln 2, r = 0.5
    logprobs = torch.tensor([[math.log(0.5)]])
    ref_logprobs = torch.tensor([[math.log(0.25)]])
    ln2 = math.log(2.0)
    assert kl_estimate(logprobs, ref_logprobs, "k1").item() == pytest.approx(ln2)
    assert kl_estimate(logprobs, ref_logprobs, "k2").item() == pytest.approx(0.5 * ln2**2)
    # k3 = r - 1 - log r = 0.5 - 1 + ln 2 = 0.1931472
    assert kl_estimate(logprobs, ref_logprobs, "k3").item() == pytest.approx(0.1931472, abs=1e-6)


def test_k2_and_k3_are_nonnegative_k1_is_not():
    torch.manual_seed(0)
    logprobs = -torch.rand(8, 16) * 5
    ref_logprobs = -torch.rand(8, 16) * 5
    assert torch.all(kl_estimate(logprobs, ref_logprobs, "k3") >= 0)
    assert torch.all(kl_estimate(logprobs, ref_logprobs, "k2") >= 0)
    assert torch.any(kl_estimate(logprobs, ref_logprobs, "k1") < 0)


def test_k1_and_k3_are_unbiased_in_expectation():
    # p = [0.5, 0.5], q = [0.9, 0.1]: KL(p || q) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = 0.5108256
    p = torch.tensor([0.5, 0.5])
    q = torch.tensor([0.9, 0.1])
    for kind in ("k1", "k3"):
        per_outcome = kl_estimate(p.log().unsqueeze(0), q.log().unsqueeze(0), kind)[0]
        assert (p * per_outcome).sum().item() == pytest.approx(0.5108256, abs=1e-6)


def test_bad_kind_names_valid_kinds():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


def test_fixed_controller_does_not_move():
    controller = FixedKLController(0.05)
    controller.update(100.0, 512)
    assert controller.value == 0.05
    restored = FixedKLController(1.0)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == 0.05


def test_adaptive_controller_moves_toward_target_and_is_clipped():
    # target 6, horizon 10000, 256 samples per update
    up = AdaptiveKLController(0.1, target_kl=6.0, horizon=10000)
    up.update(12.0, 256)  # error 12/6 - 1 = 1, clipped to 0.2: 0.1 * (1 + 0.2 * 0.0256)
    assert up.value == pytest.approx(0.100512)
    down = AdaptiveKLController(0.1, target_kl=6.0, horizon=10000)
    down.update(0.0, 256)  # error -1, clipped to -0.2
    assert down.value == pytest.approx(0.099488)
    small = AdaptiveKLController(0.1, target_kl=6.0, horizon=10000)
    small.update(6.6, 256)  # error 0.1, inside the clip: 0.1 * (1 + 0.1 * 0.0256)
    assert small.value == pytest.approx(0.100256)
    on_target = AdaptiveKLController(0.1, target_kl=6.0, horizon=10000)
    on_target.update(6.0, 256)
    assert on_target.value == pytest.approx(0.1)


def test_adaptive_controller_state_round_trip():
    controller = AdaptiveKLController(0.2, target_kl=3.0, horizon=100)
    controller.update(10.0, 10)
    restored = AdaptiveKLController(1.0, target_kl=1.0, horizon=1)
    restored.load_state_dict(controller.state_dict())
    assert (restored.value, restored.target_kl, restored.horizon) == (controller.value, 3.0, 100)


def test_make_kl_controller():
    fixed = make_kl_controller(0.1, adaptive=False, target_kl=None, horizon=None)
    assert isinstance(fixed, FixedKLController)
    adaptive = make_kl_controller(0.1, adaptive=True, target_kl=6.0, horizon=10000)
    assert isinstance(adaptive, AdaptiveKLController)
    assert adaptive.value == 0.1
    with pytest.raises(ValueError):
        make_kl_controller(0.1, adaptive=True, target_kl=None, horizon=10000)
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target_kl=0.0, horizon=10)
