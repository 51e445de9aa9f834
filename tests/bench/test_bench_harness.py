"""The tether side of the benchmark harness on the smallest settings: a tiny cache, one warm-up step and
one timed step per benchmark, no TRL. Checks what the records hold, never how fast anything was."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SHARED_DATA = BENCH.parent.parent / "shared" / "data"
TINY = {"tiny": (1, 64, 2, 128)}  # layers, hidden, heads, intermediate
TINY_SETTINGS = {
    "ppo": {"batch": 2, "new_tokens": 4, "epochs": 1, "minibatches": 1},
    "grpo": {"prompts": 2, "group": 2, "new_tokens": 4},
    "dpo": {"batch": 2},
    "rm": {"batch": 2},
    "sft": {"batch": 2},
    "generate": {"batch": 2, "new_tokens": 4},
}

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="the benchmarks read ../shared/data")


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The harness modules, with a tiny cache (one 1-layer model, a 512-token vocabulary) in a temporary dir."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BENCH_CACHE", str(tmp_path_factory.mktemp("bench_cache")))
    prepare = _load("prepare")
    manifest = prepare.prepare(sizes=TINY, vocab=512)
    yield {"manifest": manifest, "worker": _load("worker_tether"), "run": _load("run"), "harness": _load("harness")}
    mp.undo()


def test_prepared_data_has_fixed_lengths(bench):
    m, harness = bench["manifest"], bench["harness"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(m["tokenizer"])
    assert tok.pad_token_id != tok.eos_token_id
    pairs = harness.read_jsonl(Path(m["data"]["dir"]) / "pairs.jsonl")
    assert len(pairs) >= 8
    for row in pairs[:5]:
        for reply in ("chosen", "rejected"):
            ids = tok(row["prompt"] + " " + row[reply])["input_ids"]
            assert len(ids) + 1 == m["data"]["seq_tokens"]  # + EOS
    assert m["models"]["tiny"]["policy_matmul_params"] > m["models"]["tiny"]["reward_matmul_params"] > 0


@pytest.mark.parametrize("name", list(TINY_SETTINGS))
def test_tether_worker_record(bench, name):
    settings = {"model": "tiny", "warmup": 1, "steps": 1, **TINY_SETTINGS[name]}
    rec = bench["worker"].run(name, settings)
    assert rec["name"] == name and rec["framework"] == "tether"
    assert rec["settings"]["steps"] == 1 and rec["settings"]["model"] == "tiny"
    assert len(rec["step_s"]) == 1 and len(rec["step_cpu_s"]) == 1
    assert rec["median_s"] > 0 and rec["median_cpu_s"] > 0
    assert rec["per_step"]["flops"] > 0 and rec["tokens_per_step"] > 0
    assert rec["peak_rss_mb"] >= rec["rss_after_imports_mb"] > 0
    assert len(rec["loadavg"]) == 3 and rec["versions"]["torch"] and "tether" in rec["versions"]
    if name == "generate":
        assert rec["generated_tokens_per_step"] == 2 * 4 and rec["tokens_per_s"] > 0
    else:
        assert rec["per_step"]["train_tokens"] > 0  # something was trained with autograd on


def test_token_counter_is_removed_after_a_run(bench):
    from transformers.models.llama.modeling_llama import LlamaModel

    before = LlamaModel.forward
    with bench["harness"].TokenCounter():
        assert LlamaModel.forward is not before
    assert LlamaModel.forward is before


def test_combined_record_without_trl(bench):
    run, worker = bench["run"], bench["worker"]
    settings = {"model": "tiny", "warmup": 1, "steps": 1, **TINY_SETTINGS["sft"]}
    rec = worker.run("sft", settings)
    out = run.combine("sft", "sft", "trl", settings, [rec], [], {"float32": 0.05, "bfloat16": 0.2})
    for key in ("name", "tether_s", "trl_s", "ratio", "tether_peak_mb", "trl_peak_mb", "settings", "tether_mfu", "trl_mfu",
                "tether_cpu_s", "cpu_ratio"):
        assert key in out
    assert out["trl_s"] is None and out["ratio"] is None and out["trl_mfu"] is None
    assert out["tether_s"] == rec["step_s"][0] and out["tether_peak_mb"] == rec["peak_rss_mb"]
    assert 0 < out["tether_mfu"] < 1
    assert math.isclose(out["tether_mfu"], rec["per_step"]["flops"] / rec["step_cpu_s"][0] / 0.05e12)
    table = run.results_table([out], {"float32": 0.05, "bfloat16": 0.2}, threads=1)
    assert "| sft |" in table and "n/a" in table
