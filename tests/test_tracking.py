"""train.report_to sinks: TensorBoard read back from its event files, W&B and Trackio through fake modules."""

import math
import subprocess
import sys
import time
import tomllib
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tether import tracking
from tether.errors import ConfigError
from tether.tracking import REPORT_TO, Sinks, check_report_to, finite_scalars, open_sinks

CONFIG = {"train": {"learning_rate": 1e-5, "seed": 3}, "output_dir": "runs/x"}
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
PROJECT_ENV = {"wandb": "WANDB_PROJECT", "trackio": "TRACKIO_PROJECT"}


class FakeRun:
    def __init__(self, fail_log=False, fail_finish=False):
        self.logged, self.finished = [], 0
        self.fail_log, self.fail_finish = fail_log, fail_finish

    def log(self, metrics, step=None):
        if self.fail_log:
            raise ConnectionError("service unreachable")
        self.logged.append((step, dict(metrics)))

    def finish(self):
        self.finished += 1
        if self.fail_finish:
            raise ConnectionError("service unreachable")


def fake_module(monkeypatch, name, **run_options):
    """Put a fake `wandb` or `trackio` in sys.modules; its `init` records its arguments and returns a FakeRun,
    which the module's own `log` and `finish` (trackio's API) address too."""
    module = types.ModuleType(name)
    module.inits, module.runs = [], []

    def init(**kwargs):
        module.inits.append(kwargs)
        module.runs.append(FakeRun(**run_options))
        return module.runs[-1]

    module.init = init
    module.log = lambda metrics, step=None: module.runs[-1].log(metrics, step=step)  # trackio's current run
    module.finish = lambda: module.runs[-1].finish()
    monkeypatch.setitem(sys.modules, name, module)
    return module


# TensorBoard: real event files


@pytest.fixture
def read_events():
    """Read a folder of event files back with TensorBoard's own reader."""
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install -e '.[test]' has it)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def read(folder):
        events = EventAccumulator(str(folder))
        events.Reload()
        return events

    return read


def test_tensorboard_event_files_hold_the_scalars_at_their_steps(tmp_path, read_events):
    with open_sinks(["tensorboard"], tmp_path, "ppo", CONFIG) as sinks:
        assert sinks.names == ("tensorboard",)
        sinks.log(1, {"objective/kl": 0.5, "loss/policy": -0.25})
        sinks.log(4, {"objective/kl": torch.tensor(0.125), "loss/policy": np.float32(0.5),
                      "loss/nan": float("nan"), "loss/inf": math.inf, "note": "text", "lr": None})
    events = read_events(tmp_path / "tensorboard")
    assert sorted(events.Tags()["scalars"]) == ["loss/policy", "objective/kl"]
    assert [(e.step, e.value) for e in events.Scalars("objective/kl")] == [(1, 0.5), (4, 0.125)]
    assert [(e.step, e.value) for e in events.Scalars("loss/policy")] == [(1, -0.25), (4, 0.5)]
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"learning_rate": 1e-05' in text


def test_a_resumed_run_hides_the_points_logged_after_its_checkpoint(tmp_path, read_events):
    with open_sinks(["tensorboard"], tmp_path, "ppo", CONFIG) as sinks:  # killed after step 4, checkpoint at 2
        for step in range(1, 5):
            sinks.log(step, {"loss": float(step)})
    time.sleep(1.1)  # event files are read in name order, and a name starts with the second it was made in
    with open_sinks(["tensorboard"], tmp_path, "ppo", CONFIG, resume_step=2) as sinks:
        for step in range(3, 6):
            sinks.log(step, {"loss": 10.0 + step})
    events = read_events(tmp_path / "tensorboard")
    points = [(e.step, e.value) for e in events.Scalars("loss")]
    assert points == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0), (5, 15.0)]


# W&B and Trackio: fake modules


@pytest.mark.parametrize("name", ["wandb", "trackio"])
def test_a_run_is_started_logged_to_with_steps_and_finished_once(monkeypatch, tmp_path, name):
    module = fake_module(monkeypatch, name)
    monkeypatch.setenv(PROJECT_ENV[name], "my-project")
    sinks = open_sinks([name], tmp_path, "ppo_seed1", CONFIG)
    expected = {"project": "my-project", "name": "ppo_seed1", "config": CONFIG}
    if name == "wandb":  # WANDB_MODE and the rest of wandb's variables are left to wandb: no mode= here
        expected |= {"dir": str(tmp_path), "reinit": "create_new"}
    assert module.inits == [expected]
    sinks.log(1, {"objective/kl": 0.5, "loss/nan": float("nan")})
    sinks.log(2, {"objective/kl": torch.tensor(0.25)})
    sinks.log(3, {"lr": None})  # nothing finite: nothing sent
    run = module.runs[0]
    assert run.logged == [(1, {"objective/kl": 0.5}), (2, {"objective/kl": 0.25})]
    sinks.close()
    sinks.close()
    sinks.log(4, {"objective/kl": 1.0})
    assert run.finished == 1 and len(run.logged) == 2 and sinks.names == ()


