"""PPO smoke tests: tiny-llama policy, tiny-bert reward model, two iterations of four prompts."""

from __future__ import annotations

import json
import math

import pytest
import torch

import tether.trainers.ppo as ppo_mod
from tether.config import ModelConfig, PPOConfig, validate
from tether.errors import ConfigError, DataError, TrainingError
from tether.models.load import load_causal_lm
from tether.models.tiny import tiny_causal_lm
from tether.run import DONE_FILE
from tether.trainers.ppo import train_ppo

CPU = torch.device("cpu")


def ppo_config(prompts_file, out, reward_model="tiny-bert", model=None, rollout=None, ppo=None, train=None, **top) -> PPOConfig:
    raw = {
        "model": {"name_or_path": "tiny-llama", **(model or {})},
        "reward_model": {"path": reward_model, "max_length": 64},
        "data": {"train": str(prompts_file), "max_samples": 8, "max_prompt_length": 48},
        "generation": {"max_new_tokens": 8, "batch_size": 8},
        "rollout": {"batch_size": 4, "num_epochs": 1, "num_minibatches": 2, **(rollout or {})},
        "ppo": {**(ppo or {})},
        "train": {"learning_rate": 1e-3, "max_steps": 2, "device": "cpu", **(train or {})},
        "output_dir": str(out),
        **top,
    }
    return validate(PPOConfig, raw)


@pytest.fixture
def models(monkeypatch):
    """The models `train_ppo` built, with a copy of their weights at the start."""
    seen = {}
    real = ppo_mod.load_roles

    def load(cfg, device, **kw):
        m = real(cfg, device, **kw)
        seen["m"] = m
        seen["policy0"] = {k: v.clone() for k, v in m.policy.state_dict().items()}
        seen["value0"] = {k: v.clone() for k, v in m.value_model.state_dict().items()}
        if m.ref_policy is not None:
            seen["ref0"] = {k: v.clone() for k, v in m.ref_policy.state_dict().items()}
        return m

    monkeypatch.setattr(ppo_mod, "load_roles", load)
    return seen


def _metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _done(out) -> dict:
    return json.loads((out / DONE_FILE).read_text())


def test_ppo_smoke(tiny_data, tmp_path, monkeypatch, models):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "ppo"
    assert train_ppo(ppo_config(tiny_data["prompts"], out, train={"learning_rate": 1e-3, "max_steps": 2, "save_every": 1})) == out
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        for key in ("objective/kl", "objective/scores", "loss/policy", "loss/value", "objective/kl_coef", "policy/entropy"):
            assert math.isfinite(r[key]), key
        assert r["rollout/logprob_diff_max"] < 1e-3
    assert abs(rows[0]["objective/kl"]) < 1e-6  # the first rollout comes from the reference itself
    assert _done(out)["stop_reason"] == "max_steps" and _done(out)["steps"] == 2
    assert (out / "reward_normalization.json").is_file()

    m = models["m"]
    assert m.ref_policy is not None
    ref = m.ref_policy.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in models["ref0"].items()), "the frozen reference changed"
    policy = m.policy.state_dict()
    assert any(not torch.equal(policy[k], v) for k, v in models["policy0"].items()), "the policy did not change"
    value = m.value_model.state_dict()
    assert any(not torch.equal(value[k], v) for k, v in models["value0"].items()), "the value model did not change"

    # checkpoints: complete, renamed from their temporary names
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-1", "step-2"]
    for name in ckpts:
        d = out / "checkpoints" / name
        assert (d / "config.json").is_file() and list(d.glob("*.safetensors"))
        state = torch.load(d / "trainer_state.pt", weights_only=False)
        assert state["step"] == int(name.split("-")[1])
        assert {"policy", "value_model", "optimizer", "kl_controller", "score_shift", "order", "rng"} <= set(state)
    assert not list(out.rglob("*.tmp"))

    # the final policy reloads with the trained weights; so does the last checkpoint (policy and critic)
    reloaded, _ = load_causal_lm(ModelConfig(name_or_path=str(out)), CPU)
    for k, v in reloaded.state_dict().items():
        assert torch.equal(v, policy[k]), k
    ckpt, _ = load_causal_lm(ModelConfig(name_or_path=str(out / "checkpoints" / "step-2")), CPU)
    for k, v in ckpt.state_dict().items():
        assert torch.equal(v, policy[k]), k
    state = torch.load(out / "checkpoints" / "step-2" / "trainer_state.pt", weights_only=False)
    for k, v in state["value_model"].items():
        assert torch.equal(v, value[k]), k
    assert state["kl_controller"]["value"] == pytest.approx(rows[-1]["objective/kl_coef"])


