"""Reward-model training: a Bradley-Terry scalar head on pairs or rankings, or a 2-class classifier head.

Bradley-Terry (`kind: bradley_terry`): the loss -log sigmoid(r_chosen - r_rejected - margin) (Ouyang et al.
2022 eq. 1; margin of Touvron et al. 2023 eq. 2) on `{"prompt","chosen","rejected"}` pairs and on rankings
of K completions (all K(K-1)/2 pairs, a prompt's pairs in one batch, each distinct completion scored once).
Classifier (`kind: classifier`): cross-entropy of a 2-class head on labelled completions; the positive-class
logit is the reward. Either way the best eval step's weights are kept (`select_best`), the scores are
normalised (gain/bias in tether_reward.json), and `ensemble_size: N` trains N members with different seeds
(so different head initialisations and data orders) into `output_dir/member-i` plus an ensemble manifest.

Checkpoints (`train.save_every`, and on SIGTERM/SIGINT) hold everything a resumed run needs to continue
exactly: the trainable weights, optimizer, schedule, the epoch's remaining batches and their RNG, every
RNG, the last metrics and the best eval step's weights; `train.resume=true` continues from the newest.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from tether.config import GenerationConfig, ModelConfig, RewardConfig
from tether.data.feedback import group_by_prompt, grouped_batches, load_reward_pairs, load_thumbs
from tether.data.sources import load_prompts, select
from tether.data.tokenize import reward_texts, tokenize_for_reward, tokenize_prompts
from tether.errors import ConfigError
from tether.eval.metrics import auroc, wilson_interval
from tether.losses.classifier import classifier_loss, tied_bradley_terry_loss
from tether.losses.reward import bradley_terry_loss
from tether.models.load import apply_lora, check_context, count_parameters, resolve_dtype, set_attention, set_threads
from tether.models.reward import (
    RewardMeta,
    RewardModel,
    head_scores,
    is_ensemble,
    load_sequence_classifier,
    read_ensemble,
    write_ensemble_manifest,
)
from tether.models.shared_prefix import grouped_sequence_logits, pair_groups
from tether.ops import upcast
from tether.run import RunDir, console, finished_with, fmt, progress
from tether.trainers.common import (
    StopSignal, autocast, check_finite, interrupted, length_grouped_order, make_optimizer, make_scheduler, on_problem, resume_training, save_state, set_seed, total_steps, trainable_state_dict,
)
from tether.trainers.distributed import REPLICATED, Distributed
from tether.types import BinaryFeedbackExample, PreferenceExample, PreferenceTie


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


# --------------------------------------------------------------------------- scoring


def text_scores(model, tokenizer, texts: list[str], meta: RewardMeta, max_length: int, device, dist: Distributed,
                groups: list[list[int]] | None = None) -> torch.Tensor:
    """Raw head scores of reward-model texts; long texts lose tokens from the left (the reply is kept).

    Args:
        groups: a partition of the texts' indices into texts that may share their common prefix (one
            forward pass over it, `models/shared_prefix.py`; only for causal decoders with the model's own
            last-token pooling); None runs every text in full.
        dist: the processes; with several, all share or none does (each must call the model as often).

    Returns:
        (N,) float32: logits[:, 0] for a scalar head, the positive-class logit for a classifier.
    """
    ids, mask = tokenize_for_reward(tokenizer, texts, max_length)  # (N, T)
    groups = groups if meta.pooling == "model" else None  # mean pooling reads every position: encoders only
    logits = grouped_sequence_logits(model, ids.to(device), mask.to(device), groups, tokenizer.pad_token_id, dist.all)  # (N, num_labels)
    return head_scores(logits, meta)


def pair_scores(model, tokenizer, batch: list[PreferenceExample], template: str, max_length: int, device, dist: Distributed,
                meta: RewardMeta | None = None, share_prompt: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw scores of chosen and rejected replies from one forward pass over the distinct texts.

    The pairs of a ranking share completions; each distinct (prompt, reply) text is scored once and
    indexed into every pair that uses it (InstructGPT sec. 3.5: one forward pass per completion). With
    `share_prompt` the texts linked by pairs (a pair, or a ranking's completions) run their common token
    prefix once when the model is a causal decoder (`text_scores`).

    Returns:
        ((B,), (B,)) scores of the chosen and the rejected replies.
    """
    prompts = [e.prompt for e in batch]
    texts = reward_texts(prompts, [e.chosen for e in batch], template) + reward_texts(prompts, [e.rejected for e in batch], template)
    index: dict[str, int] = {}
    for t in texts:
        index.setdefault(t, len(index))
    unique = list(index)
    links = [(index[c], index[r]) for c, r in zip(texts[: len(batch)], texts[len(batch) :])]
    groups = pair_groups(links, len(unique)) if share_prompt else None
    scores = text_scores(model, tokenizer, unique, meta or RewardMeta(), max_length, device, dist, groups)  # (U,)
    where = torch.tensor([index[t] for t in texts], device=scores.device)  # (2B,)
    both = scores[where]  # (2B,)
    return both[: len(batch)], both[len(batch) :]


