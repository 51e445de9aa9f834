"""Critic-free online RL: GRPO, RLOO and REINFORCE++ (`tether grpo`).

They share PPO's rollout (generation, EOS handling, reference logprobs, reward scoring, the rollout-logprob
check) and its clipped surrogate, but replace the value model with a baseline computed from the scores:

- GRPO (Shao et al. 2024, DeepSeekMath sec. 4.1): G completions per prompt; advantage = (score - group mean)
  / group std on every token; the KL to the reference is a loss term, beta * k3 (sec. 4.1, eq. 4).
- RLOO (Ahmadian et al. 2024, eq. 5): advantage = score - mean of the other G - 1 scores of the same prompt;
  the KL is subtracted from the score (in the reward).
- REINFORCE++ (Hu 2025): per-token rewards with the KL penalty in the reward as in PPO, returns-to-go with
  gamma = 1, advantages whitened over the whole batch (no group baseline, no critic).

In these configs the `ppo` section holds the settings the methods share: `batch_size` (prompts per step),
`num_ppo_epochs`, `num_minibatches`, `clip_coef`, `kl_coef` (beta), `missing_eos_penalty`,
`reward_threshold`, `kl_budget`, `check_rollout_logprobs`.

One iteration:
    1. generate     G responses per prompt (each prompt repeated G times, contiguous)
    2. score        logprobs and ref_logprobs; reward scores of the text
    3. advantages   group-relative (GRPO), leave-one-out (RLOO) or whitened returns (REINFORCE++)
    4. optimise     clipped surrogate (+ beta * KL in the loss for GRPO)
    5. control      metrics, stopping, checkpoints
"""

from __future__ import annotations

