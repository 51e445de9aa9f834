"""When is a finished run 'the same run'? Pipelines skip it, and trainers resume it, only then."""

import yaml

from tether.config import SFTConfig, dump_config
from tether.pipeline import load_pipeline
from tether.run import same_config


def _cfg(**train):
    return SFTConfig(model={"name_or_path": "tiny-llama"}, data={"train": "x.jsonl"}, train=train, output_dir="out")


def test_a_key_added_later_with_its_default_is_the_same_run():
    saved = yaml.safe_load(dump_config(_cfg()))
    del saved["train"]["precision"]  # written before that key existed
    assert same_config(yaml.safe_dump(saved), _cfg())


def test_a_changed_value_or_an_unknown_key_is_a_different_run():
    assert not same_config(dump_config(_cfg(learning_rate=1e-3)), _cfg(learning_rate=2e-3))
    saved = yaml.safe_load(dump_config(_cfg()))
    saved["train"]["removed_option"] = 1
    assert not same_config(yaml.safe_dump(saved), _cfg())


def test_resume_and_overwrite_do_not_make_a_different_run():
    assert same_config(dump_config(_cfg(resume=False)), _cfg(resume=True))
    assert same_config(dump_config(_cfg()), _cfg().model_copy(update={"overwrite": True}))


def test_extends_runs_the_base_pipeline_first(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({
        "output_root": "runs/base", "stages": [{"name": "sft", "command": "sft", "config": {"train": {"seed": 1}}}],
    }))
    (tmp_path / "more.yaml").write_text(yaml.safe_dump({
        "extends": "base.yaml", "stages": [{"name": "dpo", "command": "dpo", "config": {"train": {"seed": 2}}}],
    }))
    globals_, stages = load_pipeline(str(tmp_path / "more.yaml"), ["dpo.train.seed=3"])
    assert globals_["output_root"] == "runs/base"
    assert [s.name for s in stages] == ["sft", "dpo"]
    assert stages[1].raw["train"]["seed"] == 3
