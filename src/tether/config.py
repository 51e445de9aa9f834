"""One config schema per command, loaded from YAML with dotted overrides.

`load_config(PPOConfig, "configs/ppo_tiny.yaml", ["ppo.kl_coef=0.05"])` reads the file, applies the
overrides (values parsed as YAML, so `true`, `3e-4` and `[a, b]` work), and validates. Unknown keys
and wrong types raise `ConfigError` naming the key, before anything runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tether.errors import ConfigError
from tether.tracking import check_report_to

DEFAULT_PROMPT_TEMPLATE = "\n\nHuman: {prompt}\n\nAssistant:"


class Strict(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


# --------------------------------------------------------------------------- shared sections


class LoRAConfig(Strict):
    enabled: bool = Field(False, description="train LoRA adapters instead of all weights (peft)")
    r: int = Field(16, gt=0, description="LoRA rank")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the LoRA path")
    target_modules: str | list[str] = Field("all-linear", description="modules that get adapters")
    merge: bool = Field(
        True, description="write the model with the adapters merged (a plain HF directory; the adapters are kept in adapter/); "
        "false: only adapter/ and the tokenizer, a small directory that loads on top of its base model",
    )


class ModelConfig(Strict):
    name_or_path: str = Field(
        ..., description="HF hub id, local directory, or a tiny random model: tiny-llama, tiny-gpt2, tiny-bert"
    )
    tokenizer: str | None = Field(None, description="tokenizer path if not the model's")
    dtype: Literal["auto", "float32", "bfloat16", "float16", "float64"] = Field(
        "auto", description="auto: bfloat16 on CUDA, float32 on CPU (float64: numerical checks on CPU)"
    )
    lora: LoRAConfig = Field(default_factory=LoRAConfig)
    gradient_checkpointing: bool = False
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto",
        description="attention kernel; auto: eager when training on a CPU in bf16 (train.precision) with sequences "
        "of at most 512 tokens (faster there, bench/attention_kernels.py), except for the models of a PPO/GRPO "
        "rollout; else the model's default (sdpa)",
    )


class _DataBase(Strict):
    train: str | list[str] = Field(..., description="JSONL(.gz)/JSON/Parquet file(s) or a hub dataset id")
    eval: str | None = Field(None, description="evaluation file; if unset, `holdout_fraction` of train is held out")
    split: Literal["train", "holdout", "all"] = Field(
        "train", description="which part of `train` to use: the hash-split train part, the held-out part, or all"
    )
    holdout_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="fraction of prompts held out (split by a hash of the prompt, so every stage agrees)"
    )
    max_samples: int | None = Field(None, gt=0, description="use at most this many rows (after the split)")
    skip_samples: int = Field(
        0, ge=0, description="drop the first this many rows of the split (before max_samples): disjoint slices of one "
        "file, e.g. a judge that shares no training data with the labeller it checks",
    )
    on_invalid: Literal["error", "skip"] = Field(
        "error",
        description="a row with empty text, identical chosen/rejected replies or a duplicate pair: stop (error) "
        "or skip it and report the count (skip)",
    )
    prompt_template: str = Field(
        DEFAULT_PROMPT_TEMPLATE,
        description="how a plain prompt is shown to a causal LM ({prompt} marks it); prompts already in 'Human:/Assistant:' "
        "form are kept; chat: the tokenizer's own chat template, dialogues turn by turn (instruction-tuned models)",
    )


class PromptData(_DataBase):
    """`data` of the online stages: prompts only (the response length is `generation.max_new_tokens`)."""

    max_prompt_length: int = Field(384, gt=0, description="max prompt tokens; longer prompts are cut from the left")


class RewardData(_DataBase):
    """`data` of `tether rm`: pairs, rankings or labelled completions, cut to `max_length` tokens."""

    max_length: int = Field(512, gt=8, description="max tokens of prompt + response")
    max_prompt_length: int = Field(384, gt=0, description="max prompt tokens of the policy samples that normalize_policy scores")


class DataConfig(_DataBase):
    """`data` of SFT and DPO/IPO/KTO: prompt + response examples."""

    max_length: int = Field(512, gt=8, description="max tokens of prompt + response")
    max_prompt_length: int = Field(384, gt=0, description="max prompt tokens; longer prompts are cut from the left")
    truncation: Literal["left", "drop", "error"] = Field(
        "left",
        description="left: cut the prompt from the left to fit (rows whose response alone is too long are an error); "
        "drop: like left, but skip such rows and report the count; error: stop on any too-long row",
    )


class PretrainData(Strict):
    """`data` of `tether pretrain`: raw text."""

    train: str | list[str] = Field(..., description="JSONL(.gz)/JSON/Parquet file(s) or a hub dataset id")
    seed: int = Field(0, description="seed of the order in which the texts are shuffled before packing")


REPLACED_KEYS = {  # keys that once existed: what replaced them (in the error for a file or an override)
    "bf16_autocast": "train.bf16_autocast was replaced by train.precision (auto|fp32|bf16|fp16); auto lets the hardware choose",
}


def _report_to_names(value: list[str]) -> list[str]:
    try:
        return list(check_report_to(value))
    except ConfigError as exc:  # pydantic reports a ValueError with the key's path
        raise ValueError(str(exc)) from None


def _reject_bf16_key(data):
    if isinstance(data, dict) and "bf16_autocast" in data:
        old = data["bf16_autocast"]
        new = "bf16" if old is True else "fp32" if old is False else "auto"
        raise ValueError(f"{REPLACED_KEYS['bf16_autocast']} (write precision: {new} for the same behaviour)")
    return data


class TrainBase(Strict):
    """What every trainer's `train` section has: the optimizer, the length of the run, the device and the run's care."""

    learning_rate: float = Field(1e-4, gt=0.0)
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; overrides epochs")
    weight_decay: float = Field(0.0, ge=0.0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_beta2: float = 0.999
    max_grad_norm: float = Field(1.0, gt=0.0)
    seed: int = 0
    save_every: int | None = Field(None, gt=0, description="checkpoint every N steps (also at the end)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = Field(None, gt=0, description="torch CPU threads (default: torch's choice)")
    resume: bool = Field(False, description="continue from the newest complete checkpoint in output_dir (same config)")
    report_to: list[str] = Field(
        default_factory=list, description="dashboards beside metrics.jsonl: tensorboard, wandb, trackio (tether/tracking.py; none = [])"
    )

    _old_bf16_key = model_validator(mode="before")(classmethod(lambda cls, data: _reject_bf16_key(data)))
    _report_to = field_validator("report_to")(classmethod(lambda cls, v: _report_to_names(v)))


class TrainConfig(TrainBase):
    """`train` of the stages that step through a dataset in batches (`tether pretrain`)."""

    batch_size: int = Field(8, gt=0, description="examples per optimizer micro-batch")
    grad_accum_steps: int = Field(1, gt=0)
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    log_every: int = Field(10, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="autocast precision of forward passes; auto: bf16 where bf16 matrix products are native (CUDA with "
        "bf16, a CPU with AMX or AVX512-BF16), else fp32; fp16 trains with dynamic loss scaling (tether/precision.py)",
    )


class SFTTrainConfig(TrainConfig):
    """`train` of `tether sft`: batches, and an evaluation every `eval_every` steps."""

    eval_every: int | None = Field(None, gt=0)


class PairTrainConfig(SFTTrainConfig):
    """`train` of `tether rm` and `tether dpo`, whose examples share a prompt."""

    share_prompt: bool = Field(
        True, description="reward-model and DPO/IPO training, and GRPO groups: run the prompt shared by a pair's replies "
        "(or a prompt's completions) once (key/value cache reuse, exact) when the model is a causal decoder; encoders "
        "always run full sequences",
    )


class GenerationConfig(Strict):
    max_new_tokens: int = Field(48, gt=0)
    temperature: float = Field(1.0, gt=0.0)
    top_k: int = Field(0, ge=0, description="0 = off (PPO samples from the full distribution)")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    do_sample: bool = True
    batch_size: int = Field(16, gt=0)
    engine: Literal["tether", "hf"] = Field(
        "tether", description="tether: tether's KV-cached decode loop (samples exactly what HF generate samples, "
        "faster); hf: Hugging Face generate. Models or settings the loop does not support use HF generate either way",
    )


class VLLMOptions(Strict):
    """Settings of the vLLM engine used for rollouts when `generation.backend=vllm` (GPU only)."""

    gpu_memory_utilization: float = Field(
        0.3, gt=0.0, le=1.0,
        description="fraction of GPU memory vLLM may take for its weights and KV cache; the trainer's models share the GPU",
    )
    enable_prefix_caching: bool = Field(True, description="reuse the KV cache of shared prompt prefixes (GRPO's G samples per prompt)")
    enforce_eager: bool = Field(False, description="no CUDA graphs (slower decoding, faster start, less memory)")


class RolloutGenerationConfig(GenerationConfig):
    """Sampling settings of online RL (`tether ppo`, `tether grpo`), plus the engine that samples."""

    backend: Literal["policy", "vllm"] = Field(
        "policy", description="policy: the training policy samples itself (with generation.engine's decode loop); vllm: a "
        "vLLM engine on the same GPU, weights pushed after every update (needs the vllm package and CUDA)",
    )
    vllm: VLLMOptions = Field(default_factory=VLLMOptions)

    @model_validator(mode="before")
    @classmethod
    def _old_backend_name(cls, data):
        if isinstance(data, dict) and data.get("backend") == "hf":
            raise ValueError("generation.backend=hf is now generation.backend=policy (the training policy samples itself; "
                             "generation.engine chooses tether's decode loop or Hugging Face generate)")
        return data


class StageBase(Strict):
    model: ModelConfig
    data: DataConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    output_dir: str = Field(..., description="where the run directory and final model are written")
    overwrite: bool = Field(False, description="allow writing into an output_dir that holds a different run")


# --------------------------------------------------------------------------- per command


class PretrainArch(Strict):
    kind: Literal["llama", "gpt2"] = "llama"
    vocab_size: int = Field(8192, gt=300)
    hidden_size: int = Field(256, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(4, gt=0)
    intermediate_size: int = Field(704, gt=0)
    max_position_embeddings: int = Field(512, gt=8)
    tie_word_embeddings: bool = True


class PretrainConfig(Strict):
    """`tether pretrain`: a byte-level BPE tokenizer and a small causal LM trained from scratch."""

    data: PretrainData
    train: TrainConfig = Field(default_factory=TrainConfig)
    output_dir: str = Field(..., description="where the run directory and final model are written")
    overwrite: bool = Field(False, description="allow writing into an output_dir that holds a different run")
    arch: PretrainArch = Field(default_factory=PretrainArch)
    text_fields: list[str] = Field(
        default_factory=lambda: ["text", "prompt", "response", "chosen", "rejected"],
        description="fields of each row whose text is used; a prompt is joined with its response/chosen reply",
    )
    block_size: int = Field(256, gt=8, description="tokens per training sequence (packed)")
    max_chars: int | None = Field(None, gt=0, description="use at most this many characters of text")
    max_minutes: float | None = Field(
        None, gt=0.0, description="time budget of training: the steps are planned to fit it (from the measured time of a "
        "step, before training) and training stops when it is spent",
    )
    min_steps: int | None = Field(
        None, gt=0, description="the fewest steps worth training (default a tenth of the steps): when max_minutes allows "
        "fewer, the stage fails before training (on_time_cap=stop) or trains them anyway (warn)",
    )
    on_time_cap: Literal["stop", "warn"] = Field(
        "stop", description="when max_minutes allows fewer than min_steps, or cuts training short of 80% of its planned "
        "steps: stop (the pipeline stops, the model is kept for inspection) or warn and go on",
    )
    on_chance: Literal["stop", "warn"] = Field(
        "stop", description="when the held-out perplexity is no better than a unigram model of the training text: stop "
        "(the pipeline stops, the model is kept for inspection) or warn and go on",
    )


class SFTConfig(StageBase):
    """`tether sft`: loss on response tokens only, EOS appended."""

    train: SFTTrainConfig = Field(default_factory=SFTTrainConfig)


class RewardConfig(StageBase):
    """`tether rm`: a reward model (Bradley-Terry scalar head or 2-class classifier), optionally an ensemble."""

    data: RewardData
    train: PairTrainConfig = Field(default_factory=PairTrainConfig)
    normalize: bool = Field(True, description="save gain/bias so scores of the chosen/rejected set have mean 0, std 1")
    freeze_layers: int = Field(0, ge=0, description="freeze the embeddings and this many lowest layers")
    kind: Literal["bradley_terry", "classifier"] = Field(
        "bradley_terry",
        description="bradley_terry: scalar head on pairs or rankings; classifier: 2-class head on labelled completions "
        "({prompt, completion, label} or XSTest rows), cross-entropy, the positive-class logit is the reward",
    )
    pooling: Literal["model", "mean"] = Field(
        "model",
        description="model: the backbone's own head input (BERT's [CLS] pooler, a decoder's last token); mean: the "
        "masked mean of the last hidden states (encoders only; how sentence encoders such as all-MiniLM-L6-v2 were trained)",
    )
    ties: Literal["drop", "keep"] = Field("drop", description="ranking rows: drop tied pairs, or keep them with target 1/2")
    margin_scale: float = Field(
        0.0, ge=0.0, description="ranking rows: margin = scale * rank (or rating) gap for the Llama 2 margin loss; 0 = off"
    )
    group_by_prompt: bool = Field(True, description="put all pairs of one prompt in the same batch (InstructGPT)")
    select_best: bool = Field(
        True, description="keep the weights of the best eval (accuracy, then loss) instead of the last; needs train.eval_every"
    )
    ensemble_size: int = Field(1, ge=1, description="train this many members (seeds train.seed + i) into output_dir/member-i")
    ensemble_combine: Literal["mean", "conservative"] = Field("mean", description="default combination saved in the ensemble manifest")
    ensemble_k: float = Field(1.0, ge=0.0, description="conservative combination: mean - k * std over members")
    normalize_policy: str | None = Field(
        None, description="with normalize_prompts: set gain/bias from this policy's samples instead of the training replies"
    )
    normalize_prompts: str | None = Field(None, description="prompt file for normalize_policy")
    normalize_samples: int = Field(64, gt=1, description="policy samples (one per prompt) for the normalisation")
    on_chance: Literal["stop", "warn"] = Field(
        "stop", description="when the held-out accuracy is no better than chance (the lower end of its 95% Wilson "
        "interval at or below 0.5 for pairs, below the majority-class rate for a classifier): stop (the pipeline stops, "
        "the model is kept for inspection) or warn and go on",
    )


class RewardModelRef(Strict):
    path: str | None = Field(
        None, description="directory written by `tether rm` (a scalar or classifier model, or an ensemble), or any HF sequence-classification model"
    )
    function: str | None = Field(
        None, description="instead of a model: a Python reward function 'module:name' taking (prompts, responses) -> scores"
    )
    paths: list[str] | None = Field(None, description="instead of path: reward-model directories scored as an ensemble")
    ensemble: Literal["mean", "conservative"] | None = Field(
        None, description="ensemble score: mean, or conservative = mean - ensemble_k * std (default: the ensemble's manifest)"
    )
    ensemble_k: float | None = Field(None, ge=0.0, description="std multiplier of the conservative ensemble score")
    batch_size: int = Field(32, gt=0)
    max_length: int = Field(256, gt=8)

    @model_validator(mode="after")
    def _one_source(self):
        if sum(x is not None for x in (self.path, self.function, self.paths)) != 1:
            raise ValueError("set exactly one of reward_model.path, reward_model.paths and reward_model.function")
        return self


class RolloutParams(Strict):
    """`rollout`: what every online method (PPO, GRPO, RLOO, REINFORCE++) shares: one rollout per step, the clipped
    update over it, the KL coefficient, score normalisation and the stopping criteria."""

    batch_size: int = Field(16, gt=0, description="prompts per rollout (GRPO samples grpo.group_size completions of each)")
    num_epochs: int = Field(4, gt=0, description="passes of the clipped update over one rollout")
    num_minibatches: int = Field(2, gt=0, description="minibatches per pass")
    clip_coef: float = Field(0.2, gt=0.0, description="clip range of the probability ratio (Schulman et al. 2017, eq. 7)")
    kl_coef: float = Field(
        0.05, ge=0.0, description="KL coefficient beta: per-token penalty in the reward (PPO, RLOO, REINFORCE++; PPO's "
        "initial value when ppo.adaptive_kl) or loss weight (GRPO)",
    )
    missing_eos_penalty: float | None = Field(
        -1.0, description="score given to a response that never emitted EOS (None: keep the model's score)"
    )
    normalize_scores: bool = Field(True, description="centre and scale scores by their mean and std on samples of the initial policy")
    length_correction: Literal["none", "residual"] = Field(
        "none", description="residual: the score is what a linear fit on response length in characters (on samples of the initial policy) "
        "leaves unexplained, so a policy gains nothing from the reward model's length bias (rl/rewards.py::fit_length_baseline)",
    )
    check_logprobs: bool = Field(True, description="assert the generation engine's logprobs equal a fresh forward pass")
    seeding: Literal["auto", "global", "per_sample"] = Field(
        "auto",
        description="global: sampling and minibatch order draw from torch's generator, seeded once by train.seed; "
        "per_sample: each response has its own generator seeded from (train.seed, step, sample index) and minibatches "
        "one seeded from (train.seed, step), so a run samples the same on any number of processes; "
        "auto: per_sample with several processes, else global",
    )
    # stopping
    reward_threshold: float | None = Field(None, description="stop when the mean score reaches this")
    kl_budget: float | None = Field(None, gt=0.0, description="stop when the mean summed KL to the reference exceeds this")


class PPOParams(Strict):
    """`ppo`: the value model, GAE and the adaptive KL controller (the settings only PPO has)."""

    adaptive_kl: bool = Field(False, description="adapt rollout.kl_coef to reach target_kl (Ziegler et al. 2019)")
    target_kl: float = Field(6.0, gt=0.0, description="target summed KL per response, for the adaptive controller")
    kl_horizon: int = Field(10000, gt=0)
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0)
    value_clip_coef: float = Field(0.2, gt=0.0)
    vf_coef: float = Field(0.1, ge=0.0)
    ent_coef: float = Field(0.0, ge=0.0)
    whiten_advantages: bool = True
    whiten_scores: bool = Field(False, description="whiten reward-model scores per batch")
    value_init: Literal["policy", "reward_model"] = Field(
        "policy", description="initialise the value model from the policy or from the reward model"
    )
    value_learning_rate: float | None = Field(None, gt=0.0, description="defaults to train.learning_rate")


# keys of the online stages that moved: old dotted path -> new one (named in the error for a file or an override)
MOVED_KEYS = {
    **{f"ppo.{k}": f"rollout.{k}" for k in (
        "batch_size", "num_minibatches", "clip_coef", "kl_coef", "missing_eos_penalty", "reward_threshold", "kl_budget")},
    "ppo.num_ppo_epochs": "rollout.num_epochs",
    "ppo.check_rollout_logprobs": "rollout.check_logprobs",
    "ppo.rollout_seeding": "rollout.seeding",
    "grpo.normalize_scores": "rollout.normalize_scores",
}


class JudgeMonitor(Strict):
    """A held-out judge: a reward model not used for training, scored on fixed held-out prompts."""

    path: str = Field(..., description="reward-model directory of the judge")
    every: int = Field(5, gt=0, description="judge every N steps")
    num_prompts: int = Field(32, gt=0, description="held-out prompts (data.eval, or the holdout split of data.train)")
    patience: int = Field(2, gt=0, description="stop after the judge score fell this many times in a row while the training score rose")
    batch_size: int = Field(32, gt=0)
    max_length: int = Field(256, gt=8)


class GuardConfig(Strict):
    """Divergence guards of online RL: what to do when a step goes wrong."""

    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="a NaN/inf loss or gradient: stop (after saving the last good state) or skip that update"
    )
    max_skipped: int = Field(10, gt=0, description="stop after this many skipped updates")
    max_kl: float | None = Field(None, gt=0.0, description="stop when the mean summed KL per response exceeds this (divergence)")
    min_entropy: float | None = Field(None, ge=0.0, description="stop when the mean per-token entropy falls below this (collapse)")
    score_range: tuple[float, float] | None = Field(
        None, description="stop when a raw reward-model score falls outside [low, high] (a broken reward model)"
    )


class OnlineTrainConfig(TrainBase):
    """`train` of the online stages (PPO, GRPO): a step is one rollout and its update."""

    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="autocast precision of generation and forward passes; auto: bf16 where bf16 matrix products are "
        "native (CUDA with bf16, a CPU with AMX or AVX512-BF16), else fp32 (fp16 needs loss scaling, which online RL does not do)",
    )
    share_prompt: bool = Field(
        True, description="score a prompt's completions with one pass over the prompt (key/value cache reuse, exact)"
    )


class OnlineConfig(StageBase):
    """What the online stages share: the reward model, the rollout, generation, the judge and the guards."""

    data: PromptData
    train: OnlineTrainConfig = Field(default_factory=OnlineTrainConfig)
    reward_model: RewardModelRef
    rollout: RolloutParams = Field(default_factory=RolloutParams)
    generation: RolloutGenerationConfig = Field(default_factory=RolloutGenerationConfig)
    judge: JudgeMonitor | None = Field(None, description="stop when a held-out judge's score falls while the training reward rises")
    guards: GuardConfig = Field(default_factory=GuardConfig)
    reference: str | None = Field(
        None, description="the frozen reference of the KL penalty, if not the starting policy (e.g. the SFT model when PPO "
        "starts from an earlier round's policy); same tokenizer; not with LoRA, whose reference is its own base",
    )

    @model_validator(mode="after")
    def _reference_without_lora(self):
        if self.reference is not None and self.model.lora.enabled:
            raise ValueError("reference: with model.lora.enabled the reference is the policy with its adapters disabled; "
                             "set one or the other")
        return self

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data):
        if isinstance(data, dict):
            moved = [f"{old} is now {new}" for old, new in MOVED_KEYS.items()
                     if isinstance(data.get(old.split(".")[0]), dict) and old.split(".")[1] in data[old.split(".")[0]]]
            if moved:
                raise ValueError("keys shared by the online methods moved to the rollout section: " + "; ".join(moved))
        return data

    @model_validator(mode="after")
    def _vllm_logprobs_match_the_trainer(self):
        g = self.generation
        if g.backend != "vllm" or not self.rollout.check_logprobs:
            return self
        if not g.do_sample and g.temperature != 1.0:
            raise ValueError(
                "generation.backend=vllm with generation.do_sample=false returns logprobs at temperature 1, while the "
                f"trainer's are at generation.temperature={g.temperature}: set generation.temperature=1.0, "
                "generation.do_sample=true, or rollout.check_logprobs=false"
            )
        if g.do_sample and (g.top_k > 0 or g.top_p < 1.0):
            raise ValueError(
                "generation.backend=vllm returns the logprobs of the distribution it samples from, here truncated by "
                f"generation.top_k={g.top_k} / generation.top_p={g.top_p}, while the trainer's logprobs are of the full "
                "distribution at the same temperature, so rollout.check_logprobs would stop the run: set "
                "generation.top_k=0 and generation.top_p=1.0 (on-policy PPO), or rollout.check_logprobs=false"
            )
        return self


class PPOConfig(OnlineConfig):
    """`tether ppo`: PPO against a reward model with a per-token KL penalty to the frozen reference."""

    ppo: PPOParams = Field(default_factory=PPOParams)


class GRPOParams(Strict):
    """`grpo`: the critic-free advantage estimator."""

    algorithm: Literal["grpo", "rloo", "reinforce_pp"] = Field("grpo", description="the advantage estimator")
    group_size: int = Field(4, gt=1, description="completions per prompt (G)")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k3", description="KL estimator in the loss (GRPO)")
    kl_in: Literal["auto", "loss", "reward"] = Field(
        "auto", description="where the KL penalty goes: auto = loss for GRPO, reward for RLOO and REINFORCE++"
    )
    scale_rewards: bool = Field(True, description="GRPO: divide by the group std (False: mean-centred only)")


class GRPOConfig(OnlineConfig):
    """`tether grpo`: GRPO, RLOO or REINFORCE++ against a reward model or a rule-based reward function."""

    grpo: GRPOParams = Field(default_factory=GRPOParams)

    @model_validator(mode="after")
    def _no_entropy_guard(self):
        if self.guards.min_entropy is not None:
            raise ValueError("guards.min_entropy needs the policy's entropy, which only tether ppo measures")
        return self


class DPOParams(Strict):
    loss: Literal["sigmoid", "ipo", "kto"] = Field(
        "sigmoid", description="sigmoid: DPO (Rafailov et al. 2023); ipo: IPO (Azar et al. 2023); kto: KTO on thumbs data"
    )
    beta: float = Field(0.1, gt=0.0, description="strength of the implicit KL constraint")
    label_smoothing: float = Field(0.0, ge=0.0, le=0.5, description="assumed fraction of flipped labels (conservative DPO)")
    reference: Literal["auto", "lora", "copy", "precomputed"] = Field(
        "auto",
        description="lora: the policy with adapters disabled; copy: a frozen copy; precomputed: reference logprobs "
        "computed once before training and cached on disk; auto: lora when LoRA is on, else copy",
    )
    desirable_weight: float = Field(1.0, gt=0.0, description="KTO weight of desirable (thumbs-up) examples")
    undesirable_weight: float = Field(1.0, gt=0.0, description="KTO weight of undesirable (thumbs-down) examples")


class DPOConfig(StageBase):
    """`tether dpo`: direct preference optimisation (DPO, IPO, KTO) against a frozen reference."""

    train: PairTrainConfig = Field(default_factory=PairTrainConfig)
    dpo: DPOParams = Field(default_factory=DPOParams)


class EvalConfig(Strict):
    """`tether eval`: baseline and policy answer the same held-out prompts."""

    baseline: str
    policy: str
    prompts: str
    reward_models: list[str] = Field(..., min_length=1)
    output_dir: str
    split: Literal["auto", "train", "holdout", "all"] = Field(
        "auto", description="which prompts of the file: the held-out part (holdout_fraction of the prompts, by a hash of "
        "the prompt), the train part, or all; auto: the held-out part when holdout_fraction > 0, else all",
    )
    holdout_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    max_prompts: int | None = Field(64, gt=0)
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    max_prompt_length: int = 384
    generation: GenerationConfig = Field(default_factory=lambda: GenerationConfig(temperature=0.7))
    train_metrics: str | None = Field(None, description="metrics.jsonl of the PPO run for the curves")
    kl_budget: float | None = Field(None, gt=0.0, description="KL budget of the run; the report says whether KL is within it")
    baseline_cache: str | None = Field(
        None, description="a directory where the baseline's answers are kept: an evaluation of the same baseline (path and "
        "weight files), prompts, generation settings and seed reads them instead of generating them again (a loop's rounds)",
    )
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    overwrite: bool = True


class LoopLabeler(Strict):
    """Who labels each round's completions. `human`: people in the feedback app rank them (a campaign per round);
    `ai`: a language model judges pairs under a constitution (RLAIF, Bai et al. 2022; Lee et al. 2023);
    `model`: a reward model standing in for people (the synthetic-gold setup of Gao et al. 2022, "Scaling Laws for
    Reward Model Overoptimization"), for experiments and tests."""

    kind: Literal["model", "human", "ai"] = Field(
        "model", description="model: a reward model scores the completions; human: people rank them; ai: a judge LM compares them",
    )
    path: str | None = Field(None, description="model: the labelling reward model (the gold model); ai: the judge language model")
    constitution: str | None = Field(None, description="ai: the constitution YAML (configs/constitution.yaml); a principle per pair")
    min_confidence: float = Field(0.5, ge=0.5, lt=1.0, description="ai: pairs the judge prefers with at most this probability are dropped")
    min_margin: float = Field(0.0, ge=0.0, description="model: completions whose scores differ by at most this are a tie (no pair)")
    batch_size: int = Field(32, gt=0, description="model: completions scored at once")
    max_length: int = Field(256, gt=8, description="model: tokens of prompt + completion the labelling model reads")
    db: str | None = Field(None, description="human: the feedback app's database URL (sqlite:///feedback.db, postgresql://...)")
    url: str = Field("http://127.0.0.1:8000", description="human: where labellers open the app (printed with the campaign)")
    labelers_per_item: int = Field(2, gt=0, description="human: labellers who rank each item (consensus over them)")
    guidelines: str | None = Field(None, description="human: a Markdown file of labelling guidelines shown with every item")
    min_complete: float = Field(
        1.0, gt=0.0, le=1.0, description="human: the fraction of items that must have all their labels before the round goes on",
    )
    wait_minutes: float = Field(0.0, ge=0.0, description="human: how long to wait for the labels before stopping (run again later)")

    @model_validator(mode="after")
    def _what_each_kind_needs(self):
        if self.kind in ("model", "ai") and not self.path:
            raise ValueError(f"labeler.kind={self.kind} needs labeler.path (a reward model for model, a language model for ai)")
        if self.kind == "ai" and not self.constitution:
            raise ValueError("labeler.kind=ai needs labeler.constitution (a constitution YAML, e.g. configs/constitution.yaml)")
        if self.kind == "human" and not self.db:
            raise ValueError("labeler.kind=human needs labeler.db (the feedback app's database URL)")
        return self


class LoopEval(Strict):
    """How each round's policy is compared with the starting (SFT) policy on held-out prompts."""

    judge: str | None = Field(
        None, description="an independent reward model whose win rate is the stopping rule (default: the labeller's model)"
    )
    max_prompts: int = Field(64, gt=0, description="held-out prompts (data.holdout_fraction of the pool)")
    generation: GenerationConfig = Field(default_factory=lambda: GenerationConfig(temperature=0.7))
    patience: int = Field(1, gt=0, description="stop after the judge's win rate failed to improve this many rounds in a row")


class LoopConfig(Strict):
    """`tether loop`: rounds of sampling from the current policy, feedback, a refreshed reward model, PPO and evaluation."""

    policy: str = Field(..., description="the SFT model: round 1's policy and the baseline of every evaluation")
    data: PromptData = Field(..., description="the prompt pool; each round takes prompts no earlier round used, "
                             "the held-out part (holdout_fraction) is for evaluation")
    rounds: int = Field(2, gt=0, description="rounds to run; raising it later continues a finished loop")
    prompts_per_round: int = Field(32, gt=0)
    k: int = Field(4, ge=2, description="completions per prompt, ranked by the labeller into pairs")
    generation: GenerationConfig = Field(default_factory=lambda: GenerationConfig(temperature=1.0, max_new_tokens=32))
    labeler: LoopLabeler
    reward_model: dict[str, Any] = Field(
        default_factory=dict, description="keys of the `tether rm` config for each round's reward model (model, train, ...); "
        "data and output_dir are the loop's; from round 2 it starts from the previous round's weights",
    )
    trainer: Literal["ppo", "dpo"] = Field(
        "ppo", description="how each round trains the policy: ppo, against the round's reward model; dpo, directly on the "
        "round's pairs (iterative, on-policy DPO: Xiong et al. 2024), its reference the round's starting policy",
    )
    ppo: dict[str, Any] = Field(
        default_factory=dict, description="keys of the `tether ppo` config (rollout, ppo, train, generation, guards, judge); "
        "model, reward_model, data and output_dir are the loop's",
    )
    dpo: dict[str, Any] = Field(
        default_factory=dict, description="with trainer=dpo: keys of the `tether dpo` config (dpo, train, model.lora, "
        "data.max_length ...); model.name_or_path, data.train and output_dir are the loop's",
    )
    eval: LoopEval = Field(default_factory=LoopEval)
    kl_to: Literal["sft", "round"] = Field(
        "sft", description="the reference of every round's KL penalty: the SFT policy (the policy stays near it however many "
        "rounds run), or the round's starting policy (needed with LoRA, whose reference is its own base)",
    )
    redteam: dict[str, Any] | None = Field(
        None, description="keys of the `tether redteam` config (suites, transforms, refusal, ...) to attack each round's policy "
        "and the SFT policy; baseline, aligned and output_dir are the loop's. None: no red teaming",
    )
    findings_per_round: int = Field(
        8, ge=0, description="prompts on which a round's red teaming broke the policy, added to the next round's prompts",
    )
    seed: int = 0
    output_dir: str = Field(..., description="one directory per round (round-01, ...) and the loop's loop.json and report.html")
    overwrite: bool = Field(False, description="allow writing into an output_dir that holds a different loop")

    @model_validator(mode="after")
    def _a_judge(self):
        if self.eval.judge is None and self.labeler.kind != "model":
            raise ValueError(f"eval.judge is needed: with labeler.kind={self.labeler.kind} there is no labelling reward model to judge with")
        return self

    @model_validator(mode="after")
    def _one_trainer(self):
        unread = "dpo" if self.trainer == "ppo" else "ppo"
        if getattr(self, unread):
            raise ValueError(f"{unread}: is not read with trainer={self.trainer}; move its keys to {self.trainer}: or set trainer={unread}")
        if self.trainer == "dpo" and self.kl_to != "round":
            raise ValueError("trainer=dpo: DPO's reference is the policy it starts from, so each round's KL is to the round's "
                             "starting policy; set kl_to=round")
        return self


# --------------------------------------------------------------------------- loading


class PersonalSearch(Strict):
    """`search` of `tether personalize`: values to try for every adapter, chosen on a validation share of each
    person's training examples (every combination of the lists given; a list left out keeps the `dpo:` section's value)."""

    learning_rate: list[float] | None = Field(None, min_length=1, description="train.learning_rate values")
    beta: list[float] | None = Field(None, min_length=1, description="dpo.beta values")
    epochs: list[int] | None = Field(None, min_length=1, description="train.epochs values")

    @field_validator("learning_rate", "beta", "epochs")
    @classmethod
    def _positive(cls, v: list | None) -> list | None:
        if v is not None and any(x <= 0 for x in v):
            raise ValueError("every value must be > 0")
        return v

    def candidates(self) -> list[dict[str, float]]:
        """Every combination, in the order given (the first of equally good ones wins: list the gentlest first)."""
        out: list[dict[str, float]] = [{}]
        for key in ("learning_rate", "beta", "epochs"):
            values = getattr(self, key)
            if values:
                out = [{**c, key: v} for c in out for v in values]
        return out


class PersonalizeConfig(Strict):
    """`tether personalize`: a LoRA adapter per person, trained on that person's own feedback from the shared policy,
    which is also the adapter's reference (DPO for pairs, KTO for thumbs), so a person with little data stays close to
    it. The adapters are small files beside one base model."""

    policy: str = Field(..., description="the shared policy every adapter starts from and is held to (a model directory)")
    feedback: str = Field(..., description="a directory written by `tether label export --by-labeler DIR` (its labelers.json)")
    people: list[str] | None = Field(None, description="the labelers to personalise for (default: everyone in the index)")
    min_examples: int = Field(
        16, ge=1, description="a person with fewer training examples (pairs, or thumbs) gets no adapter and is served the shared policy",
    )
    holdout_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="of every person's examples, held out by a hash of the prompt (the same prompts for "
        "everyone): the adapters are measured on them",
    )
    pooled: bool = Field(
        True, description="also train one adapter on everyone's training examples together (the crowd's model): the "
        "baseline each person's adapter is measured against",
    )
    dpo: dict[str, Any] = Field(
        default_factory=dict, description="keys of the `tether dpo` config (dpo, train, data.max_length, model.lora ...); the "
        "policy, the data files, the reference (the shared policy) and adapter-only saving are set per person",
    )
    search: PersonalSearch = Field(
        default_factory=PersonalSearch, description="learning rates, betas and epochs to try for every adapter (the "
        "pooled one too), each chosen by accuracy on a validation share of that adapter's own training examples",
    )
    validation_fraction: float = Field(
        0.25, gt=0.0, lt=1.0, description="with more than one `search` candidate: of every person's training prompts, "
        "kept out of training (by a hash of the prompt) to choose among them; never the held-out prompts",
    )
    refit: bool = Field(
        True, description="after a search, train the chosen values again on all the training examples (else the "
        "chosen candidate, trained without the validation share, is the adapter)",
    )
    batch_size: int = Field(16, gt=0, description="pairs per forward pass when the adapters are measured")
    output_dir: str
    overwrite: bool = Field(False, description="allow writing into an output_dir that holds a different run")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into (["a", "b", "c"], parsed value).

    Raises:
        ConfigError: when there is no `=` or the key is empty.
    """
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.path=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict, overrides: list[str], schema: type[Strict]) -> dict:
    """Set each dotted key in a nested dict; unknown keys are reported against the schema.

    Raises:
        ConfigError: naming the override key when it does not exist in the schema.
    """
    for text in overrides:
        parts, value = parse_override(text)
        _check_key(schema, parts, text)
        node = data
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return data


def _check_key(schema: type[BaseModel], parts: list[str], text: str) -> None:
    model: Any = schema
    for i, p in enumerate(parts):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return  # a free-form dict or list value: nothing more to check
        if p not in model.model_fields:
            where = ".".join(parts[: i + 1])
            if p in REPLACED_KEYS:
                raise ConfigError(f"override '{text}': {REPLACED_KEYS[p]}")
            if issubclass(schema, OnlineConfig) and ".".join(parts[:2]) in MOVED_KEYS:
                raise ConfigError(f"override '{text}': {'.'.join(parts[:2])} is now {MOVED_KEYS['.'.join(parts[:2])]}")
            raise ConfigError(
                f"unknown config key '{where}' in override '{text}'; valid keys here: {', '.join(model.model_fields)}"
            )
        model = _section_type(model.model_fields[p].annotation)


def _section_type(annotation: Any) -> Any:
    """The BaseModel class inside an annotation like `X | None`, else the annotation."""
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping.

    Raises:
        ConfigError: missing file, invalid YAML (with the line), or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def validate(schema: type[Strict], data: dict, origin: str = "config"):
    """Validate a dict against a schema, turning pydantic errors into one clear line.

    Raises:
        ConfigError: naming the first bad key, what was given and what is expected.
    """
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"{origin}: unknown config key '{key}'") from None
        if err["type"] == "missing":
            raise ConfigError(f"{origin}: missing required config key '{key}'") from None
        given = err.get("input")
        given_text = f" (got {given!r})" if not isinstance(given, dict) else ""
        raise ConfigError(f"{origin}: config key '{key}': {err['msg']}{given_text}") from None


def load_config(schema: type[Strict], path: str | Path | None, overrides: list[str] | None = None):
    """Load a YAML file (optional) plus dotted overrides into a validated config object.

    Args:
        schema: the config class of the command, e.g. `PPOConfig`.
        path: YAML file, or None to build from overrides alone.
        overrides: `key.path=value` strings; later ones win.

    Returns:
        An instance of `schema`.

    Raises:
        ConfigError: missing file, bad YAML, unknown key, wrong type or value.
    """
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, list(overrides or []), schema)
    return validate(schema, data, origin=str(path) if path else "config")


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML (written to every run directory)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def describe(schema: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per config key with its type, default and description (for `--help`)."""
    lines = []
    for name, f in schema.model_fields.items():
        key = f"{prefix}{name}"
        sub = _section_type(f.annotation)
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            lines.extend(describe(sub, key + "."))
            continue
        default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
        doc = f" - {f.description}" if f.description else ""
        lines.append(f"  {key} (default {default}){doc}")
    return lines
