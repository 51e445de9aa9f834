"""Critic-free online RL: GRPO, RLOO and REINFORCE++ (`tether grpo`).

They share PPO's rollout (generation, EOS handling, reference logprobs, reward scoring, the rollout-logprob
check) and its clipped surrogate, but replace the value model with a baseline computed from the scores:

- GRPO (Shao et al. 2024, DeepSeekMath sec. 4.1): G completions per prompt; advantage = (score - group mean)
  / group std on every token; the KL to the reference is a loss term, beta * k3 (sec. 4.1, eq. 4).
- RLOO (Ahmadian et al. 2024, eq. 5): advantage = score - mean of the other G - 1 scores of the same prompt;
  the KL is subtracted from the score (in the reward).
- REINFORCE++ (Hu 2025): per-token rewards with the KL penalty in the reward as in PPO, returns-to-go with
  gamma = 1, advantages whitened over the whole batch (no group baseline, no critic).

The `rollout` section holds what every online method shares (prompts per step, epochs and minibatches, clip
range, `kl_coef` = beta, score normalisation, stopping); `grpo` holds the estimator; `judge` and `guards` work as
in PPO (`trainers/online.py`).

One iteration:
    1. generate     G responses per prompt (each prompt repeated G times, contiguous)
    2. score        logprobs and ref_logprobs; reward scores of the text
    3. advantages   group-relative (GRPO), leave-one-out (RLOO) or whitened returns (REINFORCE++)
    4. optimise     clipped surrogate (+ beta * KL in the loss for GRPO)
    5. control      metrics, guards, stopping, judge, checkpoints
"""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path

import torch

from tether.config import GRPOConfig
from tether.losses.ppo import ppo_policy_loss
from tether.models.load import count_parameters, save_causal_lm, set_threads
from tether.models.shared_prefix import grouped_response_logprobs, prompt_groups
from tether.ops import masked_mean, masked_whiten
from tether.rl.advantages import compute_gae, group_relative_advantages, rloo_advantages
from tether.rl.kl import kl_estimate
from tether.rl.rewards import compute_rewards
from tether.run import RunDir, console, fmt, progress
from tether.trainers.common import StopSignal, adamw, autocast, next_batch, resume_training, save_state, set_seed, trainable_state_dict
from tether.trainers.distributed import Distributed
from tether.trainers.online import (
    Roles, StepControl, check_rollout_logprobs, check_sharding, compute_dtype, gather_rollout, guarded_step, load_judge, load_roles,
    logprob_diff, make_rollout, minibatch_generator, minibatches, score_shift, train_prompts,
)
from tether.types import Rollout


def kl_placement(cfg: GRPOConfig) -> str:
    if cfg.grpo.kl_in != "auto":
        return cfg.grpo.kl_in
    return "loss" if cfg.grpo.algorithm == "grpo" else "reward"


