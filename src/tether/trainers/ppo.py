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

import copy
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from tether.config import PPOConfig
from tether.data.sources import load_prompts, select
from tether.data.tokenize import tokenize_prompts
from tether.errors import ConfigError, ModelError, TrainingError
from tether.losses.ppo import ppo_policy_loss, ppo_value_loss
from tether.models.heads import ValueModel
from tether.models.load import (
    apply_lora, count_parameters, load_causal_lm, reference_context, save_causal_lm, set_attention, set_threads,
)
from tether.models.load import check_context
from tether.models.logprobs import response_logprobs
from tether.models.reward import FunctionReward, RewardModel, load_reward
from tether.models.shared_prefix import grouped_response_logprobs, prompt_groups
from tether.ops import masked_mean, masked_whiten
from tether.precision import resolve_precision
from tether.rl.advantages import compute_gae
from tether.rl.kl import kl_estimate, make_kl_controller
from tether.rl.rewards import compute_rewards
from tether.rollout.backends import GenerationBackend, make_backend, require_backend
from tether.rollout.generate import decode_responses
from tether.run import RunDir, console, fmt, progress
from tether.trainers.common import (
    GuardTripped, StopSignal, adamw, autocast, interrupted, next_batch, resume_training, save_state, set_seed, trainable_state_dict,
)
from tether.trainers.distributed import Distributed
from tether.types import Rollout


@dataclass
class Models:
    policy: torch.nn.Module
    ref_policy: torch.nn.Module | None  # None with LoRA: the policy with adapters disabled
    value_model: ValueModel | None  # None for critic-free methods (GRPO, RLOO, REINFORCE++)
    reward_model: RewardModel | FunctionReward
    tokenizer: object
    backend: GenerationBackend  # samples the rollouts; sync_weights after every update


def load_models(cfg: PPOConfig, device: torch.device, with_value_model: bool = True) -> Models:
    """Policy (+LoRA), reference, value model, reward model and generation backend, as configured.

    Raises:
        ConfigError: a generation backend this machine cannot run.
        ModelError: a missing model, or a value model from a reward model whose tokenizer differs.
    """
    require_backend(cfg.generation, device)
    policy, tokenizer = load_causal_lm(cfg.model, device, seed=cfg.train.seed)
    max_model_len = cfg.data.max_prompt_length + cfg.generation.max_new_tokens
    check_context(max_model_len, policy, "data.max_prompt_length + generation.max_new_tokens")
    rm = cfg.reward_model
    reward_model = load_reward(rm.path, rm.function, device, paths=rm.paths, ensemble=rm.ensemble, ensemble_k=rm.ensemble_k)
    if isinstance(reward_model, RewardModel):
        check_context(cfg.reward_model.max_length, reward_model.model, "reward_model.max_length")
    if not with_value_model:
        value_model = None
    elif cfg.ppo.value_init == "policy":
        value_model = ValueModel.from_backbone_of(policy)
    else:
        if reward_model.tokenizer is None or reward_model.tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ModelError(
                "ppo.value_init=reward_model needs the reward model and the policy to share a tokenizer "
                "(values are per policy token); use ppo.value_init=policy"
            )
        value_model = ValueModel.from_backbone_of(reward_model.model)
    if value_model is not None and cfg.model.attn_implementation != "auto":  # `auto` keeps rollout models' default (set_attention)
        set_attention(value_model.backbone, cfg.model.attn_implementation, device, cfg.train.precision, max_model_len)
    if cfg.model.lora.enabled:
        policy, ref_policy = apply_lora(policy, cfg.model.lora), None
    else:
        ref_policy = copy.deepcopy(policy).eval()
        for p in ref_policy.parameters():
            p.requires_grad_(False)
    backend = make_backend(cfg.generation, policy, tokenizer, device, max_model_len, cfg.train.seed)
    return Models(policy, ref_policy, value_model, reward_model, tokenizer, backend)


