"""Build the benchmark models, tokenizer and data once, into bench/.cache (run in tether's venv).

Both frameworks read exactly these files:

- `tokenizer/`: a byte-level BPE tokenizer (vocab 8192) trained on the benchmark texts, saved as a Hugging
  Face fast tokenizer with BOS, EOS and a separate PAD;
- `policy-{small,medium,large}/`: random-init Llama-style causal LMs built by `tether pretrain`'s model
  builder (tied embeddings);
- `reward-{small,medium,large}/`: LlamaForSequenceClassification models (one label) of the same
  architectures: the reward model, and the initial value model (both frameworks copy its backbone);
- `data/prompts.jsonl`: hh_harmless_base prompts cut from the left to `PROMPT_TOKENS` tokens (BOS included);
- `data/pairs.jsonl`: hh_harmless_base preference pairs whose prompt + reply is exactly `SEQ_TOKENS`
  tokens for both replies (EOS included), so both frameworks pad nothing and process the same tokens;
- `data/sft.jsonl`: self_instruct_seed_sft rows, formatted as Human/Assistant prompts, with the response cut so
  that prompt + response + EOS is exactly `SEQ_TOKENS` tokens (rows too short for that are left out);
- `manifest.json`: paths, parameter counts (all, and those in matrix products) and token lengths.

    python bench/prepare.py            # idempotent: skipped when the manifest matches

$BENCH_CACHE puts the cache elsewhere (the harness's own test builds a tiny one that way).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from harness import cache_dir  # noqa: E402

DATA = BENCH.parent.parent / "shared" / "data"
VOCAB = 8192
PROMPT_TOKENS = 64  # BOS + 63
SEQ_TOKENS = 128  # prompt + reply + EOS
SIZES = {
    # name: (layers, hidden, heads, intermediate)
    "small": (4, 256, 4, 704),
    "medium": (6, 384, 6, 1024),
    "large": (10, 512, 8, 1408),
}
VERSION = 4  # bump when anything below changes


def read_jsonl(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def matmul_params(model) -> int:
    """Parameters that take part in matrix products per token: all but the input embedding table, plus the
    LM head when it shares the embedding's weights."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = head is not None and head.weight is emb
    return total - (0 if tied else emb.numel())


def build_tokenizer(hh: list[dict], sft: list[dict], vocab: int):
    from tether.trainers.pretrain import train_tokenizer

    texts = [r["prompt"] + " " + r["chosen"] for r in hh] + [r["rejected"] for r in hh]
    texts += [r["prompt"] + " " + r["response"] for r in sft]
    tok = train_tokenizer(texts, vocab, model_max_length=1024)
    assert tok.pad_token_id != tok.eos_token_id
    return tok


def build_models(tok, out: Path, sizes: dict) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from tether.config import PretrainArch, PretrainConfig
    from tether.trainers.pretrain import build_model

    info = {}
    for name, (layers, hidden, heads, inter) in sizes.items():
        arch = PretrainArch(num_layers=layers, hidden_size=hidden, num_heads=heads, intermediate_size=inter,
                            vocab_size=len(tok), max_position_embeddings=512)
        torch.manual_seed(0)
        policy = build_model(PretrainConfig(arch=arch, data={"train": "unused"}, output_dir="unused"), tok)
        policy.generation_config.pad_token_id = tok.pad_token_id
        policy.save_pretrained(out / f"policy-{name}")
        tok.save_pretrained(out / f"policy-{name}")
        cfg = LlamaConfig(**{**policy.config.to_dict(), "num_labels": 1, "architectures": None})
        torch.manual_seed(1)
        reward = LlamaForSequenceClassification(cfg)
        reward.save_pretrained(out / f"reward-{name}")
        tok.save_pretrained(out / f"reward-{name}")
        info[name] = {
            "layers": layers, "hidden": hidden, "heads": heads, "intermediate": inter, "vocab": len(tok),
            "policy": str(out / f"policy-{name}"), "reward": str(out / f"reward-{name}"),
            "policy_params": sum(p.numel() for p in policy.parameters()), "policy_matmul_params": matmul_params(policy),
            "reward_params": sum(p.numel() for p in reward.parameters()), "reward_matmul_params": matmul_params(reward),
        }
    return info


