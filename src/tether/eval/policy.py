"""Baseline vs policy on the same prompts: reward, win rate, KL, length, EOS rate, diversity.

Both models answer the same prompts with the same generation settings, and the random generator is
reset to the same seed before each model samples, so the two sets of answers share their sampling noise
and differences come from the weights. Every reward model scores both sets of answers. KL of the policy
to the baseline is estimated on the policy's own samples (the k1 estimator, Schulman 2020 "Approximating
KL divergence"): the mean over prompts of sum_t [log pi(y_t | x, y_<t) - log pi_base(y_t | x, y_<t)],
both at the generation temperature, which is unbiased when sampling is plain tempered sampling (no
top-k / top-p truncation).

Writes `eval.json`, `samples.jsonl` and `report.html` to `cfg.output_dir`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tether.config import EvalConfig, GenerationConfig, ModelConfig, dump_config
from tether.data.sources import load_prompts, select, write_jsonl
from tether.data.tokenize import tokenize_prompts
from tether.errors import ConfigError, ModelError
from tether.eval.metrics import bootstrap_ci, distinct_n, lc_win_rate, win_rate
from tether.eval.report import write_report
from tether.eval.results import AnswerStats, PolicyEvalResult, RewardModelResult, Sample
from tether.models.load import load_causal_lm, release_memory, resolve_device
from tether.models.logprobs import response_logprobs
from tether.models.reward import RewardModel
from tether.rollout.generate import Generation, decode_responses, generate
from tether.run import console

EVAL_FILE, SAMPLES_FILE, REPORT_FILE, CONFIG_FILE = "eval.json", "samples.jsonl", "report.html", "config.yaml"


# --------------------------------------------------------------------------- steps


def check_same_tokenizer(baseline_tok, policy_tok, baseline: str, policy: str) -> None:
    """KL needs both models to read the same token ids.

    Raises:
        ModelError: when the vocabularies or the EOS/pad ids differ.
    """
    same = (
        baseline_tok.get_vocab() == policy_tok.get_vocab()
        and baseline_tok.eos_token_id == policy_tok.eos_token_id
        and baseline_tok.pad_token_id == policy_tok.pad_token_id
    )
    if not same:
        raise ModelError(
            f"baseline {baseline} and policy {policy} have different tokenizers; "
            "a KL between them needs the same tokenizer (evaluate a policy fine-tuned from the baseline)"
        )


def sample_answers(model: nn.Module, tokenizer, prompt_ids: list[list[int]], gen: GenerationConfig, device: torch.device, seed: int) -> Generation:
    """Generate one answer per prompt after resetting the random generator to `seed`."""
    torch.manual_seed(seed)
    return generate(model, tokenizer, prompt_ids, gen, device)


@torch.no_grad()
def policy_kl(policy: nn.Module, baseline: nn.Module, gen: Generation, temperature: float, batch_size: int) -> torch.Tensor:
    """Summed log-ratio log pi(y|x) - log pi_base(y|x) of each of the policy's own answers.

    Args:
        gen: the policy's generation (prompts (B, T_p) left-padded, responses (B, T_r)).
        temperature: the sampling temperature, dividing both models' logits.
        batch_size: sequences per forward pass.

    Returns:
        (B,) float32 on CPU; its mean is the k1 estimate of KL(policy || baseline).
    """
    sequences = torch.cat([gen.prompts, gen.responses], dim=1)  # (B, T)
    attention_mask = torch.cat([gen.prompt_mask, gen.response_mask.long()], dim=1)  # (B, T)
    T_p = gen.prompts.shape[1]
    out = []
    for i in range(0, sequences.shape[0], batch_size):
        seq, mask = sequences[i : i + batch_size], attention_mask[i : i + batch_size]
        logprobs = response_logprobs(policy, seq, mask, T_p, temperature)  # (b, T_r)
        ref_logprobs = response_logprobs(baseline, seq, mask, T_p, temperature)  # (b, T_r)
        response_mask = gen.response_mask[i : i + batch_size]  # (b, T_r)
        out.append(((logprobs - ref_logprobs) * response_mask).sum(-1).float().cpu())
    return torch.cat(out)


CACHED_FIELDS = ("prompts", "prompt_mask", "responses", "response_mask", "ended")


def cached_baseline_answers(cfg: EvalConfig, prompt_ids: list[list[int]], device: torch.device, make) -> Generation:
    """The baseline's answers from `cfg.baseline_cache` when an evaluation of the same baseline (path and weight
    files), prompt tokens, generation settings, seed and kind of device wrote them; otherwise `make()`, then kept there. A file that
    cannot be read is generated again."""
    if cfg.baseline_cache is None:
        return make()
    import hashlib
    import os

    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from tether.models.load import weights_stamp

    key = json.dumps([cfg.baseline, weights_stamp(cfg.baseline), prompt_ids, cfg.generation.model_dump(), cfg.seed, device.type], sort_keys=True)
    path = Path(cfg.baseline_cache) / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"
    if path.is_file():
        try:
            saved = load_file(path)
            console.print(f"eval: the baseline's answers from {path}")
            return Generation(**{f: saved[f].to(device) for f in CACHED_FIELDS})
        except (SafetensorError, OSError, KeyError):
            pass
    gen = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({f: getattr(gen, f).detach().cpu().contiguous() for f in CACHED_FIELDS}, str(tmp))
    os.replace(tmp, path)
    return gen


def answer_lengths(gen: Generation) -> torch.Tensor:
    """(B,) response tokens before EOS (EOS itself not counted)."""
    return gen.response_mask.sum(-1) - gen.ended.long()


def answer_stats(gen: Generation, texts: list[str]) -> AnswerStats:
    """Length (tokens before EOS), EOS rate and distinct-1/2 of one model's answers."""
    lengths = answer_lengths(gen)  # (B,)
    return AnswerStats(
        mean_length=float(lengths.double().mean()),
        eos_fraction=float(gen.ended.double().mean()),
        distinct_1=distinct_n(texts, 1),
        distinct_2=distinct_n(texts, 2),
    )


