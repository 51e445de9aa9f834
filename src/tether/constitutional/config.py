"""`tether cai` config: Constitutional AI phases (critique-revision SFT data, AI preference labels, agreement)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tether.config import DEFAULT_PROMPT_TEMPLATE, GenerationConfig, Strict

Phase = Literal["sl", "rlaif", "agreement"]


class EndpointJudge(Strict):
    """An OpenAI-compatible chat endpoint used as the AI judge instead of a local model."""

    url: str = Field(..., description="base URL, e.g. http://localhost:8000/v1 (POST {url}/chat/completions)")
    model: str = Field(..., description="model name sent in the request")
    api_key_env: str | None = Field(None, description="name of the environment variable holding the API key (never the key itself)")
    timeout_s: float = Field(60.0, gt=0.0)
    top_logprobs: int = Field(20, ge=2, le=20, description="alternatives returned per token; the two choices must be among them")


class CAIConfig(Strict):
    """`tether cai`: Constitutional AI (Bai et al. 2022) and RLAIF (Lee et al. 2023) on a local causal LM."""

    policy: str = Field(..., description="the model that answers (and, by default, critiques, revises and judges)")
    critic: str | None = Field(None, description="model that writes critiques and revisions (default: the policy)")
    judge: str | None = Field(None, description="local HF causal LM that labels preferences (default: the policy)")
    judge_endpoint: EndpointJudge | None = Field(None, description="an OpenAI-compatible chat endpoint as the judge instead")
    constitution: str = Field("configs/constitution.yaml", description="YAML file of principles")
    areas: list[str] | None = Field(None, description="use only principles of these areas (e.g. [harmlessness])")
    phases: list[Phase] = Field(default_factory=lambda: ["sl", "rlaif"], description="sl: critique-revision SFT data; "
                                "rlaif: AI preference labels on policy samples; agreement: AI vs human labels")
    prompts: str | list[str] | None = Field(None, description="prompt file(s) for the sl and rlaif phases (e.g. red-team prompts)")
    max_prompts: int | None = Field(64, gt=0, description="use at most this many prompts (a seeded sample)")
    revisions: int = Field(1, ge=1, le=4, description="critique-revision rounds per prompt, each under a new sampled principle")
    choices: list[str] = Field(default_factory=lambda: [" A", " B"], description="the judge's two choice strings, in order (A first)")
    human_pairs: str | None = Field(None, description="agreement phase: human preference pairs {prompt, chosen, rejected}")
    max_pairs: int = Field(64, gt=0, description="agreement phase: judge at most this many human pairs (a seeded sample)")
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    max_prompt_length: int = Field(256, gt=8, description="max tokens of an answering prompt (cut from the left)")
    max_context_length: int = Field(512, gt=16, description="max tokens of critique, revision and judge prompts (cut from the left)")
    max_response_chars: int = Field(1500, gt=10, description="responses shown to the critic and judge are cut to this many characters")
    generation: GenerationConfig = Field(default_factory=lambda: GenerationConfig(max_new_tokens=64, temperature=0.7))
    critique_generation: GenerationConfig | None = Field(None, description="sampling of critiques and revisions (default: generation)")
    batch_size: int = Field(8, gt=0, description="judge forward-pass batch size")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = Field(None, gt=0, description="torch CPU threads")
    output_dir: str = Field(..., description="run directory")
    overwrite: bool = True

    @field_validator("choices")
    @classmethod
    def _two_choices(cls, value: list[str]) -> list[str]:
        if len(value) != 2 or value[0] == value[1] or not all(v.strip() for v in value):
            raise ValueError("choices must be two different non-empty strings, e.g. [' A', ' B']")
        return value

    @model_validator(mode="after")
    def _inputs(self):
        if {"sl", "rlaif"} & set(self.phases) and not self.prompts:
            raise ValueError("the sl and rlaif phases need prompts")
        if "agreement" in self.phases and not self.human_pairs:
            raise ValueError("the agreement phase needs human_pairs")
        if not self.phases:
            raise ValueError("phases must name at least one of sl, rlaif, agreement")
        return self
