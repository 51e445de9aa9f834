"""HTML report helpers and the policy-eval report, on hand-built results (no models)."""

import base64
import json
import subprocess
import sys

import pytest

from tether.config import GenerationConfig
from tether.eval.metrics import win_rate
from tether.eval.results import AnswerStats, PolicyEvalResult, RewardModelResult, Sample
from tether.eval.report import (
    embed_figure,
    html_table,
    new_figure,
    read_train_metrics,
    training_curves_section,
    verdict,
    write_report,
)

PNG_MAGIC = b"\x89PNG"


def make_result(n: int = 10, kl: float = 3.2) -> PolicyEvalResult:
    baseline_scores = [-0.1 * i for i in range(n)]
    policy_scores = [0.5 + 0.1 * i for i in range(n)]
    rm = RewardModelResult("rm-a", "/models/rm-a", baseline_scores, policy_scores,
                           win_rate(policy_scores, baseline_scores), (0.9, 1.1))
    stats = AnswerStats(mean_length=12.0, eos_fraction=0.8, distinct_1=0.5, distinct_2=0.7)
    samples = [Sample(f"<i>prompt {i}</i>", "base & answer", "<img src=x onerror=alert(1)>", 0.1, True, True)
               for i in range(n)]
    return PolicyEvalResult(
        n_prompts=n, baseline_path="base", policy_path="pol", prompts_path="p.jsonl", split="holdout",
        reward_models=[rm], baseline=stats, policy=stats, kl=kl, kl_ci=(2.0, 4.0),
        generation=GenerationConfig(), seed=0, samples=samples,
    )


def test_embed_figure_is_inline_png():
    fig = new_figure()
    fig.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
    tag = embed_figure(fig, alt='a "quoted" <alt>')
    assert 'alt="a &quot;quoted&quot; &lt;alt&gt;"' in tag
    data = tag.split("base64,", 1)[1].split('"', 1)[0]
    assert base64.b64decode(data).startswith(PNG_MAGIC)


def test_html_table_escapes_cells():
    table = html_table(["<h>"], [["<script>x</script>"], [0.123456]])
    assert "<script>" not in table and "&lt;script&gt;" in table
    assert "&lt;h&gt;" in table and "0.123" in table


def test_train_metrics_read_and_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": i, "objective/scores": 0.1 * i, "objective/kl": 0.2 * i} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n[1, 2]\n{\"loss\": 1}\n")
    assert len(read_train_metrics(path)) == 5
    assert "data:image/png;base64," in training_curves_section(str(path), kl_budget=1.0)
    assert "not found" in training_curves_section(str(tmp_path / "missing.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"step": 1, "loss": 0.5}\n')
    assert "no rows" in training_curves_section(str(empty))
    assert "No training metrics" in training_curves_section(None)


@pytest.mark.parametrize("budget, phrase", [(None, "nats."), (5.0, "within the budget of 5 nats"), (1.0, "over the budget of 1 nats")])
def test_verdict_numbers(budget, phrase):
    text = verdict(make_result(), kl_budget=budget)
    assert text.startswith("The policy scores higher than the baseline under RM rm-a on 10 held-out prompts")
    assert "win rate 1.00 (95% CI 0.72-1.00)" in text
    assert "KL to the baseline 3.2 nats" in text
    assert phrase in text


def test_write_report_escapes_model_text(tmp_path):
    out = write_report(tmp_path / "sub" / "report.html", make_result(), train_metrics=None, kl_budget=5.0)
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<i>prompt" not in html and "base &amp; answer" in html
    assert html.count("data:image/png;base64,") == 1  # histograms; no training curves without metrics


def test_report_does_not_import_the_evaluation():
    """report.py reads results.py; policy.py writes the report: no import circle."""
    code = "import sys, tether.eval.report\nassert 'tether.eval.policy' not in sys.modules\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
