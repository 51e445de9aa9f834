"""Two CPU processes (DDP over gloo, started by `accelerate launch`) train exactly what one process trains.

SFT, reward-model, DPO and PPO runs on tiny random-init models are made twice with the same configs: once
as a plain single process (here, in the test process) and once as two processes that each take half of
every global batch. The final weights must agree.

Tolerance: the models run in float64 and the weights must agree to 1e-9 (absolute). The two runs differ
only in rounding: each process pads its shard to its own longest sequence (different matmul shapes),
gradients are summed across processes in a different order, and a process's mean is rescaled to the
global mean (P * n_local / N). In float64 that is ~1e-16 relative per operation. Adam divides by
sqrt(v) + 1e-8, so rounding noise in a gradient that is zero in exact arithmetic (the Bradley-Terry
gradient of the score head's bias, for one) becomes a step of at most lr * 1e-16 / 1e-8 ~ 1e-11; in
float32 the same noise becomes lr-sized steps, which is why these tests do not use float32. A real
sharding error (an example dropped or counted twice, a mean of per-process means) moves weights by
~lr = 1e-3; each test checks that training moved the weights by far more than the tolerance.

PPO and GRPO sample with a generator per response seeded from (train.seed, step, sample index) and
draw minibatches from one seeded from (train.seed, step) (`rollout.seeding: per_sample`, the
default with several processes), so both runs sample the same responses; the reward is a text rule
(`rewards.vowel_share`) so the scores are exact too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import PREF_ROWS, SFT_ROWS, write_jsonl
from tether.config import ModelConfig, load_config
from tether.stages import schema
from tether.models.load import load_causal_lm
from tether.models.reward import load_sequence_classifier

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
SRC = HERE.parent.parent / "src"
ATOL = 1e-9
MOVED = 1e-4  # training must move some weight by more than this (>> ATOL)
ONLINE_TRAIN = "device: cpu, num_threads: 1, learning_rate: 1.0e-3"
COMMON_TRAIN = ONLINE_TRAIN + ", log_every: 1"


def _configs(root: Path) -> dict[str, tuple[str, Path]]:
    """(command, YAML path) per stage, all float64 on CPU."""
    sft = write_jsonl(root / "sft.jsonl", SFT_ROWS)
    sft_eval = write_jsonl(root / "sft_eval.jsonl", SFT_ROWS[:5])  # 5 rows: the last eval batch has 1 (< 2 processes)
    prefs = write_jsonl(root / "prefs.jsonl", PREF_ROWS)
    pref_eval = write_jsonl(root / "pref_eval.jsonl", PREF_ROWS[:5])
    prompts = write_jsonl(root / "prompts.jsonl", [{"prompt": r["prompt"]} for r in SFT_ROWS])
    texts = {
        # 9 examples in batches of 4: each epoch ends with a batch of 1, which one process fills with a stand-in row
        "sft": f"""model: {{name_or_path: tiny-llama, dtype: float64}}
data: {{train: {sft}, eval: {sft_eval}, max_samples: 9, max_length: 64, max_prompt_length: 32}}
train: {{batch_size: 4, grad_accum_steps: 2, max_steps: 3, eval_every: 2, {COMMON_TRAIN}}}
""",
        "rm": f"""model: {{name_or_path: tiny-bert, dtype: float64}}
data: {{train: {prefs}, eval: {pref_eval}, max_length: 64}}
train: {{batch_size: 4, grad_accum_steps: 2, max_steps: 3, eval_every: 2, {COMMON_TRAIN}}}
on_chance: warn  # 3 steps on a few pairs: the processes are tested, not the model
""",
        # a decoder reward model: each pair's prompt runs once (train.share_prompt), two forward calls per backward
        "rm_decoder": f"""model: {{name_or_path: tiny-llama, dtype: float64}}