import random
from pathlib import Path
import torch
from tether.config import GRPOConfig
from tether.data.sources import load_prompts, select
from tether.losses.ppo import ppo_policy_loss
from tether.models.load import count_parameters, save_causal_lm, set_threads
from tether.models.shared_prefix import grouped_response_logprobs, prompt_groups
from tether.ops import masked_mean, masked_whiten
from tether.rl.advantages import compute_gae, group_relative_advantages, rloo_advantages
from tether.rl.kl import kl_estimate
from tether.rl.rewards import compute_rewards
from tether.run import RunDir, console, fmt, progress
from tether.trainers.common import (
    StopSignal, adamw, autocast, check_finite, interrupted, next_batch, resume_training, save_state, set_seed, trainable_state_dict,
)
from tether.trainers.distributed import Distributed
from tether.trainers.ppo import (
    Models, check_rollout_logprobs, check_sharding, compute_dtype, gather_rollout, initial_score_stats, load_models, logprob_diff, make_rollout,
    minibatch_generator, minibatches, no_loss_scaling,
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
    return cfg.ppo.num_ppo_epochs == 1 and cfg.ppo.num_minibatches == 1


def policy_update(cfg: GRPOConfig, m: Models, r: Rollout, advantages: torch.Tensor, optimizer, step: int, run: RunDir,
                  dist: Distributed | None = None, check_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Phase 4: clipped surrogate over minibatches, plus beta * KL when the KL is a loss term (sharded over
    processes as in `ppo_update`).

    Args:
        check_dtype: on-policy (`on_policy(cfg)`), the rollout holds the engine's sampling logprobs; the
            first forward pass, before any weight changes, is then compared with them (docs/architecture.md 6.8).
    """
    p, B, T_p = cfg.ppo, r.prompts.shape[0], r.prompts.shape[1]
    kl_in_loss = kl_placement(cfg) == "loss"
    sequences, attention_mask = r.sequences, r.attention_mask
    params = [q for q in m.policy.parameters() if q.requires_grad]
    policy = dist.wrapped(m.policy) if dist else m.policy
    generator = minibatch_generator(cfg, dist, step) if dist else None
    sums: dict[str, float] = {}
    n = 0
    for _ in range(p.num_ppo_epochs):
        for idx, n_real in minibatches(B, max(1, B // p.num_minibatches), generator, dist):
            mask = r.response_mask[idx]
            groups = prompt_groups(r.prompts[idx], r.prompt_mask[idx]) if cfg.train.share_prompt else None  # each prompt once
            with autocast(cfg.train, sequences.device):  # the forward pass only; the loss is float32
                logprobs = grouped_response_logprobs(policy, sequences[idx], attention_mask[idx], T_p, groups, m.tokenizer.pad_token_id,
                                                     cfg.generation.temperature, agree=dist.all if dist else None)
            if check_dtype is not None and n == 0:
                diag = logprob_diff(r.logprobs[idx], logprobs.detach(), mask)
                check_rollout_logprobs(diag, check_dtype, step)
                sums.update(diag)
            # policy loss; on-policy this pass is the fresh pass of the rollout weights, so it is also the
            # old policy (ratio exactly 1: the policy gradient), not the engine's logprobs, which differ by
            # rounding (KV-cached decoding, bf16)
            old_logprobs = logprobs.detach() if on_policy(cfg) else r.logprobs[idx]
            loss, metrics = ppo_policy_loss(logprobs, old_logprobs, advantages[idx], mask, p.clip_coef)
            # KL to the reference as a loss term (GRPO eq. 4)
            if kl_in_loss:
                kl = masked_mean(kl_estimate(logprobs, r.ref_logprobs[idx], cfg.grpo.kl_estimator), mask)
                loss = loss + p.kl_coef * kl
                metrics["loss/kl"] = kl.item()
            check_finite(loss, step, run)
            optimizer.zero_grad(set_to_none=True)
            if dist is None:
                loss.backward()
                metrics["policy/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm))
            else:
                tokens = float(mask.sum()) if n_real else 0.0
                dist.backward(loss * dist.share(tokens))  # the token mean over the global minibatch
                metrics = dist.mean_metrics(metrics, tokens)
                metrics["policy/grad_norm"] = float(dist.clip_grad_norm_(params, cfg.train.max_grad_norm))
            optimizer.step()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
    return {k: v / n for k, v in sums.items()}


def train_grpo(cfg: GRPOConfig) -> Path:
    """Run GRPO / RLOO / REINFORCE++; writes the final policy (merged if LoRA) to `cfg.output_dir`.

    Raises:
        DataError, ConfigError, ModelError: before training.
        TrainingError: NaN loss, rollout logprobs that disagree with a fresh pass, or a stop signal.
    """
    # 0. setup
    set_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)
    dist = Distributed(cfg.train, cfg.grpo.algorithm, ("single", "ddp"), grad_accum_steps=1)
    device = dist.device
    no_loss_scaling(dist, cfg.grpo.algorithm)
    d, p, G = cfg.data, cfg.ppo, cfg.grpo.group_size
    check_sharding(dist, p.batch_size * G, p.num_minibatches, "ppo.batch_size x grpo.group_size")
    dist.per_process(p.batch_size, "ppo.batch_size")  # whole groups on each process
    dist.per_sample(p.rollout_seeding)  # fails early where global seeding meets several processes
    prompts = [e.prompt for e in select(load_prompts(d.train, d.on_invalid), d.split, d.holdout_fraction, d.max_samples)]
    m = load_models(cfg, device, with_value_model=False)
    run = RunDir(cfg.output_dir, cfg, cfg.overwrite, dist)
    trainable, total = count_parameters(m.policy)
    console.print(f"{cfg.grpo.algorithm}: {len(prompts)} prompts x {G} samples, policy {trainable:,}/{total:,} trainable")
    optimizer = adamw(
        [q for q in m.policy.parameters() if q.requires_grad], lr=cfg.train.learning_rate,
        betas=(cfg.train.adam_beta1, cfg.train.adam_beta2), weight_decay=cfg.train.weight_decay, eps=1e-5,
    )
    _, optimizer = dist.prepare(m.policy, optimizer)  # training passes go through dist.wrapped(m.policy)
    max_steps = cfg.train.max_steps or max(1, int(len(prompts) * cfg.train.epochs) // p.batch_size)
    rng = random.Random(cfg.train.seed)
    order: list[int] = []
    start = 1
    if run.resume_from is not None:
        state = resume_training(run.resume_from, m.policy, optimizer, model_key="policy")
        m.backend.sync_weights(m.policy)
        score_shift, order, start = tuple(state["score_shift"]), state["order"], state["step"] + 1
        rng.setstate(state["order_rng"])
    elif cfg.grpo.normalize_scores:
        score_shift = initial_score_stats(cfg, m, prompts, device, dist)
    else:
        score_shift = (0.0, 1.0)
    dtype = compute_dtype(cfg, m.policy)
    stop_reason, metrics, step = "max_steps", {}, start - 1

    def save(path: Path) -> None:
        save_causal_lm(m.policy, m.tokenizer, path)
        save_state(path, step=step, policy=trainable_state_dict(m.policy), optimizer=optimizer.state_dict(),
                   score_shift=list(score_shift), order=order, order_rng=rng.getstate())

    with progress() as bar, StopSignal() as stop:
        task = bar.add_task(cfg.grpo.algorithm, total=max_steps, completed=start - 1, info="")
        for step in range(start, max_steps + 1):
            # 1-2. generate G responses per prompt and score them (this process's shard of the prompts); gather
            batch, order = next_batch(prompts, order, rng, p.batch_size)
            samples = [q for q in batch for _ in range(G)]
            lo, hi = dist.shard_range(len(samples))
            seeds = dist.sample_seeds(cfg.train.seed, f"rollout-{step}", range(lo, hi), p.rollout_seeding)
            # on-policy, the update's own forward pass is the fresh pass the engine is checked against
            r, diag = make_rollout(cfg, m, samples[lo:hi], device, score_shift, seeds, fresh_logprobs=not on_policy(cfg))
            r, diag = gather_rollout(dist, r, diag, m.tokenizer.pad_token_id)
            if p.check_rollout_logprobs and not on_policy(cfg):
                check_rollout_logprobs(diag, dtype, step)

            # 3. advantages
            advantages, adv_metrics = compute_advantages(cfg, r, p.kl_coef)

            # 4. optimise
            check_dtype = dtype if p.check_rollout_logprobs and on_policy(cfg) else None
            update = policy_update(cfg, m, r, advantages, optimizer, step, run, dist, check_dtype)
            m.backend.sync_weights(m.policy)

            # 5. control
            groups = r.scores.view(-1, G)
            metrics = {
                "objective/scores": r.scores.mean().item(),
                "objective/raw_scores": r.raw_scores.mean().item(),
                "objective/group_std": groups.std(dim=1, unbiased=False).mean().item(),
                "objective/kl_coef": p.kl_coef,
                "rollout/response_length": r.response_mask.sum(-1).float().mean().item(),
                **adv_metrics, **diag, **update,
            }
            run.log(step, metrics)
            bar.update(task, advance=1, info=fmt(metrics, ["objective/scores", "objective/kl"]))
            if p.reward_threshold is not None and metrics["objective/scores"] >= p.reward_threshold:
                stop_reason = f"reward threshold {p.reward_threshold} reached"
                break
            if p.kl_budget is not None and metrics["objective/kl"] > p.kl_budget:
                stop_reason = f"KL budget {p.kl_budget} exceeded (kl={metrics['objective/kl']:.2f})"
                break
            stopping = dist.any(stop.requested)  # all processes stop at the same step
            if cfg.train.save_every and step % cfg.train.save_every == 0 or stopping:
                ckpt = run.checkpoint(step, save)
                if stopping:
                    raise interrupted(step, ckpt)

    # 6. final policy
    dist.save_model(m.policy, m.tokenizer, run.path, save_causal_lm)
    run.finish({"steps": step, "stop_reason": stop_reason, **metrics})
    console.print(f"{cfg.grpo.algorithm}: stopped after {step} steps ({stop_reason}); policy in {run.path}")
    return run.path
