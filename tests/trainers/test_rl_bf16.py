"""bfloat16 autocast in PPO and GRPO (`train.precision`): which passes run in bf16, the engine check's
tolerance, and GRPO's on-policy ratio."""

from __future__ import annotations

import json
import math

import pytest
import torch

import tether.trainers.ppo as ppo_mod
from tether.errors import TrainingError
from tether.trainers.grpo import train_grpo
from tether.trainers.online import check_rollout_logprobs
from tether.trainers.ppo import train_ppo

from test_grpo import _on_policy_config, rule_reward  # noqa: F401  (fixture)
from test_ppo import ppo_config


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def head_dtypes(monkeypatch):
    """(grad enabled, dtype of the LM head's output) for every forward pass of the policy's LM head."""
    seen: list[tuple[bool, torch.dtype]] = []
    real = ppo_mod.load_roles

    def load(cfg, device, **kwargs):
        m = real(cfg, device, **kwargs)
        m.policy.get_output_embeddings().register_forward_hook(lambda mod, args, out: seen.append((torch.is_grad_enabled(), out.dtype)))
        return m

    monkeypatch.setattr(ppo_mod, "load_roles", load)
    return seen


@pytest.mark.parametrize("bf16", [False, True])
def test_ppo_passes_run_in_the_configured_precision(tiny_data, tmp_path, tiny_models, head_dtypes, bf16):
    out = tmp_path / "ppo"
    train_ppo(ppo_config(tiny_data["prompts"], out, reward_model=tiny_models["rm"], train={"max_steps": 2, "precision": "bf16" if bf16 else "fp32"}))
    want = torch.bfloat16 if bf16 else torch.float32
    assert {g for g, _ in head_dtypes} == {True, False}  # rollout passes and update passes both seen
    assert {d for _, d in head_dtypes} == {want}
    for row in _rows(out):
        for key in ("loss/policy", "loss/value", "objective/kl", "policy/entropy"):
            assert math.isfinite(row[key]), key
        # the engine check ran and passed at the precision's tolerance
        assert row["rollout/logprob_diff_mean"] <= (5e-2 if bf16 else 1e-3)


def test_the_engine_check_tolerance_follows_the_compute_precision():
    diag = {"rollout/logprob_diff_mean": 2e-2, "rollout/logprob_diff_max": 0.1}
    check_rollout_logprobs(diag, torch.bfloat16, step=1)  # bf16 rounding: accepted
    with pytest.raises(TrainingError, match="differ from a fresh forward pass"):
        check_rollout_logprobs(diag, torch.float32, step=1)


@pytest.mark.parametrize("bf16", [False, True])
def test_on_policy_grpo_ratio_is_exactly_one(tmp_path, rule_reward, bf16):  # noqa: F811
    """One update per rollout: the update's own pass is the old policy, so the ratio is 1 and nothing is clipped,
    even where the engine's KV-cached bf16 logprobs round differently from the full pass."""
    cfg = _on_policy_config(tmp_path)
    cfg.train.precision = "bf16" if bf16 else "fp32"
    for row in _rows(train_grpo(cfg)):
        assert row["policy/ratio"] == 1.0 and row["policy/clipfrac"] == 0.0
        assert 0.0 <= row["rollout/logprob_diff_mean"] <= (5e-2 if bf16 else 1e-3)


def test_auto_attention_is_eager_only_for_short_bf16_sequences_on_a_cpu():
    from tether.config import ModelConfig
    from tether.models.load import load_causal_lm, set_attention

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    cases = [(cpu, "bf16", 512, "eager"), (cpu, "fp32", 128, "sdpa"), (cpu, "bf16", 513, "sdpa"), (cuda, "bf16", 128, "sdpa")]
    for device, precision, length, want in cases:
        model, _ = load_causal_lm(ModelConfig(name_or_path="tiny-llama"), cpu)
        assert set_attention(model, "auto", device, precision, length) == want, (device, precision, length)
        assert model.model.config._attn_implementation == want  # the decoder layers use it too
    explicit, _ = load_causal_lm(ModelConfig(name_or_path="tiny-gpt2", attn_implementation="eager"), cpu)
    assert explicit.config._attn_implementation == "eager"


def test_eager_and_sdpa_attention_give_the_same_logprobs_with_padding():
    from tether.config import ModelConfig
    from tether.models.load import load_causal_lm
    from tether.models.logprobs import response_logprobs

    cpu = torch.device("cpu")
    sdpa, _ = load_causal_lm(ModelConfig(name_or_path="tiny-llama"), cpu, seed=3)
    eager, _ = load_causal_lm(ModelConfig(name_or_path="tiny-llama", attn_implementation="eager"), cpu, seed=3)
    ids = torch.randint(3, 200, (3, 20), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # a left-padded prompt
    mask[1, -4:] = 0  # a response that ended early
    a = response_logprobs(sdpa, ids, mask, 12)
    b = response_logprobs(eager, ids, mask, 12)
    real = mask[:, 12:].bool()
    assert torch.allclose(a[real], b[real], atol=1e-5)


def test_ppo_under_bf16_keeps_the_default_attention_in_its_rollout_models(tiny_data, tmp_path, tiny_models, monkeypatch):
    seen = {}
    real = ppo_mod.load_roles
    monkeypatch.setattr(ppo_mod, "load_roles", lambda cfg, device, **kw: seen.setdefault("m", real(cfg, device, **kw)))
    train_ppo(ppo_config(tiny_data["prompts"], tmp_path / "ppo", reward_model=tiny_models["rm"], train={"max_steps": 1, "precision": "bf16"}))
    m = seen["m"]
    kernels = {m.policy.config._attn_implementation, m.ref_policy.config._attn_implementation,
               m.value_model.backbone.config._attn_implementation}
    assert kernels == {"sdpa"}
