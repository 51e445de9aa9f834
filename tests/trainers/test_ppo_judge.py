"""The held-out judge monitor of PPO (docs/architecture.md 6.9): the stopping rule and a run that triggers it."""

import json

import pytest

from tether.config import PPOConfig
from tether.errors import ConfigError
from tether.models.reward import RewardModel
from tether.models.tiny import tiny_sequence_classifier
from tether.trainers.online import reward_hacking_suspected
from tether.trainers.ppo import train_ppo


def test_judge_falling_while_training_score_rises_is_hacking():
    # judge 0.5 -> 0.4 -> 0.3 (two falls), training score 0.1 -> 0.9: suspected with patience 2
    assert reward_hacking_suspected([(0.5, 0.1), (0.4, 0.5), (0.3, 0.9)], patience=2)


def test_no_hacking_when_judge_recovers_or_training_score_falls():
    assert not reward_hacking_suspected([(0.5, 0.1), (0.4, 0.5), (0.45, 0.9)], patience=2)  # judge went back up
    assert not reward_hacking_suspected([(0.5, 0.9), (0.4, 0.5), (0.3, 0.1)], patience=2)  # both fall: not hacking
    assert not reward_hacking_suspected([(0.5, 0.1), (0.4, 0.5)], patience=2)  # too short to tell


def _prompts(path, n=12):
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"prompt": f"question number {i}: what is {i} plus {i}?"}) + "\n")
    return str(path)


def test_judge_requires_held_out_prompts(tmp_path):
    judge_dir = tmp_path / "judge"
    RewardModel(*tiny_sequence_classifier("bert", seed=1)).save(judge_dir)
    cfg = PPOConfig(
        model={"name_or_path": "tiny-llama"}, reward_model={"path": "tiny-bert"},
        data={"train": _prompts(tmp_path / "p.jsonl")}, judge={"path": str(judge_dir)},
        output_dir=str(tmp_path / "run"),
    )
    with pytest.raises(ConfigError, match="held-out prompts"):
        train_ppo(cfg)


def test_judge_scores_are_logged(tmp_path):
    judge_dir = tmp_path / "judge"
    RewardModel(*tiny_sequence_classifier("bert", seed=1)).save(judge_dir)
    prompts = _prompts(tmp_path / "p.jsonl")
    cfg = PPOConfig(
        model={"name_or_path": "tiny-llama"}, reward_model={"path": "tiny-bert"},
        data={"train": prompts, "eval": prompts, "max_prompt_length": 32},
        generation={"max_new_tokens": 6}, rollout={"batch_size": 4, "num_epochs": 1, "num_minibatches": 1},
        judge={"path": str(judge_dir), "every": 1, "num_prompts": 4},
        train={"max_steps": 2}, output_dir=str(tmp_path / "run"),
    )
    out = train_ppo(cfg)
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    judged = [r for r in rows if "judge/score" in r]
    assert [r["step"] for r in judged] == [1, 2]
    assert all(isinstance(r["judge/score"], float) for r in judged)
