"""The online-RL layer under PPO and the critic-free methods (GRPO, RLOO, REINFORCE++).

What every online method does around its own advantage estimate and loss: the roles (policy, reference, value
model, reward model, generation backend), the prompts, the rollout (generate, score, gather over processes), score
normalisation on the initial policy, minibatches, the check that the engine's logprobs equal a fresh forward pass,
the guarded optimizer step, the divergence guards, the stopping criteria and the held-out judge. `trainers/ppo.py`
and `trainers/grpo.py` import this module and never each other; a new critic-free method is an advantage
function in `rl/advantages.py` and a value of `grpo.algorithm`.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from tether.config import OnlineConfig, RolloutParams
from tether.data.sources import load_prompts, select
from tether.data.tokenize import tokenize_prompts
from tether.errors import ConfigError, ModelError, TrainingError
from tether.models.heads import ValueModel
from tether.models.load import apply_lora, check_context, load_causal_lm, reference_context, set_attention
from tether.models.reward import FunctionReward, RewardModel, load_reward
from tether.models.shared_prefix import grouped_response_logprobs, prompt_groups
from tether.precision import resolve_precision
from tether.rl.rewards import fit_length_baseline
from tether.rollout.backends import GenerationBackend, make_backend, require_backend
from tether.rollout.generate import decode_responses
from tether.trainers.common import StopSignal, autocast, interrupted
from tether.trainers.distributed import Distributed
from tether.types import Rollout


class GuardTripped(TrainingError):
    """A divergence guard fired (non-finite loss or gradient, exploding KL, collapsed entropy, bad scores)."""


def train_prompts(cfg: OnlineConfig) -> list[str]:
    """The training prompts: `data.split` of `data.train`, at most `data.max_samples`.

    Raises:
        DataError: a missing or malformed prompt file.
    """
    d = cfg.data
    return [e.prompt for e in select(load_prompts(d.train, d.on_invalid), d.split, d.holdout_fraction, d.max_samples, d.skip_samples)]


@dataclass
class Roles:
    policy: torch.nn.Module
    ref_policy: torch.nn.Module | None  # None with LoRA: the policy with adapters disabled
    value_model: ValueModel | None  # None for critic-free methods (GRPO, RLOO, REINFORCE++)
    reward_model: RewardModel | FunctionReward
    tokenizer: object
    backend: GenerationBackend  # samples the rollouts; sync_weights after every update


def load_roles(cfg: OnlineConfig, device: torch.device, value_init: str | None = None) -> Roles:
    """Policy (+LoRA), reference, value model, reward model and generation backend, as configured.

    Args:
        value_init: where the value model starts (`ppo.value_init`: "policy" or "reward_model"); None for
            critic-free methods.

    Raises:
        ConfigError: a generation backend this machine cannot run.
        ModelError: a missing model, a value model from a reward model whose tokenizer differs, or a `reference`
            whose tokenizer differs from the policy's.
    """
    require_backend(cfg.generation, device)
    policy, tokenizer = load_causal_lm(cfg.model, device, seed=cfg.train.seed)
    max_model_len = cfg.data.max_prompt_length + cfg.generation.max_new_tokens
    check_context(max_model_len, policy, "data.max_prompt_length + generation.max_new_tokens")
    rm = cfg.reward_model
    reward_model = load_reward(rm.path, rm.function, device, paths=rm.paths, ensemble=rm.ensemble, ensemble_k=rm.ensemble_k)
    if isinstance(reward_model, RewardModel):
        check_context(cfg.reward_model.max_length, reward_model.model, "reward_model.max_length")
    if value_init is None:
        value_model = None
    elif value_init == "policy":
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
    elif cfg.reference is not None:  # another model than the starting policy, e.g. the SFT model in later loop rounds
        ref_policy, ref_tokenizer = load_causal_lm(cfg.model.model_copy(update={"name_or_path": cfg.reference}),
                                                   device, seed=cfg.train.seed)
        if ref_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ModelError(f"reference {cfg.reference} and the policy {cfg.model.name_or_path} have different tokenizers; "
                             "the KL penalty compares their logprobs token by token")
        ref_policy.eval().requires_grad_(False)
    else:
        ref_policy = copy.deepcopy(policy).eval()
        for p in ref_policy.parameters():
            p.requires_grad_(False)
    backend = make_backend(cfg.generation, policy, tokenizer, device, max_model_len, cfg.train.seed)
    return Roles(policy, ref_policy, value_model, reward_model, tokenizer, backend)


@torch.no_grad()
def make_rollout(cfg: OnlineConfig, m: Roles, prompt_texts: list[str], device: torch.device, score_shift: tuple[float, float, float],
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
        gen = m.backend.generate(prompt_ids, return_sampling_logprobs=cfg.rollout.check_logprobs or not fresh_logprobs, seeds=seeds)
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
    center, scale, length_slope = score_shift
    if length_slope:  # rollout.length_correction=residual: what the response's length does not predict
        raw_for_scores = raw_scores - length_slope * response_chars(response_texts, raw_scores)
    else:
        raw_for_scores = raw_scores
    scores = (raw_for_scores - center) / scale  # (B,) normalised on the initial policy
    if cfg.rollout.missing_eos_penalty is not None:
        scores = torch.where(gen.ended, scores, torch.full_like(scores, cfg.rollout.missing_eos_penalty))

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


def minibatch_generator(cfg: OnlineConfig, dist: Distributed, step: int) -> torch.Generator | None:
    """The generator that orders minibatches: torch's global one (None) with global seeding, else one
    seeded from (train.seed, step) so that every process draws the same permutation."""
    seeds = dist.sample_seeds(cfg.train.seed, f"minibatches-{step}", range(1), cfg.rollout.seeding)
    return torch.Generator().manual_seed(seeds[0]) if seeds else None


def minibatches(n: int, size: int, generator: torch.Generator | None, dist: Distributed):
    """One epoch over a rollout of n rows: a shuffled split into minibatches of `size` rows, each as this
    process's shard (row indices, real rows; see `Distributed.shard`)."""
    for idx in torch.randperm(n, generator=generator).split(size):
        yield dist.shard(idx)


