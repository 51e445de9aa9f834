"""Reward-model training with the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected).

Chosen and rejected go through the model in one forward pass (concatenated batch). The model is any
HF sequence classifier with one output; the offline default backbone is all-MiniLM-L6-v2.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from tether.config import RewardConfig
from tether.data.sources import load_preferences, select
from tether.data.tokenize import reward_texts, tokenize_for_reward
from tether.errors import ConfigError
from tether.losses.reward import bradley_terry_loss
from tether.models.load import apply_lora, count_parameters, resolve_device, resolve_dtype, set_threads
from tether.models.reward import RewardMeta, RewardModel, load_sequence_classifier
from tether.trainers.common import (
    RunDir, autocast, check_finite, console, fmt, length_grouped_order, make_optimizer, make_scheduler, progress, set_seed, total_steps,
)
from tether.types import PreferenceExample


def freeze_lower_layers(model, n_layers: int) -> None:
    """Freeze the embeddings and the `n_layers` lowest transformer layers (cheaper training)."""
    if n_layers <= 0:
        return
    base = getattr(model, model.base_model_prefix, model)
    for p in base.embeddings.parameters() if hasattr(base, "embeddings") else base.get_input_embeddings().parameters():
        p.requires_grad_(False)
    layers = None
    for name in ("encoder.layer", "layers", "h"):
        obj = base
        for part in name.split("."):
            obj = getattr(obj, part, None)
        if obj is not None:
            layers = obj
            break
    if layers is None:
        raise ConfigError("freeze_layers: cannot find the transformer layers of this model")
    for layer in list(layers)[:n_layers]:
        for p in layer.parameters():
            p.requires_grad_(False)


def pair_scores(model, tokenizer, batch: list[PreferenceExample], template: str, max_length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw scores of chosen and rejected replies from one forward pass. Returns ((B,), (B,))."""
    prompts = [e.prompt for e in batch]
    texts = reward_texts(prompts, [e.chosen for e in batch], template) + reward_texts(prompts, [e.rejected for e in batch], template)
    ids, mask = tokenize_for_reward(tokenizer, texts, max_length)
    scores = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0].float()  # (2B,)
    return scores[: len(batch)], scores[len(batch) :]


@torch.no_grad()
def evaluate_pairs(model, tokenizer, examples: list[PreferenceExample], template: str, max_length: int, batch_size: int, device) -> dict[str, float]:
    """Pairwise accuracy (ties count as wrong) and mean loss on preference examples."""
    was = model.training
    model.eval()
    chosen, rejected = [], []
    for i in range(0, len(examples), batch_size):
        c, r = pair_scores(model, tokenizer, examples[i : i + batch_size], template, max_length, device)
        chosen.append(c)
        rejected.append(r)
    model.train(was)
    loss, m = bradley_terry_loss(torch.cat(chosen), torch.cat(rejected))
    return {"eval/loss": loss.item(), "eval/accuracy": m["rm/accuracy"], "eval/margin": m["rm/margin"]}


def train_reward(cfg: RewardConfig) -> Path:
    """Train a scalar reward model; writes it (HF format + tether_reward.json) to `cfg.output_dir`.

    Raises:
        DataError, ConfigError, ModelError: before training.
        TrainingError: on a NaN/inf loss.
    """
    # 0. setup
    set_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    d = cfg.data

    # 1. data: train split, and an eval set (a file, or the held-out prompts of the train file)
    rows = load_preferences(d.train, d.on_invalid)
    train = select(rows, d.split, d.holdout_fraction, d.max_samples)
    if d.eval:
        evals = load_preferences(d.eval, d.on_invalid)
    elif d.holdout_fraction > 0 and d.split == "train":
        evals = select(rows, "holdout", d.holdout_fraction, None)
    else:
        evals = []

    # 2. model
    model, tokenizer = load_sequence_classifier(cfg.model.name_or_path, dtype=resolve_dtype(cfg.model.dtype, device), seed=cfg.train.seed)
    freeze_lower_layers(model, cfg.freeze_layers)
    if cfg.model.lora.enabled:
        model = apply_lora(model, cfg.model.lora, task_type="SEQ_CLS")
    model.to(device)
    run = RunDir(cfg.output_dir, cfg, cfg.overwrite)
    trainable, total = count_parameters(model)
    console.print(f"rm: {len(train)} pairs ({len(evals)} for eval), {trainable:,} of {total:,} parameters trainable")
    steps = total_steps(cfg.train, len(train))
    optimizer = make_optimizer(model.parameters(), cfg.train)
    scheduler = make_scheduler(optimizer, cfg.train, steps)

    # 3. training loop: Bradley-Terry loss on (chosen, rejected) pairs
    model.train()
    rng = random.Random(cfg.train.seed)
    lengths = [len(e.prompt) + len(e.chosen) + len(e.rejected) for e in train]  # characters: a cheap proxy
    step, metrics, order = 0, {}, []
    bs, accum = cfg.train.batch_size, cfg.train.grad_accum_steps
    with progress() as bar:
        task = bar.add_task("rm", total=steps, info="")
        while step < steps:
            for _ in range(accum):
                if len(order) < bs:
                    order += length_grouped_order(lengths, bs, rng)
                batch, order = [train[j] for j in order[:bs]], order[bs:]
                with autocast(cfg.train, device):
                    chosen, rejected = pair_scores(model, tokenizer, batch, d.prompt_template, d.max_length, device)
                margin = None
                if any(e.margin is not None for e in batch):
                    margin = torch.tensor([e.margin or 0.0 for e in batch], device=device)
                loss, m = bradley_terry_loss(chosen, rejected, margin)
                check_finite(loss, step, run)
                (loss / accum).backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            metrics = {**m, "rm/grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0]}
            if evals and cfg.train.eval_every and step % cfg.train.eval_every == 0:
                metrics.update(evaluate_pairs(model, tokenizer, evals, d.prompt_template, d.max_length, bs, device))
            if step % cfg.train.log_every == 0 or step == steps:
                run.log(step, metrics)
            bar.update(task, advance=1, info=fmt(metrics, ["loss/reward", "rm/accuracy", "eval/accuracy"]))

    # 4. final eval, normalisation (scores of the training replies -> mean 0, std 1), save
    if cfg.model.lora.enabled:
        model = model.merge_and_unload()
    if evals:
        metrics.update(evaluate_pairs(model, tokenizer, evals, d.prompt_template, d.max_length, bs, device))
        run.log(step, metrics)
    meta = RewardMeta(prompt_template=d.prompt_template, max_length=d.max_length)
    if cfg.normalize:
        sample = train[: min(len(train), 256)]
        model.eval()
        with torch.no_grad():
            c, r = pair_scores(model, tokenizer, sample, d.prompt_template, d.max_length, device)
        raw = torch.cat([c, r])
        std = raw.std().clamp(min=1e-6).item()
        meta.gain, meta.bias = 1.0 / std, -raw.mean().item() / std
    RewardModel(model, tokenizer, meta).save(run.path)
    run.finish({"steps": step, **metrics})
    console.print(f"rm: done, eval accuracy {metrics.get('eval/accuracy', float('nan')):.3f}, model in {run.path}")
    return run.path
