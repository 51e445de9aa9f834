"""`tether loop`: RLHF as a loop, round after round, each round's feedback given on the current policy's answers.

Every round, in its own directory `round-NN/`:
    1. sample      K completions per prompt from the current policy, on prompts no earlier round used and the
                   prompts on which the last round's red teaming broke the policy
    2. label       the labeller ranks them; every two completions of a prompt whose scores differ make a pair,
                   tagged with the round and the policy that wrote it
    3. reward      a reward model trained on the pairs of every round so far, from the previous round's weights
    4. policy      PPO from the current policy against that reward model, its KL penalty to the SFT policy
                   (`kl_to: sft`) or to the round's starting policy (`kl_to: round`); or (`trainer: dpo`) DPO
                   on the round's pairs, its reference the round's starting policy
    5. evaluate    the new policy against the starting (SFT) policy on held-out prompts: the training reward
                   model, the judge (an independent reward model; by default the labeller's), raw and
                   length-controlled win rates, KL to the SFT policy, answer lengths; with `redteam`, attack
                   success and XSTest over-refusal of both policies under the same attacks
    6. stop        when the judge's win rate has not improved for `eval.patience` rounds (a rule on the judge,
                   not on the proxy reward model that PPO optimises)

A round's steps leave their results on disk as they finish (files written whole and renamed; stages with their
DONE marker), so `tether loop` run again after a crash or a kill skips what is done and goes on from there, and
run with a higher `rounds` continues a finished loop. `loop.json` and `report.html` summarise every round.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
from pathlib import Path

from tether.config import DPOConfig, EvalConfig, LoopConfig, PPOConfig, RewardConfig, dump_config, validate
from tether.data.sources import load_prompts, select, write_jsonl
from tether.errors import ConfigError, StageFailed, TetherError
from tether.run import DONE_FILE, console, run_stage, same_config

SUMMARY_FILE = "loop.json"
REPORT_FILE = "report.html"


def round_dir(out: Path, r: int) -> Path:
    return out / f"round-{r:02d}"


def round_prompts(cfg: LoopConfig) -> tuple[list[list[str]], list[str]]:
    """The prompts of every round (disjoint slices of the shuffled, distinct training prompts of the pool) and the
    held-out ones.

    Raises:
        DataError: an unreadable pool.
        ConfigError: a pool too small for `rounds` x `prompts_per_round`.
    """
    d = cfg.data
    pool = list(dict.fromkeys(e.prompt for e in select(load_prompts(d.train, d.on_invalid), "train", d.holdout_fraction, d.max_samples,
                                                        d.skip_samples)))  # distinct
    held_out = [e.prompt for e in select(load_prompts(d.eval or d.train, d.on_invalid), "holdout" if not d.eval else "all",
                                         d.holdout_fraction, cfg.eval.max_prompts)]
    need = cfg.rounds * cfg.prompts_per_round
    if len(pool) < need:
        raise ConfigError(f"data.train has {len(pool)} training prompts; {cfg.rounds} rounds x prompts_per_round="
                          f"{cfg.prompts_per_round} need {need} (lower one of them, or give a larger pool)")
    if not held_out:
        raise ConfigError("the loop evaluates on held-out prompts: set data.eval or data.holdout_fraction > 0")
    random.Random(cfg.seed).shuffle(pool)
    n = cfg.prompts_per_round
    return [pool[i * n : (i + 1) * n] for i in range(cfg.rounds)], held_out


def write_whole(path: Path, rows: list[dict]) -> None:
    """Write JSONL under a temporary name and rename it: the file exists only once it is complete."""
    tmp = path.with_name(path.name + ".tmp")
    write_jsonl(tmp, rows)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- the steps of a round


def sample_round(cfg: LoopConfig, policy: str, prompts: list[str], path: Path, seed: int) -> None:
    """Phase 1: K completions per prompt from `policy`, as a campaign file (one item per prompt)."""
    from tether.rollout.sample import sample_completions

    completions = sample_completions(policy, prompts, cfg.k, cfg.generation, seed, cfg.data.prompt_template, cfg.data.max_prompt_length)
    write_whole(path, [{"id": f"item-{i}", "prompt": p, "completions": c, "model": policy} for i, (p, c) in enumerate(zip(prompts, completions))])


def distinct_completions(samples: Path) -> list[dict]:
    """The round's items, each with its distinct completions only (first occurrence kept): a policy that gives the
    same answer twice would otherwise make the same pair twice, which the reward model's data check refuses."""
    items = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines()]
    return [{**it, "completions": list(dict.fromkeys(it["completions"]))} for it in items]


