"""Generation backends of online RL: the engine that samples rollouts, and how it gets the new weights.

PPO and GRPO ask a backend for one response per prompt and hand it the policy after every update:

    backend = make_backend(cfg.generation, policy, tokenizer, device, max_model_len, seed)
    gen = backend.generate(prompt_ids, return_sampling_logprobs=True)  # a `Generation`
    ...                                                                # optimizer steps on the policy
    backend.sync_weights(policy)                                       # the next rollout samples from them

- `HFBackend` (`generation.backend: policy`, the default): sampling on the training policy itself
  (`rollout/generate.py::generate`: tether's decode loop, or Hugging Face `generate` with
  `generation.engine: hf`). The engine *is* the policy, so `sync_weights` has nothing to do.
- `VLLMBackend` (`generation.backend: vllm`, CUDA only): a vLLM engine in the same process and on the same
  GPU, built from the policy's config with dummy weights and filled by `sync_weights` at once. It receives
  the full weights after every update (LoRA adapters folded into the base weights, `merged_weights`),
  samples with the same temperature/top_k/top_p/max_new_tokens, and returns the logprob vLLM itself
  computed for each sampled token (`logprobs_mode="processed_logprobs"`: log-softmax of logits / T, the
  distribution it sampled from).

Guard against a silent mismatch (docs/architecture.md 6.8): every iteration the trainer compares the backend's sampling
logprobs with its own forward pass of the same weights (`trainers/online.py::check_rollout_logprobs`) and stops
when the mean absolute difference over real response tokens exceeds 1e-3 (float32 policy) or 5e-2 (bf16/fp16).
With the HF backend the two are the same computation (differences ~1e-6). With vLLM they are different
kernels (paged attention, fused layers, other bf16 rounding) on the same weights, so the bf16 tolerance
applies; this project has not measured vLLM's noise (its test machine has no GPU; the GPU tests in
tests/rollout/test_backends.py assert it stays under 5e-2). Weights left at vLLM's dummy values (a name
`load_weights` did not match) or a wrong temperature give differences of order 1 and stop the run at
once. An engine a few updates behind differs by about as much as those updates moved the policy: the
float32 check catches one missed sync on the tiny test models, while in bf16 it takes as many missed
syncs as it takes the policy to move by 5e-2 per token. Each iteration logs `rollout/logprob_diff_mean` and
`rollout/logprob_diff_max`. Since vLLM's logprobs are those of the distribution after top-k/top-p
truncation while the trainer's are of the full distribution, PPOConfig refuses vLLM with top-k/top-p
truncation while the check is on.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Iterator
from typing import Protocol

import torch
from torch import nn

from tether.config import RolloutGenerationConfig
from tether.data.tokenize import left_pad
from tether.errors import ConfigError
from tether.models.load import is_peft
from tether.rollout.generate import Generation, assemble_generation, generate

VLLM_MIN_VERSION = "0.10.2"  # the first release with `logprobs_mode` (logprobs after temperature)


class GenerationBackend(Protocol):
    """What the trainers need from a generation engine."""

    def generate(
        self, prompt_ids: list[list[int]], return_sampling_logprobs: bool = False, seeds: list[int] | None = None
    ) -> Generation:
        """One sampled response per prompt (B lists of token ids, already formatted and truncated).

        `seeds`: one sampling seed per prompt (`rollout/seeding.py`), so a response does not depend on the
        batch or process it is generated in; None: the engine's own stream of randomness.

        Returns a `Generation`: left-padded prompts (B, T_p), responses (B, T_r) cut at the first EOS,
        response_mask (B, T_r), ended (B,), and with `return_sampling_logprobs` the engine's own
        logprob of each sampled token (B, T_r), 0 past the end.
        """
        ...

    def sync_weights(self, policy: nn.Module) -> None:
        """Make the next `generate` sample from `policy`'s current weights (called after every update)."""
        ...


