"""Direct preference optimisation: DPO, IPO and KTO against a frozen reference policy.

The policy learns from preferences without a reward model: the loss compares how much more likely the
policy makes each reply than the reference does (`losses/dpo.py`). Chosen and rejected replies go
through the model together (a concatenated, right-padded batch) and only reply tokens (and EOS) count in
the sequence log-probabilities. With `train.share_prompt` (default) the prompt a pair's two sequences
share runs once and both replies read its key/value cache (`models/shared_prefix.py`; exact).

The reference comes from one of three places (`dpo.reference`):
- lora: the policy itself with its LoRA adapters disabled; one copy of the base weights in memory;
- copy: a frozen deep copy of the starting model;
- precomputed: reference log-probabilities of every training and eval sequence computed once before
  training (the starting weights, no gradients) and cached in the run directory; no reference model is
  in memory while training.
"""

from __future__ import annotations

import copy
import random
from functools import partial
from pathlib import Path

import torch
from torch import nn

from tether.config import DPOConfig, DPOParams, GenerationConfig, LoRAConfig
from tether.data.sources import load_binary_feedback, load_preferences, select
from tether.data.tokenize import (
    TokenizedFeedback, collate_pairs, collate_sft, feedback_sequences, tokenize_feedback,
    tokenize_pairs, tokenize_prompts,
)
from tether.errors import ConfigError
from tether.eval.dpo_eval import DPOMeta
from tether.losses.dpo import dpo_loss, ipo_loss, kto_kl_ref_point, kto_loss
from tether.models.load import (
    release_memory,
    apply_lora, check_context, count_parameters, is_peft, load_causal_lm, reference_context, save_causal_lm, set_attention, set_threads,
)
from tether.models.logprobs import response_logprobs, sequence_logprobs
from tether.models.shared_prefix import SharedPrefixBatch, agreed, pair_split, split_sequence_logprobs
from tether.rollout.generate import generate
from tether.run import RunDir, console, fmt, progress
from tether.trainers.common import (
    StopSignal, autocast, check_finite, interrupted, make_optimizer, make_scheduler, next_batch, resume_training, save_state, set_seed, total_steps, trainable_state_dict,
)
from tether.trainers.distributed import Distributed
from tether.types import SFTBatch

REFERENCE_CACHE = "reference_logprobs.safetensors"
KL_PROMPTS = 32  # held-out prompts answered by the policy to measure its KL to the reference
KL_GENERATION = GenerationConfig(max_new_tokens=48, temperature=1.0, batch_size=16)
# which two sequences of an example share a forward pass: (first half, second half) of the batch
SEQUENCE_NAMES = {"pairs": ("chosen", "rejected"), "kto": ("completion", "kl")}


# --------------------------------------------------------------------------- reference


def reference_mode(cfg: DPOConfig) -> str:
    """Resolve `dpo.reference`: auto is lora with LoRA on, else copy.

    Raises:
        ConfigError: reference=lora without LoRA enabled.
    """
    mode = cfg.dpo.reference
    if mode == "auto":
        return "lora" if cfg.model.lora.enabled else "copy"
    if mode == "lora" and not cfg.model.lora.enabled:
        raise ConfigError("dpo.reference=lora needs model.lora.enabled=true (or use copy / precomputed)")
    return mode


def prepare_policy(model: nn.Module, mode: str, lora: LoRAConfig) -> tuple[nn.Module, nn.Module | None]:
    """The trainable policy and, for mode 'copy', a frozen copy of the starting weights.

    The copy is taken before LoRA is applied, so it is the plain base model. In modes 'lora' and
    'precomputed' no second model exists (`ref_policy` is None).

    Returns:
        (policy, ref_policy).
    """
    ref_policy = None
    if mode == "copy":
        ref_policy = copy.deepcopy(model).eval()
        for p in ref_policy.parameters():
            p.requires_grad_(False)
    policy = apply_lora(model, lora) if lora.enabled else model
    return policy, ref_policy


