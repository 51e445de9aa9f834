"""The red-team report: baseline vs aligned attack success, XSTest rates, examples; all model text escaped."""

from __future__ import annotations

from pathlib import Path

from tether.eval.report import embed_figure, esc, html_page, html_table, new_figure, paragraph

MAX_EXAMPLES = 60


def _pct(r: dict | None) -> str:
    if not r or r.get("rate") is None:
        return "-"
    lo, hi = r["ci"]
    return f"{r['rate']:.1%} [{lo:.0%}, {hi:.0%}] (n={r['n']})"


def _models(summary: dict) -> list[str]:
    return list(summary["models"])


def _suite_table(summary: dict) -> str:
    labels = _models(summary)
    names = list(dict.fromkeys(n for m in labels for n in summary["models"][m]["suites"]))
    rows = [[n] + [_pct(summary["models"][m]["suites"].get(n, {}).get("asr")) for m in labels] for n in names]
    rows.append(["all attacks"] + [_pct(summary["models"][m]["overall_asr"]) for m in labels])
    return "<h2>Attack success rate per suite</h2>" + html_table(["suite"] + [f"{m} ASR [95% CI]" for m in labels], rows)


def _category_table(summary: dict) -> str:
    labels = _models(summary)
    rows = []
    for name in dict.fromkeys(n for m in labels for n in summary["models"][m]["suites"]):
        cats = list(dict.fromkeys(c for m in labels for c in summary["models"][m]["suites"].get(name, {}).get("categories", {})))
        for c in cats:
            rows.append([name, c] + [_pct(summary["models"][m]["suites"].get(name, {}).get("categories", {}).get(c)) for m in labels])
    return "<h2>Attack success rate per category</h2>" + html_table(["suite", "category"] + [f"{m} ASR" for m in labels], rows)


def _transform_table(summary: dict) -> str:
    labels = _models(summary)
    names = list(dict.fromkeys(t for m in labels for t in summary["models"][m]["transforms"]))
    rows = [[t] + [_pct(summary["models"][m]["transforms"].get(t)) for m in labels] for t in names]
    return ("<h2>Attack success rate per transform</h2>"
            + paragraph("Templates after Wei et al. 2023 (role play, prefix injection, refusal suppression); 'none' is the plain prompt.", "note")
            + html_table(["transform"] + [f"{m} ASR" for m in labels], rows))


def _xstest_table(summary: dict) -> str:
    labels = _models(summary)
    names = list(dict.fromkeys(n for m in labels for n in summary["models"][m]["xstest"]))
    if not names:
        return ""
    rows = []
    for n in names:
        for key, what in (("over_refusal_safe", "over-refusal on safe prompts (lower is better)"),
                          ("full_compliance_unsafe", "full compliance on unsafe prompts (lower is better)")):
            rows.append([n, what] + [_pct(summary["models"][m]["xstest"].get(n, {}).get(key)) for m in labels])
    return ("<h2>Exaggerated safety (XSTest)</h2>"
            + paragraph("Röttger et al. 2024: safe prompts that look unsafe should be answered; the unsafe contrast prompts should be refused. "
                        "Refusal here means full or partial refusal, as judged by the refusal detector.", "note")
            + html_table(["suite", "rate"] + labels, rows))


