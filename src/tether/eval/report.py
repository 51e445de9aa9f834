"""The policy-eval report: a verdict in numbers, results tables, score histograms, training curves and
sample answers side by side, as one self-contained HTML page (template `policy_eval.html` of `tether.html`).

Model text is untrusted: the templates escape every value. `html_table`, `paragraph` and `html_page` at the
bottom build pages from fragments for the Constitutional AI report, with the same macros and layout.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from markupsafe import Markup

from tether.eval.results import PolicyEvalResult, RewardModelResult
from tether.html import environment, figure_data_uri, new_figure, render, render_report

MAX_SAMPLE_ROWS = 100  # answers shown in the report; all of them are in samples.jsonl


# --------------------------------------------------------------------------- training curves


def read_train_metrics(path: str | Path | None) -> list[dict[str, float]]:
    """Rows of a training `metrics.jsonl` that have a step; unreadable lines are skipped.

    Args:
        path: the file, or None.

    Returns:
        The rows (possibly empty: no path, a missing file, or no usable rows).
    """
    if path is None or not Path(path).is_file():
        return []
    rows = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            rows.append(row)
    return rows


def _series(rows: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    pairs = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@dataclass
class TrainingCurves:
    """What the report shows of a training run: a figure, or a note saying why there is none."""

    figure: str | None  # PNG data URI
    note: str  # where the curves come from, or why they are missing


def training_curves(path: str | None, kl_budget: float | None = None) -> TrainingCurves:
    """Reward and KL curves of a training run.

    Args:
        path: the run's `metrics.jsonl` (keys `step`, `objective/scores`, `objective/kl`, `objective/kl_coef`).
        kl_budget: drawn as a horizontal line on the KL plot when given.

    Returns:
        The figure and the file it came from; no figure and the reason when the path is None, the file is
        missing or it has no usable rows.
    """
    if path is None:
        return TrainingCurves(None, "No training metrics were given (train_metrics).")
    if not Path(path).is_file():
        return TrainingCurves(None, f"Training metrics file not found: {path}")
    rows = read_train_metrics(path)
    curves = [(k, *_series(rows, k)) for k in ("objective/scores", "objective/kl", "objective/kl_coef")]
    curves = [c for c in curves if c[1]]
    if not curves:
        return TrainingCurves(None, f"{path}: no rows with objective/scores or objective/kl.")
    fig = new_figure(4.0 * len(curves), 3.0)
    for i, (key, steps, values) in enumerate(curves):
        ax = fig.add_subplot(1, len(curves), i + 1)
        ax.plot(steps, values, color="#3b6ea8")
        if key == "objective/kl" and kl_budget is not None:
            ax.axhline(kl_budget, color="#c0392b", linestyle="--", label="KL budget")
            ax.legend()
        ax.set_title(key)
        ax.set_xlabel("step")
    return TrainingCurves(figure_data_uri(fig), f"from {path}")


# --------------------------------------------------------------------------- policy eval report


def verdict(result: PolicyEvalResult, kl_budget: float | None = None) -> str:
    """The plain-language summary in numbers, under the first reward model.

    Args:
        result: the evaluation result.
        kl_budget: nats of KL the policy may spend; when given, says whether the KL is within it.

    Returns:
        One or more sentences of plain text (not yet escaped).
    """
    rm = result.reward_models[0]
    wr = rm.win_rate
    if wr.ci_low > 0.5:
        direction = "scores higher than"
    elif wr.ci_high < 0.5:
        direction = "scores lower than"
    else:
        direction = "is not clearly different from"
    which = "held-out " if result.split == "holdout" else ""
    text = (
        f"The policy {direction} the baseline under RM {rm.name} on {result.n_prompts} {which}prompts: "
        f"mean {rm.policy_mean_score:.2f} vs {rm.baseline_mean_score:.2f}, "
        f"win rate {wr.win_rate:.2f} (95% CI {wr.ci_low:.2f}-{wr.ci_high:.2f})"
        + (f", length-controlled {rm.lc_win_rate.rate:.2f} ({rm.lc_win_rate.low:.2f}-{rm.lc_win_rate.high:.2f})" if rm.lc_win_rate else "")
        + "; "
        f"KL to the baseline {result.kl:.2g} nats"
    )
    if kl_budget is not None:
        within = "within" if result.kl <= kl_budget else "over"
        text += f", {within} the budget of {kl_budget:g} nats"
    b, p = result.baseline, result.policy
    return text + (
        f". Policy answers average {p.mean_length:.1f} tokens vs {b.mean_length:.1f} for the baseline, "
        f"and {p.eos_fraction:.0%} vs {b.eos_fraction:.0%} end with EOS."
    )


def _histograms(rms: Sequence[RewardModelResult]) -> str:
    """Baseline and policy score histograms, one panel per reward model, as a PNG data URI."""
    fig = new_figure(4.0 * len(rms), 3.0)
    for i, rm in enumerate(rms):
        ax = fig.add_subplot(1, len(rms), i + 1)
        both = rm.baseline_scores + rm.policy_scores
        bins = _bin_edges(min(both), max(both), 20)
        ax.hist(rm.baseline_scores, bins=bins, alpha=0.6, label="baseline", color="#7f8c8d")
        ax.hist(rm.policy_scores, bins=bins, alpha=0.6, label="policy", color="#3b6ea8")
        ax.set_title(f"RM {rm.name}")
        ax.set_xlabel("score")
        ax.legend()
    return figure_data_uri(fig)


def _bin_edges(low: float, high: float, n: int) -> list[float]:
    """Equal-width bin edges; a degenerate range (all scores equal) gets a unit-wide window."""
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    return [low + (high - low) * k / n for k in range(n + 1)]


def _reward_rows(result: PolicyEvalResult) -> list[list]:
    rows = []
    for rm in result.reward_models:
        wr = rm.win_rate
        rows.append([
            rm.name, rm.baseline_mean_score, rm.policy_mean_score,
            f"{rm.score_diff:+.3g} [{rm.score_diff_ci[0]:.3g}, {rm.score_diff_ci[1]:.3g}]",
            f"{wr.win_rate:.3f} [{wr.ci_low:.3f}, {wr.ci_high:.3f}]",
            f"{rm.lc_win_rate.rate:.3f} [{rm.lc_win_rate.low:.3f}, {rm.lc_win_rate.high:.3f}]" if rm.lc_win_rate else "-",
            f"{wr.wins}/{wr.ties}/{wr.losses}",
        ])
    return rows


def _model_rows(result: PolicyEvalResult) -> list[list]:
    b, p = result.baseline, result.policy
    return [["baseline", result.baseline_path, b.mean_length, b.eos_fraction, b.distinct_1, b.distinct_2],
            ["policy", result.policy_path, p.mean_length, p.eos_fraction, p.distinct_1, p.distinct_2]]


def _sample_rows(result: PolicyEvalResult) -> list[list]:
    """The first `MAX_SAMPLE_ROWS` prompts with both answers and their scores under the first reward model."""
    first = result.reward_models[0]
    return [
        [s.prompt, s.baseline, first.baseline_scores[i], s.policy, first.policy_scores[i]]
        for i, s in enumerate(result.samples[:MAX_SAMPLE_ROWS])
    ]


def write_report(
    path: str | Path, result: PolicyEvalResult, train_metrics: str | None, kl_budget: float | None = None
) -> Path:
    """Write the policy-eval report as one self-contained HTML file.

    Args:
        path: where to write `report.html` (its folder is created).
        result: the evaluation result.
        train_metrics: the training run's `metrics.jsonl` for reward/KL curves (skipped if None or absent).
        kl_budget: optional KL budget in nats; the verdict says whether the KL is within it.

    Returns:
        The path written.

    Raises:
        OSError: the file cannot be written.
    """
    return render_report(
        "policy_eval.html", path, title="Policy evaluation: baseline vs policy", result=result,
        verdict=verdict(result, kl_budget), reward_rows=_reward_rows(result), model_rows=_model_rows(result),
        histograms=_histograms(result.reward_models), curves=training_curves(train_metrics, kl_budget),
        sample_rows=_sample_rows(result),
    )


# --------------------------------------------------------------------------- pages from fragments
# constitutional/run.py assembles its report from these; a template of its own would make them unneeded.


def _macros():
    return environment().get_template("macros.html").module


def html_table(headers: Sequence[str], rows: Sequence[Sequence[object]], text_columns: Sequence[int] = ()) -> str:
    """An HTML table (the `table` macro of `tether.html`); every cell is escaped, numbers formatted.

    Returns:
        The `<table>` element as a string.
    """
    return str(_macros().table(headers, rows, text_columns))


def paragraph(text: str, cls: str = "") -> str:
    """A `<p>` of escaped text, with the CSS class `cls` if given.

    Returns:
        The `<p>` element as a string.
    """
    return str(_macros().paragraph(text, cls))


def html_page(title: str, sections: Sequence[str]) -> str:
    """A complete HTML document in the layout of `tether.html` (`base.html`).

    Args:
        title: the page title (escaped).
        sections: HTML fragments from `html_table` and `paragraph` (and headings), inserted as they are:
            never pass model text here directly.

    Returns:
        The page as a string.
    """
    return render("sections.html", title=title, sections=[Markup(s) for s in sections])
