"""AI feedback (RLAIF): preference labels from a judge's probabilities of two choice tokens.

Bai et al. 2022, "Constitutional AI", sec. 4.1 and Lee et al. 2023, "RLAIF: Scaling Reinforcement Learning from
Human Feedback with AI Feedback", sec. 2.1: the judge reads the conversation, a principle and two responses
labelled (A) and (B), and the label is read from the judge's next-token distribution restricted to the two
choice tokens, never from generated text:

    P(A) = exp(logp(" A")) / (exp(logp(" A")) + exp(logp(" B")))

Judges prefer a position (Lee et al. sec. 2.1.1, "position bias"), so every pair is judged in both orders and
the two probabilities that the *same* response is better are averaged:

    P(first better) = ( P_A(first, second) + P_B(second, first) ) / 2

The result is a soft label; `confidence` = max(p, 1 - p) is written with every pair.
"""

from __future__ import annotations

import json
import math
import os
import random
import urllib.request
from dataclasses import dataclass

import torch
from torch import nn

from tether.constitutional.critique_revise import answer_prompts, clip
from tether.constitutional.principles import Constitution, Principle
from tether.data.tokenize import format_prompt
from tether.errors import ModelError
from tether.models.logprobs import forward_logits, sequence_logprobs


def judge_prompt(dialogue: str, question: str, response_a: str, response_b: str) -> str:
    """The judge's prompt; it ends where the choice token (" A" or " B") is expected.

    Args:
        dialogue: the conversation up to the open assistant turn (Human/Assistant form).
        question: the principle's comparison question.
        response_a, response_b: the two candidate replies, shown as options (A) and (B).
    """
    return (
        "Consider the following conversation between a human and an AI assistant.\n"
        f"{dialogue.strip()}\n\n"
        f"{question.strip()}\n"
        f"Options:\n(A) {response_a.strip()}\n(B) {response_b.strip()}\n\n"
        "The better response is option"
    )


class LocalJudge:
    """Any Hugging Face causal LM as a judge: log-probabilities of the two choice strings after a prompt."""

    def __init__(self, model: nn.Module, tokenizer, choices: tuple[str, str] | list[str] = (" A", " B"),
                 device: torch.device | None = None, batch_size: int = 8, max_length: int = 1024):
        self.model, self.tokenizer = model, tokenizer
        self.device = device or next(model.parameters()).device
        self.batch_size, self.max_length = batch_size, max_length
        self.choice_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
        if any(not ids for ids in self.choice_ids) or self.choice_ids[0] == self.choice_ids[1]:
            raise ModelError(f"choices {list(choices)} must tokenize to two different non-empty token sequences")
        # one token each: one forward pass reads both from the last position; else each is teacher-forced
        self.single_token = all(len(ids) == 1 for ids in self.choice_ids)

    @torch.no_grad()
    def choice_logprobs(self, texts: list[str]) -> torch.Tensor:
        """log p(choice | text) for both choices: B texts -> (B, 2) float32 on CPU.

        A multi-token choice gets the sum of its tokens' log-probabilities (teacher forcing); a token shared by
        both choices (e.g. a leading space) then has the same probability in both and cancels in `choice_probs`.
        """
        was = self.model.training
        self.model.eval()
        out = []
        for i in range(0, len(texts), self.batch_size):
            out.append(self._batch(texts[i : i + self.batch_size]))
        self.model.train(was)
        return torch.cat(out) if out else torch.zeros(0, 2)

    def _batch(self, texts: list[str]) -> torch.Tensor:
        room = self.max_length - max(len(ids) for ids in self.choice_ids)
        prompts = [self.tokenizer(t, add_special_tokens=True)["input_ids"][-room:] for t in texts]
        pad = self.tokenizer.pad_token_id
        if self.single_token:
            ids, mask = _right_pad(prompts, pad)  # (b, T)
            logits = forward_logits(self.model, ids.to(self.device), mask.to(self.device)).float()  # (b, T, V)
            last = mask.sum(1) - 1  # (b,) position of the last prompt token
            logp = logits[torch.arange(len(texts), device=self.device), last.to(self.device)].log_softmax(-1)  # (b, V)
            return logp[:, [self.choice_ids[0][0], self.choice_ids[1][0]]].cpu()
        seqs, loss = [], []
        for k in range(2):
            for p in prompts:
                seqs.append(p + self.choice_ids[k])
                loss.append([False] * len(p) + [True] * len(self.choice_ids[k]))
        ids, mask = _right_pad(seqs, pad)  # (2b, T)
        loss_mask = torch.zeros_like(ids, dtype=torch.bool)
        for j, m in enumerate(loss):
            loss_mask[j, : len(m)] = torch.tensor(m)
        total = sequence_logprobs(self.model, ids.to(self.device), mask.to(self.device), loss_mask.to(self.device))  # (2b,)
        return total.view(2, len(texts)).T.cpu()  # (b, 2)

    def choice_probs(self, texts: list[str]) -> torch.Tensor:
        """P(choice) renormalised over the two choices: B texts -> (B, 2), rows sum to 1."""
        return self.choice_logprobs(texts).softmax(-1)


