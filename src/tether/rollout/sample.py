"""`tether sample`: K sampled completions per prompt, written as a campaign file for labeling.

Campaign file: JSONL, one item per prompt: `{"id", "prompt", "completions": [K strings], "model"}`.
"""

from __future__ import annotations


import torch

from tether.config import DEFAULT_PROMPT_TEMPLATE, GenerationConfig, ModelConfig
from tether.data.sources import load_prompts, write_jsonl
from tether.data.tokenize import tokenize_prompts
from tether.models.load import load_causal_lm, resolve_device
from tether.rollout.generate import decode_responses, generate


def sample_completions(
    model_path: str, prompts: list[str], k: int, gen: GenerationConfig | None = None, seed: int = 0,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE, max_prompt_length: int = 384,
) -> list[list[str]]:
    """K completions for each prompt. Returns a list (len B) of lists (len K) of strings.

    Raises:
        ModelError: when the model cannot be loaded.
        ValueError: when k < 1.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    gen = gen or GenerationConfig()
    device = resolve_device("auto")
    model, tokenizer = load_causal_lm(ModelConfig(name_or_path=model_path), device)
    torch.manual_seed(seed)
    ids = tokenize_prompts(prompts, tokenizer, prompt_template, max_prompt_length)
    repeated = [p for p in ids for _ in range(k)]  # each prompt k times in a row
    out = generate(model, tokenizer, repeated, gen, device)
    texts = decode_responses(tokenizer, out.responses, out.response_mask)
    return [texts[i * k : (i + 1) * k] for i in range(len(prompts))]


def sample_to_file(model_path: str, prompts_file: str, k: int, out_file: str, gen: GenerationConfig, max_prompts: int | None = None, seed: int = 0) -> int:
    """Write a campaign file; returns the number of items."""
    prompts = [e.prompt for e in load_prompts(prompts_file)][:max_prompts]
    completions = sample_completions(model_path, prompts, k, gen, seed)
    return write_jsonl(out_file, ({"id": f"item-{i}", "prompt": p, "completions": c, "model": model_path}
                                  for i, (p, c) in enumerate(zip(prompts, completions))))
