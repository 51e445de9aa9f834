"""Supervised fine-tuning: the loss is on response tokens (and EOS) only, optionally with LoRA."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from tether.config import SFTConfig
from tether.data.sources import load_sft, select
from tether.data.tokenize import TokenizedSFT, collate_sft, tokenize_sft
from tether.errors import ConfigError
from tether.losses.sft import sft_loss
from tether.models.load import apply_lora, count_parameters, load_causal_lm, resolve_device, save_causal_lm, set_threads
from tether.models.logprobs import first_scored_column, forward_logits
from tether.trainers.common import (
    RunDir, StopSignal, autocast, check_finite, console, fmt, interrupted, length_grouped_order, load_state,
    load_trainable_state_dict, make_optimizer, make_scheduler, progress, save_state, set_rng_state, set_seed,
    total_steps, trainable_state_dict,
)


def model_context(model) -> int | None:
    """The longest sequence the model's position embeddings allow (None if unbounded)."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def check_context(max_length: int, model, key: str = "data.max_length") -> None:
    """Raises ConfigError when `max_length` is longer than the model's context."""
    ctx = model_context(model)
    if ctx is not None and max_length > ctx:
        raise ConfigError(f"{key}={max_length} is longer than the model's context of {ctx} tokens")


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
def evaluate_sft(model, items: list[TokenizedSFT], pad_id: int, batch_size: int, device) -> dict[str, float]:
    """Mean response-token loss and perplexity on held-out examples."""
    model.eval()
    total, tokens = 0.0, 0
    for chunk in batches(items, batch_size, shuffle=False, seed=0):
        b = collate_sft(chunk, pad_id).to(device)
        loss, m = sft_loss(*response_logits(model, b))
        n = int(b.loss_mask[:, 1:].sum())
        total, tokens = total + loss.item() * n, tokens + n
    model.train()
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
    device = resolve_device(cfg.train.device)

    # 1. data and model (all checks before anything is written)
    d = cfg.data
    examples = select(load_sft(d.train, d.on_invalid), d.split, d.holdout_fraction, d.max_samples)
    eval_examples = load_sft(d.eval, d.on_invalid) if d.eval else []
    model, tokenizer = load_causal_lm(cfg.model, device, seed=cfg.train.seed)
    check_context(d.max_length, model)
    items = tokenize_sft(examples, tokenizer, d.prompt_template, d.max_length, d.max_prompt_length, d.truncation)
    eval_items = tokenize_sft(eval_examples, tokenizer, d.prompt_template, d.max_length, d.max_prompt_length, d.truncation)
    run = RunDir(cfg.output_dir, cfg, cfg.overwrite)

    # 2. LoRA (optional) and optimizer
    if cfg.model.lora.enabled:
        model = apply_lora(model, cfg.model.lora)
    trainable, total = count_parameters(model)
    console.print(f"sft: {len(items)} examples, {trainable:,} of {total:,} parameters trainable, device {device}")
    steps = total_steps(cfg.train, len(items))
    optimizer = make_optimizer(model.parameters(), cfg.train)
    scheduler = make_scheduler(optimizer, cfg.train, steps)

    # 3. training loop: micro-batches with gradient accumulation
    model.train()
    step, epoch, start_i, metrics = 0, 0, 0, {}
    accum = cfg.train.grad_accum_steps
    if run.resume_from is not None:
        state = load_state(run.resume_from)
        load_trainable_state_dict(model, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, start_i = state["step"], state["epoch"], state["next_batch"]
        set_rng_state(state["rng"])
        console.print(f"sft: resumed from {run.resume_from} (step {step})")

    def save(path: Path) -> None:
        save_causal_lm(model, tokenizer, path)
        save_state(
            path, step=step, epoch=epoch, next_batch=i + accum, model=trainable_state_dict(model),
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
                for chunk in group:
                    b = collate_sft(chunk, tokenizer.pad_token_id).to(device)
                    with autocast(cfg.train, device):
                        logits, labels, loss_mask = response_logits(model, b)
                    loss, m = sft_loss(logits, labels, loss_mask)
                    check_finite(loss, step + 1, run)
                    (loss / len(group)).backward()
                    losses.append(loss.item())
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                metrics = {"loss/sft": sum(losses) / len(losses), "sft/grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0]}
                if eval_items and cfg.train.eval_every and step % cfg.train.eval_every == 0:
                    metrics.update(evaluate_sft(model, eval_items, tokenizer.pad_token_id, cfg.train.batch_size, device))
                if step % cfg.train.log_every == 0 or step == steps:
                    run.log(step, metrics)
                bar.update(task, advance=1, info=fmt(metrics, ["loss/sft", "eval/loss"]))
                if cfg.train.save_every and step % cfg.train.save_every == 0 or stop.requested:
                    ckpt = run.checkpoint(step, save)
                    if stop.requested:
                        raise interrupted(step, ckpt)
            epoch, start_i = epoch + 1, 0

    # 4. final evaluation and model
    if eval_items:
        metrics.update(evaluate_sft(model, eval_items, tokenizer.pad_token_id, cfg.train.batch_size, device))
        run.log(step, metrics)
    save_causal_lm(model, tokenizer, run.path)
    run.finish({"steps": step, **metrics})
    console.print(f"sft: done, model in {run.path}")
    return run.path
