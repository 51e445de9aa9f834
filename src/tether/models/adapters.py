"""Several LoRA adapters on one loaded base model: a person's adapter is chosen per request, not per load.

peft keeps every adapter's small matrices beside the one copy of the base weights. `set_adapter` switches the
whole model; a batch can also mix adapters (`adapter_names`, one per row, `BASE` for the base itself), which
peft applies row by row inside each LoRA layer, so several people are answered in one forward pass.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tether.config import ModelConfig
from tether.errors import ModelError
from tether.models.load import ADAPTER_DIR, load_causal_lm

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


def adapter_path(path: str | Path) -> Path:
    """The directory holding adapter_config.json: `path` itself, or its adapter/ (a run written by a trainer).

    Raises:
        ModelError: neither holds a LoRA adapter.
    """
    p = Path(path)
    for candidate in (p, p / ADAPTER_DIR):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise ModelError(f"{path}: no LoRA adapter (adapter_config.json) here or in {ADAPTER_DIR}/")


def load_with_adapters(base: str, adapters: dict[str, str | Path], device: torch.device) -> tuple[nn.Module, object]:
    """The base model with every adapter loaded under its name, in eval mode.

    Args:
        base: the model directory (or alias) the adapters were trained on.
        adapters: name -> adapter directory (or a run directory with adapter/); may be empty.
        device: where the model goes.

    Returns:
        (model, tokenizer): a peft model when `adapters` is not empty, else the base model.

    Raises:
        ModelError: the base or an adapter cannot be loaded, or a name is `BASE`.
    """
    from peft import PeftModel

    model, tokenizer = load_causal_lm(ModelConfig(name_or_path=base), device)
    for i, (name, path) in enumerate(adapters.items()):
        if name == BASE:
            raise ModelError(f"an adapter cannot be named {BASE!r} (it stands for the base model)")
        where = str(adapter_path(path))
        try:
            if i == 0:
                model = PeftModel.from_pretrained(model, where, adapter_name=name)
            else:
                model.load_adapter(where, adapter_name=name)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot load the adapter {name!r} from {where} on {base}: {str(exc).splitlines()[0]}") from None
    model.to(device)
    return model.eval(), tokenizer