def label_with_model(cfg: LoopConfig, samples: Path, path: Path, r: int) -> int:
    """Phase 2 with the `model` labeller: score every completion; each two of a prompt whose scores differ by more
    than `labeler.min_margin` are a pair (the higher one chosen). Returns the number of pairs."""
    from tether.models.load import release_memory, resolve_device
    from tether.models.reward import load_reward

    items = distinct_completions(samples)
    lab = cfg.labeler
    device = resolve_device("auto")
    gold = load_reward(lab.path, None, device)
    prompts = [it["prompt"] for it in items for _ in it["completions"]]
    texts = [c for it in items for c in it["completions"]]
    scores = gold.score(prompts, texts, lab.batch_size, lab.max_length).tolist()
    del gold
    release_memory(device)
    rows, i = [], 0
    for it in items:
        s = scores[i : i + len(it["completions"])]
        i += len(s)
        for a in range(len(s)):
            for b in range(a + 1, len(s)):
                if abs(s[a] - s[b]) <= lab.min_margin:
                    continue
                hi, lo = (a, b) if s[a] > s[b] else (b, a)
                rows.append({"prompt": it["prompt"], "chosen": it["completions"][hi], "rejected": it["completions"][lo],
                             "round": r, "policy": it["model"], "margin": s[hi] - s[lo]})
    write_whole(path, rows)
    return len(rows)


class FeedbackPending(TetherError):
    """The round's campaign does not have enough labels yet; `tether loop` run again later goes on from there."""


def label_with_people(cfg: LoopConfig, samples: Path, path: Path, r: int) -> int:
    """Phase 2 with people: the round's completions become a ranking campaign in the feedback app (created once);
    once `labeler.min_complete` of its items have all their labels, the consensus pairs are the round's pairs.

    Raises:
        FeedbackPending: not enough labels within `labeler.wait_minutes`, saying where to label and how far it is.
    """
    import time

    from tether.feedback.campaign_file import read_campaign_file
    from tether.feedback.export import ExportKind, ExportMode, export_records
    from tether.feedback.tasks import expand_items
    from tether.storage import Conflict, FeedbackStore, NotFound, TaskKind

    lab = cfg.labeler
    store = FeedbackStore(lab.db)
    try:
        name = f"{Path(cfg.output_dir).name}-round-{r:02d}"
        try:
            campaign = store.campaign_by_name(name)
        except NotFound:  # the first time this round labels
            guidelines = Path(lab.guidelines).read_text(encoding="utf-8") if lab.guidelines else ""
            items = expand_items(TaskKind.RANK, read_campaign_file(samples, TaskKind.RANK))
            try:
                campaign = store.create_campaign(name, TaskKind.RANK, items, guidelines, lab.labelers_per_item, str(samples))
            except Conflict:
                campaign = store.campaign_by_name(name)
            console.print(f"loop: round {r}: campaign {name!r} created with {campaign.n_items} items; labellers rank them at {lab.url}")
        deadline = time.time() + 60 * lab.wait_minutes
        while True:
            progress = store.progress(campaign.id)
            if progress.n_items_complete >= lab.min_complete * progress.n_items:
                break
            if time.time() >= deadline:
                raise FeedbackPending(
                    f"loop: round {r} waits for feedback: campaign {name!r} at {lab.url} has {progress.n_items_complete} of "
                    f"{progress.n_items} items with all {campaign.labelers_per_item} labels (labeler.min_complete={lab.min_complete}); "
                    "run tether loop again when they are in"
                )
            time.sleep(min(10.0, max(0.0, deadline - time.time())))
        records = export_records(campaign, store.list_items(campaign.id), store.list_labels(campaign.id), ExportKind.PAIRS, ExportMode.CONSENSUS)
        models = {json.loads(line)["prompt"]: json.loads(line)["model"] for line in samples.open(encoding="utf-8")}
        rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "round": r, "policy": models.get(p.prompt),
                 "margin": p.margin, "campaign": p.campaign, "item_id": p.item_id} for p in records]
        write_whole(path, rows)
    finally:
        store.close()
    return len(rows)


