"""tether's decode loop: KV-cached sampling that draws exactly the tokens HF `generate` draws, with less overhead.

One chunk of left-padded prompts is decoded as HF `generate` (transformers 5.x, greedy or multinomial
sampling) decodes it, step for step:

1. Prefill: one forward pass over the prompts with a fresh `DynamicCache`, `position_ids` = cumulative sum
   of the attention mask - 1 (0 on pad), `logits_to_keep=1`, and the attention mask left out when it has
   no padding (as `generate` does; the attention kernels then take the causal path).
2. Each step takes the last position's logits in float32, applies HF's own temperature, top-k and top-p
   warpers in HF's order (`seeding.sampling_warpers`), and picks the token: `argmax` (greedy),
   `torch.multinomial(softmax(scores), 1)` on the whole chunk (torch's global generator, one call per step,
   so the random stream is consumed as `generate` consumes it), or one draw per row with that row's own
   generator (`seeding.SeededSampler.draw`).
3. Rows that already emitted EOS get pad from then on (they are still sampled, as in `generate`); the loop
   stops after `max_new_tokens` tokens or as soon as every row has emitted EOS.
4. The next forward pass feeds the new token with the cache, position + 1 and the mask grown by one column.

Same inputs to the same modules in the same order give the same logits bit for bit, hence the same tokens
(tests/rollout/test_decode.py checks this token for token against `generate`). What the loop saves is
`generate`'s per-step machinery: logits-processor and stopping-criteria lists, `prepare_inputs_for_generation`,
model-kwargs updates and the growing `input_ids` copy.

`unsupported(policy)` names what the loop cannot reproduce (encoder-decoders, models without a dynamic KV
cache, peft prompt learning, a model `generation_config` that adds logits processors or stopping criteria
such as `repetition_penalty`); `rollout/generate.py` then uses HF `generate`.

The loop leans on three pieces of transformers' cache API: `DynamicCache(config=...)` with a `layers` list,
`cache_utils.DynamicLayer` (`lazy_initialization`, `update`, `keys`/`values`), and the forward keyword that takes
the cache (`past_key_values` up to transformers 5.24, `cache` since 5.25). `TRANSFORMERS_API_MISSING` checks them
once at import; when one is missing the loop is unsupported for every model and `generate` falls back to HF
`generate` with one warning.
"""

from __future__ import annotations

import functools
import inspect
import warnings

import torch
from torch import nn

from tether.config import GenerationConfig
from tether.models.load import is_peft
from tether.ops import gather_logprobs
from tether.rollout.seeding import SeededSampler, sampling_warpers

# generation_config keys that change nothing here: ids and lengths are passed explicitly, sampling settings
# come from `GenerationConfig`, and beam-search or compile settings do not apply to a dynamic-cache loop
_IGNORED_KEYS = {
    "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "max_length", "max_new_tokens",
    "do_sample", "temperature", "top_k", "top_p", "output_attentions", "output_hidden_states", "output_scores",
    "output_logits", "return_dict_in_generate", "length_penalty", "early_stopping", "compile_config",
    "disable_compile", "transformers_version", "_from_model_config",
}
# keys whose value here adds nothing to `generate`'s sampling (any other value does: fall back to HF)
_NEUTRAL_VALUES = {
    "use_cache": (True,), "num_beams": (1,), "num_return_sequences": (1,), "repetition_penalty": (1.0,),
    "encoder_repetition_penalty": (1.0,), "no_repeat_ngram_size": (0,), "encoder_no_repeat_ngram_size": (0,),
    "min_length": (0,), "min_new_tokens": (0,), "typical_p": (1.0,), "epsilon_cutoff": (0.0,), "eta_cutoff": (0.0,),
    "guidance_scale": (1.0,), "remove_invalid_values": (False,), "renormalize_logits": (False,),
    "token_healing": (False,), "low_memory": (False,), "is_assistant": (False,),
}


CACHE_KWARGS = ("cache", "past_key_values")  # the forward keyword of the KV cache, newest name first


