"""The `tether` command line: one clear error line (no traceback) unless --debug, exit status, help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tether.cli import main

REPO_ROOT = Path(__file__).resolve().parent.parent


def tether(*args: str, cwd: Path | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tether.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )


@pytest.fixture
def sft_yaml(tmp_path, tiny_data) -> str:
    path = tmp_path / "sft.yaml"
    path.write_text(
        f"model: {{name_or_path: tiny-llama}}\ndata: {{train: {tiny_data['sft']}, max_length: 96}}\n"
        f"train: {{max_steps: 1, batch_size: 2, device: cpu}}\noutput_dir: {tmp_path / 'out'}\n"
    )
    return str(path)


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tether: error: ")
    return lines[0]


def test_unknown_override_key_is_one_line(sft_yaml):
    line = _one_line_error(tether("sft", "--config", sft_yaml, "bad.key=1"))
    assert "'bad'" in line and "bad.key=1" in line


def test_debug_shows_the_traceback(sft_yaml):
    result = tether("--debug", "sft", "--config", sft_yaml, "bad.key=1")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_debug_after_the_subcommand(sft_yaml):
    result = tether("sft", "--config", sft_yaml, "bad.key=1", "--debug")
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_missing_data_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    line = _one_line_error(tether("sft", "model.name_or_path=tiny-llama", f"data.train={missing}", f"output_dir={tmp_path / 'o'}"))
    assert str(missing) in line
    assert not (tmp_path / "o").exists()


def test_help():
    result = tether("--help")
    assert result.returncode == 0
    for cmd in ("run", "pretrain", "sft", "rm", "ppo", "dpo", "eval", "sample", "label"):
        assert cmd in result.stdout
    sft = tether("sft", "--help")
    assert sft.returncode == 0 and "data.max_length" in sft.stdout and "train.learning_rate" in sft.stdout


def test_every_stage_of_the_table_is_a_command_with_its_help_and_keys():
    from tether.cli import build_parser
    from tether.config import describe
    from tether.stages import STAGES, schema

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, stage in STAGES.items():
        parser = sub.choices[name]
        assert [c.help for c in sub._choices_actions if c.dest == name] == [stage.help], name
        assert describe(schema(name))[0] in parser.epilog, name


def test_sft_runs_and_prints_the_output_dir(sft_yaml, tmp_path):
    result = tether("sft", "--config", sft_yaml)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / "out")
    assert (tmp_path / "out" / "DONE").is_file()


# --------------------------------------------------------------------------- in process (fast)


def _main_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tether: error: ") and "\n" not in err
    return err


def test_unknown_key_in_the_yaml_file(capsys, tmp_path, sft_yaml):
    path = tmp_path / "bad.yaml"
    path.write_text(Path(sft_yaml).read_text() + "trian: {max_steps: 1}\n")
    err = _main_error(capsys, ["sft", "--config", str(path)])
    assert "'trian'" in err and str(path) in err


def test_wrong_type_names_the_key(capsys, sft_yaml):
    err = _main_error(capsys, ["sft", "--config", sft_yaml, "train.max_steps=lots"])
    assert "train.max_steps" in err and "lots" in err


def test_negative_learning_rate(capsys, sft_yaml):
    assert "train.learning_rate" in _main_error(capsys, ["sft", "--config", sft_yaml, "train.learning_rate=-1"])


def test_missing_config_file(capsys, tmp_path):
    assert str(tmp_path / "nope.yaml") in _main_error(capsys, ["ppo", "--config", str(tmp_path / "nope.yaml")])


def test_missing_pipeline_file(capsys, tmp_path):
    assert str(tmp_path / "nope.yaml") in _main_error(capsys, ["run", str(tmp_path / "nope.yaml")])


def test_rm_eval_needs_model_and_data(capsys):
    assert "--model" in _main_error(capsys, ["rm", "eval"])


def test_rm_eval_json(capsys, tiny_models, tiny_data):
    assert main(["rm", "eval", "--model", tiny_models["rm"], "--data", str(tiny_data["prefs"]), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 12 and 0.0 <= result["accuracy"] <= 1.0


def test_missing_model_names_the_path(capsys, tmp_path, tiny_data):
    missing = tmp_path / "no_model"
    err = _main_error(capsys, ["sft", f"model.name_or_path={missing}", f"data.train={tiny_data['sft']}", f"output_dir={tmp_path / 'o'}"])
    assert str(missing) in err