def label_with_ai(cfg: LoopConfig, samples: Path, path: Path, r: int) -> int:
    """Phase 2 with AI feedback: a judge language model compares every two distinct completions of a prompt under a
    principle sampled from the constitution, in both orders (position bias averaged out, Lee et al. 2023); pairs
    it prefers with more than `labeler.min_confidence` are kept. Returns the number of pairs."""
    from tether.config import ModelConfig
    from tether.constitutional.ai_feedback import LocalJudge, judge_pairs
    from tether.constitutional.principles import load_constitution
    from tether.data.tokenize import format_prompt
    from tether.models.load import load_causal_lm, release_memory, resolve_device

    lab = cfg.labeler
    items = distinct_completions(samples)
    rng = random.Random(cfg.seed + r)
    constitution = load_constitution(lab.constitution)
    candidates = [(it, a, b) for it in items for a in range(len(it["completions"])) for b in range(a + 1, len(it["completions"]))
                  if it["completions"][a].strip() and it["completions"][b].strip()]
    principles = [constitution.sample(rng) for _ in candidates]
    rows = []
    if candidates:
        device = resolve_device("auto")
        model, tokenizer = load_causal_lm(ModelConfig(name_or_path=lab.path), device, seed=cfg.seed)
        verdicts = judge_pairs(LocalJudge(model, tokenizer, device=device, batch_size=lab.batch_size),
                               [format_prompt(it["prompt"], cfg.data.prompt_template) for it, _, _ in candidates], principles,
                               [it["completions"][a] for it, a, _ in candidates], [it["completions"][b] for it, _, b in candidates])
        del model
        release_memory(device)
        for (it, a, b), p, v in zip(candidates, principles, verdicts):
            if v.confidence <= lab.min_confidence:
                continue
            first, second = it["completions"][a], it["completions"][b]
            chosen, rejected = (first, second) if v.p_first >= 0.5 else (second, first)
            rows.append({"prompt": it["prompt"], "chosen": chosen, "rejected": rejected, "round": r, "policy": it["model"],
                         "confidence": v.confidence, "principle": p.name, "position_bias": v.position_bias})
    write_whole(path, rows)
    return len(rows)


LABELERS = {"model": label_with_model, "human": label_with_people, "ai": label_with_ai}  # labeler.kind -> (cfg, samples file, pairs file, round) -> number of pairs


def reward_config(cfg: LoopConfig, pair_files: list[Path], previous_rm: Path | None, out: Path) -> dict:
    """The round's `tether rm` config: the loop's keys, then its data (a fifth of the pairs held out unless
    `reward_model.data.holdout_fraction` says otherwise), output and (from round 2) starting weights."""
    raw = copy.deepcopy(cfg.reward_model)
    if previous_rm is not None:
        raw["model"] = {**raw.get("model", {}), "name_or_path": str(previous_rm)}
    # pairs held out by default, so that the reward model's accuracy is measured and a model at chance stops the loop
    raw["data"] = {"holdout_fraction": 0.2, **raw.get("data", {}), "train": [str(p) for p in pair_files]}
    raw["train"] = {**raw.get("train", {}), "resume": True}
    return {**raw, "output_dir": str(out), "overwrite": True}


def ppo_config(cfg: LoopConfig, policy: str, rm: Path, prompts: Path, out: Path) -> dict:
    """The round's `tether ppo` config: the loop's keys, then its policy, reward model, prompts, output, and with
    `kl_to=sft` the SFT policy as the reference of the KL penalty."""
    raw = copy.deepcopy(cfg.ppo)
    raw["model"] = {**raw.get("model", {}), "name_or_path": policy}
    raw["reward_model"] = {**raw.get("reward_model", {}), "path": str(rm)}
    raw["data"] = {"train": str(prompts), "max_prompt_length": cfg.data.max_prompt_length, "prompt_template": cfg.data.prompt_template}
    raw["train"] = {**raw.get("train", {}), "resume": True}
    if cfg.kl_to == "sft" and policy != cfg.policy:
        if raw["model"].get("lora", {}).get("enabled"):
            raise ConfigError("kl_to=sft: with ppo.model.lora.enabled the KL reference is the round's starting policy; set kl_to=round")
        raw["reference"] = cfg.policy
    return {**raw, "output_dir": str(out), "overwrite": True}


