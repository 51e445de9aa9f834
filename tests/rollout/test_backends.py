"""Generation backends: HF matches the generate function, the trainers sync after every update, LoRA
weights merge under checkpoint names, the vLLM glue on a stand-in engine, and vLLM config errors.

The tests marked `vllm_on_gpu` drive a real vLLM engine; they skip without the vllm package or a CUDA GPU.
"""

from __future__ import annotations

import copy
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import sys
import types
from types import SimpleNamespace

import pytest
import torch

import tether.rollout.backends as backends
import tether.trainers.online as online
import tether.trainers.ppo as ppo_mod
from tether.config import DEFAULT_PROMPT_TEMPLATE, GRPOConfig, LoRAConfig, PPOConfig, RolloutGenerationConfig, validate
from tether.data.tokenize import tokenize_prompts
from tether.errors import ConfigError
from tether.models.load import apply_lora
from tether.models.logprobs import response_logprobs
from tether.models.tiny import tiny_causal_lm
from tether.rollout.backends import HFBackend, VLLMBackend, make_backend, merged_weights, require_backend
from tether.rollout.generate import generate
from tether.trainers.grpo import train_grpo
from tether.trainers.ppo import train_ppo

CPU = torch.device("cpu")
PROMPTS = ["Hi", "Tell me something long about the weather today, please.", "Name a colour.", "Why?"]
HAS_VLLM = importlib.util.find_spec("vllm") is not None
vllm_on_gpu = pytest.mark.skipif(not (HAS_VLLM and torch.cuda.is_available()), reason="needs the vllm package and a CUDA GPU")


def _prompt_ids(tok, prompts=PROMPTS):
    return tokenize_prompts(prompts, tok, DEFAULT_PROMPT_TEMPLATE, 64)


def _trainer_logprobs(policy, gen, temperature):
    """The trainer's own pass over the sampled sequences (what `make_rollout` compares with)."""
    seqs = torch.cat([gen.prompts, gen.responses], 1)
    mask = torch.cat([gen.prompt_mask, gen.response_mask.long()], 1)
    with torch.no_grad():
        return response_logprobs(policy, seqs, mask, gen.prompts.shape[1], temperature)


def _lora_policy(kind: str = "llama", seed: int = 1):
    """A tiny LoRA policy whose adapters are not zero (B is zero at init, which would hide merge errors)."""
    model, tok = tiny_causal_lm(kind, seed=0)
    base = copy.deepcopy(model)
    policy = apply_lora(model, LoRAConfig(enabled=True, r=4, alpha=8))
    _perturb_adapters(policy, seed)
    return policy.eval(), base.eval(), tok


def _perturb_adapters(policy, seed: int, scale: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(scale * torch.randn(p.shape, generator=g))


# --------------------------------------------------------------------------- HF backend


def test_hf_backend_matches_the_generate_function():
    model, tok = tiny_causal_lm("llama", seed=0)
    model.eval()
    gen_cfg = RolloutGenerationConfig(max_new_tokens=8, temperature=0.7, top_k=20, batch_size=3)  # two chunks
    torch.manual_seed(3)
    before = generate(model, tok, _prompt_ids(tok), gen_cfg, CPU, return_sampling_logprobs=True)
    torch.manual_seed(3)
    after = HFBackend(model, tok, gen_cfg, CPU).generate(_prompt_ids(tok), return_sampling_logprobs=True)
    for field in ("prompts", "prompt_mask", "responses", "response_mask", "ended", "sampling_logprobs"):
        assert torch.equal(getattr(before, field), getattr(after, field)), field
    assert make_backend(gen_cfg, model, tok, CPU, 72, 0).__class__ is HFBackend


# --------------------------------------------------------------------------- the trainers call the backend


class RecordingBackend:
    """Wraps the real backend; records each call with a copy of the policy's trainable weights."""

    def __init__(self, inner, policy):
        self.inner, self.policy, self.calls = inner, policy, []

    def _weights(self, policy) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in policy.parameters() if p.requires_grad]).clone()

    def generate(self, prompt_ids, return_sampling_logprobs=False, seeds=None):
        self.calls.append(("generate", self._weights(self.policy)))
        return self.inner.generate(prompt_ids, return_sampling_logprobs, seeds)

    def sync_weights(self, policy):
        self.calls.append(("sync", self._weights(policy)))
        self.inner.sync_weights(policy)


@pytest.fixture
def recorded(monkeypatch):
    """The backends the trainers build, wrapped in a `RecordingBackend`."""
    made, real = [], online.make_backend

    def make(gen, policy, *args, **kwargs):
        made.append(RecordingBackend(real(gen, policy, *args, **kwargs), policy))
        return made[-1]

    monkeypatch.setattr(online, "make_backend", make)
    return made


