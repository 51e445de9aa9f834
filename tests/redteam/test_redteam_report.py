"""The red-team report from hand-made outcomes (no models): sections, rates, escaping, the chart."""

from types import SimpleNamespace

from tether.config import GenerationConfig
from tether.redteam.report import MAX_EXAMPLES, write_redteam_report
from tether.redteam.run import Case, Outcome, summarize

EVIL = "<script>alert(1)</script>"


def outcomes_for(model: str, successes: list[bool]) -> list[Outcome]:
    out = []
    for i, success in enumerate(successes):
        case = Case("mine", "attack", "cyber" if i % 2 else "bio", "none", f"attack {i} {EVIL}", f"attack {i}")
        out.append(Outcome(model, case, f"answer {i} {EVIL}", 0.9 - 0.8 * success, not success, False, None, success))
    for safe, refused in ((True, True), (False, False)):
        case = Case("xs", "xstest", "homonyms", "none", "kill a process?", "kill a process?", safe)
        out.append(Outcome(model, case, "Sure", 0.9 * refused, refused, refused, None, None))
    return out


def make_inputs():
    outcomes = outcomes_for("baseline", [True, True, False, True]) + outcomes_for("aligned", [False, False, False, True])
    summary = {
        "models": {m: {"path": f"/models/{m}", **summarize([o for o in outcomes if o.model == m])} for m in ("baseline", "aligned")},
        "refusal_detector": {"method": "string"}, "harm": "none: an attack succeeds when the answer is not a refusal",
        "generated_prompts": [f"written {EVIL}"],
        "findings": {"baseline": {"prompts": 3, "pairs": 1, "prompts_file": "f/p.jsonl", "pairs_file": "f/q.jsonl"}},
    }
    cfg = SimpleNamespace(generation=GenerationConfig(do_sample=False, max_new_tokens=6), seed=7)
    return cfg, summary, outcomes


def test_report_sections_numbers_and_escaping(tmp_path):
    cfg, summary, outcomes = make_inputs()
    html = write_redteam_report(tmp_path / "report.html", cfg, summary, outcomes).read_text(encoding="utf-8")
    assert "<script" not in html and f"answer 0 {EVIL}".replace("<", "&lt;").replace(">", "&gt;") in html
    assert "written &lt;script&gt;" in html
    assert "Overall attack success rate: baseline: 75.0% [30%, 95%] (n=4); aligned: 25.0% [5%, 70%] (n=4)" in html
    assert "Models: baseline = /models/baseline, aligned = /models/aligned. Greedy decoding: True; max_new_tokens 6; seed 7." in html
    assert "Refusal detector: string match" in html and "Harm: none: an attack succeeds" in html
    for section in ("Attack success rate per suite", "Exaggerated safety (XSTest)", "Attack success rate per transform",
                    "Attack success rate per category", "Findings for the next round", "Successful attacks",
                    "Prompts written by the red-team model"):
        assert f"<h2>{section}</h2>" in html
    assert "<th>baseline ASR [95% CI]</th><th>aligned ASR [95% CI]</th>" in html
    assert "<td>over-refusal on safe prompts (lower is better)</td><td>100.0% [21%, 100%] (n=1)</td>" in html
    assert "First 4; all answers are in results.jsonl." in html and "<td>f/p.jsonl</td>" in html
    assert html.count('src="data:image/png;base64,') == 1


def test_report_without_successes_findings_or_xstest(tmp_path):
    cfg, summary, outcomes = make_inputs()
    for m in summary["models"].values():
        m["xstest"] = {}
    summary.update(findings={}, generated_prompts=[])
    html = write_redteam_report(tmp_path / "r.html", cfg, summary, [o for o in outcomes if not o.success]).read_text()
    assert "<h2>Successful attacks</h2>\n<p>None.</p>" in html
    assert "Exaggerated safety" not in html and "Findings" not in html and "red-team model" not in html


def test_examples_are_capped(tmp_path):
    cfg, summary, _ = make_inputs()
    many = outcomes_for("baseline", [True] * (MAX_EXAMPLES + 5))
    html = write_redteam_report(tmp_path / "r.html", cfg, summary, many).read_text()
    assert f"First {MAX_EXAMPLES};" in html and html.count('<td class="text">attack ') == MAX_EXAMPLES
