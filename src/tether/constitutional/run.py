"""`tether cai`: Constitutional AI phases on local models, written to one run directory.

Phases (`phases: [sl, rlaif, agreement]`):
1. sl: answer -> critique -> revision under sampled principles (Bai et al. 2022 sec. 3). Writes `chains.jsonl`
   (everything, for inspection), `sft.jsonl` ({"prompt","response"} for `tether sft`) and `revision_pairs.jsonl`
   ({"prompt","chosen": revision,"rejected": initial answer}).
2. rlaif: two sampled answers per prompt labelled by the judge from its choice-token probabilities, both orders
   averaged (Bai et al. 2022 sec. 4; Lee et al. 2023). Writes `preferences.jsonl` ({"prompt","chosen","rejected",
   "confidence","principle",...}).
3. agreement: the judge labels human pairs; agreement with the human choice (Lee et al. 2023 sec. 3.3).
   Writes `agreement.jsonl`.

`cai.json` holds the summary numbers and `report.html` shows them with examples.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from tether.config import ModelConfig
from tether.constitutional.agreement import agreement_summary, judge_human_pairs
from tether.constitutional.ai_feedback import EndpointJudge, LocalJudge, ai_feedback
from tether.constitutional.config import CAIConfig
from tether.constitutional.critique_revise import critique_revise
from tether.constitutional.principles import load_constitution
from tether.data.sources import load_preferences, load_prompts, write_jsonl
from tether.eval.report import html_page, html_table, paragraph
from tether.models.load import load_causal_lm, release_memory, resolve_device, set_threads
from tether.run import RunDir, console
from tether.trainers.common import set_seed

SUMMARY_FILE = "cai.json"


def seeded_sample(items: list, k: int | None, seed: int) -> list:
    """At most `k` items drawn without replacement by a seeded generator, in their original order."""
    if k is None or len(items) <= k:
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), k))
    return [items[i] for i in keep]


def _load(path: str, device, seed: int):
    return load_causal_lm(ModelConfig(name_or_path=path), device, seed=seed)


def make_judge(cfg: CAIConfig, device, policy=None, tokenizer=None):
    """The judge: the endpoint if configured, else a local causal LM (`judge`, default the policy)."""
    if cfg.judge_endpoint is not None:
        e = cfg.judge_endpoint
        return EndpointJudge(e.url, e.model, cfg.choices, e.api_key_env, e.timeout_s, e.top_logprobs)
    if cfg.judge is None or cfg.judge == cfg.policy:
        if policy is None:
            policy, tokenizer = _load(cfg.policy, device, cfg.seed)
        return LocalJudge(policy, tokenizer, cfg.choices, device, cfg.batch_size, cfg.max_context_length)
    model, tok = _load(cfg.judge, device, cfg.seed)
    return LocalJudge(model, tok, cfg.choices, device, cfg.batch_size, cfg.max_context_length)


def run_cai(cfg: CAIConfig) -> Path:
    """Run the configured phases and write the run directory.

    Returns:
        The run directory (`cfg.output_dir`).

    Raises:
        ConfigError: a bad constitution file, or an output_dir holding a different run.
        DataError: unreadable prompts or human pairs.
        ModelError: a model that cannot be loaded, or choices that do not tokenize.
    """
    # 0. setup: seeds everywhere, the constitution, the run directory
    set_threads(cfg.num_threads)
    set_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    device = resolve_device(cfg.device)
    constitution = load_constitution(cfg.constitution).filter(cfg.areas)
    run = RunDir(cfg.output_dir, cfg, cfg.overwrite)
    out = run.path
    summary: dict = {"constitution": constitution.name, "principles": [p.name for p in constitution.principles], "phases": cfg.phases}
    prompts = []
    if cfg.prompts:
        prompts = seeded_sample([e.prompt for e in load_prompts(cfg.prompts)], cfg.max_prompts, cfg.seed)
    policy = tokenizer = None
    if {"sl", "rlaif"} & set(cfg.phases) or (cfg.judge_endpoint is None and cfg.judge in (None, cfg.policy)):
        console.print(f"cai: loading {cfg.policy}")
        policy, tokenizer = _load(cfg.policy, device, cfg.seed)
    chains, labels, rows = [], [], []

    # 1. supervised phase: critique and revise
    if "sl" in cfg.phases:
        critic = critic_tok = None
        if cfg.critic and cfg.critic != cfg.policy:
            critic, critic_tok = _load(cfg.critic, device, cfg.seed)
        console.print(f"cai sl: {len(prompts)} prompts, {cfg.revisions} critique-revision round(s)")
        torch.manual_seed(cfg.seed)
        chains = critique_revise(
            policy, tokenizer, prompts, constitution, cfg.generation, device, rng, critic=critic, critic_tokenizer=critic_tok,
            critique_gen=cfg.critique_generation, rounds=cfg.revisions, template=cfg.prompt_template,
            max_prompt_length=cfg.max_prompt_length, max_context_length=cfg.max_context_length, max_chars=cfg.max_response_chars,
        )
        write_jsonl(out / "chains.jsonl", [c.to_json() for c in chains])
        sft = [{"prompt": c.prompt, "response": c.final} for c in chains if c.final.strip()]
        write_jsonl(out / "sft.jsonl", sft)
        pairs = [{"prompt": c.prompt, "chosen": c.final, "rejected": c.initial, "source": "revision"}
                 for c in chains if c.final.strip() and c.initial.strip() and c.final.strip() != c.initial.strip()]
        write_jsonl(out / "revision_pairs.jsonl", pairs)
        summary["sl"] = {"prompts": len(prompts), "sft_rows": len(sft), "revision_pairs": len(pairs),
                         "changed_fraction": (sum(c.final.strip() != c.initial.strip() for c in chains) / len(chains)) if chains else 0.0}
        del critic
        release_memory(device)

    judge = None
    if {"rlaif", "agreement"} & set(cfg.phases):
        judge = make_judge(cfg, device, policy, tokenizer)

    # 2. AI feedback phase: two answers, judged from the choice-token probabilities in both orders
    if "rlaif" in cfg.phases:
        console.print(f"cai rlaif: {len(prompts)} prompts, two answers each")
        torch.manual_seed(cfg.seed + 1)
        labels, skipped = ai_feedback(policy, tokenizer, judge, prompts, constitution, cfg.generation, device, rng,
                                      template=cfg.prompt_template, max_prompt_length=cfg.max_prompt_length,
                                      max_chars=cfg.max_response_chars)
        write_jsonl(out / "preferences.jsonl", [lab.to_json() for lab in labels])
        summary["rlaif"] = {
            "pairs": len(labels), "skipped_identical_or_empty": skipped,
            "mean_confidence": (sum(lab.confidence for lab in labels) / len(labels)) if labels else None,
            "position_bias": (sum(lab.position_bias for lab in labels) / len(labels)) if labels else None,
        }

    # 3. agreement with human labels on the same pairs
    if "agreement" in cfg.phases:
        human = seeded_sample(load_preferences(cfg.human_pairs, on_invalid="skip"), cfg.max_pairs, cfg.seed)
        console.print(f"cai agreement: judging {len(human)} human pairs from {cfg.human_pairs}")
        rows = judge_human_pairs(judge, human, constitution, rng, cfg.prompt_template, cfg.max_response_chars)
        write_jsonl(out / "agreement.jsonl", [
            {"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected, "principle": r.principle,
             "p_human_choice": round(r.p_human_choice, 6), "agrees": r.agrees} for r in rows])
        summary["agreement"] = {"human_pairs": cfg.human_pairs, **agreement_summary(rows)}

    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    write_cai_report(out / "report.html", cfg, summary, chains, labels, rows)
    run.finish(summary)
    console.print(f"cai: wrote {out / SUMMARY_FILE} and {out / 'report.html'}")
    return out


def write_cai_report(path: Path, cfg: CAIConfig, summary: dict, chains, labels, rows, max_rows: int = 30) -> Path:
    """A self-contained HTML report; every piece of model text is escaped."""
    sections = [paragraph(f"policy {cfg.policy}; judge {cfg.judge_endpoint.url if cfg.judge_endpoint else (cfg.judge or cfg.policy)}; "
                          f"constitution {summary['constitution']} ({len(summary['principles'])} principles); seed {cfg.seed}")]
    if "sl" in summary:
        s = summary["sl"]
        sections.append("<h2>Critique and revision (SL-CAI)</h2>" + paragraph(
            f"{s['prompts']} prompts, {s['sft_rows']} SFT rows, {s['revision_pairs']} revision pairs; "
            f"{s['changed_fraction']:.0%} of final answers differ from the initial answer."))
        table_rows = []
        for c in chains[:max_rows]:
            last = c.steps[-1] if c.steps else None
            table_rows.append([c.prompt, c.initial, last.principle if last else "", last.critique if last else "", c.final])
        sections.append(html_table(["prompt", "initial answer", "principle", "critique", "revision"], table_rows, text_columns=(0, 1, 3, 4)))
    if "rlaif" in summary:
        s = summary["rlaif"]
        sections.append("<h2>AI preference labels (RLAIF)</h2>" + paragraph(
            f"{s['pairs']} pairs ({s['skipped_identical_or_empty']} prompts skipped: identical or empty answers); "
            f"mean confidence {_f(s['mean_confidence'])}; position bias {_f(s['position_bias'])} "
            "(mean P(option A) over both orders minus 0.5; removed from the labels by averaging the orders)."))
        sections.append(html_table(["prompt", "chosen", "rejected", "confidence", "principle"],
                                   [[x.prompt, x.chosen, x.rejected, x.confidence, x.principle] for x in labels[:max_rows]],
                                   text_columns=(0, 1, 2)))
    if "agreement" in summary:
        s = summary["agreement"]
        if s["n"]:
            sections.append("<h2>Agreement with human labels</h2>" + paragraph(
                f"On {s['n']} human pairs from {s['human_pairs']}, the judge prefers the human's choice in "
                f"{s['agreement']:.1%} (95% Wilson CI {s['ci'][0]:.1%} to {s['ci'][1]:.1%}); 50% is chance. "
                f"Mean confidence {s['mean_confidence']:.3f}, position bias {s['position_bias']:+.3f}."))
            sections.append(html_table(["min confidence", "coverage", "pairs", "agreement"],
                                       [[b["min_confidence"], b["coverage"], b["n"], b["agreement"]] for b in s["by_confidence"]]))
            sections.append(html_table(["principle", "pairs", "agreement"],
                                       [[k, v["n"], v["agreement"]] for k, v in s["by_principle"].items()]))
            sections.append(html_table(["prompt", "human chosen", "human rejected", "P(human choice)", "principle"],
                                       [[r.prompt, r.chosen, r.rejected, r.p_human_choice, r.principle] for r in rows[:max_rows]],
                                       text_columns=(0, 1, 2)))
    path.write_text(html_page("Constitutional AI run", sections), encoding="utf-8")
    return path


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"
