"""A constitution: written principles, each with a critique request, a revision request and a comparison question.

Bai et al. 2022, "Constitutional AI: Harmlessness from AI Feedback": the supervised phase samples one principle
per step and asks the model to critique and then revise its own answer (sec. 3.1); the RL phase asks a judge
which of two answers better follows a sampled principle (sec. 4.1). A constitution file is YAML:

    name: tether-default
    principles:
      - name: harmless_dangerous
        area: harmlessness
        critique_request: "Identify ways in which the assistant's last response ..."
        revision_request: "Rewrite the assistant response to ..."
        comparison: "Which of these assistant responses is less harmful?"   # optional

Errors name the file and the principle (`principles.2.revision_request`).
"""

from __future__ import annotations

import random
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from tether.config import Strict, read_yaml, validate
from tether.errors import ConfigError


class Principle(Strict):
    """One principle of a constitution."""

    name: str = Field(..., min_length=1, description="unique short name, e.g. harmless_dangerous")
    area: str = Field("general", min_length=1, description="group used for filtering and reporting: helpfulness, honesty, harmlessness")
    critique_request: str = Field(..., description="asks for a critique of the assistant's last response")
    revision_request: str = Field(..., description="asks for a rewrite of the response that fixes what the critique found")
    comparison: str | None = Field(None, description="question the AI judge answers about two responses (default built from the name)")

    @field_validator("critique_request", "revision_request", "comparison")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value.strip() if value is not None else None

    @property
    def question(self) -> str:
        """The comparison question shown to the judge."""
        return self.comparison or f"Which response better follows the principle '{self.name.replace('_', ' ')}'?"


class Constitution(Strict):
    """A named list of principles."""

    name: str = "constitution"
    description: str = ""
    principles: list[Principle] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _unique_names(self):
        seen: set[str] = set()
        for p in self.principles:
            if p.name in seen:
                raise ValueError(f"principle name '{p.name}' appears twice; names must be unique")
            seen.add(p.name)
        return self

    def filter(self, areas: list[str] | None) -> "Constitution":
        """The principles whose area is in `areas` (all when None).

        Raises:
            ConfigError: when no principle is left.
        """
        if not areas:
            return self
        kept = [p for p in self.principles if p.area in areas]
        if not kept:
            have = sorted({p.area for p in self.principles})
            raise ConfigError(f"constitution '{self.name}' has no principle in areas {areas}; its areas are {have}")
        return self.model_copy(update={"principles": kept})

    def sample(self, rng: random.Random) -> Principle:
        """One principle drawn uniformly (Bai et al. 2022 sec. 3.1: a principle is sampled per step)."""
        return self.principles[rng.randrange(len(self.principles))]


def load_constitution(path: str | Path) -> Constitution:
    """Read and validate a constitution YAML file.

    Args:
        path: the YAML file.

    Returns:
        A `Constitution`.

    Raises:
        ConfigError: missing file, invalid YAML (with the line), unknown or missing keys, empty requests,
            duplicate names; the message names the file and the principle index.
    """
    data = read_yaml(path)
    return validate(Constitution, data, origin=f"constitution {path}")