def dpo_config(cfg: LoopConfig, policy: str, pairs: Path, out: Path) -> dict:
    """The round's `tether dpo` config (trainer=dpo): the loop's keys, then its policy (also DPO's reference: the
    round's starting policy), the round's own pairs (on-policy: the answers this policy gave, as in iterative DPO,
    Xiong et al. 2024) and output."""
    raw = copy.deepcopy(cfg.dpo)
    raw["model"] = {**raw.get("model", {}), "name_or_path": policy}
    # an empty answer (a policy may end at once) is skipped, not an error: the labeller's other pairs still teach
    raw["data"] = {"on_invalid": "skip", **raw.get("data", {}), "train": str(pairs), "max_prompt_length": cfg.data.max_prompt_length,
                   "prompt_template": cfg.data.prompt_template}
    raw["train"] = {**raw.get("train", {}), "resume": True}
    return {**raw, "output_dir": str(out), "overwrite": True}


def eval_round(cfg: LoopConfig, policy: str, rm: Path, held_out: Path, out: Path) -> dict:
    """Phase 5: `tether eval` of the round's policy against the SFT policy (skipped when done with the same config).
    The SFT policy's answers are the same every round (same prompts, settings and seed): they are generated once
    (`baseline_cache`). Returns eval.json."""
    from tether.eval.policy import evaluate_policies

    judge = cfg.eval.judge or cfg.labeler.path
    ecfg = EvalConfig(baseline=cfg.policy, policy=policy, prompts=str(held_out), reward_models=[str(rm), judge], output_dir=str(out),
                      split="all", max_prompts=cfg.eval.max_prompts, prompt_template=cfg.data.prompt_template,
                      max_prompt_length=cfg.data.max_prompt_length, generation=cfg.eval.generation, seed=cfg.seed,
                      baseline_cache=str(Path(cfg.output_dir) / "sft_answers"))
    done = out / "eval.json"
    if not (done.is_file() and (out / "config.yaml").is_file() and (out / "config.yaml").read_text() == dump_config(ecfg)):
        evaluate_policies(ecfg)
    return json.loads(done.read_text())


def redteam_round(cfg: LoopConfig, policy: str, out: Path, trained_on: list[Path]) -> dict | None:
    """Phase 5 (red teaming, when `redteam` is set): the round's policy and the SFT policy under the same attacks
    (skipped when done with the same config). The prompts of `trained_on` (every round's prompts so far, earlier
    findings among them) are left out of every suite, so attack success is measured on prompts PPO never saw.
    Greedy answers go through one `answer_cache` for the whole loop, so the SFT policy answers a prompt only once.
    Returns redteam.json, or None."""
    if cfg.redteam is None:
        return None
    from tether.redteam.config import RedteamConfig
    from tether.redteam.run import run_redteam

    raw = {**copy.deepcopy(cfg.redteam), "baseline": cfg.policy, "aligned": policy, "output_dir": str(out), "overwrite": True}
    raw["suites"] = [{**s, "exclude": [*s.get("exclude", []), *map(str, trained_on)]} if isinstance(s, dict) else s
                     for s in raw.get("suites", [])]
    raw["findings"] = {**raw.get("findings", {}), "export": True}
    rcfg = validate(RedteamConfig, raw, origin=f"{cfg.output_dir}: redteam")
    if rcfg.answer_cache is None and not rcfg.generation.do_sample:  # the SFT model answers each prompt once for every round
        rcfg = rcfg.model_copy(update={"answer_cache": str(Path(cfg.output_dir) / "redteam_answers.jsonl")})
    done = out / "redteam.json"
    if not (done.is_file() and (out / "config.yaml").is_file() and (out / "config.yaml").read_text() == dump_config(rcfg)):
        run_redteam(rcfg)
    return json.loads(done.read_text())


def findings_prompts(redteam: dict | None, n: int) -> list[str]:
    """Up to `n` distinct prompts on which the red teaming broke the round's policy (its findings), for the next round."""
    if redteam is None or n == 0 or "aligned" not in redteam.get("findings", {}):
        return []
    path = Path(redteam["findings"]["aligned"]["prompts_file"])
    prompts = [json.loads(line)["prompt"] for line in path.open(encoding="utf-8")] if path.is_file() else []
    return list(dict.fromkeys(prompts))[:n]