def compute_advantages(cfg: GRPOConfig, r: Rollout, kl_coef: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Phase 3: per-token advantages (B, T_r) for the configured algorithm."""
    g, mask = cfg.grpo, r.response_mask
    kl = kl_estimate(r.logprobs, r.ref_logprobs, "k1").masked_fill(~mask, 0.0)  # (B, T_r)
    in_reward = kl_placement(cfg) == "reward"
    if g.algorithm == "reinforce_pp":
        rewards, _ = compute_rewards(r.scores, r.logprobs, r.ref_logprobs, mask, kl_coef if in_reward else 0.0)
        returns, _ = compute_gae(rewards, torch.zeros_like(rewards), mask, gamma=1.0, gae_lambda=1.0)
        advantages = masked_whiten(returns, mask)
    else:
        scores = r.scores - kl_coef * kl.sum(-1) if in_reward else r.scores  # (B,)
        if g.algorithm == "grpo":
            per_sequence = group_relative_advantages(scores, g.group_size, normalize_std=g.scale_rewards)
        else:
            per_sequence = rloo_advantages(scores, g.group_size)
        advantages = per_sequence[:, None].expand_as(r.logprobs).masked_fill(~mask, 0.0)  # (B, T_r)
    return advantages, {"objective/kl": kl.sum(-1).mean().item()}


def on_policy(cfg: GRPOConfig) -> bool:
    """One update per rollout (one epoch, one minibatch): its forward pass is the fresh pass of the rollout weights."""
    return cfg.rollout.num_epochs == 1 and cfg.rollout.num_minibatches == 1


def policy_update(cfg: GRPOConfig, m: Roles, r: Rollout, advantages: torch.Tensor, optimizer, step: int, dist: Distributed,
                  check_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Phase 4: clipped surrogate over minibatches, plus beta * KL when the KL is a loss term (sharded over
    processes as in `ppo_update`).

    Args:
        check_dtype: on-policy (`on_policy(cfg)`), the rollout holds the engine's sampling logprobs; the
            first forward pass, before any weight changes, is then compared with them (docs/architecture.md 6.8).
    """
    ro, B, T_p = cfg.rollout, r.prompts.shape[0], r.prompts.shape[1]
    kl_in_loss = kl_placement(cfg) == "loss"
    sequences, attention_mask = r.sequences, r.attention_mask
    params = [q for q in m.policy.parameters() if q.requires_grad]
    policy = dist.wrapped(m.policy)
    generator = minibatch_generator(cfg, dist, step)
    sums: dict[str, float] = {}
    n, skipped = 0, 0
    for _ in range(ro.num_epochs):
        for idx, n_real in minibatches(B, max(1, B // ro.num_minibatches), generator, dist):
            mask = r.response_mask[idx]
            groups = prompt_groups(r.prompts[idx], r.prompt_mask[idx]) if cfg.train.share_prompt else None  # each prompt once
            with autocast(cfg.train, sequences.device):  # the forward pass only; the loss is float32
                logprobs = grouped_response_logprobs(policy, sequences[idx], attention_mask[idx], T_p, groups, m.tokenizer.pad_token_id,
                                                     cfg.generation.temperature, agree=dist.all)
            if check_dtype is not None and n == 0 and skipped == 0:
                diag = logprob_diff(r.logprobs[idx], logprobs.detach(), mask)
                check_rollout_logprobs(diag, check_dtype, step)
                sums.update(diag)
            # policy loss; on-policy this pass is the fresh pass of the rollout weights, so it is also the
            # old policy (ratio exactly 1: the policy gradient), not the engine's logprobs, which differ by
            # rounding (KV-cached decoding, bf16)
            old_logprobs = logprobs.detach() if on_policy(cfg) else r.logprobs[idx]
            loss, metrics = ppo_policy_loss(logprobs, old_logprobs, advantages[idx], mask, ro.clip_coef)
            # KL to the reference as a loss term (GRPO eq. 4)
            if kl_in_loss:
                kl = masked_mean(kl_estimate(logprobs, r.ref_logprobs[idx], cfg.grpo.kl_estimator), mask)
                loss = loss + ro.kl_coef * kl
                metrics["loss/kl"] = kl.item()
            tokens = float(mask.sum()) if n_real else 0.0
            norms = guarded_step(loss, [params], optimizer, dist, cfg, step, tokens)
            if norms is None:  # skipped (guards.on_nonfinite=skip): the weights stay the last good ones
                skipped += 1
                continue
            metrics = dist.mean_metrics(metrics, tokens)
            metrics["policy/grad_norm"] = norms[0]
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
    diag_keys = ("rollout/logprob_diff_mean", "rollout/logprob_diff_max")
    return {**{k: v if k in diag_keys else v / max(n, 1) for k, v in sums.items()}, "guard/skipped": float(skipped)}


def train_grpo(cfg: GRPOConfig) -> Path:
    """Run GRPO / RLOO / REINFORCE++; writes the final policy (merged if LoRA) to `cfg.output_dir`.

    Raises:
        DataError, ConfigError, ModelError: before training.
        TrainingError: NaN loss, a divergence guard, rollout logprobs that disagree with a fresh pass, or a
            stop signal (after saving a checkpoint).
    """
    # 0. setup
    set_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)
    dist = Distributed(cfg.train, cfg.grpo.algorithm, ("single", "ddp"), grad_accum_steps=1)
    device = dist.device
    ro, G = cfg.rollout, cfg.grpo.group_size
    check_sharding(dist, ro.batch_size * G, ro.num_minibatches, "rollout.batch_size x grpo.group_size")
    dist.per_process(ro.batch_size, "rollout.batch_size")  # whole groups on each process
    dist.per_sample(ro.seeding)  # fails early where global seeding meets several processes
    prompts = train_prompts(cfg)
    m = load_roles(cfg, device)
    judge = load_judge(cfg, device)
    run = RunDir(cfg.output_dir, cfg, cfg.overwrite, dist)
    trainable, total = count_parameters(m.policy)
    console.print(f"{cfg.grpo.algorithm}: {len(prompts)} prompts x {G} samples, policy {trainable:,}/{total:,} trainable")
    optimizer = adamw(
        [q for q in m.policy.parameters() if q.requires_grad], lr=cfg.train.learning_rate,
        betas=(cfg.train.adam_beta1, cfg.train.adam_beta2), weight_decay=cfg.train.weight_decay, eps=1e-5,
    )
    _, optimizer = dist.prepare(m.policy, optimizer)  # training passes go through dist.wrapped(m.policy)
    max_steps = cfg.train.max_steps or max(1, int(len(prompts) * cfg.train.epochs) // ro.batch_size)
    rng = random.Random(cfg.train.seed)
    order: list[int] = []
    start = 1
    if run.resume_from is not None:
        state = resume_training(run.resume_from, m.policy, optimizer, model_key="policy")
        m.backend.sync_weights(m.policy)
        shift, order, start = (*state["score_shift"], 0.0)[:3], state["order"], state["step"] + 1  # (center, scale, length slope)
        rng.setstate(state["order_rng"])
        if judge is not None:
            judge.history = state.get("judge_history", [])
    else:
        shift = score_shift(cfg, m, prompts, device, dist)
    dtype = compute_dtype(cfg, m.policy)
    stop_reason, metrics, step = "max_steps", {}, start - 1

    def save(path: Path) -> None:
        save_causal_lm(m.policy, m.tokenizer, path, merge=cfg.model.lora.merge)
        save_state(path, step=step, policy=trainable_state_dict(m.policy), optimizer=optimizer.state_dict(),
                   score_shift=list(shift), order=order, order_rng=rng.getstate(), judge_history=judge.history if judge else [])

    with progress() as bar, StopSignal() as stop:
        control = StepControl(cfg, m, judge, run, dist, save, stop)
        task = bar.add_task(cfg.grpo.algorithm, total=max_steps, completed=start - 1, info="")
        for step in range(start, max_steps + 1):
            with control.guard(step):
                # 1-2. generate G responses per prompt and score them (this process's shard of the prompts); gather
                batch, order = next_batch(prompts, order, rng, ro.batch_size)
                samples = [q for q in batch for _ in range(G)]
                lo, hi = dist.shard_range(len(samples))
                seeds = dist.sample_seeds(cfg.train.seed, f"rollout-{step}", range(lo, hi), ro.seeding)
                # on-policy, the update's own forward pass is the fresh pass the engine is checked against
                r, diag = make_rollout(cfg, m, samples[lo:hi], device, shift, seeds, fresh_logprobs=not on_policy(cfg))
                r, diag = gather_rollout(dist, r, diag, m.tokenizer.pad_token_id)
                if ro.check_logprobs and not on_policy(cfg):
                    check_rollout_logprobs(diag, dtype, step)

                # 3. advantages
                advantages, adv_metrics = compute_advantages(cfg, r, ro.kl_coef)

                # 4. optimise
                check_dtype = dtype if ro.check_logprobs and on_policy(cfg) else None
                update = policy_update(cfg, m, r, advantages, optimizer, step, dist, check_dtype)
                m.backend.sync_weights(m.policy)

                # 5. control: metrics, guards, stopping, judge, checkpoints
                groups = r.scores.view(-1, G)
                metrics = {
                    "objective/scores": r.scores.mean().item(),
                    "objective/raw_scores": r.raw_scores.mean().item(),
                    "objective/group_std": groups.std(dim=1, unbiased=False).mean().item(),
                    "objective/kl_coef": ro.kl_coef,
                    "rollout/response_length": r.response_mask.sum(-1).float().mean().item(),
                    **adv_metrics, **diag, **update,
                }
                run.log(step, metrics)
                bar.update(task, advance=1, info=fmt(metrics, ["objective/scores", "objective/kl"]))
                reason = control.after(step, metrics, r.raw_scores)  # guards, stopping, judge, checkpoints
                if reason:
                    stop_reason = reason
                    break

    # 6. final policy
    dist.save_model(m.policy, m.tokenizer, run.path, partial(save_causal_lm, merge=cfg.model.lora.merge))
    run.finish({"steps": step, "stop_reason": stop_reason, **metrics})
    console.print(f"{cfg.grpo.algorithm}: stopped after {step} steps ({stop_reason}); policy in {run.path}")
    return run.path