def _prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"question {i}: what is {i} plus {i}?"}) + "\n" for i in range(8)))
    return str(path)


def _rl_config(tmp_path, schema, run: str, **train):
    raw = {
        "model": {"name_or_path": "tiny-llama"}, "reward_model": {"path": "tiny-bert", "max_length": 64},
        "data": {"train": _prompts_file(tmp_path), "max_prompt_length": 32}, "generation": {"max_new_tokens": 6},
        "rollout": {"batch_size": 2, "num_epochs": 1, "num_minibatches": 1, "missing_eos_penalty": None},
        "train": {"max_steps": 2, "learning_rate": 1e-3, "device": "cpu", **train}, "output_dir": str(tmp_path / run),
    }
    if schema is GRPOConfig:
        raw["grpo"] = {"group_size": 2}
    return validate(schema, raw)


def _assert_sync_after_every_update(calls, initial_generates: int, steps: int):
    kinds = [k for k, _ in calls]
    assert kinds == ["generate"] * initial_generates + ["generate", "sync"] * steps
    rollouts = calls[initial_generates:]
    for (_, sampled), (_, synced) in zip(rollouts[0::2], rollouts[1::2]):
        assert not torch.equal(sampled, synced)  # the update came between the rollout and the sync
    for (_, synced), (_, sampled) in zip(rollouts[1::2], rollouts[2::2]):
        assert torch.equal(synced, sampled)  # the next rollout samples from the synced weights


@pytest.mark.parametrize("schema,train", [(PPOConfig, train_ppo), (GRPOConfig, train_grpo)], ids=["ppo", "grpo"])
def test_trainers_generate_with_the_backend_and_sync_after_every_update(tmp_path, recorded, schema, train):
    train(_rl_config(tmp_path, schema, "run"))
    assert len(recorded) == 1
    # one generate for the initial score statistics (PPO always; GRPO too with rollout.normalize_scores, the default)
    _assert_sync_after_every_update(recorded[0].calls, initial_generates=1, steps=2)


def test_a_resumed_run_pushes_the_checkpoint_weights_before_sampling(tmp_path, recorded, monkeypatch):
    real, calls = ppo_mod.ppo_update, {"n": 0}

    def crash_on_second_update(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(ppo_mod, "ppo_update", crash_on_second_update)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_ppo(_rl_config(tmp_path, PPOConfig, "run", save_every=1))
    checkpointed = recorded[0].calls[2][1]  # synced after step 1, the step the checkpoint holds
    monkeypatch.setattr(ppo_mod, "ppo_update", real)
    train_ppo(_rl_config(tmp_path, PPOConfig, "run", save_every=1, resume=True))
    resumed = recorded[1].calls
    assert [k for k, _ in resumed] == ["sync", "generate", "sync"]
    assert torch.equal(resumed[0][1], checkpointed)


# --------------------------------------------------------------------------- LoRA weights for an engine


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_merged_lora_weights_load_into_the_plain_model_and_give_the_same_logits(kind):
    policy, base, _ = _lora_policy(kind)
    plain = copy.deepcopy(base)
    plain.load_state_dict(dict(merged_weights(policy)), strict=True)  # exactly the checkpoint names
    ids = torch.randint(0, 250, (2, 12))
    with torch.no_grad():
        expected, got, unmerged = policy(input_ids=ids).logits, plain(input_ids=ids).logits, base(input_ids=ids).logits
    assert (got - expected).abs().max() < 1e-5
    assert (unmerged - expected).abs().max() > 1e-3  # the adapters matter, so the merge was tested
    assert policy.peft_config["default"].target_modules  # the policy still has its adapters (no merge in place)


def test_merged_weights_of_a_plain_model_are_its_state_dict():
    model, _ = tiny_causal_lm("llama", seed=0)
    merged = dict(merged_weights(model))
    assert merged.keys() == model.state_dict().keys()
    assert all(torch.equal(merged[k], v) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- vLLM glue on a stand-in engine


class _StandInModel:
    """What `LLM.apply_model` hands to its function: a model with `load_weights((name, tensor), ...)`."""

    def __init__(self, hf):
        self.hf = hf

    def load_weights(self, weights):
        self.hf.load_state_dict(dict(weights), strict=True)  # vLLM's loader also takes checkpoint names


class StandInLLM:
    """A stand-in for `vllm.LLM` with vLLM's sampling semantics: temperature sampling from the full
    distribution with a per-request seed, stop at a stop token (kept), sampled-token logprobs of logits / T."""

    def __init__(self, model, **kwargs):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        self.kwargs = kwargs
        self.model = _StandInModel(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model)).eval())
        self.tokenizer = AutoTokenizer.from_pretrained(kwargs["tokenizer"])
        self.prefix_cache_resets = 0

    def apply_model(self, func):
        return [func(self.model)]

    def reset_prefix_cache(self):
        self.prefix_cache_resets += 1

    @torch.no_grad()
    def generate(self, prompts, params, use_tqdm=True):
        outputs = []
        for prompt, p in zip(prompts, params):
            assert p.top_k == -1 and p.top_p == 1.0  # the stand-in samples the full distribution only
            rng, ids, tokens, steps = torch.Generator().manual_seed(p.seed), list(prompt["prompt_token_ids"]), [], []
            for _ in range(p.max_tokens):
                logprobs = (self.model.hf(torch.tensor([ids + tokens])).logits[0, -1] / p.temperature).log_softmax(-1)
                t = int(torch.multinomial(logprobs.exp(), 1, generator=rng))
                tokens.append(t)
                steps.append({t: SimpleNamespace(logprob=float(logprobs[t]))})
                if t in p.stop_token_ids:
                    break
            completion = SimpleNamespace(token_ids=tokens, logprobs=steps if p.logprobs is not None else None)
            outputs.append(SimpleNamespace(outputs=[completion]))
        return outputs