def _figure(summary: dict) -> str:
    labels = _models(summary)
    names = list(dict.fromkeys(n for m in labels for n in summary["models"][m]["suites"]))
    bars = [(n, "ASR") for n in names]
    for n in dict.fromkeys(n for m in labels for n in summary["models"][m]["xstest"]):
        bars += [(n, "over-refusal"), (n, "unsafe compliance")]
    if not bars:
        return ""
    fig = new_figure(max(6.0, 1.1 * len(bars)), 3.5)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(labels)
    colors = ["#7f8c8d", "#3b6ea8"]
    for j, m in enumerate(labels):
        s = summary["models"][m]
        vals = []
        for n, what in bars:
            r = (s["suites"].get(n, {}).get("asr") if what == "ASR" else
                 s["xstest"].get(n, {}).get("over_refusal_safe" if what == "over-refusal" else "full_compliance_unsafe"))
            vals.append((r or {}).get("rate") or 0.0)
        ax.bar([i + j * width for i in range(len(bars))], vals, width, label=m, color=colors[j % 2])
    ax.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(bars))])
    ax.set_xticklabels([f"{n}\n{w}" for n, w in bars], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("rate")
    ax.legend()
    return embed_figure(fig, "attack success and XSTest rates per model")


def _detector(summary: dict) -> str:
    d = summary["refusal_detector"]
    if d.get("method") == "classifier":
        text = (f"Refusal detector: classifier {d.get('path')} (backbone {d.get('base_model')}), held-out accuracy "
                f"{d.get('heldout_accuracy', float('nan')):.3f} on {d.get('n_heldout')} XSTest completions of {d.get('heldout_prompts')} "
                f"held-out prompts (string match on the same rows: {d.get('string_match_heldout_accuracy', float('nan')):.3f}).")
    else:
        text = "Refusal detector: string match on refusal phrases (an empty answer counts as a refusal)."
    agree = [f"{m}: {summary['models'][m]['string_vs_detector_agreement']:.1%}" for m in _models(summary)
             if summary["models"][m].get("string_vs_detector_agreement") is not None]
    if agree and d.get("method") == "classifier":
        text += " Agreement of the string match with the classifier on these answers: " + ", ".join(agree) + "."
    return paragraph(text) + paragraph(f"Harm: {summary['harm']}.")


def _examples(outcomes) -> str:
    hits = [o for o in outcomes if o.success][:MAX_EXAMPLES]
    if not hits:
        return "<h2>Successful attacks</h2>" + paragraph("None.")
    rows = [[o.model, o.case.suite, o.case.category, o.case.transform, o.case.prompt, o.response, o.refusal_prob,
             "-" if o.harm is None else o.harm] for o in hits]
    return ("<h2>Successful attacks</h2>" + paragraph(f"First {len(hits)}; all answers are in results.jsonl.", "note")
            + html_table(["model", "suite", "category", "transform", "attack", "answer", "P(refusal)", "harm"], rows, text_columns=(4, 5)))


def _findings(summary: dict) -> str:
    f = summary.get("findings") or {}
    if not f:
        return ""
    rows = [[m, v["prompts"], v["pairs"], v["prompts_file"], v["pairs_file"]] for m, v in f.items()]
    return ("<h2>Findings for the next round</h2>"
            + html_table(["model", "attack prompts", "preference pairs", "prompts file", "pairs file"], rows))


def write_redteam_report(path: str | Path, cfg, summary: dict, outcomes) -> Path:
    """Write report.html: per-suite, per-category and per-transform ASR, XSTest rates, examples, findings.

    Args:
        path: output file.
        cfg: the `RedteamConfig`.
        summary: the content of redteam.json.
        outcomes: every `Outcome` (model text, escaped here).

    Returns:
        The path written.
    """
    models = ", ".join(f"{m} = {summary['models'][m]['path']}" for m in _models(summary))
    overall = "; ".join(f"{m}: {_pct(summary['models'][m]['overall_asr'])}" for m in _models(summary))
    sections = [
        f'<div class="verdict">{esc("Overall attack success rate: " + overall)}</div>',
        paragraph(f"Models: {models}. Greedy decoding: {not cfg.generation.do_sample}; max_new_tokens {cfg.generation.max_new_tokens}; seed {cfg.seed}."),
        _detector(summary),
        _figure(summary),
        _suite_table(summary),
        _xstest_table(summary),
        _transform_table(summary),
        _category_table(summary),
        _findings(summary),
        _examples(outcomes),
    ]
    if summary.get("generated_prompts"):
        sections.append("<h2>Prompts written by the red-team model</h2>"
                        + html_table(["prompt"], [[p] for p in summary["generated_prompts"]], text_columns=(0,)))
    out = Path(path)
    out.write_text(html_page("Red-team report", sections), encoding="utf-8")
    return out
