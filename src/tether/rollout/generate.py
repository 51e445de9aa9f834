"""Sampling responses from a policy: left padding, temperature, EOS truncation.

Responses end at the first EOS (kept, so the model learns to stop); everything after it becomes pad,
and pad is never EOS (docs/architecture.md 6.2). A response that never emits EOS runs to `max_new_tokens` and is
flagged by `response_mask[:, -1]` being True without an EOS there.

The tokens come from tether's decode loop (`rollout/decode.py`, `generation.engine: tether`, the default),
which samples exactly what Hugging Face `generate` samples (same tokens for the same seed, same logprobs)
in less time, or from `generate` itself (`generation.engine: hf`, and for any model or setting the loop
does not cover: `decode.unsupported`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tether.config import GenerationConfig
from tether.data.tokenize import left_pad
from tether.ops import gather_logprobs, response_mask_from_eos
from tether.rollout import decode
from tether.rollout.seeding import SeededSampler


@dataclass
class Generation:
    """Prompts and sampled responses of one batch."""

    prompts: torch.Tensor  # (B, T_p) long, left-padded
    prompt_mask: torch.Tensor  # (B, T_p) long
    responses: torch.Tensor  # (B, T_r) long, pad after EOS
    response_mask: torch.Tensor  # (B, T_r) bool, True up to and including EOS
    ended: torch.Tensor  # (B,) bool, True where the response emitted EOS
    sampling_logprobs: torch.Tensor | None = None  # (B, T_r) from the generation engine's own logits


def _pad_right(t: torch.Tensor, width: int, value: int | float) -> torch.Tensor:
    if t.shape[1] >= width:
        return t
    pad = torch.full((t.shape[0], width - t.shape[1]), value, dtype=t.dtype, device=t.device)
    return torch.cat([t, pad], dim=1)


@torch.no_grad()
def generate(
    policy: nn.Module,
    tokenizer,
    prompt_ids: list[list[int]],
    gen: GenerationConfig,
    device: torch.device,
    return_sampling_logprobs: bool = False,
    seeds: list[int] | None = None,
    adapter_names: list[str] | None = None,
) -> Generation:
    """Sample one response per prompt, in chunks of `gen.batch_size`.

    With `gen.engine == "tether"` and a model the decode loop supports, `rollout/decode.py::decode` samples;
    otherwise HF `policy.generate`. Both draw the same tokens from the same random numbers.

    Args:
        prompt_ids: B lists of token ids (already formatted and truncated).
        gen: sampling settings (temperature, top-k/top-p, max_new_tokens, engine).
        return_sampling_logprobs: also return the logprobs the engine sampled from (for the
            rollout-logprob check, docs/architecture.md 6.8).
        seeds: one seed per prompt: each response is sampled with its own generator (`rollout/seeding.py`),
            so it does not depend on batching or sharding. None: torch's global generator.
        adapter_names: with a peft model holding several adapters, the adapter of each prompt (`models/adapters.py`;
            `BASE` for none): one batch answers for several adapters at once. HF `generate` samples then.

    Returns:
        A `Generation` with all tensors on `device`.
    """
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    ids, mask = left_pad(prompt_ids, pad)
    ids, mask = ids.to(device), mask.to(device)
    use_loop = gen.engine == "tether" and decode.unsupported(policy) is None and adapter_names is None
    if gen.engine == "tether" and decode.TRANSFORMERS_API_MISSING is not None:
        decode.warn_fallback(decode.TRANSFORMERS_API_MISSING)
    was_training = policy.training
    policy.eval()
    responses, sampling = [], []
    for i in range(0, ids.shape[0], gen.batch_size):
        chunk_ids, chunk_mask = ids[i : i + gen.batch_size], mask[i : i + gen.batch_size]
        # draws the token; HF's greedy decoding then takes it
        sampler = SeededSampler(gen, seeds[i : i + gen.batch_size]) if seeds is not None and gen.do_sample else None
        if use_loop:
            new, logprobs = decode.decode(policy, chunk_ids, chunk_mask, gen, pad, eos, sampler, return_sampling_logprobs)
        else:
            names = adapter_names[i : i + gen.batch_size] if adapter_names is not None else None
            new, logprobs = _hf_generate(policy, chunk_ids, chunk_mask, gen, pad, eos, sampler, return_sampling_logprobs, names)
        responses.append(new)
        if logprobs is not None:
            sampling.append(logprobs)
    policy.train(was_training)
    return assemble_generation(ids, mask, responses, sampling, pad, eos)


def _hf_generate(
    policy: nn.Module, ids: torch.Tensor, mask: torch.Tensor, gen: GenerationConfig, pad: int, eos: int,
    sampler: SeededSampler | None, return_logprobs: bool, adapter_names: list[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk with HF `generate`: (b, t) new tokens and, if asked, their (b, t) sampling logprobs."""
    sample = gen.do_sample and sampler is None
    extra = {"adapter_names": adapter_names} if adapter_names is not None else {}
    out = policy.generate(
        **extra,
        input_ids=ids,
        attention_mask=mask,
        do_sample=sample,
        temperature=gen.temperature if sample else None,
        top_k=gen.top_k if sample else None,
        top_p=gen.top_p if sample else None,
        max_new_tokens=gen.max_new_tokens,
        pad_token_id=pad,
        eos_token_id=eos,
        return_dict_in_generate=True,
        output_logits=return_logprobs,
        logits_processor=[sampler] if sampler else None,
    )
    new = out.sequences[:, ids.shape[1] :]  # (b, t)
    if not return_logprobs:
        return new, None
    logits = torch.stack(out.logits, dim=1).float() / gen.temperature  # (b, t, V)
    return new, gather_logprobs(logits, new)


def assemble_generation(
    prompts: torch.Tensor, prompt_mask: torch.Tensor, responses: list[torch.Tensor],
    sampling: list[torch.Tensor], pad: int, eos: int,
) -> Generation:
    """One `Generation` from chunks of sampled tokens: pad to one width, cut at the first EOS.

    Args:
        prompts, prompt_mask: (B, T_p) left-padded prompts and their mask.
        responses: chunks of new tokens, (b_i, t_i) each, sum of b_i = B, in prompt order.
        sampling: the matching (b_i, t_i) sampling logprobs (columns past a chunk's width get 0), or [].
        pad, eos: token ids.
    """
    width = max(r.shape[1] for r in responses)
    resp = torch.cat([_pad_right(r, width, pad) for r in responses])  # (B, T_r)
    response_mask = response_mask_from_eos(resp, eos, pad)  # (B, T_r)
    resp = resp.masked_fill(~response_mask, pad)
    ended = ((resp == eos) & response_mask).any(dim=1)
    sampling_logprobs = torch.cat([_pad_right(s, width, 0.0) for s in sampling]) if sampling else None
    return Generation(prompts, prompt_mask, resp, response_mask, ended, sampling_logprobs)


def decode_responses(tokenizer, responses: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
    """Text of each response without EOS and pad."""
    out = []
    for row, m in zip(responses.tolist(), response_mask.tolist()):
        toks = [t for t, keep in zip(row, m) if keep and t != tokenizer.eos_token_id]
        out.append(tokenizer.decode(toks, skip_special_tokens=True).strip())
    return out
