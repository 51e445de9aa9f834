"""HTML report helpers and the policy-eval report, on hand-built results (no models)."""

import base64
import json
import subprocess
import sys

import pytest

from tether.config import GenerationConfig
from tether.eval.metrics import win_rate
from tether.eval.results import AnswerStats, PolicyEvalResult, RewardModelResult, Sample
from tether.eval.report import MAX_SAMPLE_ROWS, html_page, html_table, paragraph, read_train_metrics, training_curves, verdict, write_report

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


def test_html_table_escapes_cells():
    table = html_table(["<h>"], [["<script>x</script>"], [0.123456]])
    assert "<script>" not in table and "&lt;script&gt;" in table
    assert "&lt;h&gt;" in table and "0.123" in table


def test_page_of_fragments_escapes_only_the_text():
    page = html_page("<t>", ["<h2>Head</h2>" + paragraph("<b>model</b>", "note"), html_table(["x"], [["<i>"]])])
    assert page.startswith("<!DOCTYPE html>") and "<title>&lt;t&gt;</title>" in page
    assert "<h2>Head</h2>" in page and '<p class="note">&lt;b&gt;model&lt;/b&gt;</p>' in page
    assert "<td>&lt;i&gt;</td>" in page and "<i>" not in page and "<b>" not in page


def test_train_metrics_read_and_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": i, "objective/scores": 0.1 * i, "objective/kl": 0.2 * i} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n[1, 2]\n{\"loss\": 1}\n")
    assert len(read_train_metrics(path)) == 5
    curves = training_curves(str(path), kl_budget=1.0)
    assert base64.b64decode(curves.figure.removeprefix("data:image/png;base64,")).startswith(PNG_MAGIC)
    assert curves.note == f"from {path}"
    missing = training_curves(str(tmp_path / "missing.jsonl"))
    assert missing.figure is None and "not found" in missing.note
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"step": 1, "loss": 0.5}\n')
    assert "no rows" in training_curves(str(empty)).note
    assert "No training metrics" in training_curves(None).note


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


def test_write_report_sections_and_numbers(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": i, "objective/scores": 0.1 * i, "objective/kl": 0.2 * i}) + "\n" for i in range(3)))
    result = make_result(n=MAX_SAMPLE_ROWS + 5)
    result.samples[0].policy = "<script>alert(1)</script>"
    html = write_report(tmp_path / "report.html", result, train_metrics=str(metrics)).read_text(encoding="utf-8")
    for section in ("Results", "Score distributions", "Training curves", "Sample answers"):
        assert f"<h2>{section}</h2>" in html
    assert '<div class="verdict">The policy scores higher than the baseline under RM rm-a' in html
    assert "<td>rm-a</td>" in html and f"<td>{result.n_prompts}/0/0</td>" in html
    assert "<td>+10.9 [0.9, 1.1]</td>" in html  # mean policy - baseline score: 0.5 + 0.1 * 104
    assert "KL(policy || baseline) = 3.2 nats per response (95% bootstrap CI 2 to 4)" in html
    assert f"Showing {MAX_SAMPLE_ROWS} of {MAX_SAMPLE_ROWS + 5}" in html and f"from {metrics}" in html
    assert html.count('src="data:image/png;base64,') == 2  # histograms, training curves
    assert "<script" not in html and '<td class="text">&lt;script&gt;alert(1)&lt;/script&gt;</td>' in html