def pair_loss(chosen: torch.Tensor, rejected: torch.Tensor, batch: list[PreferenceExample]) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley-Terry loss of a batch, with margins when rows have them and target 1/2 for tied pairs."""
    margin = None
    if any(e.margin is not None for e in batch):
        margin = torch.tensor([e.margin or 0.0 for e in batch], device=chosen.device)  # (B,)
    tie = torch.tensor([isinstance(e, PreferenceTie) for e in batch], device=chosen.device)  # (B,)
    if bool(tie.any()):
        return tied_bradley_terry_loss(chosen, rejected, tie, margin)
    return bradley_terry_loss(chosen, rejected, margin)


def label_logits(model, tokenizer, batch: list[BinaryFeedbackExample], template: str, max_length: int, device) -> torch.Tensor:
    """Class logits of labelled completions: (B, 2)."""
    texts = reward_texts([e.prompt for e in batch], [e.completion for e in batch], template)
    ids, mask = tokenize_for_reward(tokenizer, texts, max_length)
    return upcast(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits)


@torch.no_grad()
def evaluate_pairs(model, tokenizer, examples: list[PreferenceExample], template: str, max_length: int, batch_size: int, device,
                   dist: Distributed, meta: RewardMeta | None = None, share_prompt: bool = True) -> dict[str, float]:
    """Pairwise accuracy (ties in score count as wrong; tied pairs are left out) and mean loss.

    With several processes each batch is sharded and the scores gathered, so every pair counts once.
    """
    examples = [e for e in examples if not isinstance(e, PreferenceTie)]
    was = model.training
    model.eval()
    chosen, rejected = [], []
    for i in range(0, len(examples), batch_size):
        part, n_real = dist.shard(examples[i : i + batch_size])
        c, r = pair_scores(model, tokenizer, part, template, max_length, device, dist, meta, share_prompt)
        chosen.append(c[:n_real])
        rejected.append(r[:n_real])
    model.train(was)
    chosen, rejected = torch.cat(chosen), torch.cat(rejected)
    chosen, rejected = dist.gather(chosen), dist.gather(rejected)
    loss, m = bradley_terry_loss(chosen, rejected)
    return {"eval/loss": loss.item(), "eval/accuracy": m["rm/accuracy"], "eval/margin": m["rm/margin"]}


@torch.no_grad()
def evaluate_labels(model, tokenizer, examples: list[BinaryFeedbackExample], template: str, max_length: int, batch_size: int, device,
                    dist: Distributed) -> dict[str, float]:
    """Classifier accuracy, AUROC of the positive-class probability, and mean cross-entropy (sharded and
    gathered like `evaluate_pairs`)."""
    was = model.training
    model.eval()
    logits, labels = [], []
    for i in range(0, len(examples), batch_size):
        part, n_real = dist.shard(examples[i : i + batch_size])
        logits.append(label_logits(model, tokenizer, part, template, max_length, device)[:n_real])  # (n, 2)
        labels += [e.label for e in part[:n_real]]
    model.train(was)
    logits, labels = torch.cat(logits), torch.tensor(labels, device=device)  # (N, 2), (N,)
    logits, labels = dist.gather(logits), dist.gather(labels)
    loss, m = classifier_loss(logits, labels)
    score = (logits[:, 1] - logits[:, 0]).cpu().numpy()  # log-odds: same order as P(desirable)
    return {"eval/loss": loss.item(), "eval/accuracy": m["rm/accuracy"], "eval/auroc": auroc(score, labels.cpu().numpy())}


# --------------------------------------------------------------------------- best checkpoint and normalisation


def is_better(new: dict[str, float], best: dict[str, float] | None) -> bool:
    """Higher eval accuracy wins; equal accuracy is broken by lower eval loss."""
    if best is None:
        return True
    if new["eval/accuracy"] != best["eval/accuracy"]:
        return new["eval/accuracy"] > best["eval/accuracy"]
    return new["eval/loss"] < best["eval/loss"]


@torch.no_grad()
def policy_samples(cfg: RewardConfig, device, dist: Distributed) -> tuple[list[str], list[str]]:
    """One sample of `cfg.normalize_policy` per prompt of `cfg.normalize_prompts` (at most normalize_samples).

    With several processes each samples its shard of the prompts (seeded per sample) and the texts are gathered.

    Returns:
        (prompts, responses) as text.
    """
    from tether.models.load import load_causal_lm
    from tether.rollout.generate import decode_responses, generate

    d = cfg.data
    prompts = [e.prompt for e in load_prompts(cfg.normalize_prompts, d.on_invalid)][: cfg.normalize_samples]
    start, stop = dist.shard_range(len(prompts))
    seeds = dist.sample_seeds(cfg.train.seed, "normalize", range(start, stop))
    policy, tok = load_causal_lm(ModelConfig(name_or_path=cfg.normalize_policy), device, seed=cfg.train.seed)
    ids = tokenize_prompts(prompts[start:stop], tok, d.prompt_template, d.max_prompt_length)
    gen = generate(policy, tok, ids, GenerationConfig(), device, seeds=seeds)
    responses = decode_responses(tok, gen.responses, gen.response_mask)
    return dist.gather_objects(prompts[start:stop]), dist.gather_objects(responses)


@torch.no_grad()
def normalisation(cfg: RewardConfig, model, tokenizer, meta: RewardMeta, train: list, device, dist: Distributed) -> tuple[float, float]:
    """Gain and bias so that normalised scores have mean 0 and std 1 on a reference set.

    docs/architecture.md 6.4: the reference set is samples of the initial policy when `normalize_policy` and
    `normalize_prompts` are set; otherwise the training replies (chosen and rejected, or the labelled
    completions), at most 256 rows.

    Returns:
        (gain, bias) with score = gain * raw + bias.
    """
    d = cfg.data
    if cfg.normalize_policy and cfg.normalize_prompts:
        prompts, responses = policy_samples(cfg, device, dist)
    elif cfg.kind == "classifier":
        rows = train[:256]
        prompts, responses = [e.prompt for e in rows], [e.completion for e in rows]
    else:
        rows = train[:256]
        prompts, responses = [e.prompt for e in rows] * 2, [e.chosen for e in rows] + [e.rejected for e in rows]
    model.eval()
    texts = reward_texts(prompts, responses, d.prompt_template)
    raw = []
    for i in range(0, len(texts), 32):
        part, n_real = dist.shard(texts[i : i + 32])
        raw.append(text_scores(model, tokenizer, part, meta, d.max_length, device, dist)[:n_real])
    raw = dist.gather(torch.cat(raw))  # (N,) every text scored once
    std = raw.std().clamp(min=1e-6).item()
    return 1.0 / std, -raw.mean().item() / std


# --------------------------------------------------------------------------- training


def load_data(cfg: RewardConfig) -> tuple[list, list]:
    """(train, eval) examples: pairs (from pair or ranking rows) or labelled completions.

    The eval set is `data.eval`, or the held-out prompts of `data.train` (split by prompt hash, so no
    prompt is on both sides), or empty.

    Raises:
        DataError: naming file and line of a bad row, or an empty split.
    """
    d = cfg.data
    if cfg.kind == "classifier":
        load = lambda paths: load_thumbs(paths, d.on_invalid)  # noqa: E731
    else:
        load = lambda paths: load_reward_pairs(paths, d.on_invalid, cfg.ties, cfg.margin_scale)  # noqa: E731
    rows = load(d.train)
    train = select(rows, d.split, d.holdout_fraction, d.max_samples, d.skip_samples)
    if d.eval:
        evals = load(d.eval)
    elif d.holdout_fraction > 0 and d.split == "train":
        evals = select(rows, "holdout", d.holdout_fraction, None)
    else:
        evals = []
    # tied pairs have no right answer: they train (target 1/2) but are not evaluated
    return train, [e for e in evals if not isinstance(e, PreferenceTie)]


def example_chars(e: PreferenceExample | BinaryFeedbackExample) -> int:
    """Characters of an example's texts: a cheap proxy for its token length."""
    if isinstance(e, BinaryFeedbackExample):
        return len(e.prompt) + len(e.completion)
    return len(e.prompt) + len(e.chosen) + len(e.rejected)