def _right_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


class EndpointJudge:
    """An OpenAI-compatible chat endpoint as a judge, read through the top log-probabilities of one token.

    Sends `POST {url}/chat/completions` with `max_tokens=1, logprobs=true, top_logprobs=k, temperature=0`
    and reads the two choices (compared without surrounding spaces) from the first token's alternatives; a
    choice missing from the top k gets the smallest returned log-probability minus log(2). The API key, if
    any, is read from the environment variable named by `api_key_env`.
    """

    def __init__(self, url: str, model: str, choices: tuple[str, str] | list[str] = (" A", " B"),
                 api_key_env: str | None = None, timeout_s: float = 60.0, top_logprobs: int = 20):
        self.url = url.rstrip("/") + "/chat/completions"
        self.model, self.timeout_s, self.top_logprobs = model, timeout_s, top_logprobs
        self.choices = [c.strip() for c in choices]
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not self.api_key:
            raise ModelError(f"judge_endpoint.api_key_env: environment variable {api_key_env} is not set")

    def _request(self, text: str) -> list[dict]:
        body = json.dumps({
            "model": self.model, "messages": [{"role": "user", "content": text}], "max_tokens": 1,
            "temperature": 0, "logprobs": True, "top_logprobs": self.top_logprobs,
        }).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                reply = json.loads(resp.read().decode("utf-8"))
            return reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise ModelError(f"judge endpoint {self.url}: no usable top_logprobs in the reply ({exc})") from None

    def choice_logprobs(self, texts: list[str]) -> torch.Tensor:
        """log p of both choices: B texts -> (B, 2)."""
        rows = []
        for text in texts:
            top = self._request(text)
            found = {}
            for alt in top:
                tok = str(alt.get("token", "")).strip()
                if tok in self.choices and tok not in found:
                    found[tok] = float(alt["logprob"])
            floor = min((float(a["logprob"]) for a in top), default=0.0) - math.log(2)
            rows.append([found.get(c, floor) for c in self.choices])
        return torch.tensor(rows, dtype=torch.float32)

    def choice_probs(self, texts: list[str]) -> torch.Tensor:
        return self.choice_logprobs(texts).softmax(-1)


@dataclass
class Judgement:
    """The judge's verdict on one pair (first, second) under one principle."""

    p_first: float  # P(first is better), position bias removed by averaging both orders
    p_a_first_shown_first: float  # P(A) when `first` is option A
    p_b_first_shown_second: float  # P(B) when `first` is option B

    @property
    def confidence(self) -> float:
        return max(self.p_first, 1.0 - self.p_first)

    @property
    def position_bias(self) -> float:
        """Mean P(option A) over both orders minus 1/2: > 0 means the judge favours the first slot."""
        return 0.5 * (self.p_a_first_shown_first + (1.0 - self.p_b_first_shown_second)) - 0.5


