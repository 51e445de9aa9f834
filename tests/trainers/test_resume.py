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
        rollout={"batch_size": 4, "num_epochs": 1, "num_minibatches": 2, "missing_eos_penalty": None},
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


def _sigterm_on_call(monkeypatch, module, name: str, n: int):
    """Send this process SIGTERM in the n-th call of `module.name`: it arrives mid-step; the step finishes,
    then checkpoints."""
    original, calls = getattr(module, name), {"n": 0}

    def signalling(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, signalling)


def test_sigterm_saves_a_checkpoint_and_says_how_to_continue(tmp_path, monkeypatch):
    _sigterm_on_call(monkeypatch, ppo_module, "ppo_update", 1)
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


def _rm_config(tmp_path, data, run, resume=False, **top):
    from tether.config import RewardConfig, validate

    return validate(RewardConfig, {
        "model": {"name_or_path": "tiny-bert"}, "data": {"train": str(data), "max_length": 64, "holdout_fraction": 0.3},
        "train": {"batch_size": 4, "max_steps": 7, "save_every": 3, "eval_every": 2, "log_every": 1, "learning_rate": 1e-3,
                  "resume": resume},
        "output_dir": str(tmp_path / run), "on_chance": "warn", **top,  # 6 held-out pairs cannot show skill
    })


def test_reward_model_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, monkeypatch, tiny_data):
    import tether.trainers.reward as rm_module
    from tether.trainers.reward import train_reward

    def cfg(run, resume=False):
        return _rm_config(tmp_path, tiny_data["prefs"], run, resume)

    # crash in step 5, after the checkpoint of step 3: mid-epoch (2 batches of 4 pairs per epoch), with the
    # best eval step's weights so far (step 2) in the checkpoint
    full, resumed = _crash_then_resume(tmp_path, monkeypatch, train_reward, cfg, rm_module, "pair_loss", 5)
    _assert_same_weights(full, resumed)
    drop = ("time",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in _metrics(full)] == [
        {k: v for k, v in r.items() if k not in drop} for r in _metrics(resumed)
    ]
    assert any("eval/best_step" in r for r in _metrics(resumed))