def epoch_batches(cfg: RewardConfig, train: list, rng: random.Random) -> list[list[int]]:
    """One epoch of batches of example indices, similar lengths together.

    Pairs of one prompt stay in one batch when `group_by_prompt` (a ranking's pairs together).
    """
    bs = cfg.train.batch_size
    if cfg.kind == "classifier" or not cfg.group_by_prompt:
        order = length_grouped_order([example_chars(e) for e in train], bs, rng)
        return [order[i : i + bs] for i in range(0, len(order), bs)]
    groups = group_by_prompt(train)
    lengths = [sum(example_chars(train[j]) for j in g) for g in groups]
    groups_per_batch = max(1, round(bs * len(groups) / len(train)))
    return grouped_batches(groups, bs, length_grouped_order(lengths, groups_per_batch, rng))


def train_reward(cfg: RewardConfig) -> Path:
    """Train a reward model (or an ensemble of `ensemble_size`) into `cfg.output_dir`.

    Raises:
        DataError, ConfigError, ModelError: before training.
        TrainingError: on a NaN/inf loss (the last good checkpoint is kept), or a stop signal (after
            writing a checkpoint).
        StageFailed: held-out accuracy no better than chance with `on_chance=stop` (the model is saved first).
    """
    if cfg.ensemble_size > 1:
        return train_ensemble(cfg)
    return train_one(cfg)