@pytest.fixture
def stand_in_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = StandInLLM, lambda **kwargs: SimpleNamespace(**kwargs)
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # restored after the test
    return module


def _vllm_gen(**kwargs):
    return RolloutGenerationConfig(backend="vllm", **{"max_new_tokens": 8, "temperature": 0.7, **kwargs})


def test_vllm_backend_samples_from_synced_weights_with_matching_logprobs(stand_in_vllm):
    policy, _, tok = _lora_policy("llama")
    backend = VLLMBackend(policy, tok, _vllm_gen(), CPU, max_model_len=72, seed=0)
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # in-process engine: weights pass by reference
    assert backend.llm.kwargs["logprobs_mode"] == "processed_logprobs"
    assert backend.llm.kwargs["load_format"] == "dummy" and backend.llm.kwargs["dtype"] == "float32"

    def diff(gen):
        return (gen.sampling_logprobs - _trainer_logprobs(policy, gen, 0.7)).abs()[gen.response_mask]

    torch.manual_seed(0)
    gen = backend.generate(_prompt_ids(tok) * 2, return_sampling_logprobs=True)
    assert gen.responses.shape == gen.response_mask.shape == gen.sampling_logprobs.shape
    assert gen.response_mask.sum(1).min() >= 1 and (gen.responses[~gen.response_mask] == tok.pad_token_id).all()
    assert diff(gen).max() < 1e-4  # the trainer's rollout-logprob check passes

    _perturb_adapters(policy, seed=2)  # an update the engine has not seen yet
    torch.manual_seed(0)
    stale = backend.generate(_prompt_ids(tok) * 2, return_sampling_logprobs=True)
    assert diff(stale).mean() > 1e-3  # what check_rollout_logprobs would stop on (float32 tolerance)

    backend.sync_weights(policy)
    assert backend.llm.prefix_cache_resets == 2  # at construction and now: old KV blocks are dropped
    torch.manual_seed(0)
    assert diff(backend.generate(_prompt_ids(tok) * 2, return_sampling_logprobs=True)).max() < 1e-4


def test_vllm_sampling_params_follow_the_generation_config(stand_in_vllm):
    model, tok = tiny_causal_lm("llama", seed=0)
    backend = VLLMBackend(model, tok, _vllm_gen(max_new_tokens=5, top_k=0, top_p=1.0), CPU, max_model_len=72, seed=0)
    torch.manual_seed(7)
    params = backend.sampling_params(4, with_logprobs=True)
    p = params[0]
    assert (p.max_tokens, p.temperature, p.top_k, p.top_p, p.logprobs) == (5, 0.7, -1, 1.0, 0)
    assert p.stop_token_ids == [tok.eos_token_id]
    assert len({q.seed for q in params}) == 4  # repeated prompts (GRPO groups) must not share noise
    torch.manual_seed(7)
    assert [q.seed for q in backend.sampling_params(4, with_logprobs=False)] == [q.seed for q in params]
    backend.gen = _vllm_gen(do_sample=False, temperature=1.0)
    assert backend.sampling_params(1, with_logprobs=False)[0].temperature == 0.0


def test_grpo_runs_on_the_vllm_backend_with_the_rollout_check(tmp_path, stand_in_vllm, monkeypatch):
    monkeypatch.setattr(backends, "vllm_problem", lambda device: None)
    cfg = _rl_config(tmp_path, GRPOConfig, "run", max_steps=3)
    cfg.generation.backend = "vllm"
    out = train_grpo(cfg)  # check_rollout_logprobs is on: a missed sync would stop step 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["rollout/logprob_diff_mean"] < 1e-3 for r in rows)


