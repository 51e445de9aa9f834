"""One TRL benchmark run in this process, timed per step like the tether worker.

Runs in bench/.venv-trl (latest TRL: grpo, dpo, rm, sft) or bench/.venv-trl112 (trl 1.12.0: ppo, the last
release with PPOTrainer); tether is not imported. Settings are the tether worker's (same defaults), mapped
to TRL's arguments so both sides do the same work:

- ppo: PPOTrainer (trl.experimental.ppo): rollout batch `batch` prompts, `num_mini_batches=minibatches`,
  `num_ppo_epochs=epochs`, `response_length=new_tokens`, truncation after EOS; policy, frozen reference (or the
  LoRA base), reward model and a value model initialised from the reward model's files, as tether's
  `value_init: reward_model`. One TRL update (generate, score, `epochs` passes of minibatches) is one step.
- grpo: GRPOTrainer, `prompts * group` completions per step, `num_generations=group`, one optimizer step per
  generation (`num_iterations=1`, `steps_per_generation=1`), `beta` > 0 so the reference model is loaded, the
  same rule-based reward function (bench/harness.py).
- dpo: DPOTrainer, sigmoid loss, a reference model, batch `batch` pairs; rm: RewardTrainer (Bradley-Terry),
  batch `batch` pairs; sft: SFTTrainer on prompt/completion rows, loss on completions. One optimizer step each.

Everywhere: float32 (or bf16 autocast when `bf16`), fused torch AdamW (`adamw_torch_fused`, the Trainer
default since torch 2.8, and what tether uses) at the same constant learning rate, no gradient checkpointing (TRL's default is on), no warm-up, `threads` torch
threads, checkpoints off, metrics logged every step (tether logs every step too). A `TrainerCallback`
stamps the step clock in `on_step_end`.

    bench/.venv-trl/bin/python bench/worker_trl.py dpo '{"model": "small"}' --out result.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from worker_tether import LORA, settings_for  # noqa: E402  (settings only; imports no tether code)


def common_args(s: dict, out_dir: str) -> dict:
    return dict(
        output_dir=out_dir, learning_rate=s["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        optim="adamw_torch_fused", max_grad_norm=1.0, seed=s["seed"], use_cpu=True, bf16=s["bf16"], fp16=False,
        gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True,
        dataloader_num_workers=0,
    )


def timing_callback(clock: harness.StepClock):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.mark()

    return StepTimer()


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(harness.manifest()["tokenizer"])


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules=LORA["target_modules"], task_type="CAUSAL_LM")


def data(name: str):
    from datasets import Dataset

    return Dataset.from_list(harness.read_jsonl(Path(harness.manifest()["data"]["dir"]) / name))


def run_ppo(s: dict, clock: harness.StepClock, out_dir: str) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    m = harness.manifest()
    model = m["models"][s["model"]]
    tok = tokenizer()
    tok.padding_side = "left"
    prompts = [r["prompt"] for r in harness.read_jsonl(Path(m["data"]["dir"]) / "prompts.jsonl")]
    n = s["batch"] * (s["warmup"] + s["steps"])
    ids = [tok(p)["input_ids"][-m["data"]["prompt_tokens"] :] for p in prompts[:n]]
    load = dict(dtype=torch.float32)
    policy = AutoModelForCausalLM.from_pretrained(model["policy"], **load)
    ref = None if s["lora"] else AutoModelForCausalLM.from_pretrained(model["policy"], **load)
    reward = AutoModelForSequenceClassification.from_pretrained(model["reward"], num_labels=1, **load)
    value = AutoModelForSequenceClassification.from_pretrained(model["reward"], num_labels=1, **load)
    args = PPOConfig(
        **common_args(s, out_dir), per_device_train_batch_size=s["batch"], gradient_accumulation_steps=1,
        num_mini_batches=s["minibatches"], num_ppo_epochs=s["epochs"], response_length=s["new_tokens"],
        total_episodes=n, local_rollout_forward_batch_size=s["batch"], num_sample_generations=0, stop_token="eos",
        kl_coef=s["kl_coef"], temperature=1.0, missing_eos_penalty=1.0,
    )
    trainer = PPOTrainer(
        args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward, value_model=value,
        train_dataset=Dataset.from_dict({"input_ids": ids}), eval_dataset=Dataset.from_dict({"input_ids": ids[:8]}),
        peft_config=lora_config() if s["lora"] else None, callbacks=[timing_callback(clock)],
    )
    trainer.train()


def run_grpo(s: dict, clock: harness.StepClock, out_dir: str) -> None:
    from trl import GRPOConfig, GRPOTrainer

    model = harness.manifest()["models"][s["model"]]
    args = GRPOConfig(
        **common_args(s, out_dir), per_device_train_batch_size=s["prompts"] * s["group"], gradient_accumulation_steps=1,
        num_generations=s["group"], max_completion_length=s["new_tokens"], num_iterations=1, steps_per_generation=1,
        beta=s["beta"], temperature=1.0, top_k=0, top_p=1.0, max_steps=s["warmup"] + s["steps"],
        model_init_kwargs={"dtype": "float32"}, disable_dropout=True, log_completions=False,
    )
    trainer = GRPOTrainer(model=model["policy"], reward_funcs=[harness.letter_reward], args=args,
                          train_dataset=data("prompts.jsonl"), processing_class=tokenizer(), callbacks=[timing_callback(clock)])
    trainer.train()


def run_dpo(s: dict, clock: harness.StepClock, out_dir: str) -> None:
    from trl import DPOConfig, DPOTrainer

    m = harness.manifest()
    args = DPOConfig(
        **common_args(s, out_dir), per_device_train_batch_size=s["batch"], gradient_accumulation_steps=1,
        max_steps=s["warmup"] + s["steps"], max_length=m["data"]["seq_tokens"], beta=s["beta"], loss_type=["sigmoid"],
        precompute_ref_log_probs=False, model_init_kwargs={"dtype": "float32"},
    )
    trainer = DPOTrainer(model=m["models"][s["model"]]["policy"], args=args, train_dataset=data("pairs.jsonl"),
                         processing_class=tokenizer(), callbacks=[timing_callback(clock)])
    trainer.train()


def run_rm(s: dict, clock: harness.StepClock, out_dir: str) -> None:
    from trl import RewardConfig, RewardTrainer

    m = harness.manifest()
    args = RewardConfig(
        **common_args(s, out_dir), per_device_train_batch_size=s["batch"], gradient_accumulation_steps=1,
        max_steps=s["warmup"] + s["steps"], max_length=m["data"]["seq_tokens"], model_init_kwargs={"dtype": "float32"},
    )
    trainer = RewardTrainer(model=m["models"][s["model"]]["reward"], args=args, train_dataset=data("pairs.jsonl"),
                            processing_class=tokenizer(), callbacks=[timing_callback(clock)])
    trainer.train()


def run_sft(s: dict, clock: harness.StepClock, out_dir: str) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    m = harness.manifest()
    rows = harness.read_jsonl(Path(m["data"]["dir"]) / "sft.jsonl")
    # tether's reply follows 'Assistant:' after one space (format_response); the same text here
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": " " + r["response"]} for r in rows])
    args = SFTConfig(
        **common_args(s, out_dir), per_device_train_batch_size=s["batch"], gradient_accumulation_steps=1,
        max_steps=s["warmup"] + s["steps"], max_length=m["data"]["seq_tokens"], packing=False, completion_only_loss=True,
        model_init_kwargs={"dtype": "float32"},
    )
    trainer = SFTTrainer(model=m["models"][s["model"]]["policy"], args=args, train_dataset=dataset,
                         processing_class=tokenizer(), callbacks=[timing_callback(clock)])
    trainer.train()


RUNNERS = {"ppo": run_ppo, "grpo": run_grpo, "dpo": run_dpo, "rm": run_rm, "sft": run_sft}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=sorted(RUNNERS))
    ap.add_argument("settings", nargs="?", default="{}")
    ap.add_argument("--out")
    args = ap.parse_args()
    s = settings_for(args.name, json.loads(args.settings))
    harness.set_threads(s["threads"])
    import transformers  # noqa: F401
    import trl  # noqa: F401

    floor = harness.rss_mb()
    with harness.TokenCounter() as counter, tempfile.TemporaryDirectory() as tmp:
        clock = harness.StepClock(counter)
        RUNNERS[args.name](s, clock, tmp)
    harness.write_result(args.out, harness.record(args.name, "trl", s, clock, floor))


if __name__ == "__main__":
    main()