@torch.no_grad()
def make_rollout(cfg: PPOConfig, m: Models, prompt_texts: list[str], device: torch.device, score_shift: tuple[float, float],
                 seeds: list[int] | None = None, fresh_logprobs: bool = True) -> tuple[Rollout, dict]:
    """Phases 1 and 2: generate responses and score them. Returns the rollout and diagnostics.

    Args:
        seeds: one per prompt for per-sample seeded sampling (`rollout/seeding.py`), else None.
        fresh_logprobs: recompute the policy's logprobs with a forward pass (and compare them with the
            engine's, docs/architecture.md 6.8). False keeps the engine's sampling logprobs as the rollout logprobs:
            for a single on-policy update, whose own forward pass is that fresh pass (GRPO checks it there).
    """
    g, d = cfg.generation, cfg.data
    # 1. generate (the policy's own sampling logprobs come back for the engine check)
    prompt_ids = tokenize_prompts(prompt_texts, m.tokenizer, d.prompt_template, d.max_prompt_length)
    with autocast(cfg.train, device):  # autocast of generation and of every pass of 2. (train.precision)
        gen = m.backend.generate(prompt_ids, return_sampling_logprobs=cfg.ppo.check_rollout_logprobs or not fresh_logprobs, seeds=seeds)
        T_p = gen.prompts.shape[1]
        sequences = torch.cat([gen.prompts, gen.responses], dim=1)  # (B, T)
        attention_mask = torch.cat([gen.prompt_mask, gen.response_mask.long()], dim=1)  # (B, T)

        # 2. score: one forward pass per role, all with the sampling temperature; completions of the same
        # prompt (GRPO's groups) run it once (train.share_prompt, models/shared_prefix.py)
        groups = prompt_groups(gen.prompts, gen.prompt_mask) if cfg.train.share_prompt else None
        pad_id = m.tokenizer.pad_token_id
        m.policy.eval()
        if fresh_logprobs:
            logprobs = grouped_response_logprobs(m.policy, sequences, attention_mask, T_p, groups, pad_id, g.temperature)  # (B, T_r)
        else:
            logprobs = gen.sampling_logprobs  # (B, T_r)
        with reference_context(m.policy, m.ref_policy):
            ref_model = m.ref_policy if m.ref_policy is not None else m.policy
            ref_logprobs = grouped_response_logprobs(ref_model, sequences, attention_mask, T_p, groups, pad_id, g.temperature)  # (B, T_r)
        if m.value_model is not None:
            values = m.value_model(sequences, attention_mask)[:, T_p - 1 : -1]  # (B, T_r) value of the state before each token
        else:
            values = torch.zeros_like(logprobs)
        m.policy.train()
    response_texts = decode_responses(m.tokenizer, gen.responses, gen.response_mask)
    raw_scores = m.reward_model.score(prompt_texts, response_texts, cfg.reward_model.batch_size, cfg.reward_model.max_length).to(device)
    scores = (raw_scores - score_shift[0]) / score_shift[1]  # (B,) normalised on the initial policy
    if cfg.ppo.missing_eos_penalty is not None:
        scores = torch.where(gen.ended, scores, torch.full_like(scores, cfg.ppo.missing_eos_penalty))

    diag = logprob_diff(gen.sampling_logprobs, logprobs, gen.response_mask) if gen.sampling_logprobs is not None and fresh_logprobs else {}
    mask = gen.response_mask
    rollout = Rollout(
        gen.prompts, gen.prompt_mask, gen.responses, mask,
        logprobs.masked_fill(~mask, 0.0), ref_logprobs.masked_fill(~mask, 0.0), values.masked_fill(~mask, 0.0),
        scores, raw_scores, prompt_texts, response_texts,
    )
    return rollout, diag


def logprob_diff(sampling_logprobs: torch.Tensor, logprobs: torch.Tensor, response_mask: torch.Tensor) -> dict[str, float]:
    """Mean and max |engine logprob - fresh forward logprob| over the real response tokens, (B, T_r) each."""
    diff = (sampling_logprobs - logprobs).abs()[response_mask]
    return {"rollout/logprob_diff_mean": diff.mean().item(), "rollout/logprob_diff_max": diff.max().item()}


