"""Every key a stage's schema accepts is a key the stage reads.

Each stage runs on tiny models and data, in a few variants that take its optional branches (LoRA, an
evaluation set, a resumed run, a judge, an ensemble, a time budget ...), while every read of a config field
is recorded. A key that no variant reads is one `tether STAGE --help` lists although it does nothing: the test
fails and names it. Keys read only on a CUDA machine with vLLM are listed in GPU_ONLY, with where they are read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from tether import config as C
from tether.config import Strict, _section_type, validate
from tether.stages import schema

REPO = Path(__file__).resolve().parent.parent
GPU_ONLY = {  # read by rollout/backends.py::VLLMBackend, which needs CUDA and the vllm package
    "generation.vllm", "generation.vllm.gpu_memory_utilization", "generation.vllm.enable_prefix_caching",
    "generation.vllm.enforce_eager",
}


def schema_keys(schema: type[BaseModel], prefix: str = ""):
    """(section class name, field name, dotted key) of every key of a schema, sections included."""
    for name, f in schema.model_fields.items():
        yield schema.__name__, name, prefix + name
        sub = _section_type(f.annotation)
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            yield from schema_keys(sub, prefix + name + ".")


@pytest.fixture
def reads(monkeypatch):
    """The (class name, field name) of every config field read while the fixture is active."""
    seen: set[tuple[str, str]] = set()

    def recording(self, name):
        value = object.__getattribute__(self, name)
        if name in type(self).model_fields:
            seen.add((type(self).__name__, name))
        return value

    monkeypatch.setattr(Strict, "__getattribute__", recording)
    return seen


def _run(stage: str, raw: dict):
    from tether.cli import runners
    from tether.loop import FeedbackPending

    cfg = validate(schema(stage), raw)
    try:
        return runners()[stage](cfg)
    except FeedbackPending:  # a loop with people stops at its first campaign, having read what it needs
        return None


def _variants(stage: str, tmp, data, models, jsonl) -> list[dict]:
    """Configs of one stage that together take every optional branch."""
    llama = {"name_or_path": models["llama"], "tokenizer": models["llama"]}
    lora = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
    quick = {"max_steps": 2, "device": "cpu", "num_threads": 1}
    if stage == "pretrain":
        base = {"data": {"train": str(data["text"])}, "on_chance": "warn", "arch": {"vocab_size": 320, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                "intermediate_size": 64, "max_position_embeddings": 64}, "block_size": 32, "max_chars": 4000, "output_dir": str(tmp / "pre")}
        return [
            {**base, "train": {**quick, "batch_size": 2, "save_every": 1}},
            {**base, "train": {**quick, "batch_size": 2, "resume": True, "save_every": 1}},  # resumes the run above
            {**base, "train": {"max_steps": None, "epochs": 0.01, "device": "cpu", "batch_size": 2}, "max_minutes": 0.001, "min_steps": 10_000,
             "on_time_cap": "warn", "on_chance": "warn", "output_dir": str(tmp / "pre_capped")},
        ]
    if stage == "sft":
        base = {"model": {**llama, "lora": lora}, "data": {"train": str(data["sft"]), "max_length": 64, "holdout_fraction": 0.3},
                "output_dir": str(tmp / "sft")}
        return [{**base, "train": {**quick, "batch_size": 2, "eval_every": 1}},
                {**base, "train": {"epochs": 0.1, "device": "cpu", "batch_size": 2, "resume": True}, "output_dir": str(tmp / "sft_epochs")}]
    if stage == "rm":
        prompts = jsonl(tmp / "rm_prompts.jsonl", [{"prompt": "Say hi."}, {"prompt": "Name a colour."}])
        base = {"model": {"name_or_path": "tiny-bert", "tokenizer": None, "gradient_checkpointing": False},
                "data": {"train": str(data["prefs"]), "max_length": 64, "holdout_fraction": 0.3}, "on_chance": "warn",
                "output_dir": str(tmp / "rm")}
        return [
            {**base, "model": {"name_or_path": "tiny-bert", "lora": lora}, "train": {**quick, "batch_size": 2, "eval_every": 1},
             "normalize_policy": "tiny-llama", "normalize_prompts": str(prompts), "normalize_samples": 2},
            {**base, "train": {"epochs": 0.1, "device": "cpu", "batch_size": 2, "resume": True}, "ensemble_size": 2,
             "ensemble_combine": "conservative", "ensemble_k": 0.5, "output_dir": str(tmp / "rm_ensemble")},
        ]
    if stage == "dpo":
        rows = [{"prompt": f"Question {i}?", "chosen": f"A careful answer {i}.", "rejected": "No."} for i in range(8)]
        thumbs = jsonl(tmp / "thumbs.jsonl", [{"prompt": r["prompt"], "completion": r[k], "label": k == "chosen"}
                                               for r in rows for k in ("chosen", "rejected")])
        base = {"model": {**llama, "lora": lora}, "data": {"train": str(data["prefs"]), "max_length": 64, "holdout_fraction": 0.3},
                "output_dir": str(tmp / "dpo")}
        return [
            {**base, "train": {**quick, "batch_size": 2, "eval_every": 1}},
            {**base, "data": {"train": str(thumbs), "max_length": 64}, "dpo": {"loss": "kto", "desirable_weight": 1.0, "undesirable_weight": 1.5},
             "train": {"epochs": 0.1, "device": "cpu", "batch_size": 4, "resume": True}, "output_dir": str(tmp / "kto")},
        ]
    if stage == "loop":
        from test_loop import loop_config

        guidelines = tmp / "guidelines.md"
        guidelines.write_text("Rank the most helpful answer first.")
        human = {"kind": "human", "db": f"sqlite:///{tmp / 'feedback.db'}", "guidelines": str(guidelines), "wait_minutes": 0.0}
        return [json.loads(loop_config(data, models, tmp / "loop").model_dump_json()),  # then the human round stops, waiting
                json.loads(loop_config(data, models, tmp / "loop_human", labeler=human, eval={"judge": models["rm"]}).model_dump_json()),
                json.loads(loop_config(data, models, tmp / "loop_ai", rounds=1, eval={"judge": models["rm"]}, labeler={
                    "kind": "ai", "path": models["llama"], "constitution": str(REPO / "configs" / "constitution.yaml"), "min_confidence": 0.5,
                }).model_dump_json())]
    if stage == "personalize":
        feedback = tmp / "people"
        files = []
        for name, first in (("ann", True), ("bo", False)):
            rows = [{"prompt": f"Question {i}?", "chosen": f"Yes {i}." if first else "No.", "rejected": "No." if first else f"Yes {i}.",
                     "labeler": name} for i in range(12)]
            jsonl(feedback / "c" / f"{name}.jsonl", rows)
            files.append({"labeler": name, "campaign": "c", "kind": "pairs", "path": f"c/{name}.jsonl", "records": 12})
        (feedback / "labelers.json").write_text(json.dumps({"files": files}))
        dpo = {"data": {"max_length": 64}, "train": {**quick, "batch_size": 2}}
        return [{"policy": models["llama"], "feedback": str(feedback), "people": ["ann", "bo"], "min_examples": 4, "holdout_fraction": 0.0,
                 "pooled": True, "dpo": dpo, "batch_size": 4, "output_dir": str(tmp / "personal"), "overwrite": False},
                {"policy": models["llama"], "feedback": str(feedback), "people": ["ann"], "min_examples": 4, "pooled": False, "dpo": dpo,
                 "search": {"learning_rate": [1e-4, 1e-3], "beta": [0.1], "epochs": [1]}, "validation_fraction": 0.5, "refit": True,
                 "output_dir": str(tmp / "personal_search")}]
    if stage == "eval":
        metrics = jsonl(tmp / "metrics.jsonl", [{"step": 1, "objective/kl": 0.5, "objective/scores": 0.1}])
        return [{"baseline": models["llama"], "policy": models["gpt2"], "prompts": str(data["prompts"]), "reward_models": [models["rm"]],
                 "output_dir": str(tmp / "eval"), "split": "holdout", "holdout_fraction": 0.5, "max_prompts": 3, "max_prompt_length": 32,
                 "generation": {"max_new_tokens": 4, "batch_size": 4}, "train_metrics": str(metrics), "kl_budget": 1.0}]
    online = {"reward_model": {"path": models["rm"], "max_length": 64}, "generation": {"max_new_tokens": 4},
              "data": {"train": str(data["prompts"]), "eval": str(data["prompts"]), "max_prompt_length": 32},
              "rollout": {"batch_size": 2, "num_epochs": 1, "num_minibatches": 1},
              "judge": {"path": models["rm"], "every": 1, "num_prompts": 2}}
    if stage == "grpo":
        online["grpo"] = {"group_size": 2}
    return [
        {**online, "model": {**llama, "lora": lora}, "train": quick, "output_dir": str(tmp / stage)},
        {**online, "model": llama, "train": {"epochs": 0.1, "device": "cpu", "resume": True}, "output_dir": str(tmp / f"{stage}_epochs")},
    ]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["pretrain", "sft", "rm", "dpo", "ppo", "grpo", "eval", "loop", "personalize"])
def test_every_key_of_a_stage_is_read(stage, tmp_path, tiny_data, tiny_models, jsonl, reads):
    for raw in _variants(stage, tmp_path, tiny_data, tiny_models, jsonl):
        _run(stage, raw)
    unread = [key for cls, name, key in schema_keys(schema(stage)) if (cls, name) not in reads and key not in GPU_ONLY]
    assert not unread, f"tether {stage} accepts keys it never reads: {', '.join(unread)}"


def test_the_recorder_sees_a_key_that_is_never_read(reads):
    """The check above can fail: a config whose field nobody reads shows up as unread."""
    cfg = C.LoRAConfig(r=4)
    assert cfg.r == 4
    assert ("LoRAConfig", "r") in reads and ("LoRAConfig", "alpha") not in reads
