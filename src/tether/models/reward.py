"""Reward models: any HF sequence-classification model with one output, read as a scalar score.

A reward-model directory written by `tether rm` holds the HF model and tokenizer plus `tether_reward.json`
with the normalisation (score = gain * raw + bias) and the prompt template it was trained with, so its
scores mean the same thing in every later stage. The reward model has its own tokenizer: policy text
is decoded and re-tokenized for it, so a BERT-style encoder can score a Llama-style policy.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from tether.config import DEFAULT_PROMPT_TEMPLATE
from tether.data.tokenize import reward_texts, tokenize_for_reward
from tether.errors import ModelError
from tether.models.load import check_model_path, disable_dropout, load_tokenizer, resolve_path
from tether.models.tiny import TINY_NAMES, tiny_sequence_classifier

META_FILE = "tether_reward.json"


@dataclass
class RewardMeta:
    gain: float = 1.0
    bias: float = 0.0
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    max_length: int = 256


def load_sequence_classifier(name_or_path: str, num_labels: int = 1, dtype: torch.dtype = torch.float32, seed: int = 0):
    """Load (or build, for tiny names) a sequence classifier and its tokenizer.

    Raises:
        ModelError: missing directory or weights.
    """
    from transformers import AutoModelForSequenceClassification

    if name_or_path in TINY_NAMES:
        model, tok = tiny_sequence_classifier(name_or_path.split("-", 1)[1], num_labels=num_labels, seed=seed)
    else:
        path = resolve_path(name_or_path)
        check_model_path(path)
        tok = load_tokenizer(path)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load a sequence classifier from {path}: {str(exc).splitlines()[0]}") from None
        if len(tok) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tok))
    model.config.pad_token_id = tok.pad_token_id
    disable_dropout(model)
    return model.to(dtype), tok


class RewardModel(nn.Module):
    """A scalar reward model: text in, normalised score out."""

    def __init__(self, model: nn.Module, tokenizer, meta: RewardMeta | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.meta = meta or RewardMeta()

    @classmethod
    def load(cls, path: str, device: torch.device, dtype: torch.dtype = torch.float32) -> "RewardModel":
        model, tok = load_sequence_classifier(path, dtype=dtype)
        meta_path = Path(resolve_path(path)) / META_FILE
        meta = RewardMeta(**json.loads(meta_path.read_text())) if meta_path.is_file() else RewardMeta()
        rm = cls(model.to(device), tok, meta)
        rm.eval()
        for p in rm.parameters():
            p.requires_grad_(False)
        return rm

    def raw_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unnormalised scores: (B, T) -> (B,) float32."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str], batch_size: int = 32, max_length: int | None = None) -> torch.Tensor:
        """Normalised scores of replies to prompts: lists of B strings -> (B,) float32 on CPU."""
        texts = reward_texts(prompts, responses, self.meta.prompt_template)
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(texts), batch_size):
            ids, mask = tokenize_for_reward(self.tokenizer, texts[i : i + batch_size], max_length or self.meta.max_length)
            raw = self.raw_scores(ids.to(device), mask.to(device))
            out.append((self.meta.gain * raw + self.meta.bias).cpu())
        return torch.cat(out)

    def save(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        (out / META_FILE).write_text(json.dumps(asdict(self.meta), indent=2))


class FunctionReward:
    """A plain Python reward function used in place of a reward model.

    The function takes (prompts: list[str], responses: list[str]) and returns one number per response
    (a list or a tensor); e.g. an exact-match or format check.
    """

    def __init__(self, fn, name: str = "function"):
        self.fn = fn
        self.name = name
        self.tokenizer = None

    @classmethod
    def from_spec(cls, spec: str) -> "FunctionReward":
        """Import 'package.module:function'.

        Raises:
            ModelError: when the module or function cannot be imported or is not callable.
        """
        import importlib

        module, _, attr = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ModelError(f"reward_model.function '{spec}': cannot import ({exc}); expected 'module:function'") from None
        if not callable(fn):
            raise ModelError(f"reward_model.function '{spec}' is not callable")
        return cls(fn, spec)

    def score(self, prompts: list[str], responses: list[str], batch_size: int = 32, max_length: int | None = None) -> torch.Tensor:
        """Scores: lists of B strings -> (B,) float32.

        Raises:
            ModelError: when the function returns the wrong number of scores.
        """
        out = torch.as_tensor(self.fn(prompts, responses), dtype=torch.float32).flatten()
        if out.numel() != len(responses):
            raise ModelError(f"reward function {self.name} returned {out.numel()} scores for {len(responses)} responses")
        return out


def load_reward(path: str | None, function: str | None, device: torch.device):
    """A `RewardModel` from a directory or a `FunctionReward` from 'module:function'."""
    if function is not None:
        return FunctionReward.from_spec(function)
    return RewardModel.load(path, device)