def sequence_batch(chunk: list, kind: str, pad_id: int, max_length: int) -> SFTBatch:
    """The 2B right-padded sequences of B examples that share one forward pass.

    pairs: the B chosen sequences, then the B rejected ones. kto: the B judged completions, then each
    prompt with its mismatched completion (for the KL reference point).
    """
    if kind == "pairs":
        b = collate_pairs(chunk, pad_id)
        return SFTBatch(
            torch.cat([b.chosen_input_ids, b.rejected_input_ids]),  # (2B, T)
            torch.cat([b.chosen_attention_mask, b.rejected_attention_mask]),  # (2B, T)
            torch.cat([b.chosen_loss_mask, b.rejected_loss_mask]),  # (2B, T)
        )
    seqs = feedback_sequences(chunk, max_length) + feedback_sequences(chunk, max_length, mismatched=True)
    return collate_sft(seqs, pad_id)


def shared_split(batch: SFTBatch, kind: str, pad_id: int, share_prompt: bool, dist: Distributed) -> SharedPrefixBatch | None:
    """The shared-prefix split of a pairs batch (chosen row i and rejected row B + i share their prompt), or
    None: sharing off, KTO rows (not pairs), or a batch where it does not pay on this or another process
    (all processes must call the model the same number of times)."""
    if not (share_prompt and kind == "pairs"):
        return None
    return agreed(pair_split(batch.input_ids, batch.attention_mask, batch.loss_mask, pad_id), dist.all)


def batch_logprobs(model: nn.Module, batch: SFTBatch, average: bool, split: SharedPrefixBatch | None = None) -> torch.Tensor:
    """(N,) sequence log-probabilities of a batch, through the shared-prefix forward when `split` is given."""
    return split_sequence_logprobs(model, batch.input_ids, batch.attention_mask, batch.loss_mask, split, average)


@torch.no_grad()
def reference_logprobs(policy: nn.Module, ref_policy: nn.Module | None, batch: SFTBatch, average: bool,
                       split: SharedPrefixBatch | None = None) -> torch.Tensor:
    """Reference sequence log-probabilities: the frozen copy, or the policy with LoRA adapters disabled.

    Args:
        batch: (N, T) right-padded sequences with their reply `loss_mask`.
        average: per-token mean instead of the sum (IPO).
        split: the batch's shared-prefix split (`shared_split`), or None for full sequences.

    Returns:
        (N,) float32.

    Raises:
        ModelError: no copy and no LoRA adapters to disable.
    """
    with reference_context(policy, ref_policy):
        return batch_logprobs(ref_policy or policy, batch, average, split)


@torch.no_grad()
def precompute_reference(policy: nn.Module, items: list, kind: str, split: str, pad_id: int, max_length: int, batch_size: int, average: bool, device,
                         dist: Distributed, share_prompt: bool = True) -> dict[str, torch.Tensor]:
    """Reference log-probabilities of every sequence of `items`, from the starting weights, no gradients.

    With LoRA the adapters are disabled; without it the policy has not been updated yet, so it is the
    reference. Values are keyed `"{split}/{name}"` (name from `SEQUENCE_NAMES[kind]`) and indexed by
    each item's `index` (NaN where an example was dropped). With several processes each computes its
    shard of every batch and the values are gathered, so every process holds the whole cache.

    Returns:
        {key: (N_examples,) float32 on CPU}.
    """
    was = policy.training
    policy.eval()
    first, second = SEQUENCE_NAMES[kind]
    n = max(it.index for it in items) + 1
    dtype = torch.float64 if next(policy.parameters()).dtype == torch.float64 else torch.float32  # as `upcast` gives
    out = {f"{split}/{first}": torch.full((n,), float("nan"), dtype=dtype), f"{split}/{second}": torch.full((n,), float("nan"), dtype=dtype)}
    for i in range(0, len(items), batch_size):
        chunk, n_real = dist.shard(items[i : i + batch_size])
        b = sequence_batch(chunk, kind, pad_id, max_length).to(device)
        shared = shared_split(b, kind, pad_id, share_prompt, dist)
        if is_peft(policy):
            lp = reference_logprobs(policy, None, b, average, shared).cpu()  # (2B,)
        else:
            lp = batch_logprobs(policy, b, average, shared).cpu()  # (2B,)
        idx = torch.tensor([it.index for it in chunk])
        lp_first, lp_second = lp[: len(chunk)], lp[len(chunk) :]
        idx, lp_first, lp_second = (dist.gather(t.to(device), n_real).cpu() for t in (idx, lp_first, lp_second))  # (B,) of the whole batch
        out[f"{split}/{first}"][idx] = lp_first
        out[f"{split}/{second}"][idx] = lp_second
    policy.train(was)
    return out


