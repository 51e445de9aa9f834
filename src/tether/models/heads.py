"""Scalar heads: the PPO value model (one value per token) on any transformer backbone."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tether.errors import ModelError
from tether.models.load import disable_dropout, resolve_path
from tether.models.logprobs import position_ids_from_mask
from tether.ops import upcast


class ValueModel(nn.Module):
    """A transformer backbone and a linear head giving one value per token (the PPO critic).

    Initialised from the policy (default) or from the reward model's backbone (then the tokenizers must
    match, since values are needed per policy token).
    """

    def __init__(self, backbone: nn.Module, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.head.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_backbone_of(cls, model: nn.Module) -> "ValueModel":
        """A value model whose backbone is a deep copy of `model`'s base (its LM or score head dropped)."""
        import copy

        base = getattr(model, model.base_model_prefix, model)
        backbone = copy.deepcopy(base)
        for p in backbone.parameters():
            p.requires_grad_(True)
        disable_dropout(backbone)
        vm = cls(backbone, model.config.hidden_size)
        return vm.to(device=next(model.parameters()).device, dtype=next(model.parameters()).dtype)

    @classmethod
    def from_pretrained(cls, path: str, dtype: torch.dtype = torch.float32) -> "ValueModel":
        """Backbone from any HF model directory (causal LM or sequence classifier), head from scratch."""
        from transformers import AutoModel

        try:
            backbone = AutoModel.from_pretrained(resolve_path(path), dtype=dtype)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load a value-model backbone from {path}: {str(exc).splitlines()[0]}") from None
        disable_dropout(backbone)
        return cls(backbone, backbone.config.hidden_size).to(dtype)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per-token values: (B, T) -> (B, T) float32 (float64 for a float64 model)."""
        out = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask), use_cache=False,
        )
        hidden = out.last_hidden_state  # (B, T, H)
        with torch.autocast(hidden.device.type, enabled=False):  # the head in the weights' precision, even under autocast
            return upcast(self.head(hidden.to(self.head.weight.dtype)).squeeze(-1))  # (B, T)

    def save(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(out)
        torch.save(self.head.state_dict(), out / "value_head.pt")