def train_ensemble(cfg: RewardConfig) -> Path:
    """N members with seeds train.seed + i in `output_dir/member-i`, and the manifest that makes
    `output_dir` load as an `EnsembleReward` (Lakshminarayanan et al. 2017; Coste et al. 2023).

    With `train.resume`, a finished member (same config) is kept and the others resume from their own
    newest checkpoint. When `model.name_or_path` is itself an ensemble of `ensemble_size` (the previous round's,
    in `tether loop`), member i starts from its member i, so the members stay as diverse as they were.

    Raises:
        ConfigError: `model.name_or_path` an ensemble of another size.
    """
    starts = read_ensemble(cfg.model.name_or_path)[1] if is_ensemble(cfg.model.name_or_path) else None
    if starts is not None and len(starts) != cfg.ensemble_size:
        raise ConfigError(f"model.name_or_path: {cfg.model.name_or_path} is an ensemble of {len(starts)}, but ensemble_size="
                          f"{cfg.ensemble_size}; they must match for each member to start from its own")
    dist = Distributed(cfg.train, "rm", REPLICATED)
    run = RunDir(cfg.output_dir, cfg, cfg.overwrite, dist)
    members: list[str] = []
    for i in range(cfg.ensemble_size):
        member = cfg.model_copy(update={
            "ensemble_size": 1, "output_dir": str(run.path / f"member-{i}"), "overwrite": True,
            "train": cfg.train.model_copy(update={"seed": cfg.train.seed + i}),
            "model": cfg.model.model_copy(update={"name_or_path": starts[i]}) if starts else cfg.model,
        })
        members.append(f"member-{i}")
        if cfg.train.resume and finished_with(Path(member.output_dir), member):
            console.print(f"rm: ensemble member {i + 1} of {cfg.ensemble_size} already trained; kept")
            continue
        console.print(f"rm: ensemble member {i + 1} of {cfg.ensemble_size} (seed {cfg.train.seed + i})")
        train_one(member)  # with train.resume, continues from the member's own newest checkpoint
    if dist.is_main:
        write_ensemble_manifest(run.path, members, cfg.ensemble_combine, cfg.ensemble_k)
    run.finish({"members": members})
    console.print(f"rm: ensemble of {len(members)} in {run.path}")
    return run.path