def test_ppo_with_a_gpt2_policy(tiny_data, tmp_path, tiny_models):
    out = tmp_path / "ppo"
    train_ppo(ppo_config(tiny_data["prompts"], out, reward_model=tiny_models["rm"], model={"name_or_path": "tiny-gpt2"},
                         train={"max_steps": 1}))
    (row,) = _metrics(out)
    assert math.isfinite(row["loss/policy"]) and row["rollout/logprob_diff_max"] < 1e-3


def test_ppo_lora_keeps_base_weights(tiny_data, tmp_path, tiny_models, models):
    out = tmp_path / "ppo"
    train_ppo(ppo_config(tiny_data["prompts"], out, reward_model=tiny_models["rm"],
                         model={"lora": {"enabled": True, "r": 4, "alpha": 8}}, train={"learning_rate": 1e-2}))
    assert all(math.isfinite(r["loss/policy"]) for r in _metrics(out))
    m = models["m"]
    assert m.ref_policy is None  # the reference is the policy with adapters disabled
    init = tiny_causal_lm("llama", seed=0)[0].state_dict()
    lora_b_changed = False
    for name, p in m.policy.state_dict().items():
        if "lora_B" in name:
            lora_b_changed |= bool(p.abs().sum() > 0)
        elif "lora_" not in name:
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p, init[key]), f"base weight {key} changed"
    assert lora_b_changed
    assert (out / "adapter" / "adapter_config.json").is_file()
    load_causal_lm(ModelConfig(name_or_path=str(out)), CPU)


def test_stop_on_reward_threshold(tiny_data, tmp_path, tiny_models):
    out = tmp_path / "ppo"
    train_ppo(ppo_config(tiny_data["prompts"], out, reward_model=tiny_models["rm"],
                         rollout={"reward_threshold": -1e9}, train={"max_steps": 5}))
    done = _done(out)
    assert done["steps"] == 1 and "reward threshold" in done["stop_reason"]
    assert len(_metrics(out)) == 1
    load_causal_lm(ModelConfig(name_or_path=str(out)), CPU)  # the final policy is still written


@pytest.mark.parametrize("penalty", [-1.0, None])
def test_a_first_rollout_that_never_ends_says_the_reward_model_is_not_heard(penalty, tiny_data, tmp_path, tiny_models, capsys):
    out = tmp_path / "ppo"  # a random tiny policy emits EOS with p ~ 1/vocab: none of 4 x 4 tokens ends
    train_ppo(ppo_config(tiny_data["prompts"], out, reward_model=tiny_models["rm"], generation={"max_new_tokens": 4, "batch_size": 8},
                         rollout={"missing_eos_penalty": penalty}, train={"max_steps": 1}))
    assert _metrics(out)[0]["rollout/eos_fraction"] == 0.0
    said = " ".join(capsys.readouterr().err.split())
    assert ("every score is rollout.missing_eos_penalty=-1.0" in said) == (penalty is not None)


def test_stop_on_kl_budget(tiny_data, tmp_path, tiny_models):
    out = tmp_path / "ppo"
    train_ppo(ppo_config(tiny_data["prompts"], out, reward_model=tiny_models["rm"],
                         rollout={"kl_budget": 1e-6, "num_epochs": 2}, train={"max_steps": 4, "learning_rate": 2e-2}))
    done = _done(out)
    assert "KL budget" in done["stop_reason"], done["stop_reason"]
    assert done["steps"] < 4
    assert _metrics(out)[-1]["objective/kl"] > 1e-6


def test_value_model_from_the_reward_model(tiny_data, tmp_path, tiny_models, models):
    out = tmp_path / "ppo"
    train_ppo(ppo_config(tiny_data["prompts"], out, reward_model=tiny_models["rm"],
                         ppo={"value_init": "reward_model"}, train={"max_steps": 1}))
    assert models["m"].value_model.backbone.config.model_type == "bert"
    assert math.isfinite(_metrics(out)[0]["loss/value"])


