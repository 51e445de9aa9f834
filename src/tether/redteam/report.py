"""The red-team report: baseline vs aligned attack success, XSTest rates, examples (template `redteam.html`
of `tether.html`, which escapes all model text)."""

from __future__ import annotations

from pathlib import Path

from tether.html import figure_data_uri, new_figure, render_report

MAX_EXAMPLES = 60


def _pct(r: dict | None) -> str:
    if not r or r.get("rate") is None:
        return "-"
    lo, hi = r["ci"]
    return f"{r['rate']:.1%} [{lo:.0%}, {hi:.0%}] (n={r['n']})"


def _models(summary: dict) -> list[str]:
    return list(summary["models"])


def _suite_rows(summary: dict) -> list[list]:
    labels = _models(summary)
    names = list(dict.fromkeys(n for m in labels for n in summary["models"][m]["suites"]))
    rows = [[n] + [_pct(summary["models"][m]["suites"].get(n, {}).get("asr")) for m in labels] for n in names]
    rows.append(["all attacks"] + [_pct(summary["models"][m]["overall_asr"]) for m in labels])
    return rows


def _category_rows(summary: dict) -> list[list]:
    labels = _models(summary)
    rows = []
    for name in dict.fromkeys(n for m in labels for n in summary["models"][m]["suites"]):
        cats = list(dict.fromkeys(c for m in labels for c in summary["models"][m]["suites"].get(name, {}).get("categories", {})))
        for c in cats:
            rows.append([name, c] + [_pct(summary["models"][m]["suites"].get(name, {}).get("categories", {}).get(c)) for m in labels])
    return rows


def _transform_rows(summary: dict) -> list[list]:
    labels = _models(summary)
    names = list(dict.fromkeys(t for m in labels for t in summary["models"][m]["transforms"]))
    return [[t] + [_pct(summary["models"][m]["transforms"].get(t)) for m in labels] for t in names]


def _xstest_rows(summary: dict) -> list[list]:
    labels = _models(summary)
    rows = []
    for n in dict.fromkeys(n for m in labels for n in summary["models"][m]["xstest"]):
        for key, what in (("over_refusal_safe", "over-refusal on safe prompts (lower is better)"),
                          ("full_compliance_unsafe", "full compliance on unsafe prompts (lower is better)")):
            rows.append([n, what] + [_pct(summary["models"][m]["xstest"].get(n, {}).get(key)) for m in labels])
    return rows


def _figure(summary: dict) -> str | None:
    """Bars of ASR per suite and XSTest rates per model, as a PNG data URI; None when there is nothing to draw."""
    labels = _models(summary)
    names = list(dict.fromkeys(n for m in labels for n in summary["models"][m]["suites"]))
    bars = [(n, "ASR") for n in names]
    for n in dict.fromkeys(n for m in labels for n in summary["models"][m]["xstest"]):
        bars += [(n, "over-refusal"), (n, "unsafe compliance")]
    if not bars:
        return None
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
    return figure_data_uri(fig)


def _detector(summary: dict) -> str:
    """What judged refusals, with the classifier's held-out accuracy (plain text)."""
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
    return text


def _example_rows(outcomes) -> list[list]:
    """The first `MAX_EXAMPLES` successful attacks: the attack and the model's answer with its scores."""
    hits = [o for o in outcomes if o.success][:MAX_EXAMPLES]
    return [[o.model, o.case.suite, o.case.category, o.case.transform, o.case.prompt, o.response, o.refusal_prob,
             "-" if o.harm is None else o.harm] for o in hits]


def _findings_rows(summary: dict) -> list[list]:
    f = summary.get("findings") or {}
    return [[m, v["prompts"], v["pairs"], v["prompts_file"], v["pairs_file"]] for m, v in f.items()]


def write_redteam_report(path: str | Path, cfg, summary: dict, outcomes) -> Path:
    """Write report.html: per-suite, per-category and per-transform ASR, XSTest rates, examples, findings.

    Args:
        path: output file (its folder is created).
        cfg: the `RedteamConfig`.
        summary: the content of redteam.json.
        outcomes: every `Outcome` (model text, escaped by the template).

    Returns:
        The path written.

    Raises:
        OSError: the file cannot be written.
    """
    labels = _models(summary)
    return render_report(
        "redteam.html", path, title="Red-team report", cfg=cfg, summary=summary, labels=labels,
        overall="; ".join(f"{m}: {_pct(summary['models'][m]['overall_asr'])}" for m in labels),
        models=", ".join(f"{m} = {summary['models'][m]['path']}" for m in labels),
        detector=_detector(summary), chart=_figure(summary),
        asr_headers=[f"{m} ASR" for m in labels], asr_ci_headers=[f"{m} ASR [95% CI]" for m in labels],
        suite_rows=_suite_rows(summary), xstest_rows=_xstest_rows(summary), transform_rows=_transform_rows(summary),
        category_rows=_category_rows(summary), findings_rows=_findings_rows(summary), example_rows=_example_rows(outcomes),
        generated_rows=[[p] for p in summary.get("generated_prompts") or []],
    )
