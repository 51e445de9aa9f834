"""train.precision: what `auto` picks on each kind of hardware (faked), the old key's error, the record in
the run directory, and fp16 with loss scaling."""

import json

import pytest
import torch

from tether import precision as prec
from tether.config import GRPOConfig, ModelConfig, PPOConfig, SFTConfig, TrainConfig, load_config, validate
from tether.errors import ConfigError

CPU = torch.device("cpu")


@pytest.fixture
def fake_cpu(monkeypatch):
    """Make torch's CPU checks report the given features; clears the resolution cache around the test."""

    def fake(amx=False, avx512_bf16=False, torch_has_checks=True, flags=()):
        monkeypatch.delenv(prec.ENV_OVERRIDE, raising=False)  # the suite's own setting (conftest.py)
        for attr, value in (("_is_amx_tile_supported", amx), ("_is_avx512_bf16_supported", avx512_bf16)):
            if torch_has_checks:
                monkeypatch.setattr(torch.cpu, attr, lambda v=value: v, raising=False)
            else:
                monkeypatch.delattr(torch.cpu, attr, raising=False)
        monkeypatch.setattr(prec, "_cpuinfo_flags", lambda path="/proc/cpuinfo": set(flags))
        prec._resolve.cache_clear()

    yield fake
    prec._resolve.cache_clear()


@pytest.mark.parametrize(
    "features, want, evidence",
    [
        (dict(amx=True, avx512_bf16=True), "bf16", "AMX"),  # Intel Sapphire Rapids and newer
        (dict(avx512_bf16=True), "bf16", "AVX512-BF16"),  # AMD Zen 4, Intel Cooper Lake
        (dict(), "fp32", "emulated"),  # AVX2-only: bf16 would be emulated
        (dict(torch_has_checks=False, flags=("avx2", "amx_bf16")), "bf16", "amx_bf16"),  # an older torch: the flags
        (dict(torch_has_checks=False, flags=("avx2", "avx512_bf16")), "bf16", "avx512_bf16"),
        (dict(torch_has_checks=False, flags=("avx2", "fma")), "fp32", "emulated"),
    ],
)
def test_auto_on_a_cpu_takes_bf16_only_where_it_is_native(fake_cpu, features, want, evidence):
    fake_cpu(**features)
    p = prec.resolve_precision("auto", CPU)
    assert (p.name, p.requested, p.device) == (want, "auto", "cpu")
    assert evidence in p.reason
    assert p.dtype == (torch.bfloat16 if want == "bf16" else None)