def reward_model_names(paths: list[str]) -> list[str]:
    """Short display names (directory names); the full path where two would clash."""
    names = [Path(p).name or p for p in paths]
    return [n if names.count(n) == 1 else p for n, p in zip(names, paths)]


def score_with(path: str, name: str, prompts: list[str], baseline: list[str], policy: list[str], device: torch.device, seed: int,
               lengths: tuple[list[float], list[float]] | None = None) -> RewardModelResult:
    """Score both models' answers with one reward model and compare them: raw win rate, and with `lengths`
    ((baseline, policy) answer lengths in tokens) the length-controlled one.

    Raises:
        ModelError: when the reward model cannot be loaded.
    """
    rm = RewardModel.load(path, device)
    baseline_scores = rm.score(prompts, baseline).tolist()
    policy_scores = rm.score(prompts, policy).tolist()
    del rm
    diff = np.asarray(policy_scores) - np.asarray(baseline_scores)
    return RewardModelResult(
        name=name, path=path, baseline_scores=baseline_scores, policy_scores=policy_scores,
        win_rate=win_rate(policy_scores, baseline_scores), score_diff_ci=bootstrap_ci(diff, seed=seed),
        lc_win_rate=lc_win_rate(policy_scores, baseline_scores, lengths[1], lengths[0], seed=seed) if lengths else None,
    )


# --------------------------------------------------------------------------- outputs


def write_samples(path: Path, result: PolicyEvalResult) -> None:
    """One JSON line per prompt: both answers, every reward model's scores, the answer's KL."""
    write_jsonl(path, (
        {
            "prompt": s.prompt, "baseline": s.baseline, "policy": s.policy,
            "scores": {rm.name: {"baseline": rm.baseline_scores[i], "policy": rm.policy_scores[i]} for rm in result.reward_models},
            "kl": s.kl, "baseline_ended": s.baseline_ended, "policy_ended": s.policy_ended,
        }
        for i, s in enumerate(result.samples)
    ))