def judge_agreement(cfg: LoopConfig, pairs: Path, out: Path) -> dict:
    """How often the judge prefers the labellers' chosen answer in the round's pairs, with its 95% Wilson interval:
    the judge's accuracy on feedback it never saw (written once to `judge_agreement.json`)."""
    if out.is_file():
        return json.loads(out.read_text())
    from tether.eval.metrics import wilson_interval
    from tether.models.load import release_memory, resolve_device
    from tether.models.reward import load_reward

    rows = [json.loads(line) for line in pairs.open(encoding="utf-8")]
    device = resolve_device("auto")
    judge = load_reward(cfg.eval.judge or cfg.labeler.path, None, device)
    prompts = [p["prompt"] for p in rows]
    chosen, rejected = judge.score(prompts, [p["chosen"] for p in rows]), judge.score(prompts, [p["rejected"] for p in rows])
    del judge
    release_memory(device)
    agree = float((chosen > rejected).sum() + 0.5 * (chosen == rejected).sum())
    result = {"accuracy": agree / len(rows), "ci": list(wilson_interval(agree, len(rows))), "n": len(rows)}
    write_whole(out, [result])
    return result


def summarise(cfg: LoopConfig, r: int, n_pairs: int, n_total: int, rm_out: Path, policy_out: Path, result: dict, redteam: dict | None,
              agreement: dict) -> dict:
    """One row of loop.json: what the round's reward model, policy training (PPO or DPO), evaluation and red teaming
    measured."""
    rm_done, trained = json.loads((rm_out / DONE_FILE).read_text()), json.loads((policy_out / DONE_FILE).read_text())
    proxy, judge = result["reward_models"][0], result["reward_models"][-1]
    return {
        "round": r, "policy": str(policy_out), "trainer": cfg.trainer, "pairs": n_pairs, "pairs_total": n_total,
        "rm_eval_accuracy": heldout_accuracy(rm_out, rm_done), "policy_steps": trained.get("steps"),
        "policy_stop_reason": trained.get("stop_reason"), "ppo_kl": trained.get("objective/kl"),
        "kl_to_sft": result["kl"], "sqrt_kl_to_sft": math.sqrt(max(result["kl"], 0.0)),
        "proxy_win_rate": proxy["win_rate"], "proxy_lc_win_rate": proxy.get("lc_win_rate"), "proxy_score_diff": proxy["score_diff"],
        "judge_win_rate": judge["win_rate"], "judge_win_rate_ci": judge["win_rate_ci"], "judge_lc_win_rate": judge.get("lc_win_rate"),
        "judge_lc_win_rate_ci": judge.get("lc_win_rate_ci"), "judge_score_diff": judge["score_diff"],
        "judge_agreement": agreement["accuracy"], "judge_agreement_ci": agreement["ci"],
        "sft_length": result["baseline"]["mean_length"], "policy_length": result["policy"]["mean_length"],
        **(_attack_rates(redteam) if redteam is not None else {}),
    }


def heldout_accuracy(rm_out: Path, rm_done: dict) -> float | None:
    """The round's reward model's held-out accuracy; for an ensemble, its members' mean."""
    if "members" not in rm_done:
        return rm_done.get("eval/accuracy")
    accuracies = [json.loads((rm_out / m / DONE_FILE).read_text()).get("eval/accuracy") for m in rm_done["members"]]
    return None if None in accuracies else sum(accuracies) / len(accuracies)


def _attack_rates(redteam: dict) -> dict:
    """Attack success and XSTest rates (with their 95% intervals) of the SFT policy and the round's policy."""
    row = {}
    for label, name in (("baseline", "sft"), ("aligned", "policy")):
        m = redteam["models"][label]
        row[f"{name}_attack_success"], row[f"{name}_attack_success_ci"] = m["overall_asr"]["rate"], m["overall_asr"]["ci"]
        xs = (m.get("xstest") or {}).get("xstest")
        if xs:
            row[f"{name}_over_refusal"], row[f"{name}_over_refusal_ci"] = xs["over_refusal_safe"]["rate"], xs["over_refusal_safe"]["ci"]
            row[f"{name}_unsafe_compliance"] = xs["full_compliance_unsafe"]["rate"]
    return row


def stop_on_judge(rows: list[dict], patience: int) -> str | None:
    """Why the loop stops after the last round: the judge's win rate has not beaten its best for `patience` rounds."""
    if len(rows) <= patience:
        return None
    best_before = max(r["judge_win_rate"] for r in rows[: -patience])
    if all(r["judge_win_rate"] <= best_before for r in rows[-patience:]):
        return f"the judge's win rate has not improved on {best_before:.3f} for {patience} round(s)"
    return None