def compute_dtype(cfg: OnlineConfig, policy: torch.nn.Module) -> torch.dtype:
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
        raise TrainingError(f"step {step}: rollout.check_logprobs is on but the generation backend returned no sampling logprobs")
    tol = 1e-3 if dtype == torch.float32 else 5e-2
    if diag.get("rollout/logprob_diff_mean", 0.0) > tol:
        raise TrainingError(
            f"step {step}: generation logprobs differ from a fresh forward pass by {diag['rollout/logprob_diff_mean']:.2e} "
            f"on average (tolerance {tol}); the generation engine and the trainer disagree"
        )


@torch.no_grad()
def score_shift(cfg: OnlineConfig, m: Roles, prompts: list[str], device: torch.device, dist: Distributed) -> tuple[float, float, float]:
    """docs/architecture.md 6.4: `(center, scale, length_slope)` from the reward-model scores of the initial policy's
    samples; every later score becomes (score - length_slope * length - center) / scale. Without length correction
    the center and scale are the scores' mean and std and the slope is 0; with `rollout.length_correction=residual`
    they come from `fit_length_baseline`. `(0, 1, 0)` with `rollout.normalize_scores` off. With several processes
    each samples and scores its shard of the prompts; scores and lengths (in characters) are gathered."""
    if not cfg.rollout.normalize_scores:
        return 0.0, 1.0, 0.0
    sample = prompts[: max(cfg.rollout.batch_size, 32)]
    start, stop = dist.shard_range(len(sample))
    seeds = dist.sample_seeds(cfg.train.seed, "score-stats", range(start, stop), cfg.rollout.seeding)
    ids = tokenize_prompts(sample[start:stop], m.tokenizer, cfg.data.prompt_template, cfg.data.max_prompt_length)
    with autocast(cfg.train, device):
        gen = m.backend.generate(ids, seeds=seeds)
    texts = decode_responses(m.tokenizer, gen.responses, gen.response_mask)
    s = m.reward_model.score(sample[start:stop], texts, cfg.reward_model.batch_size, cfg.reward_model.max_length)
    s = dist.gather(s.to(device))
    if cfg.rollout.length_correction == "residual":
        intercept, slope, std = fit_length_baseline(s, dist.gather(response_chars(texts, s)))
        return intercept, std, slope
    return s.mean().item(), max(s.std().item(), 1e-3), 0.0


