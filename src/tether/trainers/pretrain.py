"""Pretraining from scratch: a byte-level BPE tokenizer and a small causal LM on plain text.

This is the offline default base model (no hub access needed). Each document is wrapped as
BOS + text + EOS, documents are concatenated and cut into `block_size` blocks (packing), and the
model learns next-token prediction on every token.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from tether.config import PretrainConfig
from tether.data.sources import load_texts
from tether.errors import ConfigError, DataError
from tether.losses.sft import sft_loss
from tether.models.load import count_parameters, set_threads
from tether.models.tiny import BOS, EOS, PAD, wrap_tokenizer
from tether.trainers.common import RunDir, autocast, check_finite, console, fmt, make_optimizer, make_scheduler, progress, set_seed
from tether.trainers.distributed import Distributed


def train_tokenizer(texts: list[str], vocab_size: int, model_max_length: int):
    """Train a byte-level BPE tokenizer (Radford et al. 2019) with BOS/EOS/PAD special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tok, model_max_length)


def build_model(cfg: PretrainConfig, tokenizer):
    """A random-init Llama- or GPT-2-style causal LM from the `arch` section."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    a = cfg.arch
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if a.kind == "llama":
        config = LlamaConfig(
            hidden_size=a.hidden_size, intermediate_size=a.intermediate_size, num_hidden_layers=a.num_layers,
            num_attention_heads=a.num_heads, num_key_value_heads=a.num_heads, max_position_embeddings=a.max_position_embeddings,
            tie_word_embeddings=a.tie_word_embeddings, **ids,
        )
    else:
        config = GPT2Config(
            n_embd=a.hidden_size, n_layer=a.num_layers, n_head=a.num_heads, n_positions=a.max_position_embeddings,
            n_inner=a.intermediate_size, tie_word_embeddings=a.tie_word_embeddings, **ids,
        )
    return AutoModelForCausalLM.from_config(config)


def pack(texts: list[str], tokenizer, block_size: int) -> torch.Tensor:
    """Tokenize documents as BOS + text + EOS, concatenate, cut into blocks: -> (N, block_size)."""
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]:
        stream.extend(ids + [tokenizer.eos_token_id])
    n = len(stream) // block_size
    if n < 2:
        raise DataError(f"only {len(stream)} tokens of text: need at least two blocks of block_size={block_size}")
    return torch.tensor(stream[: n * block_size]).view(n, block_size)


def train_pretrain(cfg: PretrainConfig) -> Path:
    """Train tokenizer and model from scratch; writes both to `cfg.output_dir` in HF format.

    Raises:
        DataError: no text, or too little for two blocks.
        TrainingError: on a NaN/inf loss.
    """
    # 0. setup
    set_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)
    device = Distributed(cfg.train, "pretrain", ("single",)).device  # one process: small models from scratch

    if cfg.block_size > cfg.arch.max_position_embeddings:
        raise ConfigError(f"block_size={cfg.block_size} is longer than arch.max_position_embeddings={cfg.arch.max_position_embeddings}")

    # 1. text
    texts = load_texts(cfg.data.train, cfg.text_fields)
    if not texts:
        raise DataError(f"{cfg.data.train}: no text in fields {cfg.text_fields}")
    random.Random(cfg.data.seed).shuffle(texts)
    if cfg.max_chars:
        kept, n = [], 0
        for t in texts:
            if n >= cfg.max_chars:
                break
            kept.append(t)
            n += len(t)
        texts = kept
    run = RunDir(cfg.output_dir, cfg, cfg.overwrite)

    # 2. tokenizer and packed blocks (2% held out for perplexity)
    t0 = time.time()
    tokenizer = train_tokenizer(texts, cfg.arch.vocab_size, cfg.arch.max_position_embeddings)
    blocks = pack(texts, tokenizer, cfg.block_size)
    n_eval = max(1, len(blocks) // 50)
    eval_blocks, train_blocks = blocks[:n_eval], blocks[n_eval:]
    console.print(
        f"pretrain: {len(texts)} documents, {blocks.numel():,} tokens, vocab {len(tokenizer)}, "
        f"tokenizer trained in {time.time() - t0:.1f}s"
    )

    # 3. model and optimizer
    model = build_model(cfg, tokenizer).to(device)
    _, total = count_parameters(model)
    bs = cfg.train.batch_size
    steps = cfg.train.max_steps or max(1, int(len(train_blocks) * cfg.train.epochs) // bs)
    optimizer = make_optimizer(model.parameters(), cfg.train)
    scheduler = make_scheduler(optimizer, cfg.train, steps)
    console.print(f"pretrain: {total:,} parameters, {steps} steps of {bs} x {cfg.block_size} tokens")

    # 4. next-token training on packed blocks
    model.train()
    ones = torch.ones(bs, cfg.block_size - 1, dtype=torch.bool, device=device)
    deadline = time.time() + 60 * cfg.max_minutes if cfg.max_minutes else None
    step, metrics = 0, {}
    with progress() as bar:
        task = bar.add_task("pretrain", total=steps, info="")
        while step < steps:
            for idx in torch.randperm(len(train_blocks)).split(bs):
                if step >= steps or (deadline and time.time() > deadline):
                    steps = step
                    break
                x = train_blocks[idx].to(device)
                with autocast(cfg.train, device):
                    logits = model(input_ids=x, use_cache=False).logits
                loss, m = sft_loss(logits[:, :-1], x[:, 1:], ones[: len(idx)])
                check_finite(loss, step + 1, run)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                metrics = {"loss/lm": loss.item(), "lr": scheduler.get_last_lr()[0]}
                if step % cfg.train.log_every == 0:
                    run.log(step, metrics)
                bar.update(task, completed=step, info=fmt(metrics, ["loss/lm"]))

    # 5. held-out perplexity, save
    model.eval()
    with torch.no_grad():
        x = eval_blocks[:16].to(device)
        logits = model(input_ids=x, use_cache=False).logits
        eval_loss, _ = sft_loss(logits[:, :-1], x[:, 1:], torch.ones_like(x[:, 1:], dtype=torch.bool))
    metrics.update({"eval/loss": eval_loss.item(), "eval/ppl": eval_loss.exp().item()})
    run.log(step, metrics)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(run.path)
    tokenizer.save_pretrained(run.path)
    run.finish({"steps": step, **metrics})
    console.print(f"pretrain: done after {step} steps, held-out ppl {metrics['eval/ppl']:.1f}, model in {run.path}")
    return run.path
