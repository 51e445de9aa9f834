"""Every stage of tether in one table: its command, config schema, the function that runs it, and its help line.

`tether STAGE` (cli.py), `tether run` (pipeline.py) and the tests look stages up here. Schemas and runners are
named by import path, so looking a stage up imports only what it needs: `tether --help` and the labelling app
never import torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from tether.config import Strict


@dataclass(frozen=True)
class Stage:
    schema: str  # "module:Class" of the config
    runner: str  # "module:function" taking the validated config
    help: str
    summary: str | None = None  # the file of the run directory that `--json` prints, if any


STAGES: dict[str, Stage] = {
    "pretrain": Stage("tether.config:PretrainConfig", "tether.trainers.pretrain:train_pretrain",
                      "train a byte-level BPE tokenizer and a small causal LM from scratch"),
    "sft": Stage("tether.config:SFTConfig", "tether.trainers.sft:train_sft",
                 "supervised fine-tuning (loss on response tokens only, optional LoRA)"),
    "rm": Stage("tether.config:RewardConfig", "tether.trainers.reward:train_reward",
                "train a reward model (Bradley-Terry, classifier, ensembles); `tether rm eval` evaluates one"),
    "ppo": Stage("tether.config:PPOConfig", "tether.trainers.ppo:train_ppo",
                 "PPO against a reward model with a per-token KL penalty to the frozen reference"),
    "dpo": Stage("tether.config:DPOConfig", "tether.trainers.dpo:train_dpo",
                 "DPO / IPO / KTO directly from preferences; `tether dpo eval` scores the implicit reward model"),
    "grpo": Stage("tether.config:GRPOConfig", "tether.trainers.grpo:train_grpo",
                  "critic-free online RL: GRPO, RLOO or REINFORCE++ against a reward model or a reward function"),
    "eval": Stage("tether.config:EvalConfig", "tether.eval.policy:evaluate_policies",
                  "baseline vs policy on the same prompts; writes eval.json and report.html", "eval.json"),
    "loop": Stage("tether.config:LoopConfig", "tether.loop:run_loop",
                  "rounds of feedback on the current policy: sample, label, refresh the reward model, PPO, evaluate", "loop.json"),
    "personalize": Stage("tether.config:PersonalizeConfig", "tether.personalize:run_personalize",
                         "a LoRA adapter per person from that person's own labels, on one shared base", "personalize.json"),
    "redteam": Stage("tether.redteam.config:RedteamConfig", "tether.redteam.run:run_redteam",
                     "attack suites against baseline and aligned models; attack success and refusal rates", "redteam.json"),
    "cai": Stage("tether.constitutional.config:CAIConfig", "tether.constitutional.run:run_cai",
                 "Constitutional AI: critique-revision SFT data and AI preference labels (RLAIF)"),
}
TRAINERS = ("pretrain", "sft", "rm", "ppo", "dpo", "grpo")  # write a model and print its directory


def _resolve(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def schema(name: str) -> type[Strict]:
    """The config class of stage `name` (KeyError for an unknown stage)."""
    return _resolve(STAGES[name].schema)


def runner(name: str) -> Callable:
    """The function that runs stage `name` on its validated config, imported on first use."""
    return _resolve(STAGES[name].runner)
