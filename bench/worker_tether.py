"""One tether benchmark run in this process (tether's venv): train_* for warmup + steps steps, timed per step.

    python bench/worker_tether.py ppo '{"model": "small", "lora": false}' --out result.json

Every training benchmark calls tether's public entry point (`train_ppo`, `train_grpo`, `train_dpo`,
`train_reward`, `train_sft`) with a config built from the settings; `RunDir.log`, called once at the end of
every step, is wrapped to stamp the step clock (see bench/harness.py). `generate` times tether's rollout
generation (`tether.rollout.generate.generate`) or plain Hugging Face `model.generate` on the same model
and prompts (settings `engine`: tether, tether_logprobs or hf); one call is one step.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

DEFAULTS = {
    "common": {"model": "small", "threads": 1, "warmup": 1, "steps": 5, "lr": 1e-5, "seed": 0, "bf16": False,
               "share_prompt": True},
    "ppo": {"batch": 8, "new_tokens": 32, "epochs": 4, "minibatches": 2, "lora": False, "kl_coef": 0.05},
    "grpo": {"prompts": 8, "group": 4, "new_tokens": 32, "beta": 0.04},
    "dpo": {"batch": 8, "beta": 0.1},
    "rm": {"batch": 8},
    "sft": {"batch": 8},
    "generate": {"batch": 8, "new_tokens": 64, "engine": "tether"},
}
LORA = {"enabled": True, "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}


def settings_for(name: str, given: dict) -> dict:
    """Defaults of benchmark `name` updated with `given`.

    Raises:
        SystemExit: an unknown benchmark or setting.
    """
    if name not in DEFAULTS or name == "common":
        raise SystemExit(f"unknown benchmark {name!r}; expected one of {[k for k in DEFAULTS if k != 'common']}")
    out = {**DEFAULTS["common"], **DEFAULTS[name]}
    unknown = set(given) - set(out)
    if unknown:
        raise SystemExit(f"unknown settings for {name}: {sorted(unknown)}")
    return {**out, **given}


def common_sections(s: dict, out_dir: str, data: str, max_length: int, online: bool = False) -> dict:
    """The train, data and output sections; offline stages also log every step with a constant learning rate."""
    m = harness.manifest()
    offline = {} if online else {"log_every": 1, "lr_scheduler": "constant", "warmup_ratio": 0.0}
    return {
        "train": {"learning_rate": s["lr"], "max_steps": s["warmup"] + s["steps"], "device": "cpu", "num_threads": s["threads"],
                  "seed": s["seed"], "precision": "bf16" if s["bf16"] else "fp32", "share_prompt": s["share_prompt"], **offline},
        "data": {"train": str(Path(m["data"]["dir"]) / data), "max_prompt_length": m["data"]["prompt_tokens"],
                 **({} if online else {"max_length": max_length})},
        "output_dir": out_dir, "overwrite": True,
    }


def ppo_config(s: dict, out_dir: str):
    from tether.config import PPOConfig, validate

    model = harness.manifest()["models"][s["model"]]
    raw = common_sections(s, out_dir, "prompts.jsonl", 512, online=True)
    raw.update(
        model={"name_or_path": model["policy"], **({"lora": LORA} if s["lora"] else {})},
        reward_model={"path": model["reward"], "batch_size": s["batch"], "max_length": 256},
        generation={"max_new_tokens": s["new_tokens"], "batch_size": s["batch"], "temperature": 1.0},
        rollout={"batch_size": s["batch"], "num_epochs": s["epochs"], "num_minibatches": s["minibatches"], "kl_coef": s["kl_coef"]},
        ppo={"value_init": "reward_model"},
    )
    return validate(PPOConfig, raw)


def grpo_config(s: dict, out_dir: str):
    from tether.config import GRPOConfig, validate

    model = harness.manifest()["models"][s["model"]]
    raw = common_sections(s, out_dir, "prompts.jsonl", 512, online=True)
    raw.update(
        model={"name_or_path": model["policy"]},
        reward_model={"function": "harness:letter_reward"},
        generation={"max_new_tokens": s["new_tokens"], "batch_size": s["prompts"] * s["group"], "temperature": 1.0},
        rollout={"batch_size": s["prompts"], "num_epochs": 1, "num_minibatches": 1, "kl_coef": s["beta"], "missing_eos_penalty": None,
                 "normalize_scores": False},
        grpo={"algorithm": "grpo", "group_size": s["group"], "kl_estimator": "k3"},
    )
    return validate(GRPOConfig, raw)


def dpo_config(s: dict, out_dir: str):
    from tether.config import DPOConfig, validate

    raw = common_sections(s, out_dir, "pairs.jsonl", harness.manifest()["data"]["seq_tokens"])
    raw["train"]["batch_size"] = s["batch"]
    raw.update(model={"name_or_path": harness.manifest()["models"][s["model"]]["policy"]},
               dpo={"loss": "sigmoid", "beta": s["beta"], "reference": "copy"})
    return validate(DPOConfig, raw)


def rm_config(s: dict, out_dir: str):
    from tether.config import RewardConfig, validate

    raw = common_sections(s, out_dir, "pairs.jsonl", harness.manifest()["data"]["seq_tokens"])
    raw["train"]["batch_size"] = s["batch"]
    raw.update(model={"name_or_path": harness.manifest()["models"][s["model"]]["reward"]}, normalize=False, select_best=False)
    return validate(RewardConfig, raw)


def sft_config(s: dict, out_dir: str):
    from tether.config import SFTConfig, validate

    raw = common_sections(s, out_dir, "sft.jsonl", harness.manifest()["data"]["seq_tokens"])
    raw["train"]["batch_size"] = s["batch"]
    raw["train"].pop("share_prompt")  # SFT examples share no prompt
    raw["model"] = {"name_or_path": harness.manifest()["models"][s["model"]]["policy"]}
    return validate(SFTConfig, raw)


def run_training(name: str, s: dict, clock: harness.StepClock) -> None:
    from tether.trainers import common
    from tether.trainers.dpo import train_dpo
    from tether.trainers.grpo import train_grpo
    from tether.trainers.ppo import train_ppo
    from tether.trainers.reward import train_reward
    from tether.trainers.sft import train_sft

    builders = {"ppo": (ppo_config, train_ppo), "grpo": (grpo_config, train_grpo), "dpo": (dpo_config, train_dpo),
                "rm": (rm_config, train_reward), "sft": (sft_config, train_sft)}
    build, train = builders[name]
    original_log = common.RunDir.log

    def log(self, step, metrics):
        if not any(k.startswith(("judge/", "eval/")) for k in metrics):
            clock.mark()
        return original_log(self, step, metrics)

    common.RunDir.log = log
    try:
        with tempfile.TemporaryDirectory() as tmp:
            train(build(s, str(Path(tmp) / "run")))
    finally:
        common.RunDir.log = original_log


def run_generate(s: dict, clock: harness.StepClock) -> dict:
    """Generation alone: tether's rollout `generate` or HF `model.generate`, same model, prompts and sampling."""
    import torch

    from tether.config import GenerationConfig, ModelConfig
    from tether.data.tokenize import left_pad, tokenize_prompts
    from tether.models.load import load_causal_lm
    from tether.rollout.generate import generate

    m = harness.manifest()
    torch.manual_seed(s["seed"])
    policy, tok = load_causal_lm(ModelConfig(name_or_path=m["models"][s["model"]]["policy"]), torch.device("cpu"))
    prompts = [r["prompt"] for r in harness.read_jsonl(Path(m["data"]["dir"]) / "prompts.jsonl")[: s["batch"]]]
    ids = tokenize_prompts(prompts, tok, "{prompt}", m["data"]["prompt_tokens"])
    gen = GenerationConfig(max_new_tokens=s["new_tokens"], temperature=1.0, top_k=0, top_p=1.0, batch_size=s["batch"])
    new_tokens = []
    for _ in range(s["warmup"] + s["steps"]):
        if s["engine"] == "hf":
            x, mask = left_pad(ids, tok.pad_token_id)
            with torch.no_grad():
                out = policy.generate(input_ids=x, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                      max_new_tokens=s["new_tokens"], pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            new_tokens.append(out.shape[0] * (out.shape[1] - x.shape[1]))
        else:
            g = generate(policy, tok, ids, gen, torch.device("cpu"), return_sampling_logprobs=s["engine"] == "tether_logprobs")
            new_tokens.append(g.responses.numel())
        clock.mark()
    timed = new_tokens[s["warmup"] :]
    return {"generated_tokens_per_step": sum(timed) / len(timed)}


def run(name: str, given: dict) -> dict:
    """Run benchmark `name` with settings `given` (over the defaults) in this process; returns its record."""
    s = settings_for(name, given)
    harness.set_threads(s["threads"])
    import tether  # noqa: F401  (its version goes into the record)
    import transformers  # noqa: F401

    floor = harness.rss_mb()
    with harness.TokenCounter() as counter:
        clock = harness.StepClock(counter)
        extra = run_generate(s, clock) if name == "generate" else {}
        if name != "generate":
            run_training(name, s, clock)
    rec = harness.record(name, "tether", s, clock, floor, extra)
    if name == "generate":
        rec["tokens_per_s"] = extra["generated_tokens_per_step"] / rec["median_s"]
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("settings", nargs="?", default="{}", help="JSON object of settings (see DEFAULTS)")
    ap.add_argument("--out", help="write the JSON record here instead of stdout")
    args = ap.parse_args()
    harness.write_result(args.out, run(args.name, json.loads(args.settings)))


if __name__ == "__main__":
    main()
