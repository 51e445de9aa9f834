"""Pretraining from scratch: a byte-level BPE tokenizer and a small causal LM on plain text.

This is the offline default base model (no hub access needed). Each document is wrapped as
BOS + text + EOS, documents are concatenated and cut into `block_size` blocks (packing), and the
model learns next-token prediction on every token.

Checkpoints (`train.save_every`, and on SIGTERM/SIGINT) hold the model, the trained tokenizer, the
optimizer, the LR schedule, every RNG, the epoch's block order with the position in it, and the
training time spent so far; `train.resume=true` continues from the newest one exactly (the tokenizer
is read from the checkpoint, not trained again, and `max_minutes` counts the time before the resume).

With `max_minutes`, the steps are planned before training to fit it (a timed step at the real batch shape),
so the learning-rate schedule ends inside the budget. The result is judged against a unigram model of the
training text and against the plan (docs/precision.md).
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tether.config import PretrainConfig
from tether.data.sources import load_texts
from tether.errors import ConfigError, DataError
from tether.losses.sft import sft_loss
from tether.models.load import count_parameters, save_causal_lm, set_threads
from tether.models.tiny import BOS, EOS, PAD, wrap_tokenizer
from tether.run import RunDir, console, fmt, progress
from tether.trainers.common import (
    CUT_SHORT, StopSignal, autocast, check_finite, interrupted, load_state, make_optimizer, make_scheduler, on_problem, plan_steps, resume_training, save_state, set_seed, trainable_state_dict,
)
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


def saved_tokenizer(path: Path, model_max_length: int):
    """The tokenizer `train_tokenizer` made, read back from the `tokenizer.json` saved in directory `path`."""
    from tokenizers import Tokenizer

    return wrap_tokenizer(Tokenizer.from_file(str(path / "tokenizer.json")), model_max_length)


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


def unigram_loss(train_ids: torch.Tensor, eval_targets: torch.Tensor, vocab_size: int) -> float:
    """Cross-entropy (nats per token) of `eval_targets` under the add-one-smoothed unigram model of `train_ids`.

    The floor a language model must beat to have learnt anything from context: a model that only knows
    how frequent each token is reaches it without reading the text before the token.

    Args:
        train_ids: token ids of the training text, any shape.
        eval_targets: held-out token ids to score, any shape.
        vocab_size: size of the vocabulary (ids are in [0, vocab_size)).
    """
    counts = torch.bincount(train_ids.flatten(), minlength=vocab_size).double() + 1.0  # Laplace smoothing
    logp = counts.log() - counts.sum().log()
    return float(-logp[eval_targets.flatten()].mean())


def seconds_per_step(model, batch: torch.Tensor, cfg: PretrainConfig, device: torch.device) -> float:
    """Wall time of one training step at the real batch shape: one warm-up forward and backward pass, then the
    mean of two timed ones (no update, gradients cleared, random state untouched).

    Args:
        batch: token ids (B, block_size).
    """
    times = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for _ in range(3):
            t0 = time.perf_counter()
            with autocast(cfg.train, device):
                logits = model(input_ids=batch, use_cache=False).logits
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten())  # what sft_loss computes
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return sum(times[1:]) / 2 * 1.05  # the optimizer step and the data add a few percent


def train_pretrain(cfg: PretrainConfig) -> Path:
    """Train tokenizer and model from scratch; writes both to `cfg.output_dir` in HF format.

    Raises:
        DataError: no text, or too little for two blocks.
        TrainingError: on a NaN/inf loss (the last good checkpoint is kept), or when stopped by a signal
            (after writing a checkpoint).
        StageFailed: `max_minutes` allows fewer than `min_steps` steps, cuts training short of 80% of its planned
            steps, or the held-out perplexity is no better than a unigram model (with `on_time_cap` / `on_chance`
            at `stop`; the model is saved first).
    """
    # 0. setup
    set_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)
    dist = Distributed(cfg.train, "pretrain", ("single",))  # one process: small models from scratch
    device = dist.device

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
    run = RunDir(cfg.output_dir, cfg, cfg.overwrite, dist)

    # 2. tokenizer (the checkpoint's when resuming) and packed blocks (2% held out for perplexity)
    t0 = time.time()
    if run.resume_from is not None:
        tokenizer = saved_tokenizer(run.resume_from, cfg.arch.max_position_embeddings)
    else:
        tokenizer = train_tokenizer(texts, cfg.arch.vocab_size, cfg.arch.max_position_embeddings)
    blocks = pack(texts, tokenizer, cfg.block_size)
    n_eval = max(1, len(blocks) // 50)
    eval_blocks, train_blocks = blocks[:n_eval], blocks[n_eval:]
    made = "read from the checkpoint" if run.resume_from is not None else f"trained in {time.time() - t0:.1f}s"
    console.print(f"pretrain: {len(texts)} documents, {blocks.numel():,} tokens, vocab {len(tokenizer)}, tokenizer {made}")

    # 3. model and optimizer
    model = build_model(cfg, tokenizer).to(device)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    _, total = count_parameters(model)
    bs = cfg.train.batch_size
    steps = cfg.train.max_steps or max(1, int(len(train_blocks) * cfg.train.epochs) // bs)
    console.print(f"pretrain: {total:,} parameters, {steps} steps of {bs} x {cfg.block_size} tokens")

    # 4. plan the steps that fit max_minutes, from the measured time of a step (a resumed run keeps its plan)
    if run.resume_from is not None:
        steps = load_state(run.resume_from).get("planned_steps", steps)
    elif cfg.max_minutes:
        min_steps = cfg.min_steps or max(1, steps // 10)
        steps, plan = plan_steps(steps, seconds_per_step(model, train_blocks[:bs].to(device), cfg, device), cfg.max_minutes)
        console.print(f"pretrain: {plan}")
        if steps < min_steps:
            on_problem(
                cfg.on_time_cap, "pretrain", f"max_minutes={cfg.max_minutes:g} allows only {steps} steps, fewer than "
                f"min_steps={min_steps}, on this machine in precision {dist.precision.name}",
                "Raise max_minutes, make the model smaller (arch) or lower min_steps; set on_time_cap=warn to train anyway",
            )
    optimizer = make_optimizer(model.parameters(), cfg.train)
    scheduler = make_scheduler(optimizer, cfg.train, steps)

    # 5. next-token training on packed blocks, in a fresh random order every epoch
    model.train()
    ones = torch.ones(bs, cfg.block_size - 1, dtype=torch.bool, device=device)
    step, metrics, spent, capped = 0, {}, 0.0, False
    order, pos = torch.empty(0, dtype=torch.long), 0  # this epoch's block order, and the next block in it
    if run.resume_from is not None:
        state = resume_training(run.resume_from, model, optimizer, scheduler)
        step, order, pos, spent = state["step"], state["order"], state["position"], state["train_seconds"]
    clock = time.time() - spent  # training time counts across resumptions (max_minutes)

    def save(path: Path) -> None:
        save_causal_lm(model, tokenizer, path)
        save_state(
            path, step=step, model=trainable_state_dict(model), optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(), order=order, position=pos, train_seconds=time.time() - clock,
            planned_steps=steps,
        )

    with progress() as bar, StopSignal() as stop:
        task = bar.add_task("pretrain", total=steps, completed=step, info="")
        while step < steps:
            if cfg.max_minutes and time.time() - clock > 60 * cfg.max_minutes:
                console.print(f"pretrain: max_minutes={cfg.max_minutes:g} reached after {step} of {steps} steps")
                capped = True
                break
            if pos >= len(order):
                order, pos = torch.randperm(len(train_blocks)), 0
            idx = order[pos : pos + bs]
            pos += len(idx)
            x = train_blocks[idx].to(device)
            with autocast(cfg.train, device):
                logits = model(input_ids=x, use_cache=False).logits
            loss, m = sft_loss(logits[:, :-1], x[:, 1:], ones[: len(idx)])
            check_finite(loss, step + 1, run)
            dist.backward(loss)
            grad_norm = dist.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm, optimizer)
            dist.step(optimizer)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            metrics = {"loss/lm": loss.item(), "pretrain/grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0]}
            if step % cfg.train.log_every == 0:
                run.log(step, metrics)
            bar.update(task, completed=step, info=fmt(metrics, ["loss/lm"]))
            if cfg.train.save_every and step % cfg.train.save_every == 0 or stop.requested:
                ckpt = run.checkpoint(step, save)
                if stop.requested:
                    raise interrupted(step, ckpt)

    # 6. held-out perplexity against a unigram model of the training text, save, then judge the result
    model.eval()
    with torch.no_grad():
        x = eval_blocks[:16].to(device)
        logits = model(input_ids=x, use_cache=False).logits
        eval_loss, _ = sft_loss(logits[:, :-1], x[:, 1:], torch.ones_like(x[:, 1:], dtype=torch.bool))
        floor = unigram_loss(train_blocks, x[:, 1:].cpu(), len(tokenizer))
    metrics.update({"eval/loss": eval_loss.item(), "eval/ppl": eval_loss.exp().item(), "eval/unigram_ppl": math.exp(floor)})
    run.log(step, metrics)
    save_causal_lm(model, tokenizer, run.path)  # kept whatever the verdict below
    ppl, warnings = metrics["eval/ppl"], []
    if capped and step < CUT_SHORT * steps:
        warnings.append(on_problem(
            cfg.on_time_cap, "pretrain", f"max_minutes={cfg.max_minutes:g} cut training short after {step} of {steps} "
            f"planned steps (held-out perplexity {ppl:.0f}; the model is in {run.path})",
            "The machine was slower than measured at the start (other jobs on its cores?): raise max_minutes or lower "
            "train.max_steps; set on_time_cap=warn to go on with this model",
        ))
    if eval_loss.item() >= floor:
        warnings.append(on_problem(
            cfg.on_chance, "pretrain", f"held-out perplexity {ppl:.0f} is no better than a unigram model of the training "
            f"text ({math.exp(floor):.0f}): the model learnt nothing from context (it is in {run.path})",
            "Train longer (train.max_steps, max_minutes), check train.learning_rate, or set on_chance=warn to go on",
        ))
    run.finish({"steps": step, "planned_steps": steps, **metrics, "warnings": warnings})
    console.print(f"pretrain: done after {step} steps, held-out ppl {ppl:.1f} (unigram {math.exp(floor):.0f}), model in {run.path}")
    return run.path
