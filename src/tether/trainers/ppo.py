"""PPO against a reward model with a per-token KL penalty to the frozen reference (RLHF).

Ziegler et al. 2019 (KL-shaped reward, adaptive KL), Stiennon et al. 2020, Ouyang et al. 2022 (InstructGPT);
the PPO objective is Schulman et al. 2017, GAE Schulman et al. 2016. Every detail of docs/architecture.md section 6
is listed with its place in docs/implementation_details.md.

One iteration:
    1. generate     sample one response per prompt from the policy (left padding, temperature T)
    2. score        logprobs, ref_logprobs and values from one pass each; reward-model scores of the text
    3. rewards      score at the last real token, -kl_coef * kl on every token; GAE advantages and returns
    4. optimise     several epochs of minibatches: clipped policy loss, clipped value loss, entropy bonus
    5. control      KL controller update, metrics, stopping criteria, checkpoints
"""

from __future__ import annotations

import json
import random
from functools import partial
from pathlib import Path

import torch

from tether.config import PPOConfig
from tether.losses.ppo import ppo_policy_loss, ppo_value_loss
from tether.models.load import count_parameters, save_causal_lm, set_threads
from tether.models.logprobs import response_logprobs
from tether.ops import masked_mean, masked_whiten
from tether.rl.advantages import compute_gae
from tether.rl.kl import kl_estimate, make_kl_controller
from tether.rl.rewards import compute_rewards
from tether.run import RunDir, console, fmt, progress
from tether.trainers.common import StopSignal, adamw, autocast, next_batch, resume_training, save_state, set_seed, trainable_state_dict
from tether.trainers.distributed import Distributed
from tether.trainers.online import (
    Roles, StepControl, check_rollout_logprobs, check_sharding, compute_dtype, gather_rollout, guarded_step, load_judge, load_roles,
    make_rollout, minibatch_generator, minibatches, score_shift, train_prompts,
)
from tether.types import Rollout