@pytest.mark.parametrize("name", ["wandb", "trackio"])
def test_the_project_defaults_to_tether(monkeypatch, tmp_path, name):
    module = fake_module(monkeypatch, name)
    monkeypatch.delenv(PROJECT_ENV[name], raising=False)
    open_sinks(name, tmp_path, "sft", {}).close()
    assert module.inits[0]["project"] == "tether"


def test_a_failing_sink_warns_once_and_is_switched_off_while_the_others_go_on(monkeypatch, tmp_path):
    wandb = fake_module(monkeypatch, "wandb", fail_log=True)
    trackio = fake_module(monkeypatch, "trackio")
    sinks = open_sinks(["wandb", "trackio"], tmp_path, "ppo", CONFIG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(3):
            sinks.log(step, {"objective/kl": 0.1})
    assert [str(w.message) for w in caught] == [
        "train.report_to: the wandb sink failed at step 0 (ConnectionError: service unreachable) and is off for "
        "the rest of the run; metrics.jsonl still has every row"
    ]
    assert caught[0].category is RuntimeWarning
    assert sinks.names == ("trackio",) and wandb.runs[0].finished == 1
    assert [step for step, _ in trackio.runs[0].logged] == [0, 1, 2]
    sinks.close()
    assert trackio.runs[0].finished == 1


def test_a_sink_that_fails_to_close_warns_and_the_others_still_close(monkeypatch, tmp_path):
    wandb = fake_module(monkeypatch, "wandb", fail_finish=True)
    trackio = fake_module(monkeypatch, "trackio")
    sinks = open_sinks(["wandb", "trackio"], tmp_path, "ppo", CONFIG)
    with pytest.warns(RuntimeWarning, match="the wandb sink did not close cleanly"):
        sinks.close()
    assert wandb.runs[0].finished == 1 and trackio.runs[0].finished == 1


def test_a_sink_that_fails_to_start_is_a_config_error_and_the_opened_ones_are_closed(monkeypatch, tmp_path):
    trackio = fake_module(monkeypatch, "trackio")
    wandb = fake_module(monkeypatch, "wandb")

    def no_login(**kwargs):
        raise RuntimeError("api_key not configured (no-tty)")

    wandb.init = no_login
    with pytest.raises(ConfigError, match=r"^train.report_to: the wandb sink could not start: RuntimeError: api_key"):
        open_sinks(["trackio", "wandb"], tmp_path, "ppo", CONFIG)
    assert trackio.runs[0].finished == 1


# What opens nothing


def test_none_and_an_empty_list_open_nothing(monkeypatch, tmp_path):
    wandb = fake_module(monkeypatch, "wandb")
    for report_to in (["none"], "none", []):
        sinks = open_sinks(report_to, tmp_path, "ppo", CONFIG)
        assert sinks.names == ()
        sinks.log(1, {"objective/kl": 0.5})
        sinks.close()
    assert wandb.inits == [] and list(tmp_path.iterdir()) == []


def test_a_process_other_than_the_main_one_opens_nothing_but_checks_the_names(monkeypatch, tmp_path):
    wandb, trackio = fake_module(monkeypatch, "wandb"), fake_module(monkeypatch, "trackio")
    with open_sinks(["wandb", "trackio"], tmp_path, "ppo", CONFIG, enabled=False) as sinks:
        sinks.log(1, {"objective/kl": 0.5})
        assert sinks.names == ()
    assert wandb.inits == trackio.inits == [] and list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="unknown sink"):
        open_sinks(["mlflow"], tmp_path, "ppo", CONFIG, enabled=False)


# Config errors


def test_an_unknown_name_lists_the_allowed_ones(tmp_path):
    with pytest.raises(ConfigError) as err:
        open_sinks(["tensorboard", "mlflow", "comet"], tmp_path, "ppo", CONFIG)
    assert str(err.value) == ("train.report_to: unknown sink 'mlflow', 'comet'; "
                              "allowed: none, tensorboard, wandb, trackio")


