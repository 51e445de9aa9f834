"""Which attention kernel is fastest on this CPU: a forward and backward pass of the benchmarks' policy.

One training pass (forward with the LM head on the last 33 positions, as PPO's update does, then backward)
of the `small` policy of bench/.cache (bench/prepare.py), batch 4, one left-padded row, at several
sequence lengths, in float32 and under bf16 autocast, with three kernels:

- `sdpa`:  transformers' default, torch's scaled_dot_product_attention (the fused CPU kernel);
- `math`:  the same call restricted to torch's composite "math" backend;
- `eager`: transformers' plain implementation (matrix products, softmax in float32).

Prints the minimum CPU seconds over the timed passes of each, and writes them to
bench/.cache/attention_kernels.json. `tether`'s `model.attn_implementation: auto` follows what it shows
(src/tether/models/load.py::set_attention).

    python bench/attention_kernels.py                  # lengths 96 512 1024
    python bench/attention_kernels.py --lengths 96 --model large
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


def one_pass(model, ids, mask, bf16: bool) -> float:
    """CPU seconds of one forward + backward pass."""
    import torch

    t0 = time.process_time()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(input_ids=ids, attention_mask=mask, logits_to_keep=33)
    out.logits.float().logsumexp(-1).sum().backward()
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[96, 512, 1024])
    ap.add_argument("--model", default="small")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per case (after one warm-up)")
    args = ap.parse_args()
    harness.set_threads(args.threads)
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import AutoModelForCausalLM

    path = harness.manifest()["models"][args.model]["policy"]
    kernels = {"sdpa": ("sdpa", contextlib.nullcontext), "math": ("sdpa", lambda: sdpa_kernel(SDPBackend.MATH)),
               "eager": ("eager", contextlib.nullcontext)}
    rows = []
    for length in args.lengths:
        ids = torch.randint(5, 8000, (4, length), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        mask[0, : length // 8] = 0
        for bf16 in (False, True):
            row = {"length": length, "precision": "bf16 autocast" if bf16 else "float32"}
            for name, (impl, ctx) in kernels.items():
                model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=impl)
                with ctx():
                    one_pass(model, ids, mask, bf16)
                    row[name] = min(one_pass(model, ids, mask, bf16) for _ in range(args.repeats))
            rows.append(row)
            print(f"{length:>5} {row['precision']:>14}: " + ", ".join(f"{k} {row[k]:.4f} s" for k in kernels), flush=True)
    out = harness.cache_dir() / "attention_kernels.json"
    out.write_text(json.dumps({"model": args.model, "threads": args.threads, "rows": rows}, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
