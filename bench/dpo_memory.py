"""Peak memory of DPO with the reference shared through LoRA vs a separate frozen reference copy.

Every run trains the same Llama-style model (built from a config, random weights, saved once) on the
same synthetic preference pairs for a few steps, each in a fresh subprocess so peaks do not mix:

- lora:      LoRA adapters, reference = the policy with adapters disabled (one copy of the weights);
- lora_copy: the same LoRA run with a separate frozen reference copy (two copies of the weights);
- full_copy: full fine-tuning with a frozen copy (adds gradients and AdamW state for every weight).

Printed as JSON: per run the peak resident set size (ru_maxrss), the RSS after imports (the Python,
torch and transformers floor, the same in every run), the peak above that floor, the peaks of each phase
(load: model loading and the reference copy; train: the training loop; save: merging and writing), and on
CUDA the peak allocated GPU memory; then the ratios lora / lora_copy.

    python bench/dpo_memory.py --hidden 1024 --layers 16 --batch-size 2 --max-length 128 --steps 2
    python bench/dpo_memory.py --no-gradient-checkpointing     # hidden 512, 8 layers: activations dominate
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = {
    "lora": {"lora": True, "reference": "lora"},
    "lora_copy": {"lora": True, "reference": "copy"},
    "full_copy": {"lora": False, "reference": "copy"},
}
WORDS = "the a model answer question safe harm help please cannot will would should because people time".split()


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_model(out: Path, hidden: int, layers: int) -> int:
    """Save a random-init Llama-style model with the byte tokenizer; returns its parameter count."""
    import torch
    from transformers import AutoModelForCausalLM

    from tether.models.tiny import byte_tokenizer, tiny_config

    tok = byte_tokenizer()
    cfg = tiny_config("llama", tok, hidden_size=hidden, num_layers=layers, num_heads=max(1, hidden // 64), max_positions=1024)
    cfg.intermediate_size = int(hidden * 8 / 3) // 64 * 64
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def write_pairs(path: Path, n: int, words: int) -> None:
    rng = random.Random(0)
    text = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    with open(path, "w") as fh:
        for _ in range(n):
            fh.write(json.dumps({"prompt": text(words), "chosen": text(words), "rejected": text(words)}) + "\n")


def child(args) -> None:
    """One training run in this process; prints one JSON line."""
    import torch

    from tether.config import DataConfig, DPOConfig, DPOParams, LoRAConfig, ModelConfig, PairTrainConfig
    from tether.trainers.dpo import train_dpo

    import threading
    import time

    from tether.trainers import dpo as dpo_trainer

    floor = rss_mb()
    mode = MODES[args.child]
    # sample RSS in the background and mark the phases: load, train (optimizer made -> save), save
    phase, peaks, done = ["load"], {"load": 0.0, "train": 0.0, "save": 0.0}, threading.Event()

    def sample() -> None:
        while not done.is_set():
            peaks[phase[0]] = max(peaks[phase[0]], rss_mb())
            time.sleep(0.01)

    def mark(name: str, fn):
        def wrapped(*a, **k):
            peaks[phase[0]] = max(peaks[phase[0]], rss_mb())
            phase[0] = name
            return fn(*a, **k)
        return wrapped

    dpo_trainer.make_optimizer = mark("train", dpo_trainer.make_optimizer)
    dpo_trainer.save_causal_lm = mark("save", dpo_trainer.save_causal_lm)
    threading.Thread(target=sample, daemon=True).start()
    cfg = DPOConfig(
        model=ModelConfig(
            name_or_path=args.model, lora=LoRAConfig(enabled=mode["lora"], r=16, alpha=32),
            gradient_checkpointing=args.gradient_checkpointing,
        ),
        data=DataConfig(train=args.data, max_length=args.max_length, max_prompt_length=args.max_length // 2),
        train=PairTrainConfig(batch_size=args.batch_size, max_steps=args.steps, learning_rate=1e-4, log_every=1, device=args.device),
        dpo=DPOParams(reference=mode["reference"]),
        output_dir=args.out,
    )
    train_dpo(cfg)
    done.set()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {"mode": args.child, "peak_rss_mb": round(peak, 1), "floor_rss_mb": round(floor, 1), "peak_above_floor_mb": round(peak - floor, 1),
           "train_peak_rss_mb": round(peaks["train"], 1), "load_peak_rss_mb": round(peaks["load"], 1), "save_peak_rss_mb": round(peaks["save"], 1)}
    if torch.cuda.is_available() and args.device == "cuda":
        row["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print("RESULT " + json.dumps(row), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help="recompute activations in the backward pass (as one does for models that fill memory)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads in each run")
    p.add_argument("--child", choices=sorted(MODES), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        child(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n_params = build_model(root / "model", args.hidden, args.layers)
        write_pairs(root / "pairs.jsonl", n=args.batch_size * args.steps, words=args.max_length // 16)
        results = {}
        for mode in MODES:
            cmd = [sys.executable, __file__, "--child", mode, "--model", str(root / "model"), "--data", str(root / "pairs.jsonl"),
                   "--out", str(root / f"run_{mode}"), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                   "--max-length", str(args.max_length), "--device", args.device]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            cmd += ["--gradient-checkpointing" if args.gradient_checkpointing else "--no-gradient-checkpointing"]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
            results[mode] = json.loads(lines[-1][len("RESULT "):])
    lora, copy_ = results["lora"], results["lora_copy"]
    summary = {
        "model": {"hidden": args.hidden, "layers": args.layers, "parameters": n_params, "fp32_mb": round(n_params * 4 / 2**20, 1)},
        "settings": {"steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length, "device": args.device,
                     "gradient_checkpointing": args.gradient_checkpointing},
        "runs": results,
        "ratio_peak_rss": round(lora["peak_rss_mb"] / copy_["peak_rss_mb"], 3),
        "ratio_peak_above_floor": round(lora["peak_above_floor_mb"] / copy_["peak_above_floor_mb"], 3),
        "ratio_train_peak_rss": round(lora["train_peak_rss_mb"] / copy_["train_peak_rss_mb"], 3),
    }
    if "cuda_peak_mb" in lora:
        summary["ratio_cuda_peak"] = round(lora["cuda_peak_mb"] / copy_["cuda_peak_mb"], 3)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
