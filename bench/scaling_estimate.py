"""Estimated memory and time per PPO iteration for 1B, 8B and 70B policies on 8 and 64 GPUs (arithmetic only).

Nothing here is measured: the tables of docs/scaling.md are this script's output, computed from public model
shapes (Llama 3.2 1B, Llama 3.1 8B and 70B), public GPU peaks (H100 SXM, H200) and the assumptions below,
so that every number can be recomputed or re-run with other assumptions.

Per iteration, B prompts of P tokens get responses of R tokens (S = B * (P + R) tokens per pass):

    prefill  2 N B P FLOPs                                     compute bound, at MFU
    decode   R steps; each reads the engine's weights (2 bytes per parameter / TP) and the KV cache of its
             sequences, memory bound at MBU, plus a fixed overhead per step (sampling, scheduling)
    score    (2 N_policy + 2 N_ref + 2 N_value + 2 N_rm) S FLOPs, at MFU
    train    epochs * (8 N_policy + 8 N_value) S FLOPs: 6N forward + backward, +2N recomputed forward
             (activation checkpointing), at MFU
    sync     the new weights to the generation engine: 2 bytes per parameter / TP over NVLink (8 GPUs)
             or the inter-node network (64 GPUs)

N counts the weights used in matrix products (the LM head included, the embedding lookup not); attention
score FLOPs are under 2% at these lengths and left out.

    python bench/scaling_estimate.py                   # the tables of docs/scaling.md
    python bench/scaling_estimate.py --mfu 0.25 --prompt 1024
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

GB = 1e9


@dataclass
class Model:
    name: str
    params: float  # all parameters
    hidden: int
    layers: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    gen_tp: int  # tensor-parallel size of one generation replica

    @property
    def lm_head(self) -> float:
        return self.vocab * self.hidden

    @property
    def n_policy(self) -> float:
        """Matmul weights per token of the policy (a tied matrix is the LM head; an untied embedding is a lookup)."""
        return self.params if self.tied else self.params - self.lm_head

    @property
    def n_head_free(self) -> float:
        """Matmul weights of a value or reward model of the same backbone: no LM head."""
        return self.n_policy - self.lm_head

    @property
    def params_head_free(self) -> float:
        return self.params if self.tied else self.params - self.lm_head

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * 2  # K and V, bf16

    def lora_params(self, r: int = 16) -> int:
        """LoRA adapters on every linear layer of the blocks (peft `all-linear`: q, k, v, o, gate, up, down)."""
        h, kv, i = self.hidden, self.kv_heads * self.head_dim, self.intermediate
        per_layer = r * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 3)
        return per_layer * self.layers


MODELS = [
    Model("1B", 1.236e9, 2048, 16, 8, 64, 8192, 128256, tied=True, gen_tp=1),
    Model("8B", 8.030e9, 4096, 32, 8, 128, 14336, 128256, tied=False, gen_tp=1),
    Model("70B", 70.554e9, 8192, 80, 8, 128, 28672, 128256, tied=False, gen_tp=4),
]
GPUS = {"H100": {"flops": 989e12, "bw": 3.35e12, "mem": 80}, "H200": {"flops": 989e12, "bw": 4.8e12, "mem": 141}}


def phases(m: Model, gpus: int, gpu: dict, a) -> dict[str, float]:
    """Seconds per PPO iteration for each phase."""
    F, W = gpu["flops"] * a.mfu, gpu["bw"] * a.mbu
    S = a.batch * (a.prompt + a.response)
    replicas = gpus // m.gen_tp
    per_replica = a.batch / replicas
    kv = per_replica * (a.prompt + a.response / 2) * m.kv_bytes_per_token  # average context while decoding
    step_memory = (2 * m.params + kv) / m.gen_tp / W
    step_compute = 2 * m.n_policy * per_replica / m.gen_tp / F
    link = a.nvlink if gpus <= 8 else a.network
    return {
        "prefill": 2 * m.n_policy * a.batch * a.prompt / (gpus * F),
        "decode": a.response * (max(step_memory, step_compute) + a.step_overhead),
        "score": 2 * (2 * m.n_policy + 2 * m.n_head_free) * S / (gpus * F),
        "train": a.epochs * 8 * (m.n_policy + m.n_head_free) * S / (gpus * F),
        "sync": 2 * m.params / m.gen_tp / link,
    }


def memory(m: Model, gpus: int, a, bytes_trained: int) -> dict[str, float]:
    """GB per GPU: the four roles sharded over all GPUs (ZeRO-3/FSDP), plus one engine replica's share."""
    replicas = gpus // m.gen_tp
    states = (bytes_trained * (m.params + m.params_head_free) + 2 * (m.params + m.params_head_free)) / gpus
    engine = 2 * m.params / m.gen_tp
    kv = a.batch / replicas * (a.prompt + a.response) * m.kv_bytes_per_token / m.gen_tp
    return {"states": states / GB, "engine": engine / GB, "kv": kv / GB, "total": (states + engine + kv) / GB}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512, help="prompts (= responses) per iteration")
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens")
    ap.add_argument("--response", type=int, default=256, help="response tokens (every response runs to the end)")
    ap.add_argument("--epochs", type=int, default=1, help="PPO epochs over each rollout")
    ap.add_argument("--mfu", type=float, default=0.40, help="model FLOP utilisation of prefill, scoring, training")
    ap.add_argument("--mbu", type=float, default=0.60, help="memory-bandwidth utilisation of decoding")
    ap.add_argument("--step-overhead", type=float, default=0.002, help="seconds per decode step beyond memory traffic")
    ap.add_argument("--nvlink", type=float, default=400e9, help="bytes/s per GPU for the weight sync inside a node")
    ap.add_argument("--network", type=float, default=50e9, help="bytes/s per GPU between nodes (400 Gb/s)")
    a = ap.parse_args()

    print(f"Assumptions: {a.batch} prompts x ({a.prompt} prompt + {a.response} response) tokens, {a.epochs} PPO epoch(s), "
          f"MFU {a.mfu:.0%}, decode MBU {a.mbu:.0%} + {a.step_overhead * 1e3:.0f} ms/step, value and reward models "
          "the policy's size, full fine-tuning, activation checkpointing.\n")
    print("| model | N (matmul) | KV/token | LoRA r=16 | GPUs | gen TP | prefill | decode | score | train | sync | total H100 | total H200 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m in MODELS:
        for gpus in (8, 64):
            h100, h200 = phases(m, gpus, GPUS["H100"], a), phases(m, gpus, GPUS["H200"], a)
            cells = " | ".join(f"{h100[k]:.1f}" for k in ("prefill", "decode", "score", "train", "sync"))
            print(f"| {m.name} | {m.n_policy / 1e9:.2f}B | {m.kv_bytes_per_token // 1024} KiB | {m.lora_params() / 1e6:.0f}M "
                  f"| {gpus} | {m.gen_tp} | {cells} | **{sum(h100.values()):.0f} s** | {sum(h200.values()):.0f} s |")
    print("\nPer-phase seconds are H100's; H200 differs only in decode and its weight traffic.\n")
    print("| model | GPUs | trained bytes/param | states/GPU | engine weights/GPU | KV/GPU (full length) | total/GPU | H100 80 GB | H200 141 GB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in MODELS:
        for gpus in (8, 64):
            for b in (16, 8):
                mem = memory(m, gpus, a, b)
                fits = ["yes" if mem["total"] + a_margin(m) < GPUS[g]["mem"] else "no" for g in ("H100", "H200")]
                print(f"| {m.name} | {gpus} | {b} | {mem['states']:.1f} | {mem['engine']:.1f} | {mem['kv']:.1f} | "
                      f"{mem['total']:.1f} | {fits[0]} | {fits[1]} |")


def a_margin(m: Model) -> float:
    """GB kept for activations, logits and allocator slack when judging whether a setup fits."""
    return 10.0 if m.name != "70B" else 15.0


if __name__ == "__main__":
    main()
