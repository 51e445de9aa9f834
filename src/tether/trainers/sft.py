"""Supervised fine-tuning: the loss is on response tokens (and EOS) only, optionally with LoRA."""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path

import torch

from tether.config import SFTConfig
from tether.data.sources import load_sft, select
from tether.data.tokenize import TokenizedSFT, collate_sft, tokenize_sft
from tether.losses.sft import sft_loss
from tether.models.load import apply_lora, check_context, count_parameters, load_causal_lm, save_causal_lm, set_attention, set_threads
from tether.models.logprobs import first_scored_column, forward_logits
from tether.run import RunDir, console, fmt, progress
from tether.trainers.common import (
    StopSignal, autocast, check_finite, interrupted, length_grouped_order, make_optimizer, make_scheduler, resume_training, save_state, set_seed, total_steps, trainable_state_dict,
)
from tether.trainers.distributed import Distributed


def batches(items: list[TokenizedSFT], batch_size: int, shuffle: bool, seed: int):
    """Yield lists of `batch_size` items; shuffled ones are grouped by length to cut padding."""
    order = list(range(len(items)))
    if shuffle:
        order = length_grouped_order([len(it.input_ids) for it in items], batch_size, random.Random(seed))
    for i in range(0, len(order), batch_size):
        yield [items[j] for j in order[i : i + batch_size]]


