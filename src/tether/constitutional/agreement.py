"""How often AI preference labels agree with human labels on the same pairs.

Lee et al. 2023, "RLAIF", sec. 3.3 ("AI labeler alignment"): the judge labels pairs that humans already
labelled (e.g. the HH-RLHF harmless pairs, where crowdworkers picked the more harmless reply) and the
agreement is the fraction of pairs where the judge prefers the human's choice. We also report it by the
judge's confidence: if confidence means anything, agreement rises with it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tether.constitutional.ai_feedback import judge_pairs
from tether.constitutional.principles import Constitution
from tether.data.tokenize import format_prompt
from tether.eval.metrics import wilson_interval
from tether.types import PreferenceExample

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class AgreementRow:
    prompt: str
    chosen: str  # human-chosen
    rejected: str
    principle: str
    p_human_choice: float  # judge's P(human-chosen reply is better), both orders averaged
    position_bias: float

    @property
    def agrees(self) -> bool:
        return self.p_human_choice > 0.5


def agreement_summary(rows: list[AgreementRow]) -> dict:
    """Agreement rate with a 95% Wilson interval, per area of principle, and by judge confidence.

    Returns:
        `{"n", "agreement", "ci", "mean_confidence", "position_bias", "by_principle": {...},
        "by_confidence": [{"min_confidence", "coverage", "n", "agreement"}]}`; a tie (p = 0.5) counts as disagreement.
    """
    n = len(rows)
    if n == 0:
        return {"n": 0, "agreement": None, "ci": None, "by_principle": {}, "by_confidence": []}
    agree = sum(r.agrees for r in rows)
    by_principle: dict[str, list[AgreementRow]] = {}
    for r in rows:
        by_principle.setdefault(r.principle, []).append(r)
    by_conf = []
    for t in THRESHOLDS:
        kept = [r for r in rows if max(r.p_human_choice, 1 - r.p_human_choice) >= t]
        by_conf.append({"min_confidence": t, "coverage": len(kept) / n, "n": len(kept),
                        "agreement": (sum(r.agrees for r in kept) / len(kept)) if kept else None})
    return {
        "n": n,
        "agreement": agree / n,
        "ci": list(wilson_interval(agree, n)),
        "mean_confidence": sum(max(r.p_human_choice, 1 - r.p_human_choice) for r in rows) / n,
        "position_bias": sum(r.position_bias for r in rows) / n,
        "by_principle": {k: {"n": len(v), "agreement": sum(r.agrees for r in v) / len(v)} for k, v in sorted(by_principle.items())},
        "by_confidence": by_conf,
    }


def judge_human_pairs(judge, pairs: list[PreferenceExample], constitution: Constitution, rng: random.Random,
                      template: str, max_chars: int = 1500) -> list[AgreementRow]:
    """Let the judge label human preference pairs, one sampled principle per pair.

    Args:
        judge: a `LocalJudge` or `EndpointJudge`.
        pairs: human pairs (`chosen` is the human's choice).
        constitution: principles to sample from (filter by area to match the human task, e.g. harmlessness).
        rng: seeded generator for the principle draws.
        template: how plain prompts are shown.

    Returns:
        One `AgreementRow` per pair.
    """
    principles = [constitution.sample(rng) for _ in pairs]
    verdicts = judge_pairs(judge, [format_prompt(p.prompt, template) for p in pairs], principles,
                           [p.chosen for p in pairs], [p.rejected for p in pairs], max_chars)
    return [AgreementRow(p.prompt, p.chosen, p.rejected, pr.name, v.p_first, v.position_bias)
            for p, pr, v in zip(pairs, principles, verdicts)]