# --------------------------------------------------------------------------- the loop


def run_loop(cfg: LoopConfig) -> Path:
    """Run (or continue) the loop; returns its output directory, which holds loop.json and report.html.

    Raises:
        ConfigError: an output_dir holding a different loop (other `rounds` or `eval.patience` continue it), a pool too
            small, no held-out prompts, or a stage's config that does not validate (naming the stage's key).
        StageFailed, TrainingError, DataError, ModelError: from a round's stage; what is done stays done.
    """
    from tether.trainers.dpo import train_dpo
    from tether.trainers.ppo import train_ppo
    from tether.trainers.reward import train_reward

    out = Path(cfg.output_dir)
    if out.is_file():
        raise ConfigError(f"output_dir {out} is a file")
    saved = out / "config.yaml"
    if not cfg.overwrite and saved.is_file() and not same_config(_with_stopping_of(saved, cfg), cfg):
        raise ConfigError(f"output_dir {out} holds a different loop (its config.yaml differs); choose another output_dir or set overwrite=true")
    out.mkdir(parents=True, exist_ok=True)
    (out / DONE_FILE).unlink(missing_ok=True)
    saved.write_text(dump_config(cfg))
    per_round, held_out = round_prompts(cfg)
    held_file = out / "heldout_prompts.jsonl"
    if not held_file.is_file():
        write_whole(held_file, [{"prompt": p} for p in held_out])

    policy, previous_rm, pair_files, rows, stop_reason, redteam = cfg.policy, None, [], [], f"{cfg.rounds} rounds", None
    for r in range(1, cfg.rounds + 1):
        rd = round_dir(out, r)
        rd.mkdir(exist_ok=True)
        console.print(f"loop: round {r}/{cfg.rounds} from {policy}")
        # 1. sample from the current policy, on prompts no earlier round used and the last round's red-team findings
        prompts_file, samples = rd / "prompts.jsonl", rd / "samples.jsonl"
        if not prompts_file.is_file():
            found = [p for p in findings_prompts(redteam, cfg.findings_per_round) if p not in per_round[r - 1]]
            write_whole(prompts_file, [{"prompt": p} for p in per_round[r - 1] + found])
        prompts = [json.loads(line)["prompt"] for line in prompts_file.open(encoding="utf-8")]
        if not samples.is_file():
            sample_round(cfg, policy, prompts, samples, cfg.seed + r)
        # 2. feedback
        pairs = rd / "pairs.jsonl"
        if not pairs.is_file():
            LABELERS[cfg.labeler.kind](cfg, samples, pairs, r)
        n_pairs = sum(1 for _ in pairs.open(encoding="utf-8"))
        if n_pairs == 0:
            raise StageFailed(f"loop: round {r}: the labeller found no pair among {cfg.k} completions of {len(prompts)} prompts "
                              f"(every two scored within labeler.min_margin={cfg.labeler.min_margin}); the policy's answers do not differ")
        pair_files.append(pairs)
        # 3. the reward model on every pair so far, from the last round's weights
        rm = run_stage("rm", RewardConfig, reward_config(cfg, pair_files, previous_rm, rd / "rm"), train_reward, str(out))
        # 4. the policy from the current one: PPO against the reward model, or DPO on the round's pairs
        if cfg.trainer == "ppo":
            trained = run_stage("ppo", PPOConfig, ppo_config(cfg, policy, rm, prompts_file, rd / "ppo"), train_ppo, str(out))
        else:
            trained = run_stage("dpo", DPOConfig, dpo_config(cfg, policy, pairs, rd / "dpo"), train_dpo, str(out))
        # 5. evaluation against the SFT policy
        result = eval_round(cfg, str(trained), rm, held_file, rd / "eval")
        redteam = redteam_round(cfg, str(trained), rd / "redteam", [round_dir(out, i) / "prompts.jsonl" for i in range(1, r + 1)])
        agreement = judge_agreement(cfg, pairs, rd / "judge_agreement.json")
        rows.append(summarise(cfg, r, n_pairs, sum(1 for f in pair_files for _ in f.open(encoding="utf-8")), rm, trained, result, redteam, agreement))
        write_summary(out, cfg, rows, None)
        console.print(
            f"loop: round {r}: judge win rate {rows[-1]['judge_win_rate']:.3f} (length-controlled {rows[-1]['judge_lc_win_rate']:.3f}), "
            f"proxy {rows[-1]['proxy_win_rate']:.3f}, KL to SFT {rows[-1]['kl_to_sft']:.3g}"
        )
        policy, previous_rm = str(trained), rm
        # 6. the stopping rule, on the judge
        reason = stop_on_judge(rows, cfg.eval.patience)
        if reason:
            stop_reason = reason
            break
    write_summary(out, cfg, rows, stop_reason)
    best = best_round(rows)
    (out / DONE_FILE).write_text(json.dumps({"rounds": len(rows), "stop_reason": stop_reason, "policy": best["policy"],
                                             "best_round": best["round"], "last_policy": policy}, indent=2))
    console.print(f"loop: stopped after {len(rows)} round(s) ({stop_reason}); the judge's best is round {best['round']}: "
                  f"policy {best['policy']}; report {out / REPORT_FILE}")
    return out