def train_one(cfg: RewardConfig) -> Path:
    """Train one reward model; writes it (HF format + tether_reward.json) to `cfg.output_dir`."""
    # 0. setup
    set_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)
    dist = Distributed(cfg.train, "rm", REPLICATED)
    device = dist.device
    dist.per_process(cfg.train.batch_size, "train.batch_size")
    d = cfg.data
    classifier = cfg.kind == "classifier"
    meta = RewardMeta(prompt_template=d.prompt_template, max_length=d.max_length, kind="classifier" if classifier else "scalar",
                      pooling=cfg.pooling)
    if cfg.normalize and bool(cfg.normalize_policy) != bool(cfg.normalize_prompts):
        raise ConfigError("normalize_policy and normalize_prompts go together: set both or neither")

    # 1. data: train split and an eval set
    train, evals = load_data(cfg)

    # 2. model
    model, tokenizer = load_sequence_classifier(
        cfg.model.name_or_path, num_labels=meta.num_labels, dtype=resolve_dtype(cfg.model.dtype, device), seed=cfg.train.seed,
        pooling=cfg.pooling, tokenizer=cfg.model.tokenizer,
    )
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    check_context(d.max_length, model)
    set_attention(model, cfg.model.attn_implementation, device, cfg.train.precision, d.max_length)
    freeze_lower_layers(model, cfg.freeze_layers)
    if cfg.model.lora.enabled:
        if not cfg.model.lora.merge:
            raise ConfigError("model.lora.merge=false: a reward model is always written with its adapters merged")
        model = apply_lora(model, cfg.model.lora, task_type="SEQ_CLS")
    model.to(device)
    run = RunDir(cfg.output_dir, cfg, cfg.overwrite, dist)
    trainable, total = count_parameters(model)
    what = "labelled completions" if classifier else "pairs"
    console.print(f"rm: {len(train)} {what} ({len(evals)} for eval), {trainable:,} of {total:,} parameters trainable")
    steps = total_steps(cfg.train, len(train))
    optimizer = make_optimizer(model.parameters(), cfg.train)
    scheduler = make_scheduler(optimizer, cfg.train, steps)
    plain = model
    model, optimizer, scheduler = dist.prepare(
        model, optimizer, scheduler, micro_batch_size=cfg.train.batch_size // dist.num_processes, max_grad_norm=cfg.train.max_grad_norm
    )

    def evaluate() -> dict[str, float]:
        if classifier:
            return evaluate_labels(model, tokenizer, evals, d.prompt_template, d.max_length, cfg.train.batch_size, device, dist)
        return evaluate_pairs(model, tokenizer, evals, d.prompt_template, d.max_length, cfg.train.batch_size, device, dist, meta,
                              cfg.train.share_prompt)

    # 3. training loop: Bradley-Terry loss on pairs, or cross-entropy on labelled completions; each process
    # takes its shard of every batch
    model.train()
    rng = random.Random(cfg.train.seed)
    step, metrics, queue = 0, {}, []
    best, best_state, best_step = None, None, 0
    accum = cfg.train.grad_accum_steps
    if run.resume_from is not None:
        state = resume_training(run.resume_from, plain, optimizer, scheduler)
        step, queue, metrics = state["step"], state["queue"], state["metrics"]
        best, best_state, best_step = state["best"], state["best_state"], state["best_step"]
        rng.setstate(state["order_rng"])

    def save(path: Path) -> None:
        save_state(
            path, step=step, model=trainable_state_dict(plain), optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(), queue=queue, order_rng=rng.getstate(), metrics=metrics,
            best=best, best_state=best_state, best_step=best_step,
        )

    with progress() as bar, StopSignal() as stop:
        task = bar.add_task("rm", total=steps, completed=step, info="")
        while step < steps:
            for k in range(accum):
                if not queue:
                    queue = epoch_batches(cfg, train, rng)
                batch, n_real = dist.shard([train[j] for j in queue.pop(0)])
                with dist.micro_batch(model, last=k == accum - 1):
                    with autocast(cfg.train, device):
                        if classifier:
                            logits = label_logits(model, tokenizer, batch, d.prompt_template, d.max_length, device)  # (B, 2)
                            labels = torch.tensor([e.label for e in batch], device=device)
                            loss, m = classifier_loss(logits, labels)
                        else:
                            chosen, rejected = pair_scores(model, tokenizer, batch, d.prompt_template, d.max_length, device, dist,
                                                           meta, cfg.train.share_prompt)
                            loss, m = pair_loss(chosen, rejected, batch)
                    check_finite(loss, step + 1, run)
                    dist.backward(loss * dist.share(n_real), accum)  # the mean over the global batch
            m = dist.mean_metrics(m, n_real)
            grad_norm = dist.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm, optimizer)
            dist.step(optimizer)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            metrics = {**m, "rm/grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0]}
            if evals and cfg.train.eval_every and (step % cfg.train.eval_every == 0 or step == steps):
                metrics.update(evaluate())
                if cfg.select_best and is_better(metrics, best):
                    best, best_state, best_step = dict(metrics), trainable_state_dict(plain), step
            if step % cfg.train.log_every == 0 or step == steps:
                run.log(step, metrics)
            bar.update(task, advance=1, info=fmt(metrics, ["loss/reward", "loss/classifier", "rm/accuracy", "eval/accuracy"]))
            if cfg.train.save_every and step % cfg.train.save_every == 0 or stop.requested:
                ckpt = run.checkpoint(step, save)
                if stop.requested:
                    raise interrupted(step, ckpt)

    # 4. best eval step's weights, final eval, normalisation, save
    model = plain
    if best_state is not None and best_step != step:
        model.load_state_dict(best_state, strict=False)
        console.print(f"rm: keeping the weights of step {best_step} (eval accuracy {best['eval/accuracy']:.3f})")
    if cfg.model.lora.enabled:
        model = model.merge_and_unload()
    if evals and best is not None:
        metrics.update({k: v for k, v in best.items() if k.startswith("eval/")})  # the kept weights' eval
        metrics["eval/best_step"] = float(best_step)
        run.log(step, metrics)
    elif evals:
        metrics.update(evaluate())
        metrics["eval/best_step"] = float(step)
        run.log(step, metrics)
    if cfg.normalize:
        meta.gain, meta.bias = normalisation(cfg, model, tokenizer, meta, train, device, dist)
    if dist.is_main:
        RewardModel(model, tokenizer, meta).save(run.path)  # kept whatever the verdict below
    warnings = []
    if evals:
        chance, low, high = chance_level(metrics["eval/accuracy"], evals)
        metrics.update({"eval/accuracy_low": low, "eval/accuracy_high": high, "eval/chance": chance})
        if low <= chance:
            warnings.append(on_problem(
                cfg.on_chance, "rm", f"held-out accuracy {metrics['eval/accuracy']:.3f} (95% interval {low:.3f}-{high:.3f}, "
                f"{len(evals)} examples) is no better than chance ({chance:.3f}); the model is in {run.path}",
                "Train longer or on more data (train.epochs, data.max_samples), check train.learning_rate and that the "
                "labels are right, or set on_chance=warn to go on",
            ))
    else:
        console.print("rm: no held-out examples (data.eval, data.holdout_fraction): the accuracy is unchecked")
    run.finish({"steps": step, **metrics, "warnings": warnings})
    console.print(f"rm: done, eval accuracy {metrics.get('eval/accuracy', float('nan')):.3f}, model in {run.path}")
    return run.path


def chance_level(accuracy: float, evals: list) -> tuple[float, float, float]:
    """The accuracy a model without skill reaches on `evals`, and the 95% Wilson interval of `accuracy`.

    Chance is 1/2 for pairs (either reply first) and the majority-class rate for labelled completions
    (always answering the commoner label).

    Returns:
        `(chance, low, high)`.
    """

    n = len(evals)
    if isinstance(evals[0], BinaryFeedbackExample):
        positive = sum(bool(e.label) for e in evals) / n
        chance = max(positive, 1.0 - positive)
    else:
        chance = 0.5
    low, high = wilson_interval(accuracy * n, n)
    return chance, low, high