@pytest.mark.parametrize("bf16_supported, want", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_follows_the_device(monkeypatch, bf16_supported, want):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    prec._resolve.cache_clear()
    try:
        p = prec.resolve_precision("auto", "cuda")
    finally:
        prec._resolve.cache_clear()
    assert p.name == want and "Fake GPU" in p.reason


@pytest.mark.parametrize("value, want", [("0", "fp32"), ("1", "bf16")])
def test_the_environment_overrides_the_cpu_check(fake_cpu, monkeypatch, value, want):
    fake_cpu(amx=value == "0")  # the opposite of what the variable says
    monkeypatch.setenv(prec.ENV_OVERRIDE, value)
    p = prec.resolve_precision("auto", CPU)
    assert p.name == want and f"TETHER_CPU_BF16={value}" in p.reason


def test_explicit_choices_are_kept_and_slow_ones_say_so(fake_cpu):
    fake_cpu()  # an AVX2-only CPU
    assert prec.resolve_precision("fp32", CPU).name == "fp32"
    bf16 = prec.resolve_precision("bf16", CPU)
    assert bf16.name == "bf16" and "slow here" in bf16.reason
    fp16 = prec.resolve_precision("fp16", CPU)
    assert fp16.loss_scaling and fp16.dtype == torch.float16 and "loss scaling" in fp16.reason
    with pytest.raises(ValueError, match="precision must be one of"):
        prec.resolve_precision("fp8", CPU)


def test_autocast_runs_matrix_products_in_the_chosen_dtype(fake_cpu):
    fake_cpu(avx512_bf16=True)
    a = torch.randn(4, 4)
    with prec.resolve_precision("auto", CPU).autocast():
        assert (a @ a).dtype == torch.bfloat16
    with prec.resolve_precision("fp32", CPU).autocast():
        assert (a @ a).dtype == torch.float32


def test_the_old_boolean_key_names_its_replacement(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("model: {name_or_path: tiny-llama}\ndata: {train: x.jsonl}\noutput_dir: o\ntrain: {bf16_autocast: true}\n")
    with pytest.raises(ConfigError, match=r"bf16_autocast was replaced by train.precision.*write precision: bf16"):
        load_config(SFTConfig, path)
    with pytest.raises(ConfigError, match="train.bf16_autocast was replaced by train.precision"):
        load_config(SFTConfig, None, ["train.bf16_autocast=true"])


def test_every_stage_and_shipped_config_leaves_the_choice_to_the_hardware():
    from pathlib import Path

    import yaml

    assert TrainConfig().precision == "auto"

    def precisions(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("precision", "bf16_autocast"):
                    yield k, v
                yield from precisions(v)
        elif isinstance(node, list):
            for v in node:
                yield from precisions(v)

    configs = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        for key, value in precisions(yaml.safe_load(path.read_text())):
            assert (key, value) == ("precision", "auto"), path.name


def test_auto_attention_follows_the_resolved_precision(fake_cpu):
    from tether.models.load import load_causal_lm, set_attention

    fake_cpu()  # no native bf16: auto is fp32, the default kernel stays
    model, _ = load_causal_lm(ModelConfig(name_or_path="tiny-llama"), CPU)
    assert set_attention(model, "auto", CPU, "auto", 256) == "sdpa"
    fake_cpu(amx=True)  # native bf16: eager attention for short sequences (bench/attention_kernels.py)
    assert set_attention(model, "auto", CPU, "auto", 256) == "eager"


def _sft_config(tiny_data, out, **train):
    return SFTConfig(
        model={"name_or_path": "tiny-llama"}, data={"train": str(tiny_data["sft"]), "max_length": 64},
        train={"max_steps": 3, "batch_size": 4, "device": "cpu", **train}, output_dir=str(out),
    )


def test_the_stage_records_its_choice_in_the_run_directory(tiny_data, tmp_path, fake_cpu):
    from tether.trainers.sft import train_sft

    fake_cpu()  # an AVX2-only CPU
    out = train_sft(_sft_config(tiny_data, tmp_path / "sft"))
    record = json.loads((out / "precision.json").read_text())
    assert record["name"] == "fp32" and record["requested"] == "auto" and "emulated" in record["reason"]


def test_fp16_trains_with_loss_scaling(tiny_data, tmp_path, fake_cpu, monkeypatch):
    from tether.trainers.sft import train_sft

    fake_cpu()
    unscaled = []
    real_unscale = torch.amp.GradScaler.unscale_
    monkeypatch.setattr(torch.amp.GradScaler, "unscale_", lambda self, opt: (unscaled.append(self.get_scale()), real_unscale(self, opt)))
    out = train_sft(_sft_config(tiny_data, tmp_path / "sft", precision="fp16", learning_rate=1e-3, log_every=1))
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines() if r.strip()]
    assert len([r for r in rows if "sft/grad_norm" in r]) >= 3
    for r in rows:
        assert torch.isfinite(torch.tensor(r["loss/sft"]))
        # the norm of the unscaled gradients (the scale starts at 2**16): clipping saw the true gradients
        assert 0.0 < r["sft/grad_norm"] < 1e3
    assert json.loads((out / "precision.json").read_text())["name"] == "fp16"
    assert len(unscaled) == 3 and unscaled[0] == 2.0**16  # every step's gradients were scaled, then unscaled


@pytest.mark.parametrize("schema", [PPOConfig, GRPOConfig], ids=["ppo", "grpo"])
def test_online_rl_refuses_fp16(schema):
    """Online RL steps its optimizer itself (a skipped fp16 step would put the KL controller and the rollout check
    out of step with it): its schema has no fp16, and says which precisions it takes."""
    with pytest.raises(ConfigError, match=r"train.precision.*'auto', 'fp32' or 'bf16'"):
        validate(schema, {"model": {"name_or_path": "tiny-llama"}, "reward_model": {"path": "tiny-bert"}, "data": {"train": "p.jsonl"},
                          "train": {"precision": "fp16"}, "output_dir": "out"})