def gather_rollout(dist: Distributed, r: Rollout, diag: dict, pad_id: int) -> tuple[Rollout, dict]:
    """The global rollout, on every process, from each process's shard (in process order).

    Prompts are left-padded and responses right-padded to the widest shard; the logprob check's
    diagnostics become token-weighted means and maxima over all shards. A no-op on one process.
    """
    if dist.num_processes == 1:
        return r, diag
    if diag:
        tokens = float(r.response_mask.sum())
        diag = {"rollout/logprob_diff_mean": dist.mean_metrics({"d": diag["rollout/logprob_diff_mean"]}, tokens)["d"],
                "rollout/logprob_diff_max": dist.max(diag["rollout/logprob_diff_max"])}
    rows = [dist.gather(t) for t in (r.logprobs, r.ref_logprobs, r.values, r.scores, r.raw_scores)]
    r = Rollout(
        dist.gather(r.prompts, pad_value=pad_id, pad_first=True), dist.gather(r.prompt_mask, pad_first=True),
        dist.gather(r.responses, pad_value=pad_id), dist.gather(r.response_mask), *rows,
        dist.gather_objects(r.prompt_texts), dist.gather_objects(r.response_texts),
    )
    return r, diag


def minibatch_generator(cfg: PPOConfig, dist: Distributed, step: int) -> torch.Generator | None:
    """The generator that orders minibatches: torch's global one (None) with global seeding, else one
    seeded from (train.seed, step) so that every process draws the same permutation."""
    seeds = dist.sample_seeds(cfg.train.seed, f"minibatches-{step}", range(1), cfg.ppo.rollout_seeding)
    return torch.Generator().manual_seed(seeds[0]) if seeds else None


def minibatches(n: int, size: int, generator: torch.Generator | None, dist: Distributed | None):
    """One epoch over a rollout of n rows: a shuffled split into minibatches of `size` rows, each as this
    process's shard (row indices, real rows; see `Distributed.shard`)."""
    for idx in torch.randperm(n, generator=generator).split(size):
        yield dist.shard(idx) if dist is not None else (idx, len(idx))


def compute_dtype(cfg: PPOConfig, policy: torch.nn.Module) -> torch.dtype:
    """The precision the policy's passes run in: the autocast dtype of `train.precision`, else its weights' dtype."""
    return resolve_precision(cfg.train.precision, next(policy.parameters()).device).dtype or next(policy.parameters()).dtype


def check_rollout_logprobs(diag: dict, dtype: torch.dtype, step: int) -> None:
    """docs/architecture.md 6.8: the engine's sampling logprobs must equal a fresh forward pass of the same weights.

    The mean absolute difference over real response tokens may be at most 1e-3 for a float32 policy and
    5e-2 for bf16/fp16 weights or bf16 autocast (`compute_dtype`; the vLLM backend's kernels differ from the
    trainer's, see rollout/backends.py, and in bf16 a KV-cached decoding step rounds differently from a
    full forward pass).

    Raises:
        TrainingError: when they differ by more than float noise, or the backend returned no logprobs.
    """
    if "rollout/logprob_diff_mean" not in diag:
        raise TrainingError(f"step {step}: ppo.check_rollout_logprobs is on but the generation backend returned no sampling logprobs")
    tol = 1e-3 if dtype == torch.float32 else 5e-2
    if diag.get("rollout/logprob_diff_mean", 0.0) > tol:
        raise TrainingError(
            f"step {step}: generation logprobs differ from a fresh forward pass by {diag['rollout/logprob_diff_mean']:.2e} "
            f"on average (tolerance {tol}); the generation engine and the trainer disagree"
        )


