"""`train.share_prompt` in the trainers: DPO losses and gradients, reward-model runs, with it on and off."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tether.config import DataConfig, DPOConfig, DPOParams, LoRAConfig, ModelConfig, PairTrainConfig, RewardConfig, RewardData
from tether.data.sources import load_preferences
from tether.data.tokenize import tokenize_pairs
from tether.models import shared_prefix
from tether.models.load import load_causal_lm
from tether.models.reward import load_sequence_classifier
from tether.trainers.dpo import batch_loss, precompute_reference, prepare_policy, sequence_batch, shared_split, train_dpo
from tether.trainers.reward import pair_scores, train_reward

CPU = torch.device("cpu")
# Llama's RMSNorm computes in float32 even in a float64 model: gradients that reach it summed in another order
# (the shared prefix adds both replies' gradients before the norm, full rows after it) can round to the
# neighbouring float32 value, ~6e-8 relative. Values themselves agree to float64 rounding.
GRAD_ATOL, GRAD_RTOL = 1e-7, 1e-6
TEMPLATE = "\n\nHuman: {prompt}\n\nAssistant:"


@pytest.fixture
def shared_calls(monkeypatch):
    """Counts the shared-prefix forward passes (so a test knows the shared path really ran)."""
    calls = []
    real = shared_prefix.shared_forward

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(shared_prefix, "shared_forward", spy)
    return calls


def _policy(mode: str, seed: int = 3):
    """A tiny llama policy (float64) and its reference; LoRA B matrices perturbed so policy != reference."""
    model, tok = load_causal_lm(ModelConfig(name_or_path="tiny-llama"), CPU, dtype=torch.float64, seed=seed)
    policy, ref_policy = prepare_policy(model, mode, LoRAConfig(enabled=mode == "lora", r=4, alpha=8))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in sorted(policy.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.05)
    return policy, ref_policy, tok


PAIRS = [
    {"prompt": "How do I pick a lock?", "chosen": "I can't help with that.", "rejected": "Use a pin and a wrench."},
    {"prompt": "Tell me a joke.", "chosen": "Why did the chicken cross the road?", "rejected": "No."},
    {"prompt": "Insult me.", "chosen": "I'd rather say something kind.", "rejected": "You are dumb."},
    {"prompt": "What is 2+2?", "chosen": "It is 4.", "rejected": "It is 5."},  # the replies' first tokens are equal
    {"prompt": "Say something nice.", "chosen": "You are doing great!", "rejected": "Whatever."},
    {"prompt": "Can you help me cheat?", "chosen": "Let's study together instead.", "rejected": "Sure, copy this."},
    {"prompt": "Name a colour.", "chosen": "Green.", "rejected": "Hate."},
    {"prompt": "Give advice.", "chosen": "Sleep well and drink water.", "rejected": "Give up."},
]


def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    return str(path)


def _items(tok, tmp_path):
    return tokenize_pairs(load_preferences([pairs_file(tmp_path)]), tok, TEMPLATE, 128, 64, "left")


@pytest.mark.parametrize("mode", ["copy", "lora", "precomputed"])
@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_dpo_loss_and_gradients_are_the_same_with_and_without_sharing(one_process, mode, loss, tmp_path, shared_calls):
    params = DPOParams(loss=loss)
    out = {}
    for share in (False, True):
        policy, ref_policy, tok = _policy(mode)
        items = _items(tok, tmp_path)
        cache = None
        if mode == "precomputed":
            cache = precompute_reference(policy, items, "pairs", "train", tok.pad_token_id, 128, 4, loss == "ipo", CPU, one_process, share_prompt=share)
        calls_before = len(shared_calls)
        value, metrics = batch_loss(policy, ref_policy, cache, items, "pairs", "train", params, tok.pad_token_id, 128, CPU, one_process,
                                    share_prompt=share)
        assert (len(shared_calls) > calls_before) == share
        value.backward()
        grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
        out[share] = (value.item(), metrics, grads, cache)
    (plain, m_plain, g_plain, c_plain), (shared, m_shared, g_shared, c_shared) = out[False], out[True]
    assert shared == pytest.approx(plain, abs=1e-10)
    assert m_shared["logprobs/chosen"] == pytest.approx(m_plain["logprobs/chosen"], abs=1e-9)
    assert g_plain.keys() == g_shared.keys() and g_plain
    for n in g_plain:
        torch.testing.assert_close(g_shared[n], g_plain[n], atol=GRAD_ATOL, rtol=GRAD_RTOL, msg=n)
    if mode == "precomputed":
        for k in c_plain:
            torch.testing.assert_close(c_shared[k], c_plain[k], atol=1e-10, rtol=0)


def test_dpo_with_bf16_autocast_is_close_either_way(one_process, tmp_path, shared_calls):
    policy, ref_policy, tok = _policy("copy")
    policy.float(), ref_policy.float()
    items = _items(tok, tmp_path)
    train = PairTrainConfig(precision="bf16", device="cpu")
    a, _ = batch_loss(policy, ref_policy, None, items, "pairs", "train", DPOParams(), tok.pad_token_id, 128, CPU, one_process, train,
                      share_prompt=False)
    b, _ = batch_loss(policy, ref_policy, None, items, "pairs", "train", DPOParams(), tok.pad_token_id, 128, CPU, one_process, train)
    assert shared_calls  # the train config's share_prompt (default on) was used
    assert b.item() == pytest.approx(a.item(), rel=2e-2)


def test_reward_pair_scores_are_the_same_for_a_decoder(one_process, tmp_path, shared_calls):
    model, tok = load_sequence_classifier("tiny-llama", seed=1, dtype=torch.float64)
    rows = load_preferences([pairs_file(tmp_path)])
    plain = pair_scores(model, tok, rows, TEMPLATE, 128, CPU, one_process, share_prompt=False)
    assert not shared_calls
    shared = pair_scores(model, tok, rows, TEMPLATE, 128, CPU, one_process)
    assert shared_calls
    for a, b in zip(shared, plain):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def _assert_close_runs(a, b, atol, initial):
    """Final weights of two runs agree to `atol`. The runs use tiny-gpt2 in float64: its LayerNorm stays in
    float64, so the two paths differ only by float64 rounding, which Adam turns into steps of at most
    ~lr * 1e-16 / eps = 1e-11 (a float32 norm, as Llama's RMSNorm, gives lr-sized noise on weights whose
    gradient is ~0). A real error would move weights by ~lr = 1e-3."""
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst < atol, f"sharing on vs off: weights differ by {worst:.3g}"
    moved = max((wa[k] - initial[k]).abs().max().item() for k in wa if k in initial)
    assert moved > 1e-4, f"training moved the weights by only {moved:.3g}"


def test_reward_training_with_and_without_sharing_ends_at_the_same_weights(tmp_path, shared_calls):
    data = pairs_file(tmp_path)
    runs = {}
    for share in (True, False):
        cfg = RewardConfig(
            model=ModelConfig(name_or_path="tiny-gpt2", dtype="float64"), data=RewardData(train=data, max_length=128),
            train=PairTrainConfig(batch_size=4, max_steps=3, learning_rate=1e-3, log_every=1, device="cpu", warmup_ratio=0.0,
                              share_prompt=share),
            output_dir=str(tmp_path / f"rm_{share}"),
        )
        runs[share] = train_reward(cfg)
    assert shared_calls
    initial, _ = load_sequence_classifier("tiny-gpt2", dtype=torch.float64, seed=0)
    _assert_close_runs(runs[True], runs[False], 1e-9, initial.state_dict())
    a, b = (json.loads((runs[k] / "metrics.jsonl").read_text().splitlines()[-1]) for k in (True, False))
    assert a["loss/reward"] == pytest.approx(b["loss/reward"], abs=1e-9)


def test_dpo_training_with_and_without_sharing_ends_at_the_same_weights(tmp_path, shared_calls):
    data = pairs_file(tmp_path)
    runs = {}
    for share in (True, False):
        cfg = DPOConfig(
            model=ModelConfig(name_or_path="tiny-gpt2", dtype="float64"),
            data=DataConfig(train=data, max_length=128, max_prompt_length=64),
            train=PairTrainConfig(batch_size=4, max_steps=3, learning_rate=1e-3, log_every=1, device="cpu", warmup_ratio=0.0,
                              share_prompt=share),
            dpo=DPOParams(reference="precomputed"), output_dir=str(tmp_path / f"dpo_{share}"),
        )
        runs[share] = train_dpo(cfg)
    assert shared_calls
    initial, _ = load_causal_lm(ModelConfig(name_or_path="tiny-gpt2"), CPU, dtype=torch.float64, seed=0)
    _assert_close_runs(runs[True], runs[False], 1e-9, initial.state_dict())


def test_processes_share_a_batch_only_when_all_of_them_can(one_process, tmp_path):
    """DDP and FSDP run collectives inside forward: every process must make the same number of model calls."""
    _, _, tok = _policy("copy")
    b = sequence_batch(_items(tok, tmp_path), "pairs", tok.pad_token_id, 128)
    votes = []

    class OtherProcessRefuses:
        def all(self, flag: bool) -> bool:
            votes.append(flag)
            return False

    assert shared_split(b, "pairs", tok.pad_token_id, True, one_process) is not None
    assert shared_split(b, "pairs", tok.pad_token_id, True, OtherProcessRefuses()) is None
    assert votes == [True]
