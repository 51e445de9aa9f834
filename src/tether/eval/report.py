"""Self-contained HTML reports: figures embedded as base64 PNG, every piece of text escaped.

The helpers at the top (`embed_figure`, `html_table`, `html_page`, `new_figure`) are generic and used by
every report (policy eval, reward-model eval, red teaming). `write_report` writes the policy-eval report:
a verdict in numbers, training curves, score histograms, a results table and sample answers side by side.
Model text is untrusted and always goes through `html.escape`.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tether.eval.results import PolicyEvalResult, RewardModelResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_SAMPLE_ROWS = 100  # answers shown in the report; all of them are in samples.jsonl

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.verdict { background: #f4f7fb; border-left: 4px solid #3b6ea8; padding: 0.8em 1em; font-size: 1.05em; }
.note { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.text { white-space: pre-wrap; word-break: break-word; max-width: 28em; font-family: ui-monospace, monospace; }
img { max-width: 100%; }
"""


# --------------------------------------------------------------------------- generic helpers


def new_figure(width: float = 6.0, height: float = 3.5) -> "Figure":
    """A matplotlib figure rendered with the Agg backend, independent of pyplot's global state.

    Returns:
        A `matplotlib.figure.Figure`; pass it to `embed_figure`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def embed_figure(fig: "Figure", alt: str = "", dpi: int = 100) -> str:
    """Render a matplotlib figure as an `<img>` tag with the PNG inlined as base64.

    Args:
        fig: the figure (from `new_figure` or pyplot).
        alt: alternative text (escaped).
        dpi: resolution of the PNG.

    Returns:
        An HTML `<img src="data:image/png;base64,...">` string.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt, quote=True)}" src="data:image/png;base64,{data}">'


def esc(value: object) -> str:
    """HTML-escaped text of any value (quotes included, so it is safe in attributes too)."""
    return html.escape(str(value), quote=True)


