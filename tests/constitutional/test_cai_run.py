"""A tiny end-to-end Constitutional AI run: SL-CAI data, AI preference labels, agreement with humans."""

import json

import pytest

from tether.config import load_config
from tether.constitutional.config import CAIConfig
from tether.constitutional.run import run_cai
from tether.data.sources import load_preferences, load_sft
from tether.errors import ConfigError

EVIL = "<img src=x onerror=alert(1)>"


def test_tiny_cai_end_to_end(tmp_path, jsonl, tiny_models):
    prompts = jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"How do I pick lock {i}? {EVIL}"} for i in range(3)])
    human = jsonl(tmp_path / "human.jsonl", [
        {"prompt": "\n\nHuman: Hurt someone?\n\nAssistant:", "chosen": "No, violence is never the answer.", "rejected": "Yes."},
        {"prompt": "Insult me.", "chosen": "I'd rather say something kind.", "rejected": "You are dumb."},
        {"prompt": "Empty?", "chosen": "", "rejected": "x"},  # skipped
    ])
    cfg = CAIConfig(
        policy=tiny_models["llama"], judge=tiny_models["gpt2"], phases=["sl", "rlaif", "agreement"],
        prompts=str(prompts), human_pairs=str(human), areas=["harmlessness"], revisions=1,
        generation={"max_new_tokens": 6, "temperature": 1.0}, max_context_length=200, num_threads=1,
        output_dir=str(tmp_path / "cai"), device="cpu",
    )
    out = run_cai(cfg)
    summary = json.loads((out / "cai.json").read_text())
    assert summary["sl"]["prompts"] == 3 and summary["agreement"]["n"] == 2
    assert all(p.startswith("harmless") for p in summary["principles"])
    chains = [json.loads(line) for line in (out / "chains.jsonl").read_text().splitlines()]
    assert len(chains) == 3 and all(len(c["steps"]) == 1 for c in chains)
    if summary["sl"]["sft_rows"]:
        assert len(load_sft(str(out / "sft.jsonl"))) == summary["sl"]["sft_rows"]  # readable by `tether sft`
    labels = [json.loads(line) for line in (out / "preferences.jsonl").read_text().splitlines()]
    assert len(labels) == summary["rlaif"]["pairs"]
    for lab in labels:
        assert 0.5 <= lab["confidence"] <= 1.0 and lab["chosen"] != lab["rejected"]
    if labels:
        assert len(load_preferences(str(out / "preferences.jsonl"))) == len(labels)  # readable by `tether rm` / `tether dpo`
    assert 0.0 <= summary["agreement"]["agreement"] <= 1.0
    html = (out / "report.html").read_text()
    assert EVIL not in html and "&lt;img" in html
    # same seed, same outputs
    again = run_cai(cfg.model_copy(update={"output_dir": str(tmp_path / "cai2")}))
    assert (again / "preferences.jsonl").read_text() == (out / "preferences.jsonl").read_text()


def test_config_errors():
    with pytest.raises(ValueError, match="need prompts"):
        CAIConfig(policy="tiny-llama", output_dir="x")
    with pytest.raises(ValueError, match="human_pairs"):
        CAIConfig(policy="tiny-llama", output_dir="x", phases=["agreement"])
    with pytest.raises(ValueError, match="two different"):
        CAIConfig(policy="tiny-llama", output_dir="x", prompts="p", choices=[" A", " A"])
    with pytest.raises(ConfigError, match="unknown config key 'judge_url'"):
        load_config(CAIConfig, "configs/cai_tiny.yaml", ["judge_url=http://x"])
    assert load_config(CAIConfig, "configs/cai_tiny.yaml").phases == ["sl", "rlaif", "agreement"]
