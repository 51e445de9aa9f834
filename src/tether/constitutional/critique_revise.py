"""Supervised Constitutional AI (SL-CAI): answer, critique under a sampled principle, revise.

Bai et al. 2022, "Constitutional AI", sec. 3.1: the model answers a (usually harmful) prompt, is asked to
critique its answer under one principle drawn at random from the constitution, then to revise the answer in
light of the critique; rounds repeat with new principles. The (prompt, final revision) pairs are SFT data.
The whole chain is kept for inspection. The critic can be the policy itself or another model.

Prompts follow the Human/Assistant format of the rest of tether:

    \\n\\nHuman: {prompt}\\n\\nAssistant: {response}\\n\\nCritiqueRequest: {critique_request}\\n\\nCritique:
    ... {critique}\\n\\nRevisionRequest: {revision_request}\\n\\nRevision:
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from tether.config import GenerationConfig
from tether.constitutional.principles import Constitution
from tether.data.tokenize import format_prompt, tokenize_prompts
from tether.rollout.generate import decode_responses, generate

# a generated turn ends where the model starts writing the next turn of the transcript
_NEXT_TURN = re.compile(r"\n\s*\n?\s*(Human|Assistant|CritiqueRequest|Critique|RevisionRequest|Revision)\s*:")


def cut_turn(text: str) -> str:
    """Keep a generated turn up to the point where the model starts the next speaker's turn."""
    m = _NEXT_TURN.search(text)
    return (text[: m.start()] if m else text).strip()


def clip(text: str, max_chars: int) -> str:
    """At most `max_chars` characters (the end is cut): keeps critique and judge prompts bounded."""
    return text if len(text) <= max_chars else text[:max_chars].rstrip() + " ..."


@torch.no_grad()
def generate_texts(model: nn.Module, tokenizer, texts: list[str], gen: GenerationConfig, device: torch.device,
                   max_length: int) -> list[str]:
    """Continue raw prompt texts (no template applied) and return the first turn of each continuation.

    Args:
        texts: B prompt strings, already in transcript form.
        max_length: prompts are cut from the left to this many tokens (the instruction at the end is kept).

    Returns:
        B strings, cut at the start of the next transcript turn.
    """
    if not texts:
        return []
    ids = [tokenizer(t, add_special_tokens=True)["input_ids"][-max_length:] for t in texts]
    out = generate(model, tokenizer, ids, gen, device)
    return [cut_turn(t) for t in decode_responses(tokenizer, out.responses, out.response_mask)]


def answer_prompts(model: nn.Module, tokenizer, prompts: list[str], gen: GenerationConfig, device: torch.device,
                   template: str, max_prompt_length: int) -> list[str]:
    """One answer per prompt from `model`, prompts shown with `template`. Returns B strings."""
    ids = tokenize_prompts(prompts, tokenizer, template, max_prompt_length)
    out = generate(model, tokenizer, ids, gen, device)
    return [cut_turn(t) for t in decode_responses(tokenizer, out.responses, out.response_mask)]


def critique_prompt(dialogue: str, response: str, critique_request: str) -> str:
    """The critic's prompt: the dialogue with the response, then the principle's critique request."""
    return f"{dialogue} {response.strip()}\n\nCritiqueRequest: {critique_request}\n\nCritique:"


def revision_prompt(dialogue: str, response: str, critique_request: str, critique: str, revision_request: str) -> str:
    """The reviser's prompt: the critique exchange, then the principle's revision request."""
    return (f"{critique_prompt(dialogue, response, critique_request)} {critique.strip()}"
            f"\n\nRevisionRequest: {revision_request}\n\nRevision:")


@dataclass
class RevisionStep:
    principle: str
    critique: str
    revision: str


@dataclass
class Chain:
    """One prompt's SL-CAI chain: the initial answer and each (principle, critique, revision) round."""

    prompt: str
    initial: str
    steps: list[RevisionStep] = field(default_factory=list)

    @property
    def final(self) -> str:
        """The last non-empty revision, or the initial answer when every revision came out empty."""
        for step in reversed(self.steps):
            if step.revision.strip():
                return step.revision
        return self.initial

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "initial": self.initial, "final": self.final, "steps": [asdict(s) for s in self.steps]}


def critique_revise(
    policy: nn.Module, tokenizer, prompts: list[str], constitution: Constitution, gen: GenerationConfig,
    device: torch.device, rng: random.Random, *, critic: nn.Module | None = None, critic_tokenizer=None,
    critique_gen: GenerationConfig | None = None, rounds: int = 1, template: str, max_prompt_length: int = 256,
    max_context_length: int = 512, max_chars: int = 1500, initial: list[str] | None = None,
) -> list[Chain]:
    """Run SL-CAI over a batch of prompts (Bai et al. 2022 sec. 3.1).

    Args:
        policy, tokenizer: the model whose answers are revised.
        prompts: B prompts (plain, or already in Human/Assistant form).
        constitution: principles; one is sampled per prompt and round with `rng`.
        gen: sampling of the initial answers.
        critic, critic_tokenizer: the model that critiques and revises (default: the policy).
        critique_gen: sampling of critiques and revisions (default: `gen`).
        rounds: critique-revision rounds; each round revises the previous revision.
        template: how a plain prompt is shown (`format_prompt`).
        max_context_length: critique and revision prompts are cut from the left to this many tokens.
        max_chars: answers and critiques are cut to this many characters inside later prompts.
        initial: B answers to revise instead of sampling them (e.g. red-team findings).

    Returns:
        B `Chain`s, in the order of `prompts`.
    """
    critic = critic if critic is not None else policy
    critic_tokenizer = critic_tokenizer if critic_tokenizer is not None else tokenizer
    critique_gen = critique_gen or gen
    if initial is None:
        initial = answer_prompts(policy, tokenizer, prompts, gen, device, template, max_prompt_length)
    dialogues = [format_prompt(p, template) for p in prompts]
    chains = [Chain(p, a) for p, a in zip(prompts, initial)]
    current = list(initial)
    for _ in range(rounds):
        principles = [constitution.sample(rng) for _ in prompts]
        shown = [clip(r, max_chars) for r in current]
        critiques = generate_texts(
            critic, critic_tokenizer,
            [critique_prompt(d, r, p.critique_request) for d, r, p in zip(dialogues, shown, principles)],
            critique_gen, device, max_context_length,
        )
        revisions = generate_texts(
            critic, critic_tokenizer,
            [revision_prompt(d, r, p.critique_request, clip(c, max_chars), p.revision_request)
             for d, r, p, c in zip(dialogues, shown, principles, critiques)],
            critique_gen, device, max_context_length,
        )
        for chain, p, c, r in zip(chains, principles, critiques, revisions):
            chain.steps.append(RevisionStep(p.name, c, r))
        current = [chain.final for chain in chains]
    return chains
