"""Per-token cost of each PPO phase on this machine, measured on random models of the quickstart's shapes.

The policy is a Llama-style model built from a config (default: the quickstart's 5.3M parameters,
vocab 8192, hidden 256, 4 layers) with random weights, in float32 on the CPU. Measured with tether's
own code paths:

- forward: one no-grad pass of `response_logprobs` (PPO phase 2), policy and value model;
- train:   forward + backward + AdamW step (phase 4), policy and value model;
- decode:  one step of Hugging Face `generate` at `--gen-batch` sequences (phase 1), per step;
- rm:      a forward pass of an encoder shaped like all-MiniLM-L6-v2 (the quickstart reward model).

Printed: seconds per token (per step for decode), the FLOP rate each implies (2N per token forward,
6N train; N = weights used in matrix products, the tied LM head included, plus causal attention), and a
predicted time per quickstart PPO iteration from those rates (the arithmetic of docs/scaling.md), to
compare with the measured 375 s / 30 iterations of docs/quickstart_results.md.

    python bench/per_token_cost.py               # one thread; 35 s on a busy 2-core machine
    python bench/per_token_cost.py --threads 2
    python bench/per_token_cost.py --json        # one JSON object
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import timed  # noqa: E402


def matmul_params(model) -> int:
    """Weights used in matrix products per token: every nn.Linear (a tied LM head counts once)."""
    from torch import nn

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def attention_flops(layers: int, hidden: int, context: float) -> float:
    """Forward FLOPs per token of causal attention scores and mixing: 2 * layers * context * hidden."""
    return 2 * layers * context * hidden


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=704)
    ap.add_argument("--batch", type=int, default=4, help="sequences per forward/train measurement")
    ap.add_argument("--seq", type=int, default=240, help="tokens per sequence (quickstart: 192 prompt + 48 response)")
    ap.add_argument("--gen-batch", type=int, default=16, help="sequences per generate call (generation.batch_size)")
    ap.add_argument("--prompt", type=int, default=192, help="prompt tokens when decoding (quickstart max_prompt_length)")
    ap.add_argument("--new", type=int, default=16, help="new tokens per decode measurement")
    ap.add_argument("--response", type=int, default=48, help="response tokens of the predicted iteration (max_new_tokens)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median), after one warm-up")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch
    from transformers import AutoModel, BertConfig, LlamaConfig, LlamaForCausalLM

    from tether.models.heads import ValueModel
    from tether.models.logprobs import response_logprobs

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.heads, intermediate_size=args.intermediate, max_position_embeddings=1024,
        tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    policy = LlamaForCausalLM(cfg).eval()
    value = ValueModel.from_backbone_of(policy).eval()
    rm_cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    rm = AutoModel.from_config(rm_cfg).eval()  # all-MiniLM-L6-v2's shape (its pooled output is the score)

    B, T, T_p = args.batch, args.seq, args.seq - args.response
    ids = torch.randint(3, args.vocab, (B, T))
    mask = torch.ones_like(ids)
    tokens = B * T

    @torch.no_grad()
    def forward_policy():
        response_logprobs(policy, ids, mask, T_p, 1.0)

    @torch.no_grad()
    def forward_value():
        value(ids, mask)

    @torch.no_grad()
    def forward_rm():
        rm(input_ids=ids.clamp(max=rm_cfg.vocab_size - 1), attention_mask=mask)

    def train_step(model, loss_fn):
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

        def step():
            loss_fn().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    train_policy = train_step(policy, lambda: response_logprobs(policy, ids, mask, T_p, 1.0).mean())
    train_value = train_step(value, lambda: value(ids, mask)[:, T_p - 1 : -1].square().mean())

    gen_ids = torch.randint(3, args.vocab, (args.gen_batch, args.prompt))

    def generate(n: int):
        @torch.no_grad()
        def run():
            policy.generate(
                input_ids=gen_ids, attention_mask=torch.ones_like(gen_ids), do_sample=True, max_new_tokens=n,
                min_new_tokens=n, pad_token_id=0, eos_token_id=1,
            )

        return run

    r = args.repeats
    s = {
        "forward_policy": timed(forward_policy, r) / tokens,
        "forward_value": timed(forward_value, r) / tokens,
        "forward_rm": timed(forward_rm, r) / tokens,
        "train_policy": timed(train_policy, r) / tokens,
        "train_value": timed(train_value, r) / tokens,
    }
    t_prefill = timed(generate(1), r)  # the prompt pass and the first token
    decode_step = (timed(generate(args.new + 1), r) - t_prefill) / args.new  # per further step, gen_batch sequences

    n_policy, n_value, n_rm = matmul_params(policy), matmul_params(value), matmul_params(rm)
    attn = attention_flops(args.layers, args.hidden, T / 2)
    flops = {  # FLOP/s implied by the measured seconds per token
        "forward_policy": (2 * n_policy + attn) / s["forward_policy"],
        "forward_value": (2 * n_value + attn) / s["forward_value"],
        "train_policy": 3 * (2 * n_policy + attn) / s["train_policy"],
        "train_value": 3 * (2 * n_value + attn) / s["train_value"],
        "forward_rm": (2 * n_rm + attention_flops(6, 384, T / 2)) / s["forward_rm"],
    }
    # a quickstart PPO iteration: 32 prompts padded to T tokens, 2 generate chunks of 16, 2 PPO epochs;
    # scoring = policy + reference (a frozen copy) + value + reward model; training = policy + value
    B_ppo, epochs = 32, 2
    S = B_ppo * T
    chunks = B_ppo // args.gen_batch
    phases = {
        "generate": chunks * (t_prefill + args.response * decode_step),
        "score": S * (2 * s["forward_policy"] + s["forward_value"] + s["forward_rm"]),
        "train": epochs * S * (s["train_policy"] + s["train_value"]),
    }
    out = {
        "threads": args.threads,
        "policy_params": sum(p.numel() for p in policy.parameters()),
        "matmul_params": {"policy": n_policy, "value": n_value, "rm": n_rm},
        "seconds_per_token": s,
        "decode_seconds_per_step": decode_step,
        "decode_batch": args.gen_batch,
        "prefill_seconds": t_prefill,
        "gflops_per_s": {k: v / 1e9 for k, v in flops.items()},
        "train_over_forward": s["train_policy"] / s["forward_policy"],
        "decode_token_over_forward_token": decode_step / args.gen_batch / s["forward_policy"],
        "quickstart_iteration_seconds": {**phases, "total": sum(phases.values())},
    }
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"policy: {out['policy_params']:,} parameters, {n_policy:,} in matrix products; value {n_value:,}; rm {n_rm:,}")
    for k, v in s.items():
        print(f"  {k:15s} {v * 1e6:8.1f} us/token   {flops[k] / 1e9:6.1f} GFLOP/s")
    print(f"  decode          {decode_step * 1e3:8.1f} ms/step at {args.gen_batch} sequences "
          f"({decode_step / args.gen_batch * 1e6:.0f} us/token, {out['decode_token_over_forward_token']:.1f}x a forward token)")
    print(f"  train / forward per token: {out['train_over_forward']:.2f} (6N / 2N = 3 if FLOP-bound)")
    print("predicted quickstart PPO iteration (32 prompts x 240 tokens, 2 epochs):")
    for k, v in out["quickstart_iteration_seconds"].items():
        print(f"  {k:9s} {v:6.2f} s")


if __name__ == "__main__":
    main()