def _missing_transformers_api() -> str | None:
    """What the loop needs from transformers and this version lacks, or None when everything is there."""
    try:
        import transformers
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer
    except ImportError as exc:
        return f"transformers has no DynamicCache/DynamicLayer ({exc})"
    version = getattr(transformers, "__version__", "?")
    if "config" not in inspect.signature(DynamicCache.__init__).parameters:
        return f"transformers {version}: DynamicCache(config=...) is not accepted"
    for name in ("lazy_initialization", "update"):
        if not callable(getattr(DynamicLayer, name, None)):
            return f"transformers {version}: DynamicLayer has no {name}()"
    try:
        layer = DynamicLayer()
    except TypeError as exc:
        return f"transformers {version}: DynamicLayer() needs arguments ({exc})"
    if not hasattr(layer, "is_initialized"):
        return f"transformers {version}: DynamicLayer has no is_initialized flag"
    return None


TRANSFORMERS_API_MISSING = _missing_transformers_api()
_warned: set[str] = set()


def warn_fallback(reason: str) -> None:
    """Warn once per reason that HF `generate` samples instead of the decode loop."""
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"tether's decode loop is off ({reason}); sampling with HF generate", RuntimeWarning, stacklevel=3)


def cache_kwarg(base: nn.Module) -> str | None:
    """The keyword under which `base.forward` takes its KV cache (`cache` or `past_key_values`), or None."""
    params = inspect.signature(base.forward).parameters
    return next((name for name in CACHE_KWARGS if name in params), None)


def _base_model(policy: nn.Module) -> nn.Module:
    return policy.get_base_model() if is_peft(policy) else policy