def test_value_model_from_a_tiny_reward_model(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "ppo"
    train_ppo(ppo_config(tiny_data["prompts"], out, ppo={"value_init": "reward_model"}, train={"max_steps": 1}))
    assert (out / DONE_FILE).is_file()


def _nan_policy_loss(monkeypatch, from_call: int):
    real = ppo_mod.ppo_policy_loss
    calls = {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        value, m = real(*args, **kwargs)
        return (value * float("nan") if calls["n"] >= from_call else value), m

    monkeypatch.setattr(ppo_mod, "ppo_policy_loss", loss)


def test_nan_loss_stops_the_run(tiny_data, tmp_path, tiny_models, monkeypatch):
    _nan_policy_loss(monkeypatch, from_call=3)  # two minibatches per step: the NaN comes in step 2
    out = tmp_path / "ppo"
    with pytest.raises(TrainingError, match="nan"):
        train_ppo(ppo_config(tiny_data["prompts"], out, reward_model=tiny_models["rm"], train={"save_every": 1}))
    assert not (out / DONE_FILE).exists()
    assert (out / "checkpoints" / "step-1" / "config.json").is_file()  # the last good checkpoint is kept


def test_nan_loss_message_names_the_step(tiny_data, tmp_path, tiny_models, monkeypatch):
    _nan_policy_loss(monkeypatch, from_call=1)
    with pytest.raises(TrainingError, match="step 1"):
        train_ppo(ppo_config(tiny_data["prompts"], tmp_path / "ppo", reward_model=tiny_models["rm"]))


def test_missing_prompts_file_stops_before_anything_is_written(tmp_path, tiny_models):
    out = tmp_path / "ppo"
    with pytest.raises(DataError, match="nope.jsonl"):
        train_ppo(ppo_config(tmp_path / "nope.jsonl", out, reward_model=tiny_models["rm"]))
    assert not out.exists()


def test_prompt_plus_response_longer_than_the_context(tiny_data, tmp_path, tiny_models):
    out = tmp_path / "ppo"
    cfg = ppo_config(tiny_data["prompts"], out, reward_model=tiny_models["rm"])
    cfg.data.max_prompt_length = 510
    with pytest.raises(ConfigError, match="max_prompt_length"):
        train_ppo(cfg)
    assert not out.exists()


@pytest.mark.parametrize("correction", ["none", "residual"])
def test_length_correction_takes_the_length_bias_out_of_the_scores(correction, tiny_data, tmp_path, monkeypatch):
    """A reward model that only counts characters: with rollout.length_correction=residual the fit on the initial
    policy's samples finds its slope (rl/rewards.py::fit_length_baseline, tested by hand there), and every rollout's
    scores are (score - slope * length - center) / scale; without it the scores follow the length."""
    import tether.trainers.online as online
    from tether.models.reward import FunctionReward

    monkeypatch.setattr(online, "load_reward", lambda *a, **k: FunctionReward(lambda p, r: [float(len(x)) for x in r], "chars"))
    seen = []
    real = online.make_rollout
    monkeypatch.setattr(ppo_mod, "make_rollout", lambda *a, **k: (lambda out: seen.append(out[0]) or out)(real(*a, **k)))
    out = train_ppo(ppo_config(tiny_data["prompts"], tmp_path / correction, rollout={"length_correction": correction, "batch_size": 8, "missing_eos_penalty": None},
                               train={"max_steps": 1}))
    norm = json.loads((out / "reward_normalization.json").read_text())
    r = seen[0]
    lengths = torch.tensor([float(len(t)) for t in r.response_texts])
    expected = (r.raw_scores - norm["length_slope"] * lengths - norm["mean"]) / norm["std"]
    assert torch.allclose(r.scores, expected, atol=1e-5)
    if correction == "none":
        assert norm["length_slope"] == 0.0
        assert float(torch.corrcoef(torch.stack([r.scores.double(), lengths.double()]))[0, 1]) > 0.5
    else:
        assert norm["length_slope"] == pytest.approx(1.0, abs=1e-4)  # the score is the length: all of it is removed
        assert r.scores.abs().max() < 1e-2


def test_a_reference_other_than_the_starting_policy_is_what_the_kl_is_measured_to(tiny_data, tiny_models, tmp_path):
    """`reference:` (the SFT model in a loop's later rounds): the first rollout's KL is to that model, not 0 as to a
    copy of the starting policy; LoRA with a reference is refused (its reference is its own base)."""
    own = train_ppo(ppo_config(tiny_data["prompts"], tmp_path / "own", model={"name_or_path": tiny_models["llama"]}, train={"max_steps": 1}))
    other = train_ppo(ppo_config(tiny_data["prompts"], tmp_path / "other", model={"name_or_path": tiny_models["llama"]},
                                 reference=tiny_models["gpt2"], train={"max_steps": 1}))
    assert _metrics(own)[0]["objective/kl"] == 0.0
    assert abs(_metrics(other)[0]["objective/kl"]) > 1e-3
    with pytest.raises(ConfigError, match="reference: with model.lora.enabled"):
        ppo_config(tiny_data["prompts"], tmp_path / "x", model={"lora": {"enabled": True}}, reference=tiny_models["gpt2"])