def fmt_num(value: float | int | None, digits: int = 3) -> str:
    """A number for people: `digits` significant digits, '-' for None."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def html_table(headers: Sequence[str], rows: Sequence[Sequence[object]], text_columns: Sequence[int] = ()) -> str:
    """An HTML table; every cell is escaped.

    Args:
        headers: column names.
        rows: cell values (numbers are formatted with `fmt_num`).
        text_columns: indices of columns holding long free text (shown wrapped, monospace).

    Returns:
        The `<table>` element as a string.
    """
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            shown = fmt_num(cell) if isinstance(cell, (int, float)) or cell is None else str(cell)
            cls = ' class="text"' if i in text_columns else ""
            cells.append(f"<td{cls}>{esc(shown)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def html_page(title: str, sections: Sequence[str]) -> str:
    """A complete HTML document with inline CSS; `sections` are HTML fragments built by the helpers here."""
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{esc(title)}</h1>" + "\n".join(sections) + "</body></html>\n"
    )


def paragraph(text: str, cls: str = "") -> str:
    """A `<p>` of escaped text."""
    attr = f' class="{esc(cls)}"' if cls else ""
    return f"<p{attr}>{esc(text)}</p>"


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


def training_curves_section(path: str | None, kl_budget: float | None = None) -> str:
    """Reward and KL curves of a training run, or a note saying why there are none.

    Args:
        path: the run's `metrics.jsonl` (keys `step`, `objective/scores`, `objective/kl`, `objective/kl_coef`).
        kl_budget: drawn as a horizontal line on the KL plot when given.

    Returns:
        An HTML fragment.
    """
    header = "<h2>Training curves</h2>"
    if path is None:
        return header + paragraph("No training metrics were given (train_metrics).", "note")
    if not Path(path).is_file():
        return header + paragraph(f"Training metrics file not found: {path}", "note")
    rows = read_train_metrics(path)
    curves = [(k, *_series(rows, k)) for k in ("objective/scores", "objective/kl", "objective/kl_coef")]
    curves = [c for c in curves if c[1]]
    if not curves:
        return header + paragraph(f"{path}: no rows with objective/scores or objective/kl.", "note")
    fig = new_figure(4.0 * len(curves), 3.0)
    for i, (key, steps, values) in enumerate(curves):
        ax = fig.add_subplot(1, len(curves), i + 1)
        ax.plot(steps, values, color="#3b6ea8")
        if key == "objective/kl" and kl_budget is not None:
            ax.axhline(kl_budget, color="#c0392b", linestyle="--", label="KL budget")
            ax.legend()
        ax.set_title(key)
        ax.set_xlabel("step")
    return header + embed_figure(fig, "training curves") + paragraph(f"from {path}", "note")


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
        f"win rate {wr.win_rate:.2f} (95% CI {wr.ci_low:.2f}-{wr.ci_high:.2f}); "
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
    return "<h2>Score distributions</h2>" + embed_figure(fig, "score histograms")


def _bin_edges(low: float, high: float, n: int) -> list[float]:
    """Equal-width bin edges; a degenerate range (all scores equal) gets a unit-wide window."""
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    return [low + (high - low) * k / n for k in range(n + 1)]


def _results_table(result: PolicyEvalResult) -> str:
    rows = []
    for rm in result.reward_models:
        wr = rm.win_rate
        rows.append([
            rm.name, rm.baseline_mean_score, rm.policy_mean_score,
            f"{rm.score_diff:+.3g} [{rm.score_diff_ci[0]:.3g}, {rm.score_diff_ci[1]:.3g}]",
            f"{wr.win_rate:.3f} [{wr.ci_low:.3f}, {wr.ci_high:.3f}]", f"{wr.wins}/{wr.ties}/{wr.losses}",
        ])
    rm_table = html_table(
        ["reward model", "baseline mean", "policy mean", "difference [95% bootstrap CI]",
         "win rate [95% Wilson CI]", "wins/ties/losses"], rows,
    )
    b, p = result.baseline, result.policy
    model_table = html_table(
        ["model", "path", "mean length (tokens)", "ended with EOS", "distinct-1", "distinct-2"],
        [["baseline", result.baseline_path, b.mean_length, b.eos_fraction, b.distinct_1, b.distinct_2],
         ["policy", result.policy_path, p.mean_length, p.eos_fraction, p.distinct_1, p.distinct_2]],
    )
    kl = paragraph(
        f"KL(policy || baseline) = {result.kl:.4g} nats per response "
        f"(95% bootstrap CI {result.kl_ci[0]:.3g} to {result.kl_ci[1]:.3g}), "
        "estimated on the policy's own samples at the generation temperature."
    )
    return "<h2>Results</h2>" + rm_table + model_table + kl


def _samples_table(result: PolicyEvalResult) -> str:
    first = result.reward_models[0]
    shown = result.samples[:MAX_SAMPLE_ROWS]
    rows = [
        [s.prompt, s.baseline, first.baseline_scores[i], s.policy, first.policy_scores[i]]
        for i, s in enumerate(shown)
    ]
    table = html_table(
        ["prompt", "baseline answer", f"score ({first.name})", "policy answer", f"score ({first.name})"],
        rows, text_columns=(0, 1, 3),
    )
    note = paragraph(f"Showing {len(shown)} of {len(result.samples)}; all answers are in samples.jsonl.", "note")
    return "<h2>Sample answers</h2>" + note + table


def write_report(
    path: str | Path, result: PolicyEvalResult, train_metrics: str | None, kl_budget: float | None = None
) -> Path:
    """Write the policy-eval report as one self-contained HTML file.

    Args:
        path: where to write `report.html`.
        result: the evaluation result.
        train_metrics: the training run's `metrics.jsonl` for reward/KL curves (skipped if None or absent).
        kl_budget: optional KL budget in nats; the verdict says whether the KL is within it.

    Returns:
        The path written.
    """
    sections = [
        f'<div class="verdict">{esc(verdict(result, kl_budget))}</div>',
        _results_table(result),
        _histograms(result.reward_models),
        training_curves_section(train_metrics, kl_budget),
        _samples_table(result),
    ]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html_page("Policy evaluation: baseline vs policy", sections), encoding="utf-8")
    return out
