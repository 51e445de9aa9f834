"""Divergence guards of PPO and GRPO: non-finite losses, exploding KL, broken reward scores; GRPO's judge."""

import json

import pytest
import torch

import tether.trainers.ppo as ppo_module
from tether.config import PPOConfig
from tether.config import GuardConfig
from tether.errors import TrainingError
from tether.trainers.online import divergence
from tether.trainers.ppo import train_ppo


def _config(tmp_path, **guards) -> PPOConfig:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}?"}) + "\n" for i in range(8)))
    return PPOConfig(
        model={"name_or_path": "tiny-llama"}, reward_model={"path": "tiny-bert"},
        data={"train": str(prompts), "max_prompt_length": 32}, generation={"max_new_tokens": 6},
        rollout={"batch_size": 4, "num_epochs": 1, "num_minibatches": 2}, guards=guards,
        train={"max_steps": 3}, output_dir=str(tmp_path / "run"),
    )


@pytest.fixture
def nan_policy_loss(monkeypatch):
    original = ppo_module.ppo_policy_loss

    def loss(*args, **kwargs):
        value, metrics = original(*args, **kwargs)
        return value * float("nan"), metrics

    monkeypatch.setattr(ppo_module, "ppo_policy_loss", loss)


def test_nonfinite_loss_stops_and_saves_the_last_good_state(tmp_path, nan_policy_loss):
    with pytest.raises(TrainingError, match=r"step 1: non-finite loss.*saved in .*step-1"):
        train_ppo(_config(tmp_path))
    assert (tmp_path / "run" / "checkpoints" / "step-1" / "trainer_state.pt").is_file()


def test_nonfinite_updates_are_skipped_without_touching_the_weights(tmp_path, nan_policy_loss):
    captured = {}
    original_load = ppo_module.load_roles

    def load(*args, **kwargs):
        captured["m"] = m = original_load(*args, **kwargs)
        captured["before"] = {k: v.clone() for k, v in m.policy.state_dict().items()}
        return m

    ppo_module.load_roles = load
    try:
        out = train_ppo(_config(tmp_path, on_nonfinite="skip", max_skipped=100))
    finally:
        ppo_module.load_roles = original_load
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["guard/skipped"] for r in rows] == [2.0, 2.0, 2.0]  # 1 epoch x 2 minibatches per step
    after = captured["m"].policy.state_dict()
    assert all(torch.equal(after[k], v) for k, v in captured["before"].items())


def test_too_many_skipped_updates_stop_the_run(tmp_path, nan_policy_loss):
    with pytest.raises(TrainingError, match="step 2: 4 updates skipped"):
        train_ppo(_config(tmp_path, on_nonfinite="skip", max_skipped=3))


def test_reward_scores_out_of_range_stop_the_run(tmp_path):
    with pytest.raises(TrainingError, match="step 1: reward-model scores out of range"):
        train_ppo(_config(tmp_path, score_range=[100.0, 200.0]))


def test_divergence_rules():
    g = GuardConfig(max_kl=5.0, min_entropy=0.5, score_range=(-10.0, 10.0))
    ok = {"objective/kl": 1.0, "policy/entropy": 2.0}
    assert divergence(g, ok, torch.tensor([0.0, 1.0])) is None
    assert "KL" in divergence(g, {**ok, "objective/kl": 6.0}, torch.tensor([0.0]))
    assert "entropy collapsed" in divergence(g, {**ok, "policy/entropy": 0.1}, torch.tensor([0.0]))
    assert "out of range" in divergence(g, ok, torch.tensor([float("nan")]))
    assert "out of range" in divergence(g, ok, torch.tensor([11.0]))


# GRPO honours the same guards and judge through trainers/online.py


def _grpo_config(tmp_path, guards=None, **top):
    from tether.config import GRPOConfig

    tmp_path.mkdir(parents=True, exist_ok=True)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}?"}) + "\n" for i in range(8)))
    return GRPOConfig(
        model={"name_or_path": "tiny-llama"}, reward_model={"path": "tiny-bert"},
        data={"train": str(prompts), "eval": str(prompts), "max_prompt_length": 32}, generation={"max_new_tokens": 6},
        rollout={"batch_size": 2, "num_epochs": 1, "num_minibatches": 2}, grpo={"group_size": 2}, guards=guards or {},
        output_dir=str(tmp_path / "run"), **{"train": {"max_steps": 3}, **top},
    )


@pytest.fixture
def nan_grpo_loss(monkeypatch):
    import tether.trainers.grpo as grpo_module

    original = grpo_module.ppo_policy_loss
    monkeypatch.setattr(grpo_module, "ppo_policy_loss", lambda *a, **k: (lambda v, m: (v * float("nan"), m))(*original(*a, **k)))


def test_grpo_stops_on_a_nonfinite_loss_and_saves_the_state(tmp_path, nan_grpo_loss):
    from tether.trainers.grpo import train_grpo

    with pytest.raises(TrainingError, match=r"step 1: non-finite loss.*saved in .*step-1"):
        train_grpo(_grpo_config(tmp_path))
    assert (tmp_path / "run" / "checkpoints" / "step-1" / "trainer_state.pt").is_file()


def test_grpo_skips_nonfinite_updates_when_asked_and_stops_after_too_many(tmp_path, nan_grpo_loss):
    from tether.trainers.grpo import train_grpo

    out = train_grpo(_grpo_config(tmp_path / "a", {"on_nonfinite": "skip", "max_skipped": 100}))
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["guard/skipped"] for r in rows] == [2.0, 2.0, 2.0]  # 1 epoch x 2 minibatches per step
    with pytest.raises(TrainingError, match="step 2: 4 updates skipped"):
        train_grpo(_grpo_config(tmp_path / "b", {"on_nonfinite": "skip", "max_skipped": 3}))


def test_grpo_trips_the_score_guard_and_logs_the_judge(tmp_path):
    from tether.trainers.grpo import train_grpo

    judge = {"path": "tiny-bert", "every": 1, "num_prompts": 2}
    with pytest.raises(TrainingError, match="step 1: reward-model scores out of range.*saved in"):
        train_grpo(_grpo_config(tmp_path / "a", {"score_range": [100.0, 200.0]}))
    out = train_grpo(_grpo_config(tmp_path / "b", judge=judge))
    judged = [json.loads(line) for line in open(out / "metrics.jsonl") if "judge/score" in line]
    assert [r["step"] for r in judged] == [1, 2, 3]


def test_grpo_refuses_the_entropy_guard_it_cannot_measure():
    from tether.config import GRPOConfig, validate
    from tether.errors import ConfigError

    with pytest.raises(ConfigError, match="guards.min_entropy needs the policy's entropy"):
        validate(GRPOConfig, {"model": {"name_or_path": "tiny-llama"}, "reward_model": {"path": "tiny-bert"},
                              "data": {"train": "p.jsonl"}, "guards": {"min_entropy": 0.1}, "output_dir": "o"})