def response_logits(model, b) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shifted (logits, labels, loss_mask) of a batch from column `s` on, the first that holds a response token.

    Position t predicts token t+1, so logits (B, T-s, V) of positions s-1 .. T-2 go with labels and mask
    (B, T-s) of columns s .. T-1; the LM head runs on no position before s - 1.
    """
    start = first_scored_column(b.loss_mask)
    keep = b.input_ids.shape[1] - start + 1
    logits = forward_logits(model, b.input_ids, b.attention_mask, keep=keep)[:, -keep:-1]  # (B, T-s, V)
    return logits, b.input_ids[:, start:], b.loss_mask[:, start:]


@torch.no_grad()
def evaluate_sft(model, items: list[TokenizedSFT], pad_id: int, batch_size: int, device, dist: Distributed) -> dict[str, float]:
    """Mean response-token loss and perplexity on held-out examples.

    With several processes each global batch of `batch_size` is sharded and the token sums are added up
    over processes, so every example counts once.
    """
    model.eval()
    total, tokens = 0.0, 0
    for chunk in batches(items, batch_size, shuffle=False, seed=0):
        part, n_real = dist.shard(chunk)
        b = collate_sft(part, pad_id).to(device)
        loss, m = sft_loss(*response_logits(model, b))
        n = int(b.loss_mask[:, 1:].sum()) if n_real else 0
        total, tokens = total + loss.item() * n, tokens + n
    model.train()
    total, tokens = dist.sum(total), dist.sum(tokens)
    mean = total / max(tokens, 1)
    return {"eval/loss": mean, "eval/ppl": float(torch.tensor(mean).exp())}


def train_sft(cfg: SFTConfig) -> Path:
    """Fine-tune a causal LM on prompt/response pairs; writes the model to `cfg.output_dir`.

    Raises:
        DataError, ConfigError, ModelError: before training, on bad data or config.
        TrainingError: on a NaN/inf loss (the last good checkpoint is kept).
    """
    # 0. setup
    set_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)
    dist = Distributed(cfg.train, "sft", lora=cfg.model.lora.enabled)
    device = dist.device
    dist.per_process(cfg.train.batch_size, "train.batch_size")

    # 1. data and model (all checks before anything is written)
    d = cfg.data
    rows = load_sft(d.train, d.on_invalid)
    examples = select(rows, d.split, d.holdout_fraction, d.max_samples, d.skip_samples)
    if d.eval:
        eval_examples = load_sft(d.eval, d.on_invalid)
    elif d.holdout_fraction > 0 and d.split == "train":  # the held-out part of data.train, as the description says
        eval_examples = select(rows, "holdout", d.holdout_fraction, None)
    else:
        eval_examples = []
    model, tokenizer = load_causal_lm(cfg.model, device, seed=cfg.train.seed)
    check_context(d.max_length, model)
    set_attention(model, cfg.model.attn_implementation, device, cfg.train.precision, d.max_length)
    items = tokenize_sft(examples, tokenizer, d.prompt_template, d.max_length, d.max_prompt_length, d.truncation)
    eval_items = tokenize_sft(eval_examples, tokenizer, d.prompt_template, d.max_length, d.max_prompt_length, d.truncation)
    run = RunDir(cfg.output_dir, cfg, cfg.overwrite, dist)

    # 2. LoRA (optional) and optimizer
    if cfg.model.lora.enabled:
        model = apply_lora(model, cfg.model.lora)
    trainable, total = count_parameters(model)
    console.print(f"sft: {len(items)} examples, {trainable:,} of {total:,} parameters trainable, device {device}")
    steps = total_steps(cfg.train, len(items))
    optimizer = make_optimizer(model.parameters(), cfg.train)
    scheduler = make_scheduler(optimizer, cfg.train, steps)
    model, optimizer, scheduler = dist.prepare(
        model, optimizer, scheduler, micro_batch_size=cfg.train.batch_size // dist.num_processes, max_grad_norm=cfg.train.max_grad_norm
    )

    # 3. training loop: micro-batches with gradient accumulation; each process takes its shard of a micro-batch
    model.train()
    step, epoch, start_i, metrics = 0, 0, 0, {}
    accum = cfg.train.grad_accum_steps
    if run.resume_from is not None:
        state = resume_training(run.resume_from, dist.unwrap(model), optimizer, scheduler)
        step, epoch, start_i = state["step"], state["epoch"], state["next_batch"]

    def save(path: Path) -> None:
        save_causal_lm(dist.unwrap(model), tokenizer, path, merge=cfg.model.lora.merge)
        save_state(
            path, step=step, epoch=epoch, next_batch=i + accum, model=trainable_state_dict(dist.unwrap(model)),
            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
        )

    with progress() as bar, StopSignal() as stop:
        task = bar.add_task("sft", total=steps, completed=step, info="")
        while step < steps:
            micro = list(batches(items, cfg.train.batch_size, shuffle=True, seed=cfg.train.seed + epoch))
            for i in range(start_i, len(micro), accum):
                if step >= steps:
                    break
                losses, group = [], micro[i : i + accum]
                for j, chunk in enumerate(group):
                    part, n_real = dist.shard(chunk)
                    with dist.micro_batch(model, last=j == len(group) - 1):
                        b = collate_sft(part, tokenizer.pad_token_id).to(device)
                        with autocast(cfg.train, device):
                            logits, labels, loss_mask = response_logits(model, b)
                        loss, m = sft_loss(logits, labels, loss_mask)
                        check_finite(loss, step + 1, run)
                        # the mean over every response token of the global micro-batch
                        tokens = m["sft/tokens"] if n_real else 0.0
                        dist.backward(loss * dist.share(tokens), len(group))
                    losses.append(dist.mean_metrics({"loss/sft": loss.item()}, tokens)["loss/sft"])
                grad_norm = dist.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm, optimizer)
                dist.step(optimizer)
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                metrics = {"loss/sft": sum(losses) / len(losses), "sft/grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0]}
                if eval_items and cfg.train.eval_every and step % cfg.train.eval_every == 0:
                    metrics.update(evaluate_sft(model, eval_items, tokenizer.pad_token_id, cfg.train.batch_size, device, dist))
                if step % cfg.train.log_every == 0 or step == steps:
                    run.log(step, metrics)
                bar.update(task, advance=1, info=fmt(metrics, ["loss/sft", "eval/loss"]))
                stopping = dist.any(stop.requested)  # all processes stop at the same step
                if cfg.train.save_every and step % cfg.train.save_every == 0 or stopping:
                    ckpt = run.checkpoint(step, save)
                    if stopping:
                        raise interrupted(step, ckpt)
            epoch, start_i = epoch + 1, 0

    # 4. final evaluation and model
    if eval_items:
        metrics.update(evaluate_sft(model, eval_items, tokenizer.pad_token_id, cfg.train.batch_size, device, dist))
        run.log(step, metrics)
    dist.save_model(model, tokenizer, run.path, partial(save_causal_lm, merge=cfg.model.lora.merge))
    run.finish({"steps": step, **metrics})
    console.print(f"sft: done, model in {run.path}")
    return run.path
