"""A rule-based reward for the two-process PPO test: exact arithmetic on the text, so scores carry no
floating-point noise from a reward model and the comparison can be tight."""

from __future__ import annotations


def vowel_share(prompts: list[str], responses: list[str]) -> list[float]:
    """Fraction of the reply's characters that are vowels (0 for an empty reply)."""
    return [sum(c in "aeiouAEIOU" for c in r) / len(r) if r else 0.0 for r in responses]