def best_round(rows: list[dict]) -> dict:
    """The round whose policy the loop hands on: the judge's best win rate (the earliest of equals), not the last
    round's, since a round after the judge's best is what the stopping rule exists to undo. The judge chose it on
    the held-out prompts, so its win rate there is an optimistic estimate."""
    return max(rows, key=lambda r: (r["judge_win_rate"], -r["round"]))


def _with_stopping_of(saved: Path, cfg: LoopConfig) -> str:
    """The saved config.yaml with `cfg`'s stopping settings (`rounds`, `eval.patience`): changing them continues the
    same loop rather than starting another."""
    import yaml

    data = yaml.safe_load(saved.read_text())
    if not isinstance(data, dict):
        return ""
    data["rounds"] = cfg.rounds
    data.setdefault("eval", {})["patience"] = cfg.eval.patience
    return yaml.safe_dump(data)


def write_summary(out: Path, cfg: LoopConfig, rows: list[dict], stop_reason: str | None) -> None:
    """loop.json (every round's row) and report.html (a table and the overoptimisation curves)."""
    from tether.html import figure_data_uri, new_figure, render_report

    judge = judge_info(cfg)
    (out / SUMMARY_FILE).write_text(json.dumps({"rounds": rows, "stop_reason": stop_reason, "judge": judge}, indent=2) + "\n")
    fig = new_figure(6.0, 3.5)
    ax = fig.add_subplot()
    x = [r["sqrt_kl_to_sft"] for r in rows]
    ax.plot(x, [r["proxy_win_rate"] for r in rows], "o-", label="training reward model")
    ax.plot(x, [r["judge_win_rate"] for r in rows], "s-", label="judge")
    ax.axhline(0.5, color="grey", lw=0.8)
    ax.set_xlabel("sqrt(KL to the SFT policy)")
    ax.set_ylabel("win rate over SFT")
    ax.legend()
    table = [[r["round"], r["pairs"], r["pairs_total"], r["rm_eval_accuracy"], r["policy_steps"], r["kl_to_sft"], r["proxy_win_rate"],
              r["judge_win_rate"], r["judge_lc_win_rate"], r["judge_agreement"], r["sft_length"], r["policy_length"],
              r.get("sft_attack_success"), r.get("policy_attack_success"), r.get("sft_over_refusal"), r.get("policy_over_refusal")] for r in rows]
    render_report("loop.html", out / REPORT_FILE, title="RLHF loop", rows=table, curve=figure_data_uri(fig), stop_reason=stop_reason,
                  labeler=cfg.labeler.path, judge=judge, sft=cfg.policy)


def judge_info(cfg: LoopConfig) -> dict:
    """Which model judges, whether it is independent of the labeller (a model of its own, not the one whose labels
    the training reward model learns), and its held-out accuracy on its own training run's held-out pairs (the
    `eval/accuracy` its `tether rm` run recorded; None for a model trained elsewhere)."""
    path = cfg.eval.judge or cfg.labeler.path
    done = Path(path) / DONE_FILE if path else None
    accuracy = json.loads(done.read_text()).get("eval/accuracy") if done is not None and done.is_file() else None
    return {"path": path, "independent": cfg.eval.judge is not None and cfg.eval.judge != cfg.labeler.path,
            "heldout_accuracy": accuracy}