def ppo_update(cfg: PPOConfig, m: Roles, r: Rollout, advantages, returns, optimizer, step: int, dist: Distributed) -> dict[str, float]:
    """Phase 4: `rollout.num_epochs` passes of minibatches over one rollout. Returns mean metrics.

    With several processes `r` is the global rollout; each minibatch is drawn from it alike on every
    process and each process trains on its shard, its token-mean losses scaled to the minibatch's mean.
    """
    p, ro = cfg.ppo, cfg.rollout
    B, T_p = r.prompts.shape
    sequences, attention_mask = r.sequences, r.attention_mask
    mb_size = max(1, B // ro.num_minibatches)
    sums: dict[str, float] = {}
    n, skipped = 0, 0
    groups = [[q for q in m.policy.parameters() if q.requires_grad], list(m.value_model.parameters())]
    policy, value_model = dist.wrapped(m.policy), dist.wrapped(m.value_model)
    generator = minibatch_generator(cfg, dist, step)
    for _ in range(ro.num_epochs):
        for idx, n_real in minibatches(B, mb_size, generator, dist):
            mask = r.response_mask[idx]
            with autocast(cfg.train, sequences.device):  # forward passes only; losses are float32, backward outside
                logprobs, entropy = response_logprobs(
                    policy, sequences[idx], attention_mask[idx], T_p, cfg.generation.temperature, with_entropy=True, entropy_grad=p.ent_coef > 0
                )
                values = value_model(sequences[idx], attention_mask[idx])[:, T_p - 1 : -1]  # (b, T_r)
            # policy loss
            pg_loss, pm = ppo_policy_loss(logprobs, r.logprobs[idx], advantages[idx], mask, ro.clip_coef)
            # value loss
            vf_loss, vm = ppo_value_loss(values, r.values[idx], returns[idx], mask, p.value_clip_coef)
            # entropy bonus
            entropy_mean = masked_mean(entropy, mask)
            loss = pg_loss + p.vf_coef * vf_loss - p.ent_coef * entropy_mean
            tokens = float(mask.sum()) if n_real else 0.0
            norms = guarded_step(loss, groups, optimizer, dist, cfg, step, tokens)
            if norms is None:  # skipped (guards.on_nonfinite=skip): the weights stay the last good ones
                skipped += 1
                continue
            local = dist.mean_metrics({**pm, **vm, "policy/entropy": entropy_mean.item()}, tokens)
            for k, v in {**local, "policy/grad_norm": norms[0], "value/grad_norm": norms[1]}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
    return {**{k: v / max(n, 1) for k, v in sums.items()}, "guard/skipped": float(skipped)}


def train_ppo(cfg: PPOConfig) -> Path:
    """Run PPO; writes the final policy (merged if LoRA) to `cfg.output_dir`.

    Raises:
        DataError, ConfigError, ModelError: before training.
        TrainingError: NaN loss, a divergence guard, rollout logprobs that disagree with a fresh forward pass,
            or a stop signal (after saving a checkpoint).
    """
    # 0. setup: data, models, optimizer, KL controller
    set_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)
    dist = Distributed(cfg.train, "ppo", ("single", "ddp"), grad_accum_steps=1)
    device = dist.device
    ro, p = cfg.rollout, cfg.ppo
    check_sharding(dist, ro.batch_size, ro.num_minibatches, "rollout.batch_size")
    dist.per_sample(ro.seeding)  # fails early where global seeding meets several processes
    prompts = train_prompts(cfg)
    m = load_roles(cfg, device, value_init=p.value_init)
    judge = load_judge(cfg, device)
    run = RunDir(cfg.output_dir, cfg, cfg.overwrite, dist)
    trainable, total = count_parameters(m.policy)
    console.print(
        f"ppo: {len(prompts)} prompts, policy {trainable:,}/{total:,} trainable, "
        f"reference {'= policy with adapters disabled (LoRA)' if m.ref_policy is None else 'frozen copy'}"
    )
    optimizer = adamw(
        [
            {"params": [q for q in m.policy.parameters() if q.requires_grad], "lr": cfg.train.learning_rate},
            {"params": list(m.value_model.parameters()), "lr": p.value_learning_rate or cfg.train.learning_rate},
        ],
        betas=(cfg.train.adam_beta1, cfg.train.adam_beta2), weight_decay=cfg.train.weight_decay, eps=1e-5,
    )
    _, _, optimizer = dist.prepare(m.policy, m.value_model, optimizer)  # training passes go through dist.wrapped
    kl_ctl = make_kl_controller(ro.kl_coef, p.adaptive_kl, p.target_kl, p.kl_horizon)
    max_steps = cfg.train.max_steps or max(1, int(len(prompts) * cfg.train.epochs) // ro.batch_size)
    rng = random.Random(cfg.train.seed)
    order: list[int] = []
    start = 1
    if run.resume_from is not None:
        state = resume_training(run.resume_from, m.policy, optimizer, model_key="policy")
        shift, order, start = (*state["score_shift"], 0.0)[:3], state["order"], state["step"] + 1  # (center, scale, length slope)
        m.backend.sync_weights(m.policy)
        m.value_model.load_state_dict(state["value_model"])
        kl_ctl.load_state_dict(state["kl_controller"])
        rng.setstate(state["order_rng"])
        if judge is not None:
            judge.history = state["judge_history"]
    else:
        shift = score_shift(cfg, m, prompts, device, dist)
    if dist.is_main:
        (run.path / "reward_normalization.json").write_text(json.dumps({"mean": shift[0], "std": shift[1], "length_slope": shift[2]}))
    dtype = compute_dtype(cfg, m.policy)
    stop_reason, metrics, step = "max_steps", {}, start - 1

    def save(path: Path) -> None:
        """Policy in HF format for any tool, plus everything needed to continue exactly."""
        save_causal_lm(m.policy, m.tokenizer, path, merge=cfg.model.lora.merge)
        save_state(
            path, step=step, policy=trainable_state_dict(m.policy), value_model=m.value_model.state_dict(),
            optimizer=optimizer.state_dict(), kl_controller=kl_ctl.state_dict(), score_shift=list(shift),
            order=order, order_rng=rng.getstate(), judge_history=judge.history if judge else [],
        )

    with progress() as bar, StopSignal() as stop:
        control = StepControl(cfg, m, judge, run, dist, save, stop)
        task = bar.add_task("ppo", total=max_steps, completed=start - 1, info="")
        for step in range(start, max_steps + 1):
            with control.guard(step):
                # 1-2. generate and score this process's shard of the batch; gather the global rollout
                batch, order = next_batch(prompts, order, rng, ro.batch_size)
                lo, hi = dist.shard_range(len(batch))
                seeds = dist.sample_seeds(cfg.train.seed, f"rollout-{step}", range(lo, hi), ro.seeding)
                r, diag = make_rollout(cfg, m, batch[lo:hi], device, shift, seeds)
                r, diag = gather_rollout(dist, r, diag, m.tokenizer.pad_token_id)
                if ro.check_logprobs:
                    check_rollout_logprobs(diag, dtype, step)

                # 3. rewards: KL-shaped per-token rewards, GAE advantages and returns
                scores = masked_whiten(r.scores, torch.ones_like(r.scores, dtype=torch.bool)) if p.whiten_scores else r.scores
                rewards, kl = compute_rewards(scores, r.logprobs, r.ref_logprobs, r.response_mask, kl_ctl.value)
                advantages, returns = compute_gae(rewards, r.values, r.response_mask, p.gamma, p.gae_lambda)
                if p.whiten_advantages:
                    advantages = masked_whiten(advantages, r.response_mask)

                # 4. optimise
                update = ppo_update(cfg, m, r, advantages, returns, optimizer, step, dist)
                m.backend.sync_weights(m.policy)

                # 5. control: KL coefficient, metrics, guards, stopping, judge, checkpoints
                mean_kl = kl.sum(-1).mean().item()
                kl_ctl.update(mean_kl, ro.batch_size)
                k3 = kl_estimate(r.logprobs, r.ref_logprobs, "k3").masked_fill(~r.response_mask, 0.0).sum(-1).mean().item()
                metrics = {
                    "objective/scores": r.scores.mean().item(),
                    "objective/raw_scores": r.raw_scores.mean().item(),
                    "objective/kl": mean_kl,
                    "objective/kl_k3": k3,
                    "objective/rlhf_reward": (r.scores - kl_ctl.value * kl.sum(-1)).mean().item(),
                    "objective/kl_coef": kl_ctl.value,
                    "rollout/response_length": r.response_mask.sum(-1).float().mean().item(),
                    "rollout/eos_fraction": (r.response_mask & (r.responses == m.tokenizer.eos_token_id)).any(-1).float().mean().item(),
                    **diag, **update,
                }
                run.log(step, metrics)
                if step == start and ro.missing_eos_penalty is not None and metrics["rollout/eos_fraction"] == 0.0:
                    console.print(f"[yellow]ppo: no response of the first rollout ended within generation.max_new_tokens="
                                  f"{cfg.generation.max_new_tokens}, so every score is rollout.missing_eos_penalty="
                                  f"{ro.missing_eos_penalty} and the reward model teaches nothing; raise max_new_tokens or set "
                                  "rollout.missing_eos_penalty: null[/yellow]")
                bar.update(task, advance=1, info=fmt(metrics, ["objective/scores", "objective/kl", "objective/kl_coef"]))
                reason = control.after(step, metrics, r.raw_scores)  # guards, stopping, judge, checkpoints
                if reason:
                    stop_reason = reason
                    break

    # 6. final policy in Hugging Face format
    dist.save_model(m.policy, m.tokenizer, run.path, partial(save_causal_lm, merge=cfg.model.lora.merge))
    run.finish({"steps": step, "stop_reason": stop_reason, **metrics})
    console.print(f"ppo: stopped after {step} steps ({stop_reason}); policy in {run.path}")
    return run.path