class HFBackend:
    """Sampling on the training policy itself (`rollout/generate.py::generate`), in chunks of `gen.batch_size` prompts."""

    def __init__(self, policy: nn.Module, tokenizer, gen: RolloutGenerationConfig, device: torch.device):
        self.policy, self.tokenizer, self.gen, self.device = policy, tokenizer, gen, device

    def generate(
        self, prompt_ids: list[list[int]], return_sampling_logprobs: bool = False, seeds: list[int] | None = None
    ) -> Generation:
        return generate(self.policy, self.tokenizer, prompt_ids, self.gen, self.device, return_sampling_logprobs, seeds)

    def sync_weights(self, policy: nn.Module) -> None:
        """Nothing to copy: generation runs on the very module the optimizer updates."""


def merged_weights(policy: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights under Hugging Face checkpoint names, LoRA adapters folded in.

    For a peft model each adapted weight becomes W + scale * B @ A (peft's `get_delta_weight`, which also
    handles GPT-2's transposed Conv1D layout), summed in float32 and rounded once to W's dtype; the
    adapter tensors themselves are left out. Tensors are produced one at a time, so a consumer that loads
    them one by one (vLLM's `load_weights`) holds at most one merged matrix extra.

    Yields:
        (name, tensor) pairs that `load_state_dict` of the plain base model accepts as they are.
    """
    if not is_peft(policy):
        yield from policy.state_dict().items()
        return
    from peft.tuners.lora import LoraLayer

    base = policy.get_base_model()
    adapted = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    for name, tensor in base.state_dict().items():
        if ".lora_" in name:
            continue
        name = name.replace(".base_layer.", ".")
        module_name, _, leaf = name.rpartition(".")
        layer = adapted.get(module_name)
        if layer is not None and leaf == "weight" and not layer.merged:
            delta = sum(layer.get_delta_weight(a).float() for a in layer.active_adapters if a in layer.lora_A)
            tensor = (tensor.float() + delta).to(tensor.dtype)
        yield name, tensor


def vllm_problem(device: torch.device) -> str | None:
    """Why `generation.backend=vllm` cannot run here, or None."""
    if importlib.util.find_spec("vllm") is None:
        return f"the vllm package is not installed (pip install 'vllm>={VLLM_MIN_VERSION}')"
    from importlib.metadata import version

    from packaging.version import Version

    found = version("vllm")
    if Version(found) < Version(VLLM_MIN_VERSION):
        return f"vllm {found} is too old: logprobs after temperature need vllm>={VLLM_MIN_VERSION}"
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"vLLM needs a CUDA GPU, but the trainer runs on '{device}' (train.device)"
    return None


def require_backend(gen: RolloutGenerationConfig, device: torch.device) -> None:
    """Check, before any model is loaded, that the configured backend can run on this machine.

    Raises:
        ConfigError: `generation.backend=vllm` without the vllm package, with a too old one, or without CUDA.
    """
    if gen.backend == "vllm":
        problem = vllm_problem(device)
        if problem:
            raise ConfigError(f"generation.backend=vllm: {problem}; use generation.backend=policy")


def make_backend(
    gen: RolloutGenerationConfig, policy: nn.Module, tokenizer, device: torch.device, max_model_len: int, seed: int,
) -> GenerationBackend:
    """The backend `gen.backend` names, ready to sample from `policy`'s current weights.

    Args:
        max_model_len: longest prompt + response in tokens (vLLM sizes its KV cache by it).
        seed: engine seed (vLLM); per-request seeds come from torch's RNG.

    Raises:
        ConfigError: see `require_backend`.
    """
    require_backend(gen, device)
    if gen.backend == "vllm":
        return VLLMBackend(policy, tokenizer, gen, device, max_model_len, seed)
    return HFBackend(policy, tokenizer, gen, device)


_VLLM_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class VLLMBackend:
    """A vLLM engine colocated with the trainer; full (merged) weights pushed after every update.

    The engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so `sync_weights` hands vLLM's
    `load_weights` the policy's GPU tensors directly (`LLM.apply_model`), then empties the prefix cache,
    whose blocks were computed with the old weights. Sampling noise comes from one seed per request drawn
    from torch's global RNG, which checkpoints save, so a resumed run draws the same seeds (vLLM kernels
    themselves are not guaranteed bit-reproducible). `gen.batch_size` is unused: vLLM batches continuously.
    LoRA policies are served as merged full weights (one code path, full decoding speed), not as vLLM adapters.
    """

    def __init__(
        self, policy: nn.Module, tokenizer, gen: RolloutGenerationConfig, device: torch.device, max_model_len: int, seed: int,
    ):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # must be set before the engine starts
        from vllm import LLM

        self.tokenizer, self.gen, self.device = tokenizer, gen, device
        base = policy.get_base_model() if is_peft(policy) else policy
        dtype = base.get_input_embeddings().weight.dtype
        # vLLM reads the architecture and tokenizer from a directory; the weights come from sync_weights
        self._dir = tempfile.TemporaryDirectory(prefix="tether-vllm-")
        base.config.save_pretrained(self._dir.name)
        tokenizer.save_pretrained(self._dir.name)
        o = gen.vllm
        self.llm = LLM(
            model=self._dir.name, tokenizer=self._dir.name, dtype=_VLLM_DTYPES[dtype], load_format="dummy", seed=seed,
            max_model_len=max_model_len, gpu_memory_utilization=o.gpu_memory_utilization,
            enable_prefix_caching=o.enable_prefix_caching, enforce_eager=o.enforce_eager,
            logprobs_mode="processed_logprobs",
        )
        self.sync_weights(policy)

    def sampling_params(self, n: int, with_logprobs: bool, seeds: list[int] | None = None) -> list:
        """One `SamplingParams` per prompt with the trainer's settings and the given seeds (else from torch's RNG)."""
        from vllm import SamplingParams

        g = self.gen
        if seeds is None:
            seeds = torch.randint(0, 2**31 - 1, (n,)).tolist()
        return [
            SamplingParams(
                n=1, max_tokens=g.max_new_tokens, temperature=g.temperature if g.do_sample else 0.0,
                top_k=g.top_k if g.do_sample and g.top_k > 0 else -1, top_p=g.top_p if g.do_sample else 1.0,
                stop_token_ids=[self.tokenizer.eos_token_id], logprobs=0 if with_logprobs else None,
                seed=s,
            )
            for s in seeds
        ]

    @torch.no_grad()
    def generate(
        self, prompt_ids: list[list[int]], return_sampling_logprobs: bool = False, seeds: list[int] | None = None
    ) -> Generation:
        params = self.sampling_params(len(prompt_ids), return_sampling_logprobs, seeds)
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        responses, sampling = [], []
        for out in outputs:  # in prompt order
            completion = out.outputs[0]
            tokens = list(completion.token_ids)  # ends with EOS when it stopped there
            responses.append(torch.tensor([tokens], dtype=torch.long))
            if return_sampling_logprobs:
                sampling.append(torch.tensor([[step[t].logprob for step, t in zip(completion.logprobs, tokens)]]))
        ids, mask = left_pad(prompt_ids, self.tokenizer.pad_token_id)
        g = assemble_generation(ids, mask, responses, sampling, self.tokenizer.pad_token_id, self.tokenizer.eos_token_id)
        return Generation(**{k: None if t is None else t.to(self.device) for k, t in vars(g).items()})

    @torch.no_grad()
    def sync_weights(self, policy: nn.Module) -> None:
        """Push the full weights. A DDP-wrapped policy is unwrapped; FSDP-sharded weights are not gathered."""
        from accelerate.utils import extract_model_from_parallel

        weights = merged_weights(extract_model_from_parallel(policy))
        self.llm.apply_model(lambda model: model.load_weights(weights))
        self.llm.reset_prefix_cache()
