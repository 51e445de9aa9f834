"""Rule-based reward functions: checks of the text itself, usable instead of a reward model.

Each takes (prompts, responses) -> list[float], the signature `reward_model.function` expects
(`reward_model.function: tether.rl.rule_rewards:brevity`).
"""

from __future__ import annotations

import re

REFUSAL_PATTERNS = re.compile(
    r"\b(i'?m sorry|i am sorry|i can(?:no|')t|i won'?t|i will not|as an ai|i'?m not able|i am not able|"
    r"i do not feel comfortable|i don'?t feel comfortable|i'?m unable|cannot help|can'?t help)\b",
    re.IGNORECASE,
)


def brevity(prompts: list[str], responses: list[str], target_words: int = 10) -> list[float]:
    """1 for a reply of `target_words` words or fewer, falling linearly to 0 at twice that."""
    out = []
    for r in responses:
        n = len(r.split())
        out.append(max(0.0, min(1.0, 2.0 - n / target_words)))
    return out


def refusal(prompts: list[str], responses: list[str]) -> list[float]:
    """1 when the reply contains a refusal phrase, else 0 (a string-match baseline)."""
    return [1.0 if REFUSAL_PATTERNS.search(r) else 0.0 for r in responses]


def ends_with_sentence(prompts: list[str], responses: list[str]) -> list[float]:
    """1 when the reply is non-empty and ends with '.', '!' or '?', else 0 (a format check)."""
    return [1.0 if r.strip().endswith((".", "!", "?")) else 0.0 for r in responses]