data: {{train: {prefs}, eval: {pref_eval}, max_length: 64}}
train: {{batch_size: 4, grad_accum_steps: 2, max_steps: 3, eval_every: 2, {COMMON_TRAIN}}}
on_chance: warn  # 3 steps on a few pairs: the processes are tested, not the model
""",
        "dpo": f"""model: {{name_or_path: tiny-llama, dtype: float64}}
data: {{train: {prefs}, eval: {pref_eval}, max_length: 64, max_prompt_length: 32}}
train: {{batch_size: 4, grad_accum_steps: 2, max_steps: 3, eval_every: 2, {COMMON_TRAIN}}}
""",
        "ppo": f"""model: {{name_or_path: tiny-llama, dtype: float64}}
reward_model: {{function: "rewards:vowel_share"}}
data: {{train: {prompts}, max_prompt_length: 32}}
generation: {{max_new_tokens: 8, batch_size: 8}}
rollout: {{batch_size: 4, num_epochs: 2, num_minibatches: 2, missing_eos_penalty: null, seeding: per_sample}}
train: {{max_steps: 2, {ONLINE_TRAIN}}}
""",
        # groups of 2 completions per prompt run their prompt once (train.share_prompt); a minibatch's shard may
        # hold a whole group, half of one or none, so the processes must agree on the path
        "grpo": f"""model: {{name_or_path: tiny-llama, dtype: float64}}