def response_chars(texts: list[str], like: torch.Tensor) -> torch.Tensor:
    """(B,) the responses' lengths in characters, as `like`'s dtype and device: the length a reward model sees,
    whatever the tokenizer."""
    return torch.tensor([len(t) for t in texts], dtype=like.dtype, device=like.device)


@dataclass
class Judge:
    """docs/architecture.md 6.9: a held-out reward model scoring the policy on fixed held-out prompts."""

    model: RewardModel
    prompts: list[str]
    history: list[tuple[float, float]]  # (judge score, training reward-model score) per evaluation


def load_judge(cfg: OnlineConfig, device: torch.device) -> Judge | None:
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
def judge_policy(cfg: OnlineConfig, m: Roles, judge: Judge, device: torch.device, dist: Distributed) -> dict[str, float]:
    """Score the policy's answers to the judge prompts with the judge and the training reward model
    (with several processes each answers its shard of the prompts; the scores are gathered)."""
    start, stop = dist.shard_range(len(judge.prompts))
    prompts = judge.prompts[start:stop]
    seeds = dist.sample_seeds(cfg.train.seed, "judge", range(start, stop), cfg.rollout.seeding)
    ids = tokenize_prompts(prompts, m.tokenizer, cfg.data.prompt_template, cfg.data.max_prompt_length)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast(cfg.train, device):
        torch.manual_seed(cfg.train.seed)  # the same sampling noise at every evaluation
        gen = m.backend.generate(ids, seeds=seeds)
    texts = decode_responses(m.tokenizer, gen.responses, gen.response_mask)
    judge_scores = judge.model.score(prompts, texts, cfg.judge.batch_size, cfg.judge.max_length).to(device)  # (b,)
    train_scores = m.reward_model.score(prompts, texts, cfg.reward_model.batch_size, cfg.reward_model.max_length).to(device)  # (b,)
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