def test_reward_ensemble_resumes_member_by_member(tmp_path, monkeypatch, tiny_data):
    import tether.trainers.reward as rm_module
    from tether.trainers.reward import train_reward

    def cfg(run, resume=False):
        return _rm_config(tmp_path, tiny_data["prefs"], run, resume, ensemble_size=2)

    # member 0 trains 7 steps; crash in member 1's step 5, after its checkpoint of step 3
    full = train_reward(cfg("full"))
    original, calls = rm_module.pair_loss, {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7 + 5:
            raise RuntimeError("simulated crash")
        return original(*args, **kwargs)

    monkeypatch.setattr(rm_module, "pair_loss", crashing)
    with pytest.raises(RuntimeError):
        train_reward(cfg("resumed"))
    monkeypatch.undo()
    out = tmp_path / "resumed"
    assert (out / "member-0" / "DONE").is_file() and (out / "member-1" / "checkpoints" / "step-3").is_dir()
    member_0 = (out / "member-0" / "model.safetensors").stat().st_mtime_ns

    trained = []
    original_one = rm_module.train_one
    monkeypatch.setattr(rm_module, "train_one", lambda c: trained.append(c.output_dir) or original_one(c))
    train_reward(cfg("resumed", resume=True))
    assert trained == [str(out / "member-1")]  # the finished member is kept as it is
    assert (out / "member-0" / "model.safetensors").stat().st_mtime_ns == member_0
    for i in range(2):
        _assert_same_weights(full / f"member-{i}", out / f"member-{i}")
        assert [r["loss/reward"] for r in _metrics(full / f"member-{i}")] == [r["loss/reward"] for r in _metrics(out / f"member-{i}")]


def test_reward_model_resume_keeps_the_best_eval_step_from_before_the_crash(tmp_path, monkeypatch, tiny_data):
    import tether.trainers.reward as rm_module
    from tether.trainers.reward import train_reward

    def eval_by_weights(model, *args, **kwargs):
        # a deterministic stand-in for eval accuracy that falls as the head's weights grow: the best eval
        # is the first one (step 2), before the checkpoint of step 3, so only a restored best state keeps it
        norm = float(model.classifier.weight.detach().norm())
        return {"eval/loss": norm, "eval/accuracy": -norm, "eval/margin": 0.0}

    monkeypatch.setattr(rm_module, "evaluate_pairs", eval_by_weights)
    full = train_reward(_rm_config(tmp_path, tiny_data["prefs"], "full", normalize=False))
    original, calls = rm_module.pair_loss, {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated crash")
        return original(*args, **kwargs)

    monkeypatch.setattr(rm_module, "pair_loss", crashing)
    with pytest.raises(RuntimeError):
        train_reward(_rm_config(tmp_path, tiny_data["prefs"], "resumed", normalize=False))
    monkeypatch.setattr(rm_module, "pair_loss", original)
    resumed = train_reward(_rm_config(tmp_path, tiny_data["prefs"], "resumed", resume=True, normalize=False))
    assert _metrics(full)[-1]["eval/best_step"] == _metrics(resumed)[-1]["eval/best_step"] == 2
    _assert_same_weights(full, resumed)


def test_resume_picks_the_newest_complete_checkpoint_and_its_metrics_rows(tmp_path):
    import torch

    from tether.config import SFTConfig
    from tether.trainers.common import save_state
    from tether.run import RunDir

    def cfg(resume):
        return SFTConfig(model={"name_or_path": "tiny-llama"}, data={"train": "x.jsonl"}, train={"resume": resume},
                         output_dir=str(tmp_path / "run"))

    run = RunDir(tmp_path / "run", cfg(False))
    for step in (1, 2, 3):
        run.log(step, {"loss": float(step)})
        if step in (2, 3):
            run.checkpoint(step, lambda p, s=step: save_state(p, step=s, w=torch.zeros(1)), keep=5)
    run.log(3, {"eval/loss": 0.5})  # a second row of step 3, logged after its checkpoint
    run.log(4, {"loss": 4.0})
    ckpts = tmp_path / "run" / "checkpoints"
    (ckpts / "step-4").mkdir()  # renamed but without trainer state (not written by tether; never trusted)
    save_state(ckpts / "step-5.tmp", step=5)  # killed before the rename

    resumed = RunDir(tmp_path / "run", cfg(True))
    assert resumed.resume_from == ckpts / "step-3"
    assert [(r["step"], "loss" in r) for r in _metrics(tmp_path / "run")] == [(1, True), (2, True), (3, True)]


def _pretrain_config(text, out, resume=False, save_every=3, **top):
    from tether.config import PretrainConfig, validate

    return validate(PretrainConfig, {
        "data": {"train": str(text)}, "block_size": 32,
        "arch": {"kind": "gpt2", "vocab_size": 320, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                 "intermediate_size": 64, "max_position_embeddings": 64},
        "train": {"batch_size": 16, "max_steps": 10, "save_every": save_every, "log_every": 1, "learning_rate": 3e-3,
                  "device": "cpu", "resume": resume},
        "output_dir": str(out), "on_chance": "warn", **top,  # 10 tiny steps: resumption is tested, not the model
    })


def test_pretrain_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, monkeypatch, tiny_data):
    import tether.trainers.pretrain as pretrain_module
    from tether.trainers.pretrain import train_pretrain

    def cfg(run, resume=False):
        return _pretrain_config(tiny_data["text"], tmp_path / run, resume)

    def train(c):
        if not c.train.resume:
            return train_pretrain(c)
        with pytest.MonkeyPatch.context() as mp:  # a resumed run reads the tokenizer from the checkpoint
            mp.setattr(pretrain_module, "train_tokenizer", lambda *a, **k: pytest.fail("the tokenizer was trained again"))
            return train_pretrain(c)

    # 63 training blocks, batches of 16: 4 per epoch (the last one of 15). Crash in step 5, after the checkpoint
    # of step 3: the resumed run continues mid-epoch from the saved block order, then draws epochs 2 and 3
    # from the restored RNG (GPT-2's dropout draws from it too)
    full, resumed = _crash_then_resume(tmp_path, monkeypatch, train, cfg, pretrain_module, "sft_loss", 5)
    _assert_same_weights(full, resumed)
    assert (full / "tokenizer.json").read_text() == (resumed / "tokenizer.json").read_text()
    drop = ("time",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in _metrics(full)] == [
        {k: v for k, v in r.items() if k not in drop} for r in _metrics(resumed)
    ]
    assert [r["step"] for r in _metrics(resumed)] == list(range(1, 11)) + [10]  # the last row adds eval/ppl


def test_pretrain_sigterm_checkpoint_and_max_minutes_across_a_resume(tmp_path, monkeypatch, tiny_data):
    import torch

    import tether.trainers.pretrain as pretrain_module
    from tether.run import STATE_FILE
    from tether.trainers.pretrain import train_pretrain

    _sigterm_on_call(monkeypatch, pretrain_module, "sft_loss", 2)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="after step 2.*train.resume=true"):
        train_pretrain(_pretrain_config(tiny_data["text"], out, save_every=None, max_minutes=10, on_time_cap="warn"))
    monkeypatch.undo()
    ckpt = out / "checkpoints" / "step-2"
    assert (ckpt / "tokenizer.json").is_file() and (ckpt / "model.safetensors").is_file()
    state = torch.load(ckpt / STATE_FILE, weights_only=False)
    assert state["step"] == 2 and state["position"] == 32 and sorted(state["order"].tolist()) == list(range(63))
    assert 0 < state["train_seconds"] < 600

    # pretend the first process had trained for just over max_minutes: the resumed run stops at once
    state["train_seconds"] = 10 * 60 + 1
    torch.save(state, ckpt / STATE_FILE)
    train_pretrain(_pretrain_config(tiny_data["text"], out, resume=True, save_every=None, max_minutes=10, on_time_cap="warn"))
    done = json.loads((out / "DONE").read_text())
    assert done["steps"] == 2 and done["planned_steps"] == 10  # the plan of the first run, kept across the resume
    assert "cut training short after 2 of 10 planned steps" in done["warnings"][0]
