"""Reward models: scalar (Bradley-Terry) and 2-class classifier heads, ensembles, and Python functions.

A reward-model directory written by `tether rm` holds the HF model and tokenizer plus `tether_reward.json`
with the kind of head (`scalar`: one output is the score; `classifier`: two classes, the positive-class
logit is the score), the normalisation (score = gain * raw + bias) and the prompt template it was trained
with, so its scores mean the same thing in every later stage. The reward model has its own tokenizer:
policy text is decoded and re-tokenized for it, so a BERT-style encoder can score a Llama-style policy.

An ensemble directory holds `tether_ensemble.json` listing member directories; it loads as an
`EnsembleReward` whose score is the members' mean, or the conservative mean - k * std (Coste et al. 2023).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from tether.config import DEFAULT_PROMPT_TEMPLATE
from tether.data.tokenize import reward_texts, tokenize_for_reward
from tether.errors import ModelError
from tether.models.load import check_model_path, disable_dropout, load_tokenizer, resolve_path
from tether.models.tiny import TINY_NAMES, tiny_sequence_classifier
from tether.ops import upcast

META_FILE = "tether_reward.json"
ENSEMBLE_FILE = "tether_ensemble.json"
KINDS = ("scalar", "classifier")
POOLINGS = ("model", "mean")


@dataclass
class RewardMeta:
    gain: float = 1.0
    bias: float = 0.0
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    max_length: int = 256
    kind: str = "scalar"  # "scalar": logits[:, 0]; "classifier": logits[:, positive_index] of 2 classes
    positive_index: int = 1
    pooling: str = "model"  # "model": the backbone's own pooling; "mean": masked mean of the last hidden states

    @property
    def num_labels(self) -> int:
        return 2 if self.kind == "classifier" else 1

    @classmethod
    def read(cls, path: Path) -> "RewardMeta":
        """Read `tether_reward.json`; keys this version does not know are ignored, missing ones default.

        Raises:
            ModelError: invalid JSON or an unknown kind.
        """
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path}: cannot read reward-model metadata ({exc})") from None
        known = {f.name for f in fields(cls)}
        meta = cls(**{k: v for k, v in raw.items() if k in known})
        if meta.kind not in KINDS:
            raise ModelError(f"{path}: kind must be one of {KINDS}, got {meta.kind!r}")
        if meta.pooling not in POOLINGS:
            raise ModelError(f"{path}: pooling must be one of {POOLINGS}, got {meta.pooling!r}")
        return meta


def _meta_for(path: str) -> RewardMeta:
    """The metadata of a model directory: its `tether_reward.json`, else inferred from config.json."""
    if path in TINY_NAMES:
        return RewardMeta()
    resolved = Path(resolve_path(path))
    if (resolved / META_FILE).is_file():
        return RewardMeta.read(resolved / META_FILE)
    try:
        config = json.loads((resolved / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return RewardMeta()
    # only a model that already has a sequence-classification head can be a 2-class classifier
    has_head = any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or [])
    if has_head and len(config.get("id2label") or {}) == 2:
        return RewardMeta(kind="classifier")
    return RewardMeta()


class MaskedMeanPooler(nn.Module):
    """Replaces an encoder's [CLS] pooler: the mean of the last hidden states over real (unmasked) tokens.

    (B, T, H) hidden states -> (B, H). The attention mask of the current forward pass is handed over by a
    forward pre-hook on the encoder (`use_mean_pooling`), since HF poolers receive only the hidden states.
    This is the pooling sentence-embedding encoders such as all-MiniLM-L6-v2 are trained with (Reimers and
    Gurevych 2019, Sentence-BERT, sec. 3), whereas their [CLS] pooler was never trained for it.
    """

    def __init__(self):
        super().__init__()
        self.attention_mask: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.attention_mask is None:
            return hidden_states.mean(dim=1)
        mask = self.attention_mask.to(hidden_states.dtype).unsqueeze(-1)  # (B, T, 1)
        return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def use_mean_pooling(model: nn.Module) -> nn.Module:
    """Swap the [CLS] pooler of an encoder sequence classifier (BERT, MiniLM, DeBERTa ...) for masked mean pooling.

    The head (dropout + linear classifier) then reads the mean over real tokens. Weights, state-dict keys
    (less the unused pooler) and `save_pretrained` are unchanged; `tether_reward.json` records `pooling: mean`
    so that `RewardModel.load` pools the same way again.

    Raises:
        ModelError: a model without a pooler module (decoder classifiers pool the last token inside forward).
    """
    encoder = model.base_model
    if getattr(encoder, "pooler", None) is None:
        raise ModelError(
            f"pooling 'mean' needs an encoder with a pooler module (BERT-style); {type(model).__name__} has none"
        )
    pooler = MaskedMeanPooler()
    encoder.pooler = pooler

    def hand_over_mask(module, args, kwargs):
        pooler.attention_mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)

    encoder.register_forward_pre_hook(hand_over_mask, with_kwargs=True)
    return model


def load_sequence_classifier(
    name_or_path: str, num_labels: int = 1, dtype: torch.dtype = torch.float32, seed: int = 0, pooling: str = "model",
    tokenizer: str | None = None,
):
    """Load (or build, for tiny names) a sequence classifier and its tokenizer.

    `pooling="mean"` replaces an encoder's [CLS] pooler by masked mean pooling (`use_mean_pooling`); `tokenizer` is a
    tokenizer path other than the model's own.

    Raises:
        ModelError: missing directory or weights; mean pooling on a model without a pooler.
    """
    from transformers import AutoModelForSequenceClassification

    if name_or_path in TINY_NAMES:
        model, tok = tiny_sequence_classifier(name_or_path.split("-", 1)[1], num_labels=num_labels, seed=seed)
    else:
        path = resolve_path(name_or_path)
        check_model_path(path)
        tok = load_tokenizer(tokenizer or path)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load a sequence classifier from {path}: {str(exc).splitlines()[0]}") from None
        if len(tok) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tok))
    model.config.pad_token_id = tok.pad_token_id
    if pooling == "mean":
        use_mean_pooling(model)
    disable_dropout(model)
    return model.to(dtype), tok


class RewardModel(nn.Module):
    """A reward model: text in, normalised score out; a scalar head or a 2-class classifier head."""

    def __init__(self, model: nn.Module, tokenizer, meta: RewardMeta | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.meta = meta or RewardMeta()

    @classmethod
    def load(cls, path: str, device: torch.device, dtype: torch.dtype = torch.float32):
        """Load a reward-model directory of either kind, frozen and in eval mode.

        The kind comes from `tether_reward.json` (or, for a plain HF model, 2 labels = classifier). An
        ensemble directory (with `tether_ensemble.json`) loads as an `EnsembleReward`, which has the same
        `score`, `tokenizer` and `meta`.

        Raises:
            ModelError: missing directory, weights or unreadable metadata.
        """
        if is_ensemble(path):
            return EnsembleReward.load(path, device, dtype=dtype)
        meta = _meta_for(path)
        model, tok = load_sequence_classifier(path, num_labels=meta.num_labels, dtype=dtype, pooling=meta.pooling)
        rm = cls(model.to(device), tok, meta)
        rm.eval()
        for p in rm.parameters():
            p.requires_grad_(False)
        return rm

    def raw_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unnormalised scores: (B, T) -> (B,) float32; the positive-class logit for a classifier."""
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, num_labels)
        return head_scores(logits, self.meta)

    @torch.no_grad()
    def class_probs(self, prompts: list[str], responses: list[str], batch_size: int = 32, max_length: int | None = None) -> torch.Tensor:
        """P(desirable) of a classifier reward model: lists of B strings -> (B,) float32 on CPU.

        Raises:
            ModelError: for a scalar reward model, which has no classes.
        """
        if self.meta.kind != "classifier":
            raise ModelError("class_probs needs a classifier reward model (kind 'classifier')")
        texts = reward_texts(prompts, responses, self.meta.prompt_template)
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(texts), batch_size):
            ids, mask = tokenize_for_reward(self.tokenizer, texts[i : i + batch_size], max_length or self.meta.max_length)
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()  # (b, 2)
            out.append(logits.softmax(-1)[:, self.meta.positive_index].cpu())
        return torch.cat(out)

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