def write_outputs(result: PolicyEvalResult, cfg: EvalConfig, kl_budget: float | None) -> None:
    """Write config.yaml (the resolved config), eval.json, samples.jsonl and report.html into `cfg.output_dir`."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(dump_config(cfg), encoding="utf-8")
    (out / EVAL_FILE).write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    write_samples(out / SAMPLES_FILE, result)
    write_report(out / REPORT_FILE, result, cfg.train_metrics, kl_budget=kl_budget)


# --------------------------------------------------------------------------- entry point


def evaluate_policies(cfg: EvalConfig, kl_budget: float | None = None) -> PolicyEvalResult:
    """Compare a policy with its baseline on the same prompts and write the report.

    Args:
        cfg: the `tether eval` config (models, prompts, reward models, generation settings, output dir).
        kl_budget: optional KL budget in nats (default `cfg.kl_budget`, e.g. the PPO run's
            `rollout.kl_budget`); the report says whether the policy's KL is within it.

    Returns:
        The `PolicyEvalResult` (also written to `cfg.output_dir`).

    Raises:
        ConfigError: `cfg.overwrite` is False and the output directory already holds an eval.json.
        DataError: unreadable prompts file or an empty selection.
        ModelError: a model cannot be loaded, or baseline and policy tokenizers differ.
    """
    if not cfg.overwrite and (Path(cfg.output_dir) / EVAL_FILE).exists():
        raise ConfigError(f"{cfg.output_dir} already holds {EVAL_FILE}; set overwrite=true or choose another output_dir")
    split = cfg.split if cfg.split != "auto" else ("holdout" if cfg.holdout_fraction > 0 else "all")
    prompts = [e.prompt for e in select(load_prompts(cfg.prompts), split, cfg.holdout_fraction, cfg.max_prompts)]
    device = resolve_device(cfg.device)
    gen_cfg = cfg.generation
    temperature = gen_cfg.temperature if gen_cfg.do_sample else 1.0

    # 1. generate: same prompts, settings and seed for both models
    console.print(f"eval: {len(prompts)} prompts, loading {cfg.baseline} and {cfg.policy}")
    baseline, tokenizer = load_causal_lm(ModelConfig(name_or_path=cfg.baseline), device, seed=cfg.seed)
    policy, policy_tokenizer = load_causal_lm(ModelConfig(name_or_path=cfg.policy), device, seed=cfg.seed)
    check_same_tokenizer(tokenizer, policy_tokenizer, cfg.baseline, cfg.policy)
    prompt_ids = tokenize_prompts(prompts, tokenizer, cfg.prompt_template, cfg.max_prompt_length)
    console.print("eval: generating")
    baseline_gen = cached_baseline_answers(cfg, prompt_ids, device, lambda: sample_answers(baseline, tokenizer, prompt_ids, gen_cfg, device, cfg.seed))
    policy_gen = sample_answers(policy, tokenizer, prompt_ids, gen_cfg, device, cfg.seed)
    baseline_texts = decode_responses(tokenizer, baseline_gen.responses, baseline_gen.response_mask)
    policy_texts = decode_responses(tokenizer, policy_gen.responses, policy_gen.response_mask)

    # 2. KL of the policy to the baseline on the policy's own answers
    kl = policy_kl(policy, baseline, policy_gen, temperature, gen_cfg.batch_size)  # (B,)
    del baseline, policy
    release_memory(device)

    # 3. score both answer sets with every reward model
    rms = []
    for path, name in zip(cfg.reward_models, reward_model_names(cfg.reward_models)):
        console.print(f"eval: scoring with reward model {name}")
        lengths = (answer_lengths(baseline_gen).tolist(), answer_lengths(policy_gen).tolist())
        rms.append(score_with(path, name, prompts, baseline_texts, policy_texts, device, cfg.seed, lengths))
        release_memory(device)

    samples = [
        Sample(p, b, q, float(k), bool(be), bool(pe))
        for p, b, q, k, be, pe in zip(prompts, baseline_texts, policy_texts, kl.tolist(), baseline_gen.ended.tolist(), policy_gen.ended.tolist())
    ]
    result = PolicyEvalResult(
        n_prompts=len(prompts), baseline_path=cfg.baseline, policy_path=cfg.policy, prompts_path=cfg.prompts,
        split=split, reward_models=rms,
        baseline=answer_stats(baseline_gen, baseline_texts), policy=answer_stats(policy_gen, policy_texts),
        kl=float(kl.mean()), kl_ci=bootstrap_ci(kl.numpy(), seed=cfg.seed),
        generation=gen_cfg, seed=cfg.seed, samples=samples, output_dir=cfg.output_dir,
    )
    write_outputs(result, cfg, kl_budget if kl_budget is not None else cfg.kl_budget)
    console.print(f"eval: wrote {Path(cfg.output_dir) / REPORT_FILE}")
    return result