def check_sharding(dist: Distributed, batch_size: int, num_minibatches: int, key: str) -> None:
    """With several processes, every minibatch of a rollout must split evenly over them.

    Raises:
        ConfigError: `batch_size` rows are not num_minibatches x num_processes equal parts.
    """
    P = dist.num_processes
    if P > 1 and batch_size % (num_minibatches * P):
        raise ConfigError(
            f"{key}={batch_size} is the global rollout; with rollout.num_minibatches={num_minibatches} and {P} processes "
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


def guarded_step(loss: torch.Tensor, param_groups: list[list[torch.nn.Parameter]], optimizer: torch.optim.Optimizer,
                 dist: Distributed, cfg: OnlineConfig, step: int, tokens: float) -> list[float] | None:
    """Backward, clip and step, unless the loss or a gradient is not finite (the weights then stay the last good ones).

    Args:
        loss: this process's token-mean loss of its shard of the minibatch (a scalar).
        param_groups: parameter lists whose gradient norms are clipped separately (the policy's, the value model's).
        tokens: real response tokens of this process's shard (its share of the global token mean).

    Returns:
        The gradient norm of each group before clipping, or None when the update was skipped
        (`guards.on_nonfinite=skip`).

    Raises:
        GuardTripped: a non-finite loss or gradient with `guards.on_nonfinite=stop`.
    """
    stop_on_nonfinite = cfg.guards.on_nonfinite == "stop"
    optimizer.zero_grad(set_to_none=True)
    finite = not dist.any(not torch.isfinite(loss))  # every process takes the same branch
    norms: list[torch.Tensor] = []
    if finite:
        dist.backward(loss * dist.share(tokens))  # the token mean over the global minibatch
        norms = [dist.clip_grad_norm_(params, cfg.train.max_grad_norm) for params in param_groups]
        finite = all(bool(torch.isfinite(n)) for n in norms)
    if not finite:
        optimizer.zero_grad(set_to_none=True)
        if stop_on_nonfinite:
            raise GuardTripped(f"step {step}: non-finite loss ({loss.item()}) or gradient")
        return None
    optimizer.step()
    return [float(n) for n in norms]


def check_guards(cfg: OnlineConfig, metrics: dict[str, float], raw_scores: torch.Tensor, skipped: int, step: int) -> None:
    """The divergence guards after a step (`guards`): too many skipped updates, or `divergence`.

    Raises:
        GuardTripped: naming the step and what went wrong.
    """
    if skipped > cfg.guards.max_skipped:
        raise GuardTripped(f"step {step}: {skipped} updates skipped for non-finite values (guards.max_skipped={cfg.guards.max_skipped})")
    problem = divergence(cfg.guards, metrics, raw_scores)
    if problem:
        raise GuardTripped(f"step {step}: {problem}")


def stop_criterion(r: RolloutParams, metrics: dict[str, float]) -> str | None:
    """Why training should stop after this step (`rollout.reward_threshold`, `rollout.kl_budget`), or None."""
    if r.reward_threshold is not None and metrics["objective/scores"] >= r.reward_threshold:
        return f"reward threshold {r.reward_threshold} reached"
    if r.kl_budget is not None and metrics["objective/kl"] > r.kl_budget:
        return f"KL budget {r.kl_budget} exceeded (kl={metrics['objective/kl']:.2f})"
    return None


class StepControl:
    """Phase 5 of every online method, once a step's metrics are logged: the divergence guards, the stopping
    criteria, the judge, checkpoints and the stop signal.

    Args:
        save: writes a checkpoint into the directory it is given (the trainer's state at the current step).
        stop: the run's `StopSignal`.
    """

    def __init__(self, cfg: OnlineConfig, m: Roles, judge: Judge | None, run, dist: Distributed, save: Callable[[Path], None],
                 stop: StopSignal):
        self.cfg, self.m, self.judge, self.run, self.dist, self.save, self.stop = cfg, m, judge, run, dist, save, stop
        self.skipped = 0  # updates skipped for non-finite values so far

    def after(self, step: int, metrics: dict[str, float], raw_scores: torch.Tensor) -> str | None:
        """Why training stops after this step, or None to go on (checkpointing every `train.save_every` steps).

        Raises:
            GuardTripped: a divergence guard fired (see `guard`).
            TrainingError: a stop signal arrived; the checkpoint is written first.
        """
        self.skipped += int(metrics["guard/skipped"])
        check_guards(self.cfg, metrics, raw_scores, self.skipped, step)
        reason = stop_criterion(self.cfg.rollout, metrics)
        if reason:
            return reason
        if self.judge is not None and step % self.cfg.judge.every == 0:  # the held-out judge, every judge.every steps
            self.run.log(step, judge_policy(self.cfg, self.m, self.judge, self.dist.device, self.dist))
            if reward_hacking_suspected(self.judge.history, self.cfg.judge.patience):
                return "reward hacking suspected: the held-out judge score fell while the training score rose"
        stopping = self.dist.any(self.stop.requested)  # all processes stop at the same step
        if self.cfg.train.save_every and step % self.cfg.train.save_every == 0 or stopping:
            ckpt = self.run.checkpoint(step, self.save)
            if stopping:
                raise interrupted(step, ckpt)
        return None

    @contextlib.contextmanager
    def guard(self, step: int) -> Iterator[None]:
        """Around one step: a guard that fires saves the state at that moment and stops with where it is.

        Raises:
            TrainingError: from a `GuardTripped`, naming the checkpoint.
        """
        try:
            yield
        except GuardTripped as exc:
            ckpt = self.run.checkpoint(step, self.save)
            raise TrainingError(f"{exc}; the state at that moment is saved in {ckpt}") from None