def cut(tok, text: str, n: int, left: bool) -> str | None:
    """The text of `n` tokens of `text` (the last n when `left`), or None when it is shorter."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) < n:
        return None
    return tok.decode(ids[-n:] if left else ids[:n])


def n_tokens(tok, text: str, special: bool = False) -> int:
    return len(tok(text, add_special_tokens=special)["input_ids"])


def build_sft(tok, seeds: list[dict]) -> list[dict]:
    """Seed rows whose formatted prompt + response + EOS can be cut to exactly SEQ_TOKENS tokens."""
    from tether.config import DEFAULT_PROMPT_TEMPLATE
    from tether.data.tokenize import format_prompt

    rows = []
    for r in seeds:
        prompt = format_prompt(r["prompt"], DEFAULT_PROMPT_TEMPLATE)
        n_prompt = n_tokens(tok, prompt, True)
        reply_body = SEQ_TOKENS - n_prompt - 1
        if n_prompt > PROMPT_TOKENS:
            continue
        reply = cut(tok, " " + r["response"].strip(), reply_body, left=False)
        if reply is not None and n_tokens(tok, prompt + " " + reply.strip(), True) == SEQ_TOKENS - 1:
            rows.append({"prompt": prompt, "response": reply.strip()})
    return rows


def build_data(tok, hh: list[dict], seeds: list[dict], out: Path) -> dict:
    """Fixed-length prompts and pairs: every sequence has the same number of tokens on both sides."""
    prompt_body = PROMPT_TOKENS - 1  # BOS is added by the tokenizer
    reply_body = SEQ_TOKENS - PROMPT_TOKENS - 1  # EOS is appended by both frameworks
    prompts, pairs = [], []
    for r in hh:
        p = cut(tok, r["prompt"].rstrip(), prompt_body, left=True)
        if p is None or not p.rstrip().endswith("Assistant:") or n_tokens(tok, p, True) != PROMPT_TOKENS:
            continue
        prompts.append({"prompt": p})
        chosen = cut(tok, " " + r["chosen"].strip(), reply_body, left=False)
        rejected = cut(tok, " " + r["rejected"].strip(), reply_body, left=False)
        if chosen is None or rejected is None or chosen.strip() == rejected.strip():
            continue
        # the reply as both frameworks tokenize it: " " + stripped text, right after the prompt
        if all(n_tokens(tok, " " + x.strip()) == reply_body and n_tokens(tok, p + " " + x.strip(), True) == PROMPT_TOKENS + reply_body
               for x in (chosen, rejected)):
            pairs.append({"prompt": p, "chosen": chosen.strip(), "rejected": rejected.strip()})
    write_jsonl(out / "prompts.jsonl", prompts)
    write_jsonl(out / "pairs.jsonl", pairs)
    sft = build_sft(tok, seeds)
    write_jsonl(out / "sft.jsonl", sft)
    return {"prompts": len(prompts), "pairs": len(pairs), "sft": len(sft), "prompt_tokens": PROMPT_TOKENS, "seq_tokens": SEQ_TOKENS}


def prepare(force: bool = False, sizes: dict | None = None, vocab: int = VOCAB) -> dict:
    """Build (or reuse) the cache in `cache_dir()`; returns the manifest.

    Args:
        force: rebuild even when the manifest is current.
        sizes: {name: (layers, hidden, heads, intermediate)}; default `SIZES`.
        vocab: tokenizer vocabulary size.

    Raises:
        SystemExit: the shared data sets are missing.
    """
    sizes = sizes or SIZES
    cache = cache_dir()
    manifest_path = cache / "manifest.json"
    key = {"version": VERSION, "sizes": {k: list(v) for k, v in sizes.items()}, "vocab": vocab}
    if manifest_path.is_file() and not force:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("key") == key:
            return manifest
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} is missing: the benchmarks read hh_harmless_base and self_instruct_seed_sft from there")
    hh = read_jsonl(DATA / "hh_harmless_base" / "train.jsonl.gz")
    seeds = read_jsonl(DATA / "self_instruct_seed_sft" / "data.jsonl.gz")
    cache.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(hh, seeds, vocab)
    tok.save_pretrained(cache / "tokenizer")
    manifest = {
        "key": key,
        "tokenizer": str(cache / "tokenizer"),
        "models": build_models(tok, cache, sizes),
        "data": {**build_data(tok, hh, seeds, cache / "data"), "dir": str(cache / "data")},
    }
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return manifest


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild even when the manifest is current")
    print(json.dumps(prepare(ap.parse_args().force), indent=2))