# --------------------------------------------------------------------------- vLLM configuration errors


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
def test_vllm_without_the_package_is_a_config_error_before_anything_runs(tmp_path):
    cfg = _rl_config(tmp_path, PPOConfig, "run")
    cfg.generation.backend = "vllm"
    with pytest.raises(ConfigError, match=r"generation\.backend=vllm: the vllm package is not installed"):
        train_ppo(cfg)
    assert not (tmp_path / "run").exists()


def _pretend_vllm_installed(monkeypatch, version: str):
    find_spec, real_version = importlib.util.find_spec, importlib.metadata.version
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: importlib.machinery.ModuleSpec(name, None) if name == "vllm" else find_spec(name, *a))
    monkeypatch.setattr(importlib.metadata, "version", lambda name: version if name == "vllm" else real_version(name))


def test_vllm_without_cuda_or_too_old_is_a_config_error(monkeypatch):
    gen = RolloutGenerationConfig(backend="vllm")
    _pretend_vllm_installed(monkeypatch, "0.11.0")
    with pytest.raises(ConfigError, match=r"generation\.backend=vllm: vLLM needs a CUDA GPU.*train\.device"):
        require_backend(gen, CPU)
    _pretend_vllm_installed(monkeypatch, "0.9.2")
    with pytest.raises(ConfigError, match=r"generation\.backend=vllm: vllm 0\.9\.2 is too old"):
        require_backend(gen, CPU)
    require_backend(RolloutGenerationConfig(), CPU)  # hf needs nothing


def test_vllm_with_truncated_or_greedy_sampling_is_refused_while_the_check_is_on(tmp_path):
    base = {"model": {"name_or_path": "tiny-llama"}, "reward_model": {"path": "tiny-bert"}, "data": {"train": "x.jsonl"}, "output_dir": "out"}
    with pytest.raises(ConfigError, match=r"generation\.top_k=0 / generation\.top_p=0\.9.*rollout\.check_logprobs=false"):
        validate(PPOConfig, {**base, "generation": {"backend": "vllm", "top_p": 0.9}})
    with pytest.raises(ConfigError, match=r"generation\.temperature=0\.7"):
        validate(GRPOConfig, {**base, "generation": {"backend": "vllm", "do_sample": False, "temperature": 0.7}})
    validate(PPOConfig, {**base, "generation": {"backend": "vllm", "top_p": 0.9}, "rollout": {"check_logprobs": False}})
    validate(PPOConfig, {**base, "generation": {"backend": "policy", "top_p": 0.9}})
    with pytest.raises(ConfigError, match=r"generation\.backend"):
        validate(PPOConfig, {**base, "generation": {"backend": "sglang"}})
    with pytest.raises(ConfigError, match=r"unknown config key 'generation\.vllm\.tensor_parallel'"):
        validate(PPOConfig, {**base, "generation": {"vllm": {"tensor_parallel": 2}}})


# --------------------------------------------------------------------------- a real vLLM engine (GPU only)


def _gpu_policy(lora: bool):
    # head size 64: vLLM's attention kernels do not take every head size (the default tiny model has 16)
    model, tok = tiny_causal_lm("llama", seed=0, hidden_size=128, num_heads=2)
    model = model.to("cuda", torch.bfloat16)
    if lora:
        model = apply_lora(model, LoRAConfig(enabled=True, r=4, alpha=8))
        _perturb_adapters(model, seed=1)
    return model.eval(), tok


@vllm_on_gpu
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_vllm_engine_logprobs_match_the_trainer_before_and_after_an_update(lora):
    policy, tok = _gpu_policy(lora)
    gen_cfg = _vllm_gen(max_new_tokens=16, temperature=0.9, vllm={"gpu_memory_utilization": 0.2, "enforce_eager": True})
    backend = make_backend(gen_cfg, policy, tok, torch.device("cuda"), max_model_len=96, seed=0)

    def mean_diff():
        gen = backend.generate(_prompt_ids(tok) * 4, return_sampling_logprobs=True)
        return (gen.sampling_logprobs - _trainer_logprobs(policy, gen, 0.9)).abs()[gen.response_mask].mean().item()

    assert mean_diff() < 5e-2  # the bf16 tolerance of check_rollout_logprobs
    with torch.no_grad():  # an update the engine has not seen
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    assert mean_diff() > 5e-2  # stale engine weights are caught
    backend.sync_weights(policy)
    assert mean_diff() < 5e-2
