"""What `tether eval` measured: the result dataclasses that the evaluation fills and the report reads.

`PolicyEvalResult.to_json()` is the content of eval.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tether.config import GenerationConfig
from tether.eval.metrics import LengthControlledWinRate, WinRate


@dataclass
class AnswerStats:
    """Length, stopping and diversity of one model's answers."""

    mean_length: float  # response tokens before EOS
    eos_fraction: float  # fraction of responses that emitted EOS
    distinct_1: float
    distinct_2: float

    def to_json(self) -> dict[str, float]:
        return {
            "mean_length": self.mean_length, "eos_fraction": self.eos_fraction,
            "distinct_1": self.distinct_1, "distinct_2": self.distinct_2,
        }


@dataclass
class RewardModelResult:
    """Both models' answers under one reward model."""

    name: str
    path: str
    baseline_scores: list[float]  # (N,)
    policy_scores: list[float]  # (N,)
    win_rate: WinRate  # policy over baseline, ties half
    score_diff_ci: tuple[float, float]  # 95% bootstrap CI of mean(policy - baseline)
    lc_win_rate: LengthControlledWinRate | None = None  # the win rate at equal answer lengths (eval/metrics.py)

    @property
    def baseline_mean_score(self) -> float:
        return float(np.mean(self.baseline_scores))

    @property
    def policy_mean_score(self) -> float:
        return float(np.mean(self.policy_scores))

    @property
    def score_diff(self) -> float:
        return self.policy_mean_score - self.baseline_mean_score

    def to_json(self) -> dict:
        wr = self.win_rate
        return {
            "name": self.name, "path": self.path,
            "baseline_mean_score": self.baseline_mean_score, "policy_mean_score": self.policy_mean_score,
            "score_diff": self.score_diff, "score_diff_ci": list(self.score_diff_ci),
            "win_rate": wr.win_rate, "win_rate_ci": [wr.ci_low, wr.ci_high],
            "wins": wr.wins, "ties": wr.ties, "losses": wr.losses,
            **({"lc_win_rate": self.lc_win_rate.rate, "lc_win_rate_ci": [self.lc_win_rate.low, self.lc_win_rate.high],
                "lc_length_coef": self.lc_win_rate.length_coef} if self.lc_win_rate is not None else {}),
        }


@dataclass
class Sample:
    """One prompt with both answers."""

    prompt: str
    baseline: str
    policy: str
    kl: float  # summed log-ratio of the policy's answer
    baseline_ended: bool
    policy_ended: bool


@dataclass
class PolicyEvalResult:
    """Everything `evaluate_policies` measured; `to_json()` is the content of eval.json."""

    n_prompts: int
    baseline_path: str
    policy_path: str
    prompts_path: str
    split: str
    reward_models: list[RewardModelResult]
    baseline: AnswerStats
    policy: AnswerStats
    kl: float  # mean summed KL(policy || baseline) per response, nats
    kl_ci: tuple[float, float]
    generation: GenerationConfig
    seed: int
    samples: list[Sample] = field(default_factory=list)
    output_dir: str = ""

    def to_json(self) -> dict:
        """The eval.json dict; top-level score keys refer to the first reward model."""
        first = self.reward_models[0].to_json()
        return {
            "n_prompts": self.n_prompts,
            "reward_model": first["name"],
            "baseline_mean_score": first["baseline_mean_score"],
            "policy_mean_score": first["policy_mean_score"],
            "score_diff": first["score_diff"],
            "score_diff_ci": first["score_diff_ci"],
            "win_rate": first["win_rate"],
            "win_rate_ci": first["win_rate_ci"],
            "kl": self.kl,
            "kl_ci": list(self.kl_ci),
            "reward_models": [rm.to_json() for rm in self.reward_models],
            "baseline": {"path": self.baseline_path, **self.baseline.to_json()},
            "policy": {"path": self.policy_path, **self.policy.to_json()},
            "generation": self.generation.model_dump(mode="json"),
            "prompts": self.prompts_path,
            "split": self.split,
            "seed": self.seed,
            "output_dir": self.output_dir,
        }
