"""Typed records that cross module boundaries.

Examples are what data files hold (one per line); batches are padded tensors ready for a model; a
`Rollout` is everything PPO needs from one round of generation and scoring.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch


# --------------------------------------------------------------------------- examples (one data row)


@dataclass(frozen=True)
class SFTExample:
    """One supervised example: the model learns `response` given `prompt`."""

    prompt: str
    response: str
    source: str = ""  # "file:line", for error messages


@dataclass(frozen=True)
class PreferenceExample:
    """One human (or AI) preference: `chosen` was preferred over `rejected` for `prompt`."""

    prompt: str
    chosen: str
    rejected: str
    margin: float | None = None  # optional rating gap (Llama 2 margin loss)
    source: str = ""


@dataclass(frozen=True)
class BinaryFeedbackExample:
    """One thumbs-up / thumbs-down judgement of a single completion (KTO data)."""

    prompt: str
    completion: str
    label: bool  # True: desirable (thumbs up)
    source: str = ""


@dataclass(frozen=True)
class PromptExample:
    """A prompt to answer (PPO, eval, red teaming)."""

    prompt: str
    source: str = ""


# --------------------------------------------------------------------------- batches


def _to(obj, device: torch.device | str):
    kwargs = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        kwargs[f.name] = value.to(device) if isinstance(value, torch.Tensor) else value
    return type(obj)(**kwargs)


@dataclass
class SFTBatch:
    """Right-padded prompt+response sequences; `loss_mask` is True on response tokens (and EOS)."""

    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long
    loss_mask: torch.Tensor  # (B, T) bool, True where input_ids[:, t] is a response token

    def to(self, device) -> "SFTBatch":
        return _to(self, device)


@dataclass
class PreferenceBatch:
    """Chosen and rejected sequences tokenized for a reward model (or a policy, for DPO)."""

    chosen_input_ids: torch.Tensor  # (B, T)
    chosen_attention_mask: torch.Tensor  # (B, T)
    rejected_input_ids: torch.Tensor  # (B, T)
    rejected_attention_mask: torch.Tensor  # (B, T)
    margin: torch.Tensor | None = None  # (B,)
    chosen_loss_mask: torch.Tensor | None = None  # (B, T) bool, response tokens (DPO)
    rejected_loss_mask: torch.Tensor | None = None  # (B, T) bool

    def to(self, device) -> "PreferenceBatch":
        return _to(self, device)


@dataclass
class Rollout:
    """One PPO batch of generated responses with everything scored.

    Shapes: B prompts, T_p prompt tokens (left-padded), T_r response tokens (right-padded after EOS).
    """

    prompts: torch.Tensor  # (B, T_p) long, left-padded
    prompt_mask: torch.Tensor  # (B, T_p) long
    responses: torch.Tensor  # (B, T_r) long, pad after EOS
    response_mask: torch.Tensor  # (B, T_r) bool
    logprobs: torch.Tensor  # (B, T_r) policy logprobs at sampling time (= old_logprobs)
    ref_logprobs: torch.Tensor  # (B, T_r)
    values: torch.Tensor  # (B, T_r)
    scores: torch.Tensor  # (B,) reward-model score (normalised, penalties applied)
    raw_scores: torch.Tensor  # (B,) reward-model score before penalties
    prompt_texts: list[str] = field(default_factory=list)
    response_texts: list[str] = field(default_factory=list)

    @property
    def sequences(self) -> torch.Tensor:
        return torch.cat([self.prompts, self.responses], dim=1)  # (B, T)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask.long()], dim=1)  # (B, T)


# --------------------------------------------------------------------------- reward-model feedback records


@dataclass(frozen=True)
class PreferenceTie(PreferenceExample):
    """Two replies to one prompt judged equally good (a tie kept from a ranking); their order is arbitrary.

    Trained with target probability 1/2 (`tether.losses.classifier.tied_bradley_terry_loss`) and left
    out of pairwise accuracy.
    """


@dataclass(frozen=True)
class RankingExample:
    """K completions of one prompt ranked by a labeler; `ranking[i]` is the rank of `completions[i]`.

    Rank 1 is best; equal ranks are ties. `ratings[i]`, when given, is a numeric rating of
    `completions[i]` (higher is better) used for margins.
    """

    prompt: str
    completions: tuple[str, ...]
    ranking: tuple[int, ...]
    ratings: tuple[float, ...] | None = None
    source: str = ""
