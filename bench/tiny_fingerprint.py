"""Run every configs/*_tiny.yaml on one thread in fp32 and print a fingerprint of what each wrote.

A refactor that must not change results runs this before and after and compares the two outputs:

    python bench/tiny_fingerprint.py /tmp/before > before.txt
    ... change the code ...
    python bench/tiny_fingerprint.py /tmp/after > after.txt && diff before.txt after.txt

Weights (`*.safetensors`) are hashed byte for byte; `metrics.jsonl`, the JSONL outputs and the summaries are
hashed without their wall-clock fields, with the output directory replaced by a placeholder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# (name, command, config, extra overrides); the KTO data is converted first (see configs/kto_tiny.yaml)
RUNS = [
    ("pretrain", "pretrain", "pretrain_tiny", []), ("sft", "sft", "sft_tiny", []), ("rm", "rm", "rm_tiny", []),
    ("rm_ensemble", "rm", "rm_ensemble_tiny", ["on_chance=warn"]), ("dpo", "dpo", "dpo_tiny", []), ("kto", "dpo", "kto_tiny", []),
    ("ppo", "ppo", "ppo_tiny", []), ("grpo", "grpo", "grpo_tiny", []), ("cai", "cai", "cai_tiny", []),
    ("redteam", "redteam", "redteam_tiny", []), ("loop", "loop", "loop_tiny", []),
]
TRAINERS = {"pretrain", "sft", "rm", "dpo", "ppo", "grpo"}
CLOCK = ("time", "elapsed", "seconds", "per_s", "wall")


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not any(c in k for c in CLOCK)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def fingerprint(root: Path) -> list[str]:
    """`relative path  hash` of every weights file and JSON(L) result under `root`."""
    lines = []
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        if f.suffix == ".safetensors":
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
        elif f.suffix in (".jsonl", ".json") and "checkpoints" not in f.parts:
            text = f.read_text(encoding="utf-8").replace(str(root), "OUT")
            rows = [json.loads(line) for line in text.splitlines() if line.strip()] if f.suffix == ".jsonl" else json.loads(text)
            digest = hashlib.sha256(json.dumps(_strip(rows), sort_keys=True).encode()).hexdigest()
        else:
            continue
        lines.append(f"{f.relative_to(root)}  {digest[:16]}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="a fresh directory for the runs")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TETHER_CPU_BF16": "0", "PYTHONHASHSEED": "0"}
    kto = REPO / "runs" / "data" / "xstest_kto.jsonl.gz"
    if not kto.is_file():
        from tether.data.sources import xstest_to_binary_feedback

        xstest_to_binary_feedback(REPO.parent / "shared" / "data" / "xstest_labelled_completions" / "data.jsonl.gz", kto)
    failed = []
    for name, command, config, extra in RUNS:
        threads = ["train.num_threads=1"] if command in TRAINERS else []
        cmd = [sys.executable, "-m", "tether.cli", command, "--config", str(REPO / "configs" / f"{config}.yaml"),
               f"output_dir={args.out / name}", *threads, *extra]
        if subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
            failed.append(name)
    print("\n".join(fingerprint(args.out)))
    for name in failed:
        print(f"FAILED {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
