"""Hardware ceiling for MFU: fp32 and bf16 matmul TFLOP/s on this CPU at a given thread count.

Shapes: large squares, and the (tokens x hidden) @ (hidden x out) products the benchmark models run per
layer (QKV/O projections, MLP up/down, LM head) at 1024 tokens (8 sequences of 128). Each shape is timed
with `torch.mm` after a warm-up, best of `repeats` (the machine is shared: the best is the least disturbed);
the ceiling of a dtype is the best rate over all shapes. FLOPs of an (m x k) @ (k x n) product: 2mkn.

    python bench/matmul_ceiling.py --threads 1 --out bench/results/ceiling.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

SQUARES = [512, 1024, 2048]
TOKENS = 1024
MODEL_SHAPES = {  # hidden, intermediate of bench/prepare.py SIZES; vocab 8192
    "small": (256, 704),
    "large": (512, 1408),
}
VOCAB = 8192


def shapes() -> list[tuple[str, int, int, int]]:
    out = [(f"square {n}", n, n, n) for n in SQUARES]
    for name, (h, i) in MODEL_SHAPES.items():
        out += [
            (f"{name} proj {TOKENS}x{h}x{h}", TOKENS, h, h),
            (f"{name} mlp up {TOKENS}x{h}x{i}", TOKENS, h, i),
            (f"{name} mlp down {TOKENS}x{i}x{h}", TOKENS, i, h),
            (f"{name} lm head {TOKENS}x{h}x{VOCAB}", TOKENS, h, VOCAB),
        ]
    return out


def rate(m: int, k: int, n: int, dtype, repeats: int, min_seconds: float = 0.2) -> float:
    """Best TFLOP/s of `torch.mm` on (m x k) @ (k x n) over `repeats` timed batches of calls."""
    import torch

    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    torch.mm(a, b)
    calls = 1
    while True:  # calls per batch so that one batch lasts about min_seconds
        t = time.perf_counter()
        for _ in range(calls):
            torch.mm(a, b)
        if time.perf_counter() - t >= min_seconds or calls >= 1 << 14:
            break
        calls *= 2
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - t) / calls)
    return 2 * m * k * n / best / 1e12


def measure(threads: int, repeats: int = 5, dtypes: tuple[str, ...] = ("float32", "bfloat16")) -> dict:
    import torch

    torch.set_num_threads(threads)
    rows = []
    for dtype in dtypes:
        for label, m, k, n in shapes():
            rows.append({"dtype": dtype, "shape": label, "m": m, "k": k, "n": n,
                         "tflops": rate(m, k, n, getattr(torch, dtype), repeats)})
    ceiling = {d: max(r["tflops"] for r in rows if r["dtype"] == d) for d in dtypes}
    return {"threads": threads, "torch": torch.__version__, "loadavg": os.getloadavg(), "ceiling_tflops": ceiling, "shapes": rows}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out")
    args = ap.parse_args()
    result = measure(args.threads, args.repeats)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    for r in result["shapes"]:
        print(f"{r['dtype']:>9} {r['shape']:<32} {r['tflops'] * 1000:8.1f} GFLOP/s")
    print("ceiling:", {k: f"{v * 1000:.1f} GFLOP/s" for k, v in result["ceiling_tflops"].items()})
