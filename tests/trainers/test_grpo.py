"""GRPO, RLOO and REINFORCE++ on tiny random-init models with a rule-based reward."""

import json

import pytest
import torch

import tether.trainers.online as online
from tether.config import GRPOConfig
from tether.errors import TrainingError
from tether.models.reward import FunctionReward
from tether.trainers.grpo import compute_advantages, train_grpo
from tether.types import Rollout


def share_of_letter_e(prompts, responses):
    """Fraction of characters that are 'e': learnable by a byte-level policy in a few steps."""
    return [r.count("e") / max(len(r), 1) for r in responses]


@pytest.fixture
def rule_reward(monkeypatch):
    monkeypatch.setattr(online, "load_reward", lambda *args, **kwargs: FunctionReward(share_of_letter_e, "e"))


def _config(tmp_path, algorithm: str, steps: int) -> GRPOConfig:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"write something about topic {i}"}) + "\n" for i in range(8)))
    return GRPOConfig(
        model={"name_or_path": "tiny-llama"}, reward_model={"function": "unused:replaced_by_fixture"},
        data={"train": str(prompts), "max_prompt_length": 32}, generation={"max_new_tokens": 12},
        rollout={"batch_size": 4, "num_epochs": 2, "num_minibatches": 2, "kl_coef": 0.01, "missing_eos_penalty": None, "normalize_scores": False},
        grpo={"algorithm": algorithm, "group_size": 4},
        train={"max_steps": steps, "learning_rate": 3e-3, "seed": 0}, output_dir=str(tmp_path / algorithm),
    )


def _scores(out):
    return [json.loads(line)["objective/scores"] for line in open(out / "metrics.jsonl")]


def test_grpo_raises_a_rule_based_reward(tmp_path, rule_reward):
    scores = _scores(train_grpo(_config(tmp_path, "grpo", steps=16)))
    first, last = sum(scores[:4]) / 4, sum(scores[-4:]) / 4
    assert last > first + 0.05, scores


@pytest.mark.parametrize("algorithm", ["rloo", "reinforce_pp"])
def test_rloo_and_reinforce_pp_run_and_learn(tmp_path, rule_reward, algorithm):
    out = train_grpo(_config(tmp_path, algorithm, steps=12))
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert all(torch.isfinite(torch.tensor(r["loss/policy"])) for r in rows)
    scores = [r["objective/scores"] for r in rows]
    assert sum(scores[-4:]) / 4 > sum(scores[:4]) / 4, scores


def _rollout(scores, lengths, T=3):
    B = len(scores)
    mask = torch.tensor([[t < n for t in range(T)] for n in lengths])
    zeros = torch.zeros(B, T)
    return Rollout(
        torch.zeros(B, 1, dtype=torch.long), torch.ones(B, 1, dtype=torch.long), torch.zeros(B, T, dtype=torch.long),
        mask, zeros, zeros, zeros, torch.tensor(scores), torch.tensor(scores),
    )


def test_group_advantages_are_broadcast_over_real_tokens(tmp_path):
    cfg = _config(tmp_path, "grpo", 1)
    cfg.grpo.group_size = 2
    # groups (1, 3) and (5, 5): GRPO advantages (-1, 1) and (0, 0); masked tokens get 0
    adv, _ = compute_advantages(cfg, _rollout([1.0, 3.0, 5.0, 5.0], [3, 2, 1, 3]), kl_coef=0.0)
    expected = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-5)

    cfg.grpo.algorithm = "rloo"
    # RLOO with G=2: each score minus the other one: (1-3, 3-1, 0, 0)
    adv, _ = compute_advantages(cfg, _rollout([1.0, 3.0, 5.0, 5.0], [1, 1, 1, 1]), kl_coef=0.0)
    assert torch.allclose(adv[:, 0], torch.tensor([-2.0, 2.0, 0.0, 0.0]))


def _on_policy_config(tmp_path, steps: int = 2) -> GRPOConfig:
    cfg = _config(tmp_path, "grpo", steps)
    cfg.rollout.num_epochs, cfg.rollout.num_minibatches = 1, 1
    return cfg


def test_on_policy_grpo_checks_the_engine_in_its_update(tmp_path, rule_reward, monkeypatch):
    """One update per rollout: no separate logprob pass of the policy, the update's forward pass is checked instead."""
    rollout_passes = []
    real = online.grouped_response_logprobs
    monkeypatch.setattr(online, "grouped_response_logprobs", lambda *a, **k: rollout_passes.append(1) or real(*a, **k))
    rows = [json.loads(line) for line in open(train_grpo(_on_policy_config(tmp_path)) / "metrics.jsonl")]
    assert len(rollout_passes) == 2  # the reference's only, one per step
    for row in rows:
        assert 0.0 <= row["rollout/logprob_diff_max"] < 1e-3
        assert torch.isfinite(torch.tensor(row["loss/policy"]))


def test_on_policy_grpo_stops_when_the_engine_disagrees(tmp_path, rule_reward, monkeypatch):
    import tether.rollout.backends as backends

    real = backends.generate

    def skewed(*args, **kwargs):
        gen = real(*args, **kwargs)
        gen.sampling_logprobs = gen.sampling_logprobs - 0.5  # an engine whose logprobs are off
        return gen

    monkeypatch.setattr(backends, "generate", skewed)  # the HF backend's engine
    with pytest.raises(TrainingError, match="differ from a fresh forward pass"):
        train_grpo(_on_policy_config(tmp_path, steps=1))


def test_grpo_groups_share_their_prompt_and_train_the_same(tmp_path, rule_reward, monkeypatch):
    """train.share_prompt: each prompt of a group runs once in the reference and update passes, and two steps
    end at the weights of the full-row computation (float rounding apart)."""
    import tether.models.shared_prefix as sp
    from tether.config import ModelConfig
    from tether.models.load import load_causal_lm

    lengths = FunctionReward(lambda prompts, responses: [float(len(r)) for r in responses], "length")  # differs within groups
    monkeypatch.setattr(online, "load_reward", lambda *args, **kwargs: lengths)
    shared_calls = []
    real = sp.shared_forward
    monkeypatch.setattr(sp, "shared_forward", lambda *a, **k: shared_calls.append(1) or real(*a, **k))
    weights = {}
    for share in (True, False):
        (tmp_path / str(share)).mkdir()
        cfg = _config(tmp_path / str(share), "grpo", steps=2)
        cfg.train.share_prompt = share
        path = train_grpo(cfg)
        weights[share] = load_causal_lm(ModelConfig(name_or_path=str(path)), torch.device("cpu"))[0].state_dict()
        # sharing on: the fresh policy pass and the reference pass of the rollout, 2 epochs x 2 minibatches of
        # updates (minibatches of whole or split groups; a split group still shares); off: no more calls
        assert len(shared_calls) == 2 * (2 + 2 * 2)
    initial = load_causal_lm(ModelConfig(name_or_path="tiny-llama"), torch.device("cpu"))[0].state_dict()
    moved = max((weights[True][k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-4
    for k in initial:
        torch.testing.assert_close(weights[True][k], weights[False][k], rtol=1e-4, atol=1e-5, msg=k)