def unsupported(policy: nn.Module) -> str | None:
    """Why the decode loop cannot stand in for `policy.generate`, or None when it can.

    The loop covers decoder-only Hugging Face models with a dynamic KV cache, plain or wrapped by peft
    (LoRA and other adapter methods), whose `generation_config` sets nothing beyond token ids, lengths and the
    sampling settings tether passes itself.
    """
    base = _base_model(policy)
    config = getattr(base, "config", None)
    if config is None or getattr(base, "generation_config", None) is None:
        return "not a Hugging Face model with a generation config"
    if getattr(config, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    if is_peft(policy) and policy.active_peft_config.is_prompt_learning:
        return "a peft prompt-learning model (virtual tokens)"
    if cache_kwarg(base) is None or not getattr(base, "_supports_default_dynamic_cache", lambda: True)():
        return f"{type(base).__name__} has no dynamic KV cache"
    if TRANSFORMERS_API_MISSING is not None:
        return TRANSFORMERS_API_MISSING
    for key, value in base.generation_config.to_diff_dict().items():
        if key in _IGNORED_KEYS or value is None or value in _NEUTRAL_VALUES.get(key, ()):
            continue
        return f"the model's generation_config sets {key}={value!r}"
    return None


@functools.cache
def _preallocated_layer_class():
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        """A `DynamicLayer` whose keys and values are views of buffers sized for the whole decode.

        `DynamicLayer.update` concatenates, copying the whole cache at every step; this one copies the new
        states into place. The attention layers see tensors of the same shape and values (a view instead of a
        fresh tensor), so they compute the same numbers.
        """

        def __init__(self, capacity: int):
            super().__init__()
            self.capacity, self.length = capacity, 0

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                b, h, _, _ = key_states.shape
                self.key_buffer = key_states.new_empty((b, h, self.capacity, key_states.shape[-1]))
                self.value_buffer = value_states.new_empty((b, h, self.capacity, value_states.shape[-1]))
            end = self.length + key_states.shape[-2]
            if end > self.capacity:
                raise RuntimeError(f"KV cache of {self.capacity} positions overflows at {end}")
            self.key_buffer[:, :, self.length : end].copy_(key_states)
            self.value_buffer[:, :, self.length : end].copy_(value_states)
            self.length = end
            self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
            return self.keys, self.values

    return PreallocatedLayer


def new_cache(base: nn.Module, capacity: int):
    """The `DynamicCache` `generate` would make for `base`, full-attention layers preallocated for `capacity` positions."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=base.config.get_text_config(decoder=True))
    layer_class = _preallocated_layer_class()
    cache.layers = [layer_class(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def _forward_kwargs(base: nn.Module) -> dict:
    """The keyword arguments `generate` adds to every forward pass of `base` besides inputs, mask and cache."""
    params = inspect.signature(base.forward).parameters
    return {"use_cache": True, "return_dict": True, **({"logits_to_keep": 1} if "logits_to_keep" in params else {})}


def decode(
    policy: nn.Module,
    prompts: torch.Tensor,
    prompt_mask: torch.Tensor,
    gen: GenerationConfig,
    pad: int,
    eos: int,
    sampler: SeededSampler | None = None,
    return_logprobs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample up to `gen.max_new_tokens` tokens per row, as `policy.generate` samples them.

    Runs under `torch.inference_mode()`; call it with `policy` in eval mode and `unsupported(policy)` None.

    Args:
        prompts: (b, T_p) long, left-padded, on the policy's device.
        prompt_mask: (b, T_p) long/bool, 1 on real tokens.
        gen: do_sample, temperature, top_k, top_p, max_new_tokens (batch_size is the caller's business).
        pad, eos: token ids; a row gets pad after its EOS.
        sampler: per-row seeded draws (pass one only when sampling); None: torch's global generator, or
            argmax when `gen.do_sample` is False.
        return_logprobs: also return log_softmax(logits / temperature) at each emitted token (pad after EOS
            included), what `generate`'s `output_logits` give.

    Returns:
        (tokens (b, t) long, logprobs (b, t) float32 or None) with t <= max_new_tokens: t < max_new_tokens
        exactly when every row emitted EOS at step t.
    """
    with torch.inference_mode():  # no autograd bookkeeping at all; the results are cloned out of it below
        tokens, logprobs = _decode(policy, prompts, prompt_mask, gen, pad, eos, sampler, return_logprobs)
    return tokens.clone(), None if logprobs is None else logprobs.clone()


def _decode(
    policy: nn.Module, prompts: torch.Tensor, prompt_mask: torch.Tensor, gen: GenerationConfig, pad: int, eos: int,
    sampler: SeededSampler | None, return_logprobs: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    base = _base_model(policy)
    b, t_p = prompts.shape
    n = gen.max_new_tokens
    kwargs = _forward_kwargs(base)
    kwargs[cache_kwarg(base)] = new_cache(base, t_p + n)
    positions = (prompt_mask.long().cumsum(-1) - 1).masked_fill(prompt_mask == 0, 0)  # (b, T_p)
    mask = None  # (b, T_p + n) when the prompts have padding; column T_p + s is the s-th new token
    if not bool((prompt_mask == 1).all()):
        mask = prompt_mask.new_ones((b, t_p + n))
        mask[:, :t_p] = prompt_mask
    warpers = sampling_warpers(gen) if gen.do_sample and sampler is None else []
    unfinished = torch.ones(b, dtype=torch.bool, device=prompts.device)
    tokens, logprobs = [], []
    inputs = prompts
    for step in range(n):
        out = policy(input_ids=inputs, attention_mask=None if mask is None else mask[:, : t_p + step],
                     position_ids=positions, **kwargs)
        logits = out.logits[:, -1].to(copy=True, dtype=torch.float32)  # (b, V)
        del out
        if sampler is not None:
            token = sampler.draw(logits)
        elif gen.do_sample:
            scores = logits
            for warp in warpers:
                scores = warp(None, scores)
            token = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            token = torch.argmax(logits, dim=-1)
        token = token.masked_fill(~unfinished, pad)  # (b,)
        tokens.append(token)
        if return_logprobs:
            logprobs.append(gather_logprobs((logits / gen.temperature).unsqueeze(1), token.unsqueeze(1)))  # (b, 1)
        unfinished &= token != eos
        if step == n - 1 or not bool(unfinished.any()):
            break
        inputs = token.unsqueeze(1)  # (b, 1)
        positions = positions[:, -1:] + 1
    return torch.stack(tokens, dim=1), torch.cat(logprobs, dim=1) if return_logprobs else None