def judge_pairs(judge, dialogues: list[str], principles: list[Principle], first: list[str], second: list[str],
                max_chars: int = 1500) -> list[Judgement]:
    """Judge B pairs in both orders and average (Lee et al. 2023 sec. 2.1.1).

    Args:
        judge: a `LocalJudge` or `EndpointJudge` (anything with `choice_probs(texts) -> (B, 2)`).
        dialogues: B conversations ending with an open assistant turn.
        principles: B principles whose comparison question is asked.
        first, second: B replies each.
        max_chars: replies are cut to this many characters in the prompt.

    Returns:
        B `Judgement`s.
    """
    a = [clip(x, max_chars) for x in first]
    b = [clip(x, max_chars) for x in second]
    order1 = [judge_prompt(d, p.question, x, y) for d, p, x, y in zip(dialogues, principles, a, b)]
    order2 = [judge_prompt(d, p.question, y, x) for d, p, x, y in zip(dialogues, principles, a, b)]
    probs = judge.choice_probs(order1 + order2)  # (2B, 2)
    n = len(first)
    p_a1 = probs[:n, 0]  # (B,) first shown as A
    p_b2 = probs[n:, 1]  # (B,) first shown as B
    p_first = 0.5 * (p_a1 + p_b2)  # (B,)
    return [Judgement(float(p), float(x), float(y)) for p, x, y in zip(p_first, p_a1, p_b2)]


@dataclass
class AILabel:
    """An AI preference label: chosen/rejected by the judge, with its soft probability and confidence."""

    prompt: str
    chosen: str
    rejected: str
    confidence: float  # P(chosen is better) = max(p, 1 - p)
    principle: str
    position_bias: float

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected,
                "confidence": round(self.confidence, 6), "principle": self.principle,
                "position_bias": round(self.position_bias, 6), "source": "ai_feedback"}


def ai_feedback(policy: nn.Module, tokenizer, judge, prompts: list[str], constitution: Constitution, gen, device,
                rng: random.Random, *, template: str, max_prompt_length: int = 256, max_chars: int = 1500) -> tuple[list[AILabel], int]:
    """Two sampled completions per prompt, labelled by the judge under a sampled principle.

    Args:
        policy, tokenizer: the model that answers (sampled twice per prompt; needs do_sample for two distinct answers).
        judge: a `LocalJudge` or `EndpointJudge`.
        prompts: B prompts.
        constitution: one principle is sampled per prompt with `rng`.
        gen: sampling settings of the completions.

    Returns:
        (labels, skipped): one `AILabel` per prompt whose two answers differ and are non-empty, and how many were skipped.
    """
    doubled = [p for p in prompts for _ in range(2)]
    answers = answer_prompts(policy, tokenizer, doubled, gen, device, template, max_prompt_length)
    keep = [i for i in range(len(prompts))
            if answers[2 * i].strip() and answers[2 * i + 1].strip() and answers[2 * i].strip() != answers[2 * i + 1].strip()]
    principles = [constitution.sample(rng) for _ in prompts]
    if not keep:
        return [], len(prompts)
    verdicts = judge_pairs(
        judge, [format_prompt(prompts[i], template) for i in keep], [principles[i] for i in keep],
        [answers[2 * i] for i in keep], [answers[2 * i + 1] for i in keep], max_chars,
    )
    labels = []
    for i, v in zip(keep, verdicts):
        x, y = answers[2 * i], answers[2 * i + 1]
        chosen, rejected = (x, y) if v.p_first >= 0.5 else (y, x)
        labels.append(AILabel(prompts[i], chosen, rejected, v.confidence, principles[i].name, v.position_bias))
    return labels, len(prompts) - len(keep)