def head_scores(logits: torch.Tensor, meta: RewardMeta) -> torch.Tensor:
    """Raw scores from head logits: (B, 1) -> logits[:, 0]; (B, 2) classifier -> the positive-class logit."""
    if meta.kind == "classifier":
        from tether.losses.classifier import classifier_reward

        return classifier_reward(logits, meta.positive_index)
    return upcast(logits[:, 0])


# --------------------------------------------------------------------------- ensembles


Combine = Literal["mean", "conservative"]


def is_ensemble(path: str | None) -> bool:
    """Whether `path` is an ensemble directory (holds `tether_ensemble.json`)."""
    return path is not None and path not in TINY_NAMES and (Path(resolve_path(path)) / ENSEMBLE_FILE).is_file()


def read_ensemble(path: str) -> tuple[dict, list[str]]:
    """The manifest of the ensemble directory `path` and its members' directories (absolute).

    Raises:
        ModelError: an unreadable manifest.
    """
    root = Path(resolve_path(path))
    try:
        manifest = json.loads((root / ENSEMBLE_FILE).read_text(encoding="utf-8"))
        return manifest, [str(root / m) if not Path(m).is_absolute() else m for m in manifest["members"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelError(f"{root / ENSEMBLE_FILE}: not a valid ensemble manifest ({exc})") from None


def write_ensemble_manifest(out_dir: str | Path, members: list[str], combine: Combine = "mean", k: float = 1.0) -> Path:
    """Write `tether_ensemble.json` so `out_dir` loads as an ensemble of `members`.

    Args:
        out_dir: the ensemble directory.
        members: member reward-model directories, relative to `out_dir` or absolute.
        combine: default combination ('mean' or 'conservative').
        k: default number of standard deviations subtracted by 'conservative'.

    Returns:
        The manifest path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ENSEMBLE_FILE
    path.write_text(json.dumps({"members": list(members), "combine": combine, "k": k}, indent=2))
    return path


class EnsembleReward:
    """Several reward models scoring the same text, combined into one score per response.

    Ensembles of independently trained reward models (Lakshminarayanan et al. 2017) disagree where the
    data is thin; PPO against the conservative score mean - k * std (Coste et al. 2023, "Reward Model
    Ensembles Help Mitigate Overoptimization", uncertainty-weighted optimisation) is not paid for text
    that only some members like. std is the population standard deviation over members. Each member
    applies its own normalisation first, so members with different raw scales are comparable.
    """

    def __init__(self, members: list, combine: Combine = "mean", k: float = 1.0, names: list[str] | None = None):
        if not members:
            raise ModelError("an ensemble needs at least one member")
        if combine not in ("mean", "conservative"):
            raise ModelError(f"ensemble combine must be 'mean' or 'conservative', got {combine!r}")
        self.members = members
        self.combine = combine
        self.k = float(k)
        self.names = names or [f"member-{i}" for i in range(len(members))]

    @property
    def tokenizer(self):
        return self.members[0].tokenizer

    @property
    def meta(self) -> RewardMeta:
        """The first member's metadata (template, max length); gain/bias are per member."""
        return self.members[0].meta

    @classmethod
    def load(cls, path: str | list[str], device: torch.device, combine: Combine | None = None, k: float | None = None,
             dtype: torch.dtype = torch.float32) -> "EnsembleReward":
        """Load an ensemble directory, or an explicit list of member directories.

        Args:
            path: a directory with `tether_ensemble.json`, or a list of reward-model directories.
            combine, k: override the manifest's combination (defaults 'mean', 1.0 for a list).

        Raises:
            ModelError: an unreadable manifest or a member that cannot be loaded.
        """
        if isinstance(path, (list, tuple)):
            dirs, default_combine, default_k = [str(p) for p in path], "mean", 1.0
        else:
            manifest, dirs = read_ensemble(path)
            default_combine, default_k = manifest.get("combine", "mean"), manifest.get("k", 1.0)
        members = [RewardModel.load(d, device, dtype) for d in dirs]
        for d, m in zip(dirs, members):
            if isinstance(m, EnsembleReward):
                raise ModelError(f"{d}: an ensemble member cannot itself be an ensemble")
        return cls(members, combine or default_combine, default_k if k is None else k, names=dirs)

    def member_scores(self, prompts: list[str], responses: list[str], batch_size: int = 32, max_length: int | None = None) -> torch.Tensor:
        """Every member's normalised scores: lists of B strings -> (M, B) float32 on CPU."""
        return torch.stack([m.score(prompts, responses, batch_size, max_length) for m in self.members])

    @staticmethod
    def combine_scores(member_scores: torch.Tensor, combine: Combine, k: float) -> torch.Tensor:
        """(M, B) member scores -> (B,): the mean, or mean - k * std (population std over members)."""
        mean = member_scores.mean(0)  # (B,)
        if combine == "mean":
            return mean
        return mean - k * member_scores.std(0, unbiased=False)

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str], batch_size: int = 32, max_length: int | None = None) -> torch.Tensor:
        """Combined scores: lists of B strings -> (B,) float32 on CPU."""
        return self.combine_scores(self.member_scores(prompts, responses, batch_size, max_length), self.combine, self.k)


def load_reward(
    path: str | None,
    function: str | None,
    device: torch.device,
    paths: list[str] | None = None,
    ensemble: Combine | None = None,
    ensemble_k: float | None = None,
):
    """The reward PPO optimises: a model, an ensemble, or a Python function, all with `.score` and `.tokenizer`.

    Args:
        path: a reward-model directory, or an ensemble directory (with `tether_ensemble.json`).
        function: 'module:function' instead of a model.
        device: where models go.
        paths: member directories of an ensemble given explicitly (instead of `path`).
        ensemble: 'mean' or 'conservative'; overrides the ensemble manifest.
        ensemble_k: std multiplier of 'conservative'; overrides the manifest.

    Returns:
        A `RewardModel`, `EnsembleReward` or `FunctionReward`.

    Raises:
        ModelError: nothing to load, or a model that cannot be loaded.
    """
    if function is not None:
        return FunctionReward.from_spec(function)
    if paths:
        return EnsembleReward.load(list(paths), device, ensemble, ensemble_k)
    if path is None:
        raise ModelError("no reward model: set reward_model.path, reward_model.paths or reward_model.function")
    if is_ensemble(path):
        return EnsembleReward.load(path, device, ensemble, ensemble_k)
    return RewardModel.load(path, device)
