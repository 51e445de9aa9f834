"""Answering several people at once: the shared policy and every person's adapter on one loaded base.

`tether personalize` leaves one base model and a small LoRA adapter per person (`personalize.json` lists them).
`PersonalPolicies` loads the base once with every adapter (`models/adapters.py`) and answers a batch of
(person, prompt) requests in one `generate` call, each row through its person's adapter (peft's mixed-adapter
batches); a person without an adapter (too little data, or unknown to the run when `strict=False`) is answered by
the shared policy. Switching people costs nothing: no weights are loaded or merged per request.

    policies = PersonalPolicies("runs/personal")
    policies.answer([("ann", "How do I boil an egg?"), ("bo", "How do I boil an egg?"), (None, "Hi")])
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tether.config import GenerationConfig
from tether.data.tokenize import tokenize_prompts
from tether.errors import ConfigError
from tether.models.adapters import BASE, load_with_adapters
from tether.models.load import resolve_device
from tether.rollout.generate import decode_responses, generate

SUMMARY_FILE = "personalize.json"  # tether.personalize.SUMMARY_FILE


class PersonalPolicies:
    """The shared policy and the adapters of a `tether personalize` run, loaded once.

    Args:
        run_dir: the run's output directory (holding personalize.json).
        device: 'auto', 'cpu' or 'cuda'.

    Raises:
        ConfigError: no personalize.json in `run_dir`.
        ModelError: the base or an adapter cannot be loaded.
    """

    def __init__(self, run_dir: str | Path, device: str = "auto"):
        root = Path(run_dir)
        summary = root / SUMMARY_FILE
        if not summary.is_file():
            raise ConfigError(f"{run_dir}: no {SUMMARY_FILE} (not the output of `tether personalize`)")
        meta = json.loads(summary.read_text(encoding="utf-8"))
        self.policy = meta["policy"]
        self.people: dict[str, str | None] = {name: p["adapter"] for name, p in meta["people"].items()}
        adapters = {name: root / path for name, path in self.people.items() if path}
        self.template = meta.get("prompt_template", "")
        self.max_prompt_length = meta.get("max_prompt_length", 384)
        self.device = resolve_device(device)
        self.model, self.tokenizer = load_with_adapters(self.policy, adapters, self.device)
        self.has_adapters = bool(adapters)

    def adapter_of(self, person: str | None, strict: bool = True) -> str:
        """The adapter that answers `person`: theirs, or `BASE` (the shared policy) for None or a person without one.

        Raises:
            ConfigError: with `strict`, a person the run does not know.
        """
        if person is None:
            return BASE
        if person not in self.people:
            if strict:
                raise ConfigError(f"no person {person!r} in this run (people: {', '.join(sorted(self.people))})")
            return BASE
        return person if self.people[person] else BASE

    @torch.no_grad()
    def answer(self, requests: list[tuple[str | None, str]], gen: GenerationConfig | None = None, strict: bool = True) -> list[str]:
        """Answer every (person, prompt) request, in one batch of mixed adapters per `gen.batch_size` rows.

        Args:
            requests: (person or None for the shared policy, prompt text) pairs; prompts are formatted with the
                run's prompt template.
            gen: sampling settings (default: greedy, 64 new tokens).
            strict: an unknown person is an error (True) or answered by the shared policy (False).

        Returns:
            One answer per request, in order.
        """
        if not requests:
            return []
        gen = gen or GenerationConfig(do_sample=False, max_new_tokens=64)
        names = [self.adapter_of(person, strict) for person, _ in requests]
        ids = tokenize_prompts([prompt for _, prompt in requests], self.tokenizer, self.template, self.max_prompt_length)
        out = generate(self.model, self.tokenizer, ids, gen, self.device, adapter_names=names if self.has_adapters else None)
        return decode_responses(self.tokenizer, out.responses, out.response_mask)