def cached_reference(cache: dict[str, torch.Tensor], chunk: list, kind: str, split: str, device) -> torch.Tensor:
    """(2B,) reference log-probabilities of a batch, read from a `precompute_reference` cache."""
    first, second = SEQUENCE_NAMES[kind]
    idx = torch.tensor([it.index for it in chunk])
    return torch.cat([cache[f"{split}/{first}"][idx], cache[f"{split}/{second}"][idx]]).to(device)


def save_reference_cache(cache: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in cache.items()}, str(path))


def load_reference_cache(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# --------------------------------------------------------------------------- loss


def preference_loss(params: DPOParams, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, dist: Distributed,
                    labels: torch.Tensor | None = None, n_real: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The configured loss on the 2B sequence log-probabilities of one batch.

    Args:
        params: the `dpo` config section (loss, beta, label_smoothing, KTO weights).
        logprobs: (2B,) policy log-probabilities: chosen then rejected (pairs), or judged completions then
            mismatched completions (kto).
        ref_logprobs: (2B,) the same under the reference.
        labels: (B,) bool, True for desirable completions (kto only).
        dist, n_real: KTO's reference point z0 is estimated on the mismatched halves of the whole global batch
            (the first `n_real` rows of each process; all rows by default), as on one process.

    Returns:
        `(loss, metrics)` with `loss/dpo`, `dpo/accuracy`, `dpo/margin`, `rewards/chosen`,
        `rewards/rejected`, `logprobs/chosen`, `logprobs/rejected` (for KTO: desirable / undesirable, the
        accuracy being how often beta * (r - z0) has the label's sign).
    """
    B = logprobs.shape[0] // 2
    if params.loss == "sigmoid":
        return dpo_loss(logprobs[:B], logprobs[B:], ref_logprobs[:B], ref_logprobs[B:], params.beta, params.label_smoothing)
    if params.loss == "ipo":
        return ipo_loss(logprobs[:B], logprobs[B:], ref_logprobs[:B], ref_logprobs[B:], params.beta)
    # kto: z0 from the mismatched half (Ethayarajh et al. 2024, sec. 4.1); no gradient flows through it
    z0 = kto_kl_ref_point(dist.gather(logprobs[B:].detach(), n_real), dist.gather(ref_logprobs[B:], n_real))
    loss, metrics = kto_loss(
        logprobs[:B], ref_logprobs[:B], labels, z0, params.beta, params.desirable_weight, params.undesirable_weight
    )
    with torch.no_grad():
        log_ratio = (logprobs[:B] - ref_logprobs[:B]).float()  # (B,)
        metrics["dpo/accuracy"] = ((log_ratio - z0 > 0) == labels.bool()).float().mean().item()
    metrics["dpo/margin"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return loss, metrics


def batch_loss(policy, ref_policy, cache, chunk: list, kind: str, split: str, params: DPOParams, pad_id: int, max_length: int, device,
               dist: Distributed, train_cfg=None, n_real: int | None = None, share_prompt: bool | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one batch: one forward pass of the policy, reference logprobs from the model or the cache.

    For KTO only the judged completions need gradients; the mismatched ones only estimate z0, so their
    policy log-probabilities are computed without gradients. With several processes `chunk` is this
    process's shard (`n_real` real rows) and `policy` the wrapped model; the LoRA reference runs on the
    plain model inside it. Pairs share their prompt's forward pass when `share_prompt` (default:
    `train_cfg.share_prompt`, else on) and the policy is a causal decoder.
    """
    average = params.loss == "ipo"
    b = sequence_batch(chunk, kind, pad_id, max_length).to(device)
    if share_prompt is None:
        share_prompt = train_cfg.share_prompt if train_cfg is not None else True
    shared = shared_split(b, kind, pad_id, share_prompt, dist)
    ctx = autocast(train_cfg, device) if train_cfg is not None else torch.autocast(device.type, enabled=False)
    with ctx:
        if kind == "pairs":
            logprobs = batch_logprobs(policy, b, average, shared)  # (2B,)
        else:
            B = len(chunk)
            own = sequence_logprobs(policy, b.input_ids[:B], b.attention_mask[:B], b.loss_mask[:B])  # (B,)
            with torch.no_grad():
                other = sequence_logprobs(policy, b.input_ids[B:], b.attention_mask[B:], b.loss_mask[B:])  # (B,)
            logprobs = torch.cat([own, other])  # (2B,)
        if cache is not None:
            ref = cached_reference(cache, chunk, kind, split, device)  # (2B,)
        else:
            ref = reference_logprobs(dist.unwrap(policy), ref_policy, b, average, shared)  # (2B,)
    labels = torch.tensor([it.label for it in chunk], device=device) if kind == "kto" else None
    return preference_loss(params, logprobs, ref, dist, labels, n_real)


def reduce_metrics(dist: Distributed, metrics: dict[str, float], part: list, kind: str, n_real: int) -> dict[str, float]:
    """A shard's batch metrics as metrics of the whole global batch (`Distributed.mean_metrics`).

    KTO's chosen / rejected metrics are means over the desirable / undesirable completions only, so
    they are weighted by those counts, and the margin is their difference again.
    """
    if kind != "kto":
        return dist.mean_metrics(metrics, n_real)
    pos = sum(bool(it.label) for it in part[:n_real])
    counts = {"rewards/chosen": pos, "logprobs/chosen": pos, "rewards/rejected": n_real - pos, "logprobs/rejected": n_real - pos}
    out = dist.mean_metrics(metrics, n_real, counts)
    out["dpo/margin"] = out["rewards/chosen"] - out["rewards/rejected"]
    return out


@torch.no_grad()
def evaluate_dpo(policy, ref_policy, cache, items: list, kind: str, params: DPOParams, pad_id: int, max_length: int, batch_size: int, device,
                 dist: Distributed, share_prompt: bool = True) -> dict[str, float]:
    """Loss, preference accuracy and margin on held-out examples (example-weighted means over batches;
    with several processes each batch is sharded and its metrics reduced, as in training)."""
    was = policy.training
    policy.eval()
    totals: dict[str, float] = {}
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        part, n_real = dist.shard(chunk)
        _, m = batch_loss(policy, ref_policy, cache, part, kind, "eval", params, pad_id, max_length, device, dist, n_real=n_real,
                          share_prompt=share_prompt)
        m = reduce_metrics(dist, m, part, kind, n_real)
        for k in ("loss/dpo", "dpo/accuracy", "dpo/margin"):
            totals[k] = totals.get(k, 0.0) + m[k] * len(chunk)
    policy.train(was)
    return {"eval/loss": totals["loss/dpo"] / len(items), "eval/accuracy": totals["dpo/accuracy"] / len(items),
            "eval/margin": totals["dpo/margin"] / len(items)}


@torch.no_grad()
def heldout_kl(policy, ref_policy, tokenizer, prompts: list[str], template: str, max_prompt_length: int, device, seed: int,
               dist: Distributed) -> dict[str, float]:
    """KL(policy || reference) on held-out prompts: sum over tokens of log pi - log pi_ref of sampled answers.

    The k1 estimate (Schulman 2020, "Approximating KL divergence"): unbiased for the KL of whole responses
    sampled from the policy at temperature 1.

    With several processes each answers its shard of the prompts (sampled with per-prompt seeds) on the
    plain model with every parameter present, and the per-response KLs are gathered.

    Returns:
        `eval/kl` (mean summed KL per response), `eval/kl_prompts` and `eval/response_length`.
    """
    start, stop = dist.shard_range(len(prompts))
    with dist.full_parameters(policy) as plain:
        seeds = dist.sample_seeds(seed, "heldout-kl", range(start, stop))
        return _heldout_kl(plain, ref_policy, tokenizer, prompts[start:stop], template, max_prompt_length, device, seed, seeds, dist)


def _heldout_kl(policy, ref_policy, tokenizer, prompts: list[str], template: str, max_prompt_length: int, device, seed: int,
                seeds: list[int] | None, dist: Distributed) -> dict[str, float]:
    prompt_ids = tokenize_prompts(prompts, tokenizer, template, max_prompt_length)
    torch.manual_seed(seed)
    gen = generate(policy, tokenizer, prompt_ids, KL_GENERATION, device, seeds=seeds)
    sequences = torch.cat([gen.prompts, gen.responses], dim=1)  # (B, T)
    attention_mask = torch.cat([gen.prompt_mask, gen.response_mask.long()], dim=1)  # (B, T)
    T_p = gen.prompts.shape[1]
    was = policy.training
    policy.eval()
    kl = []
    for i in range(0, sequences.shape[0], KL_GENERATION.batch_size):
        seq, mask = sequences[i : i + KL_GENERATION.batch_size], attention_mask[i : i + KL_GENERATION.batch_size]
        logprobs = response_logprobs(policy, seq, mask, T_p)  # (b, T_r)
        with reference_context(policy, ref_policy):
            ref_logprobs = response_logprobs(ref_policy or policy, seq, mask, T_p)  # (b, T_r)
        response_mask = gen.response_mask[i : i + KL_GENERATION.batch_size]  # (b, T_r)
        kl.append(((logprobs - ref_logprobs) * response_mask).sum(-1))
    policy.train(was)
    kl, lengths = torch.cat(kl), gen.response_mask.sum(-1).float()  # (B,), (B,)
    kl, lengths = dist.gather(kl), dist.gather(lengths)
    return {"eval/kl": kl.mean().item(), "eval/kl_prompts": float(len(kl)), "eval/response_length": lengths.mean().item()}


# --------------------------------------------------------------------------- data


def load_dpo_data(cfg: DPOConfig, tokenizer) -> tuple[str, list, list]:
    """Train and eval examples tokenized for the policy: preference pairs, or thumbs data for KTO.

    The eval set is `data.eval`, else the held-out part of `data.train` (when `holdout_fraction` > 0 and
    `split` is train), as in `tether rm`.

    Returns:
        (kind, train items, eval items) with kind 'pairs' or 'kto'.

    Raises:
        DataError: unreadable files, bad rows, an empty split.
    """
    d = cfg.data
    kind = "kto" if cfg.dpo.loss == "kto" else "pairs"
    load = load_binary_feedback if kind == "kto" else load_preferences
    rows = load(d.train, d.on_invalid)
    train = select(rows, d.split, d.holdout_fraction, d.max_samples, d.skip_samples)
    if d.eval:
        evals = load(d.eval, d.on_invalid)
    elif d.holdout_fraction > 0 and d.split == "train":
        evals = select(rows, "holdout", d.holdout_fraction, None)
    else:
        evals = []
    args = (tokenizer, d.prompt_template, d.max_length, d.max_prompt_length, d.truncation)
    if kind == "kto":
        return kind, tokenize_feedback(train, *args, seed=cfg.train.seed), tokenize_feedback(evals, *args, seed=cfg.train.seed) if evals else []
    return kind, tokenize_pairs(train, *args), tokenize_pairs(evals, *args) if evals else []


def eval_prompts(items: list, tokenizer, n: int) -> list[str]:
    """Up to `n` distinct held-out prompts as text (already formatted; the template keeps them as they are)."""
    seen, out = set(), []
    for it in items:
        ids = it.prompt_ids if isinstance(it, TokenizedFeedback) else it.chosen.input_ids[: it.chosen.loss_mask.index(True)]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if text not in seen:
            seen.add(text)
            out.append(text)
        if len(out) >= n:
            break
    return out


# --------------------------------------------------------------------------- training


def train_dpo(cfg: DPOConfig) -> Path:
    """Train a policy directly on preferences (DPO, IPO) or thumbs data (KTO); writes it to `cfg.output_dir`.

    Writes the final model in Hugging Face format (LoRA merged), `tether_dpo.json` (reference path, beta,
    loss, prompt template), `metrics.jsonl`, and with `dpo.reference=precomputed` the cached reference
    log-probabilities (`reference_logprobs.safetensors`).

    Raises:
        DataError, ConfigError, ModelError: before training, on bad data, config or model.
        TrainingError: on a NaN/inf loss (the last good checkpoint is kept).
    """
    # 0. setup
    set_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)
    dist = Distributed(cfg.train, "dpo", lora=cfg.model.lora.enabled)
    device = dist.device
    dist.per_process(cfg.train.batch_size, "train.batch_size")
    d, params = cfg.data, cfg.dpo
    mode = reference_mode(cfg)
    average = params.loss == "ipo"
    share = cfg.train.share_prompt

    # 1. data and model (all checks before anything is written)
    model, tokenizer = load_causal_lm(cfg.model, device, seed=cfg.train.seed)
    check_context(d.max_length, model)
    set_attention(model, cfg.model.attn_implementation, device, cfg.train.precision, d.max_length)  # before the reference copy
    kind, items, eval_items = load_dpo_data(cfg, tokenizer)
    if kind == "kto" and len(items) < 2:
        raise ConfigError("KTO needs at least 2 training examples (the KL reference point uses mismatched pairs)")
    run = RunDir(cfg.output_dir, cfg, cfg.overwrite, dist)
    pad_id, bs = tokenizer.pad_token_id, cfg.train.batch_size

    # 2. policy and reference: LoRA base, frozen copy, or cached logprobs of the starting weights
    policy, ref_policy = prepare_policy(model, mode, cfg.model.lora)
    cache = None
    if mode == "precomputed":
        console.print(f"dpo: computing reference logprobs of {len(items)} train and {len(eval_items)} eval examples")
        cache = precompute_reference(policy, items, kind, "train", pad_id, d.max_length, bs, average, device, dist, share)
        if eval_items:
            cache.update(precompute_reference(policy, eval_items, kind, "eval", pad_id, d.max_length, bs, average, device, dist, share))
        if dist.is_main:
            save_reference_cache(cache, run.path / REFERENCE_CACHE)
        dist.wait()
        cache = load_reference_cache(run.path / REFERENCE_CACHE)
    trainable, total = count_parameters(policy)
    console.print(
        f"dpo ({params.loss}, reference={mode}): {len(items)} examples ({len(eval_items)} for eval), "
        f"{trainable:,} of {total:,} parameters trainable, device {device}"
    )
    steps = total_steps(cfg.train, len(items))
    optimizer = make_optimizer(policy.parameters(), cfg.train)
    scheduler = make_scheduler(optimizer, cfg.train, steps)
    policy, optimizer, scheduler = dist.prepare(
        policy, optimizer, scheduler, micro_batch_size=bs // dist.num_processes, max_grad_norm=cfg.train.max_grad_norm
    )

    # 3. training loop: one forward pass per micro-batch, gradient accumulation; each process takes its
    # shard of every batch
    policy.train()
    rng = random.Random(cfg.train.seed)
    step, metrics, order = 0, {}, []
    accum = cfg.train.grad_accum_steps
    if run.resume_from is not None:
        state = resume_training(run.resume_from, dist.unwrap(policy), optimizer, scheduler, model_key="policy")
        step, order = state["step"], state["order"]
        rng.setstate(state["order_rng"])

    def save(path: Path) -> None:
        save_causal_lm(dist.unwrap(policy), tokenizer, path, merge=cfg.model.lora.merge)
        save_state(path, step=step, policy=trainable_state_dict(dist.unwrap(policy)), optimizer=optimizer.state_dict(),
                   scheduler=scheduler.state_dict(), order=order, order_rng=rng.getstate())

    with progress() as bar, StopSignal() as stop:
        task = bar.add_task(params.loss, total=steps, completed=step, info="")
        while step < steps:
            sums: dict[str, float] = {}
            for j in range(accum):
                chunk, order = next_batch(items, order, rng, bs)
                part, n_real = dist.shard(chunk)
                with dist.micro_batch(policy, last=j == accum - 1):
                    loss, m = batch_loss(policy, ref_policy, cache, part, kind, "train", params, pad_id, d.max_length, device, dist, cfg.train, n_real)
                    check_finite(loss, step + 1, run)
                    dist.backward(loss * dist.share(n_real), accum)  # the mean over the global batch
                for k, v in reduce_metrics(dist, m, part, kind, n_real).items():
                    sums[k] = sums.get(k, 0.0) + v / accum
            grad_norm = dist.clip_grad_norm_(policy.parameters(), cfg.train.max_grad_norm, optimizer)
            dist.step(optimizer)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            metrics = {**sums, "dpo/grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0]}
            if eval_items and cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < steps:
                metrics.update(evaluate_dpo(policy, ref_policy, cache, eval_items, kind, params, pad_id, d.max_length, bs, device, dist, share))
            if step % cfg.train.log_every == 0 or step == steps:
                run.log(step, metrics)
            bar.update(task, advance=1, info=fmt(metrics, ["loss/dpo", "dpo/accuracy", "dpo/margin", "eval/accuracy"]))
            stopping = dist.any(stop.requested)  # all processes stop at the same step
            if cfg.train.save_every and step % cfg.train.save_every == 0 or stopping:
                ckpt = run.checkpoint(step, save)
                if stopping:
                    raise interrupted(step, ckpt)

    # 4. final evaluation: held-out accuracy, and KL to the reference on held-out prompts
    if eval_items:
        metrics.update(evaluate_dpo(policy, ref_policy, cache, eval_items, kind, params, pad_id, d.max_length, bs, device, dist, share))
        if mode == "precomputed" and not is_peft(dist.unwrap(policy)):
            # the cache cannot score new samples: load the reference now that training is over
            ref_policy, _ = load_causal_lm(cfg.model, device, seed=cfg.train.seed)
        prompts = eval_prompts(eval_items, tokenizer, KL_PROMPTS)
        metrics.update(heldout_kl(policy, ref_policy, tokenizer, prompts, d.prompt_template, d.max_prompt_length, device, cfg.train.seed, dist))
        run.log(step, metrics)
        ref_policy = None
        release_memory()

    # 5. save: merged model (or with model.lora.merge=false the adapter alone), and what `tether dpo eval` needs to
    # find the reference. Training is over, so the reference and optimizer state go first and LoRA is merged in
    # place (no second copy at the end)
    ref_policy = optimizer = scheduler = cache = None
    release_memory()
    if is_peft(dist.unwrap(policy)) and cfg.model.lora.merge:
        policy = dist.unwrap(policy)
        if dist.is_main:
            policy.save_pretrained(run.path / "adapter")
        policy = policy.merge_and_unload()
    dist.save_model(policy, tokenizer, run.path, partial(save_causal_lm, merge=cfg.model.lora.merge))
    if dist.is_main:
        DPOMeta(
            reference=cfg.model.name_or_path, beta=params.beta, loss=params.loss, label_smoothing=params.label_smoothing,
            reference_mode=mode, prompt_template=d.prompt_template, max_length=d.max_length,
            max_prompt_length=d.max_prompt_length, average_logprobs=average, seed=cfg.train.seed,
        ).save(run.path)
    run.finish({"steps": step, **metrics})
    summary = fmt(metrics, ["eval/accuracy", "eval/kl"])
    console.print(f"dpo: done{', ' + summary if summary else ''}, model in {run.path}")
    return run.path