@torch.no_grad()
def initial_score_stats(cfg: PPOConfig, m: Models, prompts: list[str], device, dist: Distributed | None = None) -> tuple[float, float]:
    """docs/architecture.md 6.4: mean and std of reward-model scores of the initial policy's samples (with several
    processes each samples and scores its shard of the prompts; the scores are gathered)."""
    sample = prompts[: max(cfg.ppo.batch_size, 32)]
    start, stop = dist.shard_range(len(sample)) if dist else (0, len(sample))
    seeds = dist.sample_seeds(cfg.train.seed, "score-stats", range(start, stop), cfg.ppo.rollout_seeding) if dist else None
    ids = tokenize_prompts(sample[start:stop], m.tokenizer, cfg.data.prompt_template, cfg.data.max_prompt_length)
    with autocast(cfg.train, device):
        gen = m.backend.generate(ids, seeds=seeds)
    texts = decode_responses(m.tokenizer, gen.responses, gen.response_mask)
    s = m.reward_model.score(sample[start:stop], texts, cfg.reward_model.batch_size, cfg.reward_model.max_length)
    s = dist.gather(s.to(device)) if dist else s
    return s.mean().item(), max(s.std().item(), 1e-3)


@dataclass
class Judge:
    """docs/architecture.md 6.9: a held-out reward model scoring the policy on fixed held-out prompts."""

    model: RewardModel
    prompts: list[str]
    history: list[tuple[float, float]]  # (judge score, training reward-model score) per evaluation


def load_judge(cfg: PPOConfig, device: torch.device) -> Judge | None:
    """The judge and its prompts: `data.eval`, or the held-out split of `data.train`.

    Raises:
        ConfigError: a judge without held-out prompts.
    """
    if cfg.judge is None:
        return None
    d = cfg.data
    if d.eval:
        prompts = [e.prompt for e in load_prompts(d.eval, d.on_invalid)]
    elif d.holdout_fraction > 0:
        prompts = [e.prompt for e in select(load_prompts(d.train, d.on_invalid), "holdout", d.holdout_fraction, None)]
    else:
        raise ConfigError("judge needs held-out prompts: set data.eval or data.holdout_fraction > 0")
    return Judge(RewardModel.load(cfg.judge.path, device), prompts[: cfg.judge.num_prompts], [])


@torch.no_grad()
def judge_policy(cfg: PPOConfig, m: Models, judge: Judge, device: torch.device, dist: Distributed | None = None) -> dict[str, float]:
    """Score the policy's answers to the judge prompts with the judge and the training reward model
    (with several processes each answers its shard of the prompts; the scores are gathered)."""
    start, stop = dist.shard_range(len(judge.prompts)) if dist else (0, len(judge.prompts))
    prompts = judge.prompts[start:stop]
    seeds = dist.sample_seeds(cfg.train.seed, "judge", range(start, stop), cfg.ppo.rollout_seeding) if dist else None
    ids = tokenize_prompts(prompts, m.tokenizer, cfg.data.prompt_template, cfg.data.max_prompt_length)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast(cfg.train, device):
        torch.manual_seed(cfg.train.seed)  # the same sampling noise at every evaluation
        gen = m.backend.generate(ids, seeds=seeds)
    texts = decode_responses(m.tokenizer, gen.responses, gen.response_mask)
    judge_scores = judge.model.score(prompts, texts, cfg.judge.batch_size, cfg.judge.max_length).to(device)  # (b,)
    train_scores = m.reward_model.score(prompts, texts, cfg.reward_model.batch_size, cfg.reward_model.max_length).to(device)  # (b,)
    if dist is not None:
        judge_scores, train_scores = dist.gather(judge_scores), dist.gather(train_scores)
    judge_score, train_score = judge_scores.mean().item(), train_scores.mean().item()
    judge.history.append((judge_score, train_score))
    return {"judge/score": judge_score, "judge/train_rm_score": train_score}


def reward_hacking_suspected(history: list[tuple[float, float]], patience: int) -> bool:
    """True when the judge score fell `patience` times in a row while the training score rose overall.

    Args:
        history: (judge score, training reward-model score) per evaluation, oldest first.
        patience: consecutive falls of the judge score that count as a trend.
    """
    if len(history) < patience + 1:
        return False
    window = history[-(patience + 1) :]
    judge_falls = all(b[0] < a[0] for a, b in zip(window, window[1:]))
    train_rises = window[-1][1] > window[0][1]
    return judge_falls and train_rises


