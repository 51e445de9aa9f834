"""Pipeline plans: the estimate from a measured step, the choice of plan, its overrides, and its record."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tether import pipeline
from tether.errors import ConfigError
from tether.pipeline import Plan, apply_plan, choose_plan, load_pipeline

PLANS = [
    {"name": "full", "budget_minutes": 15, "reference_step_seconds": 1.0,
     "reference_minutes": {"pretrain": 5.0, "sft": 3.0, "rm": 4.0}},
    {"name": "small", "budget_minutes": 30, "reference_step_seconds": 1.0,
     "reference_minutes": {"pretrain": 2.0, "sft": 1.0, "rm": 1.0},
     "overrides": {"pretrain.max_minutes": 10, "sft.data.max_samples": 100, "rm.train.epochs": 0.5}},
]


def _pipeline(tmp_path, plans=PLANS):
    spec = {
        "output_root": str(tmp_path / "runs"),
        "plans": plans,
        "stages": [
            {"name": "pretrain", "command": "pretrain", "config": {"data": {"train": "x"}, "max_minutes": 6}},
            {"name": "sft", "command": "sft", "config": {"model": {"name_or_path": "tiny-llama"}, "data": {"train": "x"}}},
            {"name": "rm", "command": "rm", "config": {"model": {"name_or_path": "tiny-bert"}, "data": {"train": "x"}}},
        ],
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


@pytest.fixture
def step_seconds(monkeypatch):
    """Fake the probe: a step of the probe model takes `value[0]` seconds here."""
    value = [1.0]
    monkeypatch.setattr(pipeline, "probe_step_seconds", lambda: (value[0], "precision fp32 (faked)"))
    return value


def test_the_estimate_scales_reference_minutes_and_respects_stage_caps():
    plan = Plan(**PLANS[0])
    assert plan.estimate(2.0, {}) == {"pretrain": 10.0, "sft": 6.0, "rm": 8.0}  # twice as slow: twice as long
    assert plan.estimate(2.0, {"pretrain": 6.0})["pretrain"] == 6.0  # a stage fitted to its max_minutes


@pytest.mark.parametrize("seconds, want", [(0.5, "full"), (1.0, "full"), (2.0, "small"), (4.0, "small")])
def test_the_first_plan_that_fits_its_budget_runs(tmp_path, step_seconds, seconds, want):
    step_seconds[0] = seconds
    path = _pipeline(tmp_path)
    _, stages = load_pipeline(path, [])
    # full at 2 s/step: pretrain min(10, cap 6) + sft 6 + rm 8 = 20 > 15; small: pretrain min(4, 10) + 2 + 2 = 8
    # small at 4 s/step: min(8, 10) + 4 + 4 = 16 <= 30
    assert choose_plan(path, PLANS, None, tmp_path / "runs", stages).name == want
    record = json.loads((tmp_path / "runs" / "plan.json").read_text())
    assert record["plan"] == want and record["probe_step_seconds"] == seconds


def test_when_nothing_fits_the_last_plan_runs_and_says_so(tmp_path, step_seconds, capsys):
    step_seconds[0] = 100.0
    path = _pipeline(tmp_path)
    _, stages = load_pipeline(path, [])
    assert choose_plan(path, PLANS, None, tmp_path / "runs", stages).name == "small"
    assert "no plan fits its budget" in capsys.readouterr().err


def test_a_later_run_keeps_the_recorded_plan_unless_told(tmp_path, step_seconds):
    path = _pipeline(tmp_path)
    _, stages = load_pipeline(path, [])
    step_seconds[0] = 4.0
    assert choose_plan(path, PLANS, None, tmp_path / "runs", stages).name == "small"
    step_seconds[0] = 0.5  # faster now, but the finished stages were built under 'small'
    assert choose_plan(path, PLANS, None, tmp_path / "runs", stages).name == "small"
    assert choose_plan(path, PLANS, "full", tmp_path / "runs", stages).name == "full"
    with pytest.raises(ConfigError, match="plan=huge: .* has the plans full, small"):
        choose_plan(path, PLANS, "huge", tmp_path / "runs", stages)


def test_the_plan_overrides_reach_the_stages(tmp_path):
    path = _pipeline(tmp_path)
    _, stages = load_pipeline(path, [])
    apply_plan(path, Plan(**PLANS[1]), stages)
    by_name = {s.name: s.raw for s in stages}
    assert by_name["pretrain"]["max_minutes"] == 10
    assert by_name["sft"]["data"] == {"train": "x", "max_samples": 100}
    assert by_name["rm"]["train"]["epochs"] == 0.5
    apply_plan(path, Plan(**{**PLANS[1], "overrides": {"sft.data.max_samples": 5}}), stages, given={"sft.data.max_samples"})
    assert by_name["sft"]["data"]["max_samples"] == 100  # the command line's value wins over the plan's
    bad = Plan(**{**PLANS[1], "overrides": {"ppo.train.max_steps": 3}})
    with pytest.raises(ConfigError, match="override 'ppo.train.max_steps' must be STAGE.key"):
        apply_plan(path, bad, stages)
    with pytest.raises(ConfigError, match="unknown config key 'train.nonsense'"):
        apply_plan(path, Plan(**{**PLANS[1], "overrides": {"sft.train.nonsense": 1}}), stages)


def test_plan_without_plans_is_an_error(tmp_path):
    from tether.pipeline import run_pipeline

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"stages": [{"name": "sft", "command": "sft", "config": {}}]}))
    with pytest.raises(ConfigError, match="declares no plans"):
        run_pipeline(str(path), ["plan=small"], {})


def test_the_probe_measures_a_real_step():
    seconds, precision = pipeline.probe_step_seconds()
    assert 0.0 < seconds < 600.0 and "precision" in precision


def test_the_quickstart_plans_are_valid_and_apply(tmp_path):
    from tether.config import validate
    from tether.stages import schema

    globals_, _ = load_pipeline("configs/quickstart.yaml", [])
    assert [p["name"] for p in globals_["plans"]] == ["full", "small"]
    for raw in globals_["plans"]:
        _, stages = load_pipeline("configs/quickstart.yaml", [])
        plan = Plan(**raw)
        assert set(plan.reference_minutes) == {s.name for s in stages}
        apply_plan("configs/quickstart.yaml", plan, stages)
        for s in stages:  # every stage still validates under the plan (with the references filled in)
            raw_cfg = json.loads(re.sub(r"\$\{[^}]*\}", "ref", json.dumps(s.raw)))
            validate(schema(s.command), {**raw_cfg, "output_dir": str(tmp_path / s.name)})


def test_a_missing_data_folder_fails_before_the_measurement(monkeypatch, tmp_path):
    from tether.errors import DataError
    from tether.pipeline import run_pipeline

    monkeypatch.delenv("TETHER_DATA_DIR", raising=False)
    monkeypatch.setattr(pipeline, "probe_step_seconds", lambda: pytest.fail("measured before checking the data"))
    with pytest.raises(DataError, match="TETHER_DATA_DIR"):
        run_pipeline("configs/quickstart.yaml", [f"data_dir={tmp_path / 'none'}", f"output_root={tmp_path}"], {})


SHARED_HH = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "hh_harmless_base" / "train.jsonl.gz"


def test_the_demo_loop_validates_and_its_gold_judge_and_prompts_share_no_data(tmp_path):
    """configs/quickstart_loop.yaml (`make demo`): every stage validates, the judge is its own reward model, and the
    gold model's pairs, the judge's pairs, the loop's training prompts and its held-out prompts are disjoint."""
    from tether.config import validate
    from tether.data.sources import load_preferences, load_prompts, select
    from tether.stages import schema

    _, stages = load_pipeline("configs/quickstart_loop.yaml", [])
    cfgs = {}
    for s in stages:
        raw_cfg = json.loads(json.dumps(s.raw).replace("${data_dir}", str(SHARED_HH.parent.parent)))
        raw_cfg = json.loads(re.sub(r"\$\{(\w+)\.output_dir\}", lambda m: str(tmp_path / m.group(1)), json.dumps(raw_cfg)))
        cfgs[s.name] = validate(schema(s.command), {**raw_cfg, "output_dir": str(tmp_path / s.name)})
    assert [s.name for s in stages] == ["gold", "judge", "loop"]
    loop = cfgs["loop"]
    assert loop.labeler.path == str(tmp_path / "gold") and loop.eval.judge == str(tmp_path / "judge")
    if not SHARED_HH.is_file():
        pytest.skip(f"{SHARED_HH} not found: the data slices cannot be checked")
    slices = {}
    for name in ("gold", "judge"):
        d = cfgs[name].data
        slices[name] = {e.prompt for e in select(load_preferences(d.train, d.on_invalid), d.split, d.holdout_fraction, d.max_samples,
                                                  d.skip_samples)}
    d = loop.data
    slices["loop"] = {e.prompt for e in select(load_prompts(d.train, d.on_invalid), "train", d.holdout_fraction, d.max_samples,
                                               d.skip_samples)}
    slices["held out"] = {e.prompt for e in select(load_prompts(d.train, d.on_invalid), "holdout", d.holdout_fraction, None)}
    assert len(slices["loop"]) >= loop.rounds * loop.prompts_per_round and len(slices["held out"]) >= loop.eval.max_prompts
    from tether.redteam.config import SuiteConfig
    from tether.redteam.suites import load_suite

    for suite in loop.redteam["suites"]:  # attacks and over-refusal are measured on prompts no model trained on
        slices[f"red-team suite {suite['name']}"] = {p.prompt for p in load_suite(SuiteConfig(**suite), loop.seed)}
    names = list(slices)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not slices[a] & slices[b], f"{a} and {b} share prompts"