def test_none_beside_a_sink_is_a_config_error(monkeypatch):
    fake_module(monkeypatch, "wandb")
    with pytest.raises(ConfigError, match="'none' cannot stand beside other sinks"):
        check_report_to(["none", "wandb"])


def test_repeated_names_open_one_sink(monkeypatch, tmp_path):
    wandb = fake_module(monkeypatch, "wandb")
    assert check_report_to(["wandb", "wandb"]) == ("wandb",)
    open_sinks(["wandb", "wandb"], tmp_path, "ppo", CONFIG).close()
    assert len(wandb.inits) == 1


@pytest.mark.parametrize("name, requirement", [
    ("tensorboard", "tensorboard>=2.18"), ("wandb", "wandb>=0.19.10"), ("trackio", "trackio>=0.10"),
])
def test_a_missing_package_names_the_key_the_sink_and_the_pip_command(monkeypatch, tmp_path, name, requirement):
    monkeypatch.setitem(sys.modules, name, None)  # `import name` fails as if the package were not installed
    for enabled in (True, False):
        with pytest.raises(ConfigError) as err:
            open_sinks([name], tmp_path, "ppo", CONFIG, enabled=enabled)
        assert str(err.value) == (
            f"train.report_to: the {name} sink needs the {name} package, but it is not installed; "
            f'install it with: pip install "{requirement}" (or the tether[{name}] extra)'
        )
    assert list(tmp_path.iterdir()) == []


def test_a_package_that_is_installed_but_does_not_import_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.setattr(tracking, "_installed", lambda name: True)
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match=r"needs the wandb package, but it does not import \(.*wandb.*pip install"):
        open_sinks(["wandb"], tmp_path, "ppo", CONFIG)


def test_each_sink_has_a_pyproject_extra_with_the_requirement_its_message_names():
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    assert REPORT_TO == ("none", *tracking._KINDS)
    for name, kind in tracking._KINDS.items():
        assert extras[name] == [kind.requirement]


# Values and imports


def test_only_finite_real_numbers_are_passed_on():
    metrics = {"a": 1, "b": 0.5, "c": torch.tensor(2.0), "d": np.float64(-1.5), "e": True,
               "nan": float("nan"), "inf": -math.inf, "none": None, "s": "1.0", "list": [1.0], "t": torch.ones(2)}
    assert finite_scalars(metrics) == {"a": 1.0, "b": 0.5, "c": 2.0, "d": -1.5, "e": 1.0}


def test_log_on_no_sinks_does_not_look_at_the_values():
    Sinks().log(1, {"x": object()})


def test_importing_the_module_imports_neither_torch_nor_any_sink_package():
    code = ("import sys, tether.tracking; "
            "print(sorted(m for m in ('torch', 'tensorboard', 'wandb', 'trackio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_a_stage_with_report_to_tensorboard_sends_every_logged_metric(stage, tmp_path, tiny_data, read_events):
    """`train.report_to` in a real run: every finite value of metrics.jsonl reaches TensorBoard at its step,
    and the dashboard choice does not make a resumed run look like a different one."""
    import json

    from tether.config import GRPOConfig, SFTConfig
    from tether.run import same_config
    from tether.trainers.grpo import train_grpo
    from tether.trainers.sft import train_sft

    if stage == "sft":
        cfg = SFTConfig(model={"name_or_path": "tiny-llama"}, data={"train": str(tiny_data["sft"]), "max_length": 64},
                        train={"max_steps": 3, "batch_size": 4, "log_every": 1, "report_to": ["tensorboard"]},
                        output_dir=str(tmp_path / "run"))
        out = train_sft(cfg)
    else:
        cfg = GRPOConfig(model={"name_or_path": "tiny-llama"}, reward_model={"function": "tether.rl.rule_rewards:brevity"},
                         data={"train": str(tiny_data["prompts"]), "max_prompt_length": 32}, generation={"max_new_tokens": 6},
                         rollout={"batch_size": 2, "num_epochs": 1, "num_minibatches": 1}, grpo={"group_size": 2},
                         train={"max_steps": 2, "report_to": ["tensorboard"]}, output_dir=str(tmp_path / "run"))
        out = train_grpo(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = read_events(out / "tensorboard")
    expected = {(k, r["step"]): v for r in rows for k, v in r.items()
                if k not in ("step", "time") and isinstance(v, float) and math.isfinite(v)}
    logged = {(tag, e.step): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    assert expected and logged.keys() == expected.keys()
    assert all(logged[k] == pytest.approx(v, rel=1e-6) for k, v in expected.items())
    assert same_config((out / "config.yaml").read_text(), cfg.model_copy(update={"train": cfg.train.model_copy(update={"report_to": []})}))