def ppo_update(cfg: PPOConfig, m: Models, r: Rollout, advantages, returns, optimizer, step: int, run: RunDir,
               dist: Distributed | None = None) -> dict[str, float]:
    """Phase 4: `num_ppo_epochs` passes of minibatches over one rollout. Returns mean metrics.

    With several processes `r` is the global rollout; each minibatch is drawn from it alike on every
    process and each process trains on its shard, its token-mean losses scaled to the minibatch's mean.
    """
    p = cfg.ppo
    B, T_p = r.prompts.shape
    sequences, attention_mask = r.sequences, r.attention_mask
    mb_size = max(1, B // p.num_minibatches)
    sums: dict[str, float] = {}
    n = 0
    policy_params = [q for q in m.policy.parameters() if q.requires_grad]
    policy, value_model = (dist.wrapped(m.policy), dist.wrapped(m.value_model)) if dist else (m.policy, m.value_model)
    generator = minibatch_generator(cfg, dist, step) if dist else None
    for _ in range(p.num_ppo_epochs):
        for idx, n_real in minibatches(B, mb_size, generator, dist):
            mask = r.response_mask[idx]
            with autocast(cfg.train, sequences.device):  # forward passes only; losses are float32, backward outside
                logprobs, entropy = response_logprobs(
                    policy, sequences[idx], attention_mask[idx], T_p, cfg.generation.temperature, with_entropy=True, entropy_grad=p.ent_coef > 0
                )
                values = value_model(sequences[idx], attention_mask[idx])[:, T_p - 1 : -1]  # (b, T_r)
            # policy loss
            pg_loss, pm = ppo_policy_loss(logprobs, r.logprobs[idx], advantages[idx], mask, p.clip_coef)
            # value loss
            vf_loss, vm = ppo_value_loss(values, r.values[idx], returns[idx], mask, p.value_clip_coef)
            # entropy bonus
            entropy_mean = masked_mean(entropy, mask)
            loss = pg_loss + p.vf_coef * vf_loss - p.ent_coef * entropy_mean
            optimizer.zero_grad(set_to_none=True)
            tokens = float(mask.sum()) if n_real else 0.0
            finite = bool(torch.isfinite(loss)) if dist is None else not dist.any(not torch.isfinite(loss))
            if finite:
                if dist is None:
                    loss.backward()
                else:
                    dist.backward(loss * dist.share(tokens))  # the token mean over the global minibatch
                clip = dist.clip_grad_norm_ if dist else torch.nn.utils.clip_grad_norm_
                gn_policy = clip(policy_params, cfg.train.max_grad_norm)
                gn_value = clip(m.value_model.parameters(), cfg.train.max_grad_norm)
                finite = bool(torch.isfinite(gn_policy) and torch.isfinite(gn_value))
            if not finite:  # never step on NaN/inf: the weights stay the last good ones
                optimizer.zero_grad(set_to_none=True)
                if cfg.guards.on_nonfinite == "stop":
                    raise GuardTripped(f"step {step}: non-finite loss ({loss.item()}) or gradient")
                sums["guard/skipped"] = sums.get("guard/skipped", 0.0) + 1
                continue
            optimizer.step()
            local = {**pm, **vm, "policy/entropy": entropy_mean.item()}
            local = dist.mean_metrics(local, tokens) if dist else local
            for k, v in {**local, "policy/grad_norm": float(gn_policy), "value/grad_norm": float(gn_value)}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
    skipped = sums.pop("guard/skipped", 0.0)
    return {**{k: v / max(n, 1) for k, v in sums.items()}, "guard/skipped": skipped}


def no_loss_scaling(dist: Distributed, stage: str) -> None:
    """Online RL steps the optimizer itself (a skipped fp16 step would desynchronise the KL controller and the
    rollout check), so it runs in bf16 or fp32 only.

    Raises:
        ConfigError: train.precision=fp16.
    """
    if dist.precision.loss_scaling:
        raise ConfigError(f"tether {stage} does not train in fp16 (train.precision=fp16): use auto, bf16 or fp32")


def check_sharding(dist: Distributed, batch_size: int, num_minibatches: int, key: str) -> None:
    """With several processes, every minibatch of a rollout must split evenly over them.

    Raises:
        ConfigError: `batch_size` rows are not num_minibatches x num_processes equal parts.
    """
    P = dist.num_processes
    if P > 1 and batch_size % (num_minibatches * P):
        raise ConfigError(
            f"{key}={batch_size} is the global rollout; with ppo.num_minibatches={num_minibatches} and {P} processes "
            f"it must be a multiple of {num_minibatches * P}"
        )


def divergence(guards, metrics: dict[str, float], raw_scores: torch.Tensor) -> str | None:
    """What went wrong in this step according to the guards, or None.

    Args:
        guards: the `GuardConfig`.
        metrics: this step's metrics (`objective/kl`, `policy/entropy`).
        raw_scores: (B,) reward-model scores before normalisation.
    """
    if guards.max_kl is not None and metrics["objective/kl"] > guards.max_kl:
        return f"KL to the reference exploded: {metrics['objective/kl']:.3g} > guards.max_kl={guards.max_kl}"
    if guards.min_entropy is not None and metrics.get("policy/entropy", float("inf")) < guards.min_entropy:
        return f"entropy collapsed: {metrics['policy/entropy']:.3g} < guards.min_entropy={guards.min_entropy}"
    if guards.score_range is not None:
        low, high = guards.score_range
        if not torch.isfinite(raw_scores).all() or raw_scores.min() < low or raw_scores.max() > high:
            return f"reward-model scores out of range: [{raw_scores.min():.3g}, {raw_scores.max():.3g}] not within [{low}, {high}]"
    return None


def train_ppo(cfg: PPOConfig) -> Path:
    """Run PPO; writes the final policy (merged if LoRA) to `cfg.output_dir`.

    Raises:
        DataError, ConfigError, ModelError: before training.
        TrainingError: NaN loss, or rollout logprobs that disagree with a fresh forward pass.
    """
    # 0. setup: data, models, optimizer, KL controller
    set_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)
    dist = Distributed(cfg.train, "ppo", ("single", "ddp"), grad_accum_steps=1)
    device = dist.device
    no_loss_scaling(dist, "ppo")
    d, p = cfg.data, cfg.ppo
    check_sharding(dist, p.batch_size, p.num_minibatches, "ppo.batch_size")
    dist.per_sample(p.rollout_seeding)  # fails early where global seeding meets several processes
    prompts = [e.prompt for e in select(load_prompts(d.train, d.on_invalid), d.split, d.holdout_fraction, d.max_samples)]
    m = load_models(cfg, device)
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
    kl_ctl = make_kl_controller(p.kl_coef, p.adaptive_kl, p.target_kl, p.kl_horizon)
    max_steps = cfg.train.max_steps or max(1, int(len(prompts) * cfg.train.epochs) // p.batch_size)
    rng = random.Random(cfg.train.seed)
    order: list[int] = []
    start = 1
    if run.resume_from is not None:
        state = resume_training(run.resume_from, m.policy, optimizer, model_key="policy")
        score_shift, order, start = tuple(state["score_shift"]), state["order"], state["step"] + 1
        m.backend.sync_weights(m.policy)
        m.value_model.load_state_dict(state["value_model"])
        kl_ctl.load_state_dict(state["kl_controller"])
        rng.setstate(state["order_rng"])
        if judge is not None:
            judge.history = state["judge_history"]
    else:
        score_shift = initial_score_stats(cfg, m, prompts, device, dist)
    if dist.is_main:
        (run.path / "reward_normalization.json").write_text(json.dumps({"mean": score_shift[0], "std": score_shift[1]}))
    dtype = compute_dtype(cfg, m.policy)
    stop_reason, metrics, step, skipped = "max_steps", {}, start - 1, 0

    def save(path: Path) -> None:
        """Policy in HF format for any tool, plus everything needed to continue exactly."""
        save_causal_lm(m.policy, m.tokenizer, path)
        save_state(
            path, step=step, policy=trainable_state_dict(m.policy), value_model=m.value_model.state_dict(),
            optimizer=optimizer.state_dict(), kl_controller=kl_ctl.state_dict(), score_shift=list(score_shift),
            order=order, order_rng=rng.getstate(), judge_history=judge.history if judge else [],
        )

    with progress() as bar, StopSignal() as stop:
        task = bar.add_task("ppo", total=max_steps, completed=start - 1, info="")
        for step in range(start, max_steps + 1):
            try:
                # 1-2. generate and score this process's shard of the batch; gather the global rollout
                batch, order = next_batch(prompts, order, rng, p.batch_size)
                lo, hi = dist.shard_range(len(batch))
                seeds = dist.sample_seeds(cfg.train.seed, f"rollout-{step}", range(lo, hi), p.rollout_seeding)
                r, diag = make_rollout(cfg, m, batch[lo:hi], device, score_shift, seeds)
                r, diag = gather_rollout(dist, r, diag, m.tokenizer.pad_token_id)
                if p.check_rollout_logprobs:
                    check_rollout_logprobs(diag, dtype, step)

                # 3. rewards: KL-shaped per-token rewards, GAE advantages and returns
                scores = masked_whiten(r.scores, torch.ones_like(r.scores, dtype=torch.bool)) if p.whiten_scores else r.scores
                rewards, kl = compute_rewards(scores, r.logprobs, r.ref_logprobs, r.response_mask, kl_ctl.value)
                advantages, returns = compute_gae(rewards, r.values, r.response_mask, p.gamma, p.gae_lambda)
                if p.whiten_advantages:
                    advantages = masked_whiten(advantages, r.response_mask)

                # 4. optimise
                update = ppo_update(cfg, m, r, advantages, returns, optimizer, step, run, dist)
                m.backend.sync_weights(m.policy)

                # 5. control: KL coefficient, metrics, stopping, checkpoints
                mean_kl = kl.sum(-1).mean().item()
                kl_ctl.update(mean_kl, p.batch_size)
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
                bar.update(task, advance=1, info=fmt(metrics, ["objective/scores", "objective/kl", "objective/kl_coef"]))
                skipped += int(update["guard/skipped"])
                if skipped > cfg.guards.max_skipped:
                    raise GuardTripped(f"step {step}: {skipped} updates skipped for non-finite values (guards.max_skipped={cfg.guards.max_skipped})")
                problem = divergence(cfg.guards, metrics, r.raw_scores)
                if problem:
                    raise GuardTripped(f"step {step}: {problem}")
                if p.reward_threshold is not None and metrics["objective/scores"] >= p.reward_threshold:
                    stop_reason = f"reward threshold {p.reward_threshold} reached"
                    break
                if p.kl_budget is not None and mean_kl > p.kl_budget:
                    stop_reason = f"KL budget {p.kl_budget} exceeded (kl={mean_kl:.2f})"
                    break
                if judge is not None and step % cfg.judge.every == 0:
                    run.log(step, judge_policy(cfg, m, judge, device, dist))
                    if reward_hacking_suspected(judge.history, cfg.judge.patience):
                        stop_reason = "reward hacking suspected: the held-out judge score fell while the training score rose"
                        break
                stopping = dist.any(stop.requested)  # all processes stop at the same step
                if cfg.train.save_every and step % cfg.train.save_every == 0 or stopping:
                    ckpt = run.checkpoint(step, save)
                    if stopping:
                        raise interrupted(step, ckpt)
            except GuardTripped as exc:
                ckpt = run.checkpoint(step, save)
                raise TrainingError(f"{exc}; the state at that moment is saved in {ckpt}") from None

    # 6. final policy in Hugging Face format
    dist.save_model(m.policy, m.tokenizer, run.path, save_causal_lm)
    run.finish({"steps": step, "stop_reason": stop_reason, **metrics})
    console.print(f"ppo: stopped after {step} steps ({stop_reason}); policy in {run.path}")
    return run.path
