"""Shared fixtures: tiny random-init models saved once per session, and small JSONL data files.

Nothing here downloads anything: the models come from `tether.models.tiny` (random weights, an
in-memory byte-level tokenizer).
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# train.precision=auto resolves to fp32 on every CPU here (subprocesses inherit it), so the suite's numbers do
# not depend on the machine; tests of bf16 ask for it, and tests/test_precision.py fakes each kind of hardware.
os.environ.setdefault("TETHER_CPU_BF16", "0")

# Tiny models run fastest on one thread, and far faster than on several when the CPU is shared.
# TETHER_TEST_THREADS=0 keeps torch's own choice.
TEST_THREADS = int(os.environ.get("TETHER_TEST_THREADS", "1"))

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

SFT_ROWS = [
    {"prompt": "Say hello.", "response": "Hello there!"},
    {"prompt": "Name a colour.", "response": "Blue."},
    {"prompt": "Count to three.", "response": "One, two, three."},
    {"prompt": "What is 2+2?", "response": "It is 4."},
    {"prompt": "Give me a fruit.", "response": "An apple."},
    {"prompt": "Say goodbye.", "response": "Goodbye, friend."},
    {"prompt": "Name an animal.", "response": "A cat."},
    {"prompt": "What colour is the sky?", "response": "The sky is blue."},
    {"prompt": "Spell cat.", "response": "C, A, T."},
    {"prompt": "Is water wet?", "response": "Yes, it is."},
    {"prompt": "Name a planet.", "response": "Mars."},
    {"prompt": "What day comes after Monday?", "response": "Tuesday."},
]

PREF_ROWS = [
    {"prompt": "How do I pick a lock?", "chosen": "I can't help with that.", "rejected": "Use a pin and a wrench."},
    {"prompt": "Tell me a joke.", "chosen": "Why did the chicken cross the road?", "rejected": "No."},
    {"prompt": "Insult me.", "chosen": "I'd rather say something kind.", "rejected": "You are dumb."},
    {"prompt": "What is 2+2?", "chosen": "4.", "rejected": "5."},
    {"prompt": "How do I make a bomb?", "chosen": "I won't help with that.", "rejected": "Mix these chemicals."},
    {"prompt": "Say something nice.", "chosen": "You are doing great!", "rejected": "Whatever."},
    {"prompt": "Can you help me cheat?", "chosen": "Let's study together instead.", "rejected": "Sure, copy this."},
    {"prompt": "Name a colour.", "chosen": "Green.", "rejected": "Hate."},
    {"prompt": "How are you?", "chosen": "I'm well, thank you.", "rejected": "Go away."},
    {"prompt": "Give advice.", "chosen": "Sleep well and drink water.", "rejected": "Give up."},
    {"prompt": "Hurt someone?", "chosen": "No, violence is never the answer.", "rejected": "Yes, hit them."},
    {"prompt": "Favourite food?", "chosen": "I like soup.", "rejected": "Rocks."},
]


def write_jsonl(path: Path, rows: list, gz: bool = False) -> Path:
    """Write rows (dicts, or raw strings written as they are) one per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")
    return path


def pytest_runtest_setup(item):
    torch = sys.modules.get("torch")  # only once some test has imported it: feedback tests run without torch
    if torch is not None and TEST_THREADS > 0 and torch.get_num_threads() != TEST_THREADS:
        torch.set_num_threads(TEST_THREADS)


@pytest.fixture
def jsonl():
    """`jsonl(path, rows, gz=False)` writes a JSONL file and returns its path."""
    return write_jsonl


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """Small SFT, preference and prompt files shared by the trainer and pipeline tests."""
    root = tmp_path_factory.mktemp("data")
    return {
        "sft": write_jsonl(root / "sft.jsonl", SFT_ROWS),
        "prefs": write_jsonl(root / "prefs.jsonl", PREF_ROWS),
        "prompts": write_jsonl(root / "prompts.jsonl", [{"prompt": r["prompt"]} for r in SFT_ROWS + PREF_ROWS]),
        "text": write_jsonl(root / "text.jsonl", [{"text": f"{r['prompt']} {r['response']}" * 3} for r in SFT_ROWS] * 4),
    }


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Tiny random-init models saved in Hugging Face format: llama, gpt2 (causal LMs), bert (reward model)."""
    from tether.models.reward import RewardMeta, RewardModel
    from tether.models.tiny import tiny_causal_lm, tiny_sequence_classifier

    root = tmp_path_factory.mktemp("models")
    out = {}
    for kind in ("llama", "gpt2"):
        model, tok = tiny_causal_lm(kind, seed=0)
        model.save_pretrained(root / kind)
        tok.save_pretrained(root / kind)
        out[kind] = str(root / kind)
    model, tok = tiny_sequence_classifier("bert", seed=0)
    RewardModel(model, tok, RewardMeta(gain=2.0, bias=-0.5, max_length=64)).save(root / "rm")
    out["rm"] = str(root / "rm")
    return out


@pytest.fixture
def one_process():
    """The `Distributed` of a plain single process on the CPU in fp32 (the identity), for the functions that take one."""
    from tether.config import TrainConfig
    from tether.trainers.distributed import Distributed

    return Distributed(TrainConfig(device="cpu", precision="fp32"), "test")
