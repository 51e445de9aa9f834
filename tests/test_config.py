"""Config loading: YAML plus dotted overrides, strict keys and types, one clear error line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.config import (
    GRPOConfig, PPOConfig, RewardConfig, SFTConfig, describe, dump_config, load_config, parse_override, validate,
)
from tether.errors import ConfigError
from tether.stages import schema

REPO_ROOT = Path(__file__).resolve().parent.parent

BASE = """\
model:
  name_or_path: tiny-llama
data:
  train: data.jsonl
output_dir: runs/x
"""


@pytest.fixture
def yaml_file(tmp_path):
    def write(text: str = BASE):
        path = tmp_path / "c.yaml"
        path.write_text(text)
        return str(path)

    return write


def _error(fn, *args) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_yaml_and_overrides(yaml_file):
    cfg = load_config(SFTConfig, yaml_file(), ["train.learning_rate=3e-4", "model.lora.enabled=true", "train.max_steps=7"])
    assert cfg.model.name_or_path == "tiny-llama"
    assert cfg.train.learning_rate == pytest.approx(3e-4)
    assert cfg.model.lora.enabled is True
    assert cfg.train.max_steps == 7
    assert cfg.data.train == "data.jsonl"


def test_later_overrides_win_and_lists_parse(yaml_file):
    cfg = load_config(SFTConfig, yaml_file(), ["data.train=[a.jsonl, b.jsonl]", "train.seed=1", "train.seed=2"])
    assert cfg.data.train == ["a.jsonl", "b.jsonl"]
    assert cfg.train.seed == 2


@pytest.mark.parametrize(
    "text, keys, value",
    [
        ("a.b=1", ["a", "b"], 1),
        ("a=1.0e-5", ["a"], 1e-5),
        ("a=0.5", ["a"], 0.5),
        ("a=true", ["a"], True),
        ("a=False", ["a"], False),
        ("a=[1, 2]", ["a"], [1, 2]),
        ("a=hello world", ["a"], "hello world"),
        ("a=x=y", ["a"], "x=y"),
        ("a=", ["a"], ""),
        ("a=null", ["a"], None),
    ],
)
def test_parse_override(text, keys, value):
    assert parse_override(text) == (keys, value)


@pytest.mark.parametrize("text", ["noequals", "=1", "a..b=1", ".a=1"])
def test_malformed_override(text):
    assert text in _error(parse_override, text)


def test_exponent_without_a_dot_still_validates_as_float(yaml_file):
    # YAML 1.1 reads `1e-5` as a string; the float field converts it
    cfg = load_config(PPOConfig, yaml_file(BASE + "reward_model: {path: tiny-bert}\n"),
                      ["train.learning_rate=1e-5", "rollout.reward_threshold=2e-1", "rollout.kl_budget=5"])
    assert cfg.train.learning_rate == pytest.approx(1e-5)
    assert cfg.rollout.reward_threshold == pytest.approx(0.2)
    assert cfg.rollout.kl_budget == 5.0


def test_build_from_overrides_alone():
    cfg = load_config(SFTConfig, None, ["model.name_or_path=tiny-gpt2", "data.train=x.jsonl", "output_dir=o"])
    assert cfg.model.name_or_path == "tiny-gpt2"


def test_unknown_key_in_yaml(yaml_file):
    path = yaml_file(BASE + "train:\n  learning_rat: 0.1\n")
    msg = _error(load_config, SFTConfig, path)
    assert "train.learning_rat" in msg and path in msg and "unknown" in msg


def test_unknown_top_level_key_in_yaml(yaml_file):
    assert "'bogus'" in _error(load_config, SFTConfig, yaml_file(BASE + "bogus: 1\n"))


def test_unknown_key_in_override(yaml_file):
    msg = _error(load_config, SFTConfig, yaml_file(), ["train.learning_rat=0.1"])
    assert "train.learning_rat" in msg and "learning_rate" in msg  # names the key and the valid ones


def test_unknown_section_in_override(yaml_file):
    assert "'bad'" in _error(load_config, SFTConfig, yaml_file(), ["bad.key=1"])


def test_ppo_key_is_unknown_to_sft(yaml_file):
    assert "ppo" in _error(load_config, SFTConfig, yaml_file(), ["ppo.kl_coef=0.1"])


def test_wrong_type(yaml_file):
    msg = _error(load_config, SFTConfig, yaml_file(), ["train.batch_size=many"])
    assert "train.batch_size" in msg and "'many'" in msg


def test_wrong_literal(yaml_file):
    msg = _error(load_config, SFTConfig, yaml_file(), ["data.truncation=middle"])
    assert "data.truncation" in msg and "left" in msg


@pytest.mark.parametrize("override, key", [
    ("train.learning_rate=-1e-4", "train.learning_rate"),
    ("train.learning_rate=0", "train.learning_rate"),
    ("data.holdout_fraction=1.5", "data.holdout_fraction"),
    ("model.lora.r=0", "model.lora.r"),
])
def test_out_of_range_values(yaml_file, override, key):
    assert key in _error(load_config, SFTConfig, yaml_file(), [override])


def test_missing_required_key(yaml_file):
    msg = _error(load_config, SFTConfig, yaml_file("model:\n  name_or_path: tiny-llama\noutput_dir: x\n"))
    assert "missing required config key 'data'" in msg


def test_missing_required_nested_key(yaml_file):
    msg = _error(load_config, PPOConfig, yaml_file(BASE + "reward_model:\n  batch_size: 4\n"))
    assert "reward_model.path" in msg


def test_missing_config_file(tmp_path):
    path = str(tmp_path / "nope.yaml")
    assert path in _error(load_config, SFTConfig, path)


def test_invalid_yaml_names_the_line(yaml_file):
    path = yaml_file(BASE + "train: [unclosed\n")
    msg = _error(load_config, SFTConfig, path)
    assert path in msg and "invalid YAML" in msg


def test_yaml_not_a_mapping(yaml_file):
    assert "mapping" in _error(load_config, SFTConfig, yaml_file("- a\n- b\n"))


def test_validate_origin_is_named():
    assert "my origin" in _error(validate, SFTConfig, {"model": {"name_or_path": "x"}}, "my origin")


def test_describe_lists_every_key():
    lines = "\n".join(describe(PPOConfig))
    for key in ("model.name_or_path", "model.lora.r", "data.train", "train.learning_rate", "rollout.kl_coef",
                "rollout.kl_budget", "reward_model.path", "generation.max_new_tokens", "output_dir"):
        assert f"  {key} (" in lines
    assert "model.name_or_path (default required)" in lines
    assert "(default 0.05)" in "\n".join(line for line in describe(PPOConfig) if "rollout.kl_coef" in line)


def test_every_stage_has_the_shared_keys():
    for name in ("pretrain", "sft", "rm", "ppo", "dpo", "grpo"):
        keys = "\n".join(describe(schema(name)))
        shared = ("data.train", "train.learning_rate", "train.seed", "train.report_to", "output_dir")
        for key in shared + (() if name == "pretrain" else ("model.name_or_path", "data.eval")):  # pretrain builds its model (arch)
            assert f"  {key} (" in keys, (name, key)


def test_dump_round_trips(yaml_file, tmp_path):
    cfg = load_config(RewardConfig, yaml_file(), ["freeze_layers=1"])
    path = tmp_path / "dumped.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(RewardConfig, str(path)) == cfg


@pytest.mark.parametrize("stage", ["pretrain", "sft", "rm", "ppo"])
def test_tiny_configs_are_valid(stage):
    cfg = load_config(schema(stage), str(REPO_ROOT / "configs" / f"{stage}_tiny.yaml"))
    assert cfg.output_dir.startswith("runs/tiny/")


ONLINE = "model: {name_or_path: tiny-llama}\nreward_model: {path: tiny-bert}\ndata: {train: p.jsonl}\noutput_dir: o\n"


@pytest.mark.parametrize("schema", [PPOConfig, GRPOConfig], ids=["ppo", "grpo"])
def test_keys_that_moved_to_the_rollout_section_are_named_in_a_file_and_an_override(schema, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(ONLINE + "ppo: {batch_size: 8, num_ppo_epochs: 2}\n")
    msg = _error(load_config, schema, str(path))
    assert "ppo.batch_size is now rollout.batch_size" in msg and "ppo.num_ppo_epochs is now rollout.num_epochs" in msg
    path.write_text(ONLINE)
    assert "ppo.rollout_seeding is now rollout.seeding" in _error(load_config, schema, str(path), ["ppo.rollout_seeding=global"])
    assert load_config(schema, str(path), ["rollout.seeding=global"]).rollout.seeding == "global"


def test_grpo_normalize_scores_moved_and_the_old_backend_name_says_what_replaced_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(ONLINE + "grpo: {normalize_scores: false}\n")
    assert "grpo.normalize_scores is now rollout.normalize_scores" in _error(load_config, GRPOConfig, str(path))
    path.write_text(ONLINE + "generation: {backend: hf}\n")
    assert "generation.backend=hf is now generation.backend=policy" in _error(load_config, PPOConfig, str(path))


def test_online_stages_do_not_take_the_keys_of_batch_training(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(ONLINE)
    for key in ("train.batch_size=4", "train.lr_scheduler=linear", "train.log_every=1", "data.max_length=64", "data.truncation=drop"):
        assert "unknown config key" in _error(load_config, PPOConfig, str(path), [key]), key