reward_model: {{function: "rewards:vowel_share"}}
data: {{train: {prompts}, max_prompt_length: 32}}
generation: {{max_new_tokens: 8, batch_size: 8}}
rollout: {{batch_size: 4, num_epochs: 2, num_minibatches: 2, kl_coef: 0.01, missing_eos_penalty: null, seeding: per_sample, normalize_scores: false}}
grpo: {{group_size: 2}}
train: {{max_steps: 2, {ONLINE_TRAIN}}}
""",
    }
    out = {}
    for name, text in texts.items():
        path = root / f"{name}.yaml"
        path.write_text(text + f"output_dir: {root / 'unset'}\n")
        out[name] = (name.split("_")[0], path)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_two(root: Path, configs: dict[str, tuple[str, Path]]) -> dict:
    """All stages in one `accelerate launch` of 2 CPU processes; returns each stage's exit status."""
    plan = [{"name": n, "argv": [cmd, "--config", str(path), f"output_dir={root / 'two' / n}"]} for n, (cmd, path) in configs.items()]
    # the global batch must split evenly: 3 examples over 2 processes is a configuration error
    plan.append({"name": "odd_batch", "argv": ["sft", "--config", str(configs["sft"][1]), f"output_dir={root / 'odd'}",
                                               "train.batch_size=3"]})
    (root / "plan.json").write_text(json.dumps(plan))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    # --multi_gpu picks the torchrun launcher; without GPUs Accelerate runs DDP over gloo on the CPU
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(HERE / "run_stages.py"), str(root / "plan.json"), str(root / "result.json")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    (root / "launch.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((root / "result.json").read_text())
    result["log"] = done.stdout + done.stderr
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every stage as one process (here) and as two processes; the output directories."""
    from tether.cli import runners

    root = tmp_path_factory.mktemp("ddp")
    configs = _configs(root)
    sys.path.insert(0, str(HERE))  # the reward function of the PPO config
    try:
        one = {}
        for name, (cmd, path) in configs.items():
            cfg = load_config(schema(cmd), path, [f"output_dir={root / 'one' / name}"])
            one[name] = Path(runners()[cmd](cfg))
    finally:
        sys.path.remove(str(HERE))
    two = _launch_two(root, configs)
    return {"one": one, "two": {n: root / "two" / n for n in configs}, "codes": two}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def _assert_same_weights(one: Path, two: Path, initial: dict[str, torch.Tensor], atol: float = ATOL) -> None:
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < atol, f"1 vs 2 processes differ by {worst:.3g}"
    moved = max((a[k] - initial[k].to(a[k].dtype)).abs().max().item() for k in initial if k in a)
    assert moved > MOVED, f"training moved the weights by only {moved:.3g}"


def _initial_policy() -> dict[str, torch.Tensor]:
    model, _ = load_causal_lm(ModelConfig(name_or_path="tiny-llama", dtype="float64"), torch.device("cpu"), seed=0)
    return model.state_dict()


def _assert_same_metrics(one: Path, two: Path, keys: list[str], rel: float = 1e-6) -> None:
    a, b = _metrics(one), _metrics(two)
    assert len(a) == len(b)  # one writer: the main process
    for ra, rb in zip(a, b):
        for k in keys:
            if k in ra:
                assert rb[k] == pytest.approx(ra[k], rel=rel, abs=1e-9), (ra["step"], k)


def test_all_stages_finished_and_an_uneven_global_batch_is_refused(runs):
    codes = runs["codes"]
    assert {k: codes[k] for k in ("sft", "rm", "rm_decoder", "dpo", "ppo", "grpo")} == {
        "sft": 0, "rm": 0, "rm_decoder": 0, "dpo": 0, "ppo": 0, "grpo": 0}
    assert codes["odd_batch"] == 1
    assert "train.batch_size=3 is the global batch, split evenly over 2 processes" in codes["log"]


def test_sft_two_processes_equal_one(runs):
    _assert_same_weights(runs["one"]["sft"], runs["two"]["sft"], _initial_policy())
    _assert_same_metrics(runs["one"]["sft"], runs["two"]["sft"], ["loss/sft", "sft/grad_norm", "eval/loss"])


def test_reward_model_two_processes_equal_one(runs):
    model, _ = load_sequence_classifier("tiny-bert", num_labels=1, dtype=torch.float64, seed=0)
    _assert_same_weights(runs["one"]["rm"], runs["two"]["rm"], model.state_dict())
    _assert_same_metrics(runs["one"]["rm"], runs["two"]["rm"], ["loss/reward", "rm/accuracy", "eval/loss", "eval/accuracy"])
    a, b = (json.loads((runs[k]["rm"] / "tether_reward.json").read_text()) for k in ("one", "two"))
    assert b["gain"] == pytest.approx(a["gain"], rel=1e-6) and b["bias"] == pytest.approx(a["bias"], rel=1e-6)


def test_decoder_reward_model_two_processes_equal_one(runs):
    model, _ = load_sequence_classifier("tiny-llama", num_labels=1, dtype=torch.float64, seed=0)
    _assert_same_weights(runs["one"]["rm_decoder"], runs["two"]["rm_decoder"], model.state_dict())
    _assert_same_metrics(runs["one"]["rm_decoder"], runs["two"]["rm_decoder"], ["loss/reward", "rm/accuracy", "eval/accuracy"])


def test_dpo_two_processes_equal_one(runs):
    _assert_same_weights(runs["one"]["dpo"], runs["two"]["dpo"], _initial_policy())
    _assert_same_metrics(runs["one"]["dpo"], runs["two"]["dpo"], ["loss/dpo", "dpo/accuracy", "dpo/margin", "eval/loss"])


def test_ppo_two_processes_sample_and_train_the_same(runs):
    one, two = runs["one"]["ppo"], runs["two"]["ppo"]
    # the same responses: their scores, lengths and KL to the reference agree step by step
    _assert_same_metrics(one, two, ["objective/raw_scores", "objective/kl", "rollout/response_length", "loss/policy", "loss/value"])
    _assert_same_weights(one, two, _initial_policy())


def test_grpo_with_shared_prompts_two_processes_equal_one(runs):
    one, two = runs["one"]["grpo"], runs["two"]["grpo"]
    _assert_same_metrics(one, two, ["objective/raw_scores", "objective/kl", "rollout/response_length", "loss/policy"])
    # one process shares each minibatch's groups at once, two processes each their shard's: other matrix shapes,
    # and llama's RMSNorm computes in float32 even in a float64 model, so rounding of ~1e-8 remains
    _assert_same_weights(one, two, _initial_policy(), atol=1e-6)
