"""Checkpoints that resume exactly: a crashed PPO run continued with train.resume=true ends with the same
weights and the same metrics as an uninterrupted run."""

import json
import os
import signal

import pytest
from safetensors.torch import load_file

import tether.trainers.ppo as ppo_module
from tether.config import PPOConfig
from tether.errors import TrainingError
from tether.trainers.ppo import train_ppo


def _config(tmp_path, run: str, resume: bool = False) -> PPOConfig:
    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():
        prompts.write_text("".join(json.dumps({"prompt": f"question {i}: what is {i} plus {i}?"}) + "\n" for i in range(12)))
    return PPOConfig(
        model={"name_or_path": "tiny-llama"}, reward_model={"path": "tiny-bert"},
        data={"train": str(prompts), "max_prompt_length": 32}, generation={"max_new_tokens": 6},
        ppo={"batch_size": 4, "num_ppo_epochs": 1, "num_minibatches": 2, "missing_eos_penalty": None},
        train={"max_steps": 4, "save_every": 1, "resume": resume}, output_dir=str(tmp_path / run),
    )


def _crash_on_call(monkeypatch, n: int, exc: BaseException):
    original, calls = ppo_module.ppo_update, {"n": 0}

    def update(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise exc
        return original(*args, **kwargs)

    monkeypatch.setattr(ppo_module, "ppo_update", update)


def _crash_then_resume(tmp_path, monkeypatch, train, cfg, module, name: str, crash_on_call: int):
    """Run uninterrupted; run again crashing on the n-th call of `module.name`; resume. Returns both dirs."""
    full = train(cfg("full"))
    original, calls = getattr(module, name), {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == crash_on_call:
            raise RuntimeError("simulated crash")
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, crashing)
    with pytest.raises(RuntimeError):
        train(cfg("resumed"))
    monkeypatch.undo()
    return full, train(cfg("resumed", resume=True))


def _assert_same_weights(a_dir, b_dir):
    a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
    assert a.keys() == b.keys()
    assert all((a[k] - b[k]).abs().max().item() == 0.0 for k in a)


def _metrics(path):
    return [json.loads(line) for line in open(path / "metrics.jsonl")]


def test_ppo_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    full = train_ppo(_config(tmp_path, "full"))

    _crash_on_call(monkeypatch, 3, RuntimeError("simulated crash"))
    with pytest.raises(RuntimeError):
        train_ppo(_config(tmp_path, "resumed"))
    monkeypatch.undo()
    assert (tmp_path / "resumed" / "checkpoints" / "step-2").is_dir()
    assert not (tmp_path / "resumed" / "DONE").exists()

    resumed = train_ppo(_config(tmp_path, "resumed", resume=True))
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    assert all((a[k] - b[k]).abs().max().item() == 0.0 for k in a)
    drop = ("time",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in _metrics(full)] == [
        {k: v for k, v in r.items() if k not in drop} for r in _metrics(resumed)
    ]


def test_half_written_checkpoint_is_never_picked(tmp_path, monkeypatch):
    _crash_on_call(monkeypatch, 3, RuntimeError("simulated crash"))
    with pytest.raises(RuntimeError):
        train_ppo(_config(tmp_path, "run"))
    monkeypatch.undo()
    ckpts = tmp_path / "run" / "checkpoints"
    (ckpts / "step-9.tmp").mkdir()  # a crash while writing step 9
    (ckpts / "step-7").mkdir()  # a directory without trainer state
    out = train_ppo(_config(tmp_path, "run", resume=True))
    assert [r["step"] for r in _metrics(out)] == [1, 2, 3, 4]


def test_sigterm_saves_a_checkpoint_and_says_how_to_continue(tmp_path, monkeypatch):
    original, calls = ppo_module.ppo_update, {"n": 0}

    def update(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step; the step finishes, then checkpoints
        return original(*args, **kwargs)

    monkeypatch.setattr(ppo_module, "ppo_update", update)
    cfg = _config(tmp_path, "run")
    cfg.train.save_every = None  # the checkpoint comes from the signal alone
    with pytest.raises(TrainingError, match="after step 1.*train.resume=true"):
        train_ppo(cfg)
    assert (tmp_path / "run" / "checkpoints" / "step-1" / "trainer_state.pt").is_file()


def test_sft_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    import tether.trainers.sft as sft_module
    from tether.config import SFTConfig
    from tether.trainers.sft import train_sft

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {i}", "response": f"number {i} is {'x' * (i % 5)}"}) + "\n" for i in range(24)))

    def cfg(run, resume=False):
        return SFTConfig(
            model={"name_or_path": "tiny-llama"}, data={"train": str(data), "max_length": 64},
            train={"batch_size": 4, "epochs": 2, "save_every": 2, "resume": resume, "log_every": 1},
            output_dir=str(tmp_path / run),
        )

    # crash in step 8 (the 8th batch), after the checkpoint of step 6
    full, resumed = _crash_then_resume(tmp_path, monkeypatch, train_sft, cfg, sft_module, "collate_sft", 8)
    _assert_same_weights(full, resumed)
    assert [r["loss/sft"] for r in _metrics(full)] == [r["loss/sft"] for r in _metrics(resumed)]


def test_dpo_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    import tether.trainers.dpo as dpo_module
    from tether.config import DPOConfig
    from tether.trainers.dpo import train_dpo

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(
        json.dumps({"prompt": f"question {i}", "chosen": f"a good answer {i}", "rejected": f"bad {i}"}) + "\n" for i in range(16)
    ))

    def cfg(run, resume=False):
        return DPOConfig(
            model={"name_or_path": "tiny-llama"}, data={"train": str(data), "max_length": 64},
            train={"batch_size": 4, "max_steps": 6, "save_every": 2, "resume": resume, "log_every": 1},
            output_dir=str(tmp_path / run),
        )

    # crash in step 5, after the checkpoint of step 4
    full, resumed = _crash_then_resume(tmp_path, monkeypatch, train_dpo, cfg, dpo_module, "batch_loss", 5)
    _assert_same_weights(full, resumed)
    assert [r["loss/dpo"] for r in _metrics(full)] == [r["loss/dpo"] for r in _metrics(resumed)]
