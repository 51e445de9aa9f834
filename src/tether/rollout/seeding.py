"""Per-sample seeded sampling: each response draws its noise from its own generator.

With one torch generator for a whole batch, the token sampled for a response depends on which other
responses share its batch and in which order (they consume the same random stream). Seeding one
generator per response from (seed, stream, sample index) removes that dependence: a response is the same
whether it is sampled alone, in a batch of 64, or on process 3 of 8. Data-parallel rollouts rely on this
so that a run on P processes samples exactly what a run on one process samples (docs/distributed.md).

HF `generate` has no per-row generator, so the sampling step is done by a logits processor that runs
last: it applies the temperature / top-k / top-p warpers HF itself uses, draws one token per row with
that row's generator, and returns logits that are -inf everywhere except the drawn token, which greedy
decoding then picks. The raw logits that `generate` returns (`output_logits`) are untouched. tether's own
decode loop (`rollout/decode.py`) calls `SeededSampler.draw` directly: the same warpers, the same draws.
"""

from __future__ import annotations

import hashlib

import torch
from transformers.generation.logits_process import (
    LogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
)

from tether.config import GenerationConfig


def sample_seeds(seed: int, stream: str, indices: range | list[int]) -> list[int]:
    """One 63-bit seed per sample index, a hash of (seed, stream, index).

    Args:
        seed: the run's seed (`train.seed`).
        stream: what is sampled, e.g. `rollout-12` (step 12) or `judge`: different streams get unrelated noise.
        indices: global sample indices (position in the global batch, not in a process's shard).
    """
    out = []
    for i in indices:
        digest = hashlib.blake2b(f"{seed}/{stream}/{i}".encode(), digest_size=8).digest()
        out.append(int.from_bytes(digest, "little") >> 1)
    return out


def sampling_warpers(gen: GenerationConfig) -> list[LogitsProcessor]:
    """HF's sampling warpers for `gen`, in the order and with the settings `generate` uses.

    Temperature (left out at 1.0, as `generate` leaves it out), then top-k (0 = off), then top-p (1.0 = off),
    each keeping at least one token. Each maps (b, V) float scores to (b, V), filtered tokens at -inf; none
    reads its `input_ids` argument.
    """
    warpers: list[LogitsProcessor] = []
    if gen.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(gen.temperature))
    if gen.top_k:
        warpers.append(TopKLogitsWarper(gen.top_k))
    if gen.top_p < 1.0:
        warpers.append(TopPLogitsWarper(gen.top_p))
    return warpers


class SeededSampler(LogitsProcessor):
    """A `generate` logits processor that samples each row with its own `torch.Generator`.

    Args:
        gen: temperature, top_k and top_p, applied as HF's sampling warpers apply them.
        seeds: one seed per row of the batch passed to `generate`.
    """

    def __init__(self, gen: GenerationConfig, seeds: list[int]):
        self.warpers = sampling_warpers(gen)
        self.seeds = seeds
        self.generators: list[torch.Generator] | None = None

    def draw(self, scores: torch.Tensor, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(b, V) next-token logits -> (b,) long tokens, row i drawn with generator i.

        The generators are created on the first call (on the scores' device) and advance by one draw per
        call, so successive calls sample successive positions.
        """
        if self.generators is None:
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        probs = torch.softmax(scores.float(), dim=-1)  # (b, V)
        return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators)])  # (b,)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """(b, V) next-token scores -> (b, V) with 0 at the drawn token and -inf elsewhere."""
        tokens = self.draw(scores, input_ids)  # (b,)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, tokens.unsqueeze(1), 0.0)
