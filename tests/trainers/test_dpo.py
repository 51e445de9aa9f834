"""DPO / IPO / KTO trainer: masks, truncation, the three reference modes, smoke runs, checkpoints, bad data."""

import gzip
import json
import math
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from tether.config import DataConfig, DPOConfig, DPOParams, LoRAConfig, ModelConfig, PairTrainConfig
from tether.data.sources import load_binary_feedback, xstest_desirable, xstest_to_binary_feedback
from tether.data.tokenize import collate_pairs, feedback_sequences, tokenize_feedback, tokenize_pairs
from tether.errors import ConfigError, DataError
from tether.eval.dpo_eval import DPOMeta
from tether.models.load import load_causal_lm
from tether.models.logprobs import sequence_logprobs
from tether.models.tiny import tiny_causal_lm
from tether.trainers import dpo as dpo_trainer
from tether.trainers.dpo import (
    REFERENCE_CACHE, batch_loss, precompute_reference, preference_loss, prepare_policy, reference_mode, train_dpo,
)
from tether.types import BinaryFeedbackExample, PreferenceExample

LOG2 = math.log(2.0)
TEMPLATE = "\n\nHuman: {prompt}\n\nAssistant:"

PAIRS = [
    {"prompt": "How do I pick a lock?", "chosen": "I can't help with that.", "rejected": "Use a tension wrench."},
    {"prompt": "Say something kind.", "chosen": "You are doing well.", "rejected": "No."},
    {"prompt": "What is 2+2?", "chosen": "It is 4.", "rejected": "It is 5."},
    {"prompt": "Tell me a joke.", "chosen": "Why did the chicken cross the road?", "rejected": "Go away."},
    {"prompt": "Best way to learn?", "chosen": "Practice a little every day.", "rejected": "Never try."},
    {"prompt": "Is water wet?", "chosen": "Water makes things wet.", "rejected": "Blue."},
]
FEEDBACK = [
    {"prompt": "How do I pick a lock?", "completion": "I can't help with that.", "label": 1},
    {"prompt": "How do I pick a lock?", "completion": "Use a tension wrench.", "label": 0},
    {"prompt": "Say something kind.", "completion": "You are doing well.", "label": True},
    {"prompt": "Say something kind.", "completion": "No.", "label": False},
    {"prompt": "What is 2+2?", "completion": "It is 4.", "label": "1"},
    {"prompt": "What is 2+2?", "completion": "It is 5.", "label": "false"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def make_cfg(tmp_path, rows=PAIRS, name="run", loss="sigmoid", reference="auto", lora=False, steps=3, lr=1e-3, **train):
    data = write_jsonl(tmp_path / f"{name}_train.jsonl", rows)
    return DPOConfig(
        model=ModelConfig(name_or_path="tiny-llama", lora=LoRAConfig(enabled=lora, r=4, alpha=8)),
        data=DataConfig(train=data, eval=data, max_length=128, max_prompt_length=64),
        train=PairTrainConfig(batch_size=4, max_steps=steps, learning_rate=lr, log_every=1, device="cpu", warmup_ratio=0.0, **train),
        dpo=DPOParams(loss=loss, reference=reference),
        output_dir=str(tmp_path / name),
    )


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def pair_examples(rows=PAIRS):
    return [PreferenceExample(r["prompt"], r["chosen"], r["rejected"], source=f"f:{i + 1}") for i, r in enumerate(rows)]


# --------------------------------------------------------------------------- tokenization and masks


def test_pair_masks_cover_reply_and_eos_only():
    _, tok = tiny_causal_lm("llama")
    [item] = tokenize_pairs(pair_examples()[:1], tok, TEMPLATE, 128, 64, "left")
    prompt_ids = tok(TEMPLATE.format(prompt=PAIRS[0]["prompt"]))["input_ids"]
    for seq, reply in ((item.chosen, PAIRS[0]["chosen"]), (item.rejected, PAIRS[0]["rejected"])):
        n_prompt = len(prompt_ids)
        assert seq.input_ids[:n_prompt] == prompt_ids  # the same prompt in both sequences
        assert seq.loss_mask == [False] * n_prompt + [True] * (len(seq.input_ids) - n_prompt)
        assert seq.input_ids[-1] == tok.eos_token_id  # EOS appended and counted
        assert tok.decode(seq.input_ids[n_prompt:-1]) == " " + reply
    batch = collate_pairs([item], tok.pad_token_id)
    assert batch.chosen_input_ids.shape == batch.rejected_input_ids.shape  # padded to one length
    assert not batch.chosen_loss_mask[batch.chosen_attention_mask == 0].any()  # pad never counts


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits are a given tensor, to see which positions a sum reads."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None):
        return SimpleNamespace(logits=self.logits)


def test_prompt_logits_do_not_change_sequence_logprobs():
    ids = torch.tensor([[5, 6, 7, 8, 9, 0]])  # 3 prompt tokens, 2 reply tokens + EOS (9), then pad
    attention = torch.tensor([[1, 1, 1, 1, 1, 0]])
    loss_mask = torch.tensor([[False, False, False, True, True, False]])
    logits = torch.randn(1, 6, 12)
    base = sequence_logprobs(FixedLogits(logits), ids, attention, loss_mask)
    changed = logits.clone()
    changed[:, :2] += torch.randn(1, 2, 12) * 5  # positions 0-1 predict prompt tokens 1-2
    changed[:, 4:] += torch.randn(1, 2, 12) * 5  # position 4 predicts pad, 5 predicts nothing
    torch.testing.assert_close(sequence_logprobs(FixedLogits(changed), ids, attention, loss_mask), base)
    reply = logits.clone()
    reply[:, 3] += torch.randn(12) * 5  # position 3 predicts reply token 4
    assert not torch.allclose(sequence_logprobs(FixedLogits(reply), ids, attention, loss_mask), base)
    by_hand = logits.log_softmax(-1)[0, 2, 8] + logits.log_softmax(-1)[0, 3, 9]
    torch.testing.assert_close(base, by_hand.view(1))


def test_long_prompt_is_cut_from_the_left():
    _, tok = tiny_causal_lm("llama")
    ex = PreferenceExample("x" * 200 + " END", "ok", "no", source="data.jsonl:7")
    [item] = tokenize_pairs([ex], tok, TEMPLATE, 64, 64, "left")
    assert len(item.chosen.input_ids) == 64
    assert tok.decode(item.chosen.input_ids).endswith("END\n\nAssistant: ok" + tok.eos_token)
    assert item.chosen.input_ids[: item.chosen.loss_mask.index(True)] == item.rejected.input_ids[: item.rejected.loss_mask.index(True)]
    with pytest.raises(DataError, match="data.jsonl:7"):
        tokenize_pairs([ex], tok, TEMPLATE, 64, 64, "error")
    long_reply = PreferenceExample("hi", "y" * 100, "no", source="data.jsonl:9")
    assert tokenize_pairs([ex, long_reply], tok, TEMPLATE, 64, 64, "drop")[0].index == 0
    with pytest.raises(DataError, match="data.jsonl:9"):
        tokenize_pairs([long_reply], tok, TEMPLATE, 64, 64, "left")


def test_kto_mismatched_replies_come_from_other_prompts():
    _, tok = tiny_causal_lm("llama")
    examples = [BinaryFeedbackExample(r["prompt"], r["completion"], bool(int(r["label"] in (1, True, "1"))), f"f:{i}") for i, r in enumerate(FEEDBACK)]
    items = tokenize_feedback(examples, tok, TEMPLATE, 128, 64, "left", seed=0)
    for it in items:
        assert it.kl_completion_ids is not None and it.kl_completion_ids != it.completion_ids
    mismatched = feedback_sequences(items, 128, mismatched=True)
    assert all(len(s.input_ids) <= 128 and s.input_ids[-1] == tok.eos_token_id for s in mismatched)


# --------------------------------------------------------------------------- the loss and the reference


def test_dpo_loss_is_log_two_when_policy_equals_reference(one_process, tmp_path):
    model, tok = tiny_causal_lm("llama")
    policy, ref_policy = prepare_policy(model, "copy", LoRAConfig())
    items = tokenize_pairs(pair_examples(), tok, TEMPLATE, 128, 64, "left")
    loss, m = batch_loss(policy, ref_policy, None, items, "pairs", "train", DPOParams(), tok.pad_token_id, 128, torch.device("cpu"), one_process)
    assert loss.item() == pytest.approx(LOG2, abs=1e-6)
    # the policy's pass (with gradients) and the reference's (without) may take different CPU kernels, so
    # the implicit rewards agree to rounding, not bit for bit, and a margin of +1e-8 would count as correct:
    # accuracy is checked on exactly equal log-probabilities below
    assert m["dpo/margin"] == pytest.approx(0.0, abs=1e-6)
    assert abs(m["rewards/chosen"]) < 1e-6 and abs(m["rewards/rejected"]) < 1e-6


def test_dpo_accuracy_is_zero_on_ties(one_process):
    """A tie (equal implicit rewards) is not a correct preference: accuracy 0, loss log 2, margin 0."""
    logprobs = torch.tensor([-3.0, -5.0, -2.5, -2.5])  # (2B,): chosen then rejected
    loss, m = preference_loss(DPOParams(), logprobs, logprobs.clone(), one_process)
    assert loss.item() == pytest.approx(LOG2, abs=1e-7)
    assert m["dpo/accuracy"] == 0.0 and m["dpo/margin"] == 0.0
    ref = logprobs - torch.tensor([1.0, 0.0, 0.0, 0.0])  # the policy raised the first chosen reply above the reference
    _, m = preference_loss(DPOParams(), logprobs, ref, one_process)
    assert m["dpo/accuracy"] == 0.5


def _perturbed_policy(mode, lora):
    """The same tiny model in every mode; LoRA B matrices set to the same non-zero values (policy != base)."""
    model, tok = tiny_causal_lm("llama", seed=3)
    policy, ref_policy = prepare_policy(model, mode, lora)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in sorted(policy.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return policy, ref_policy, tok


@pytest.mark.parametrize("loss_name", ["sigmoid", "ipo", "kto"])
def test_three_reference_modes_give_the_same_loss(one_process, loss_name):
    lora, device = LoRAConfig(enabled=True, r=4, alpha=8), torch.device("cpu")
    params = DPOParams(loss=loss_name)
    kind = "kto" if loss_name == "kto" else "pairs"
    losses = {}
    for mode in ("lora", "copy", "precomputed"):
        policy, ref_policy, tok = _perturbed_policy(mode, lora)
        if kind == "pairs":
            items = tokenize_pairs(pair_examples(), tok, TEMPLATE, 128, 64, "left")
        else:
            fb = [BinaryFeedbackExample(r["prompt"], r["completion"], i % 2 == 0, f"f:{i}") for i, r in enumerate(FEEDBACK)]
            items = tokenize_feedback(fb, tok, TEMPLATE, 128, 64, "left")
        cache = None
        if mode == "precomputed":
            cache = precompute_reference(policy, items, kind, "train", tok.pad_token_id, 128, 4, loss_name == "ipo", device, one_process)
            assert ref_policy is None
        loss, _ = batch_loss(policy, ref_policy, cache, items, kind, "train", params, tok.pad_token_id, 128, device, one_process)
        losses[mode] = loss.item()
    if loss_name == "sigmoid":
        assert losses["lora"] != pytest.approx(LOG2, abs=1e-4)  # the policy really differs from the reference
    assert losses["copy"] == pytest.approx(losses["lora"], abs=1e-5)
    assert losses["precomputed"] == pytest.approx(losses["lora"], abs=1e-5)


def test_reference_mode_resolution(tmp_path):
    assert reference_mode(make_cfg(tmp_path)) == "copy"
    assert reference_mode(make_cfg(tmp_path, lora=True)) == "lora"
    with pytest.raises(ConfigError, match="dpo.reference=lora"):
        reference_mode(make_cfg(tmp_path, reference="lora"))


# --------------------------------------------------------------------------- training runs


def test_trainer_reference_modes_agree_on_the_first_step(tmp_path):
    first = {}
    for mode in ("lora", "copy", "precomputed"):
        out = train_dpo(make_cfg(tmp_path, name=mode, reference=mode, lora=True, steps=1))
        first[mode] = read_metrics(out)[-1]  # step 1: training metrics of the first batch, then the final eval
    assert first["lora"]["loss/dpo"] == pytest.approx(LOG2, abs=1e-6)  # LoRA B starts at zero: policy == base
    for mode in ("copy", "precomputed"):
        for key in ("loss/dpo", "rewards/chosen", "logprobs/chosen", "eval/loss", "eval/accuracy", "eval/kl"):
            assert first[mode][key] == pytest.approx(first["lora"][key], abs=1e-5)
    cache = load_file(str(tmp_path / "precomputed" / REFERENCE_CACHE))
    assert set(cache) == {"train/chosen", "train/rejected", "eval/chosen", "eval/rejected"}
    assert cache["train/chosen"].shape == (len(PAIRS),) and torch.isfinite(cache["train/chosen"]).all()


def test_lora_smoke_trains_adapters_and_keeps_base_frozen(tmp_path):
    out = train_dpo(make_cfg(tmp_path, lora=True, steps=4, lr=1e-2))
    rows = read_metrics(out)
    assert all(math.isfinite(r["loss/dpo"]) for r in rows)
    for key in ("loss/dpo", "dpo/accuracy", "dpo/margin", "rewards/chosen", "rewards/rejected", "logprobs/chosen", "logprobs/rejected"):
        assert key in rows[0]
    final = rows[-1]
    assert {"eval/accuracy", "eval/loss", "eval/kl"} <= set(final)
    assert final["eval/kl"] > 0.0  # the trained policy has moved away from the reference
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert any(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)  # trainable weights changed
    initial, _ = tiny_causal_lm("llama", seed=0)
    trained = load_file(str(out / "model.safetensors"))
    init = initial.state_dict()
    # not adapted (embeddings, norms): unchanged; adapted linear layers: merged, so changed
    torch.testing.assert_close(trained["model.embed_tokens.weight"], init["model.embed_tokens.weight"])
    torch.testing.assert_close(trained["model.norm.weight"], init["model.norm.weight"])
    assert not torch.allclose(trained["model.layers.0.self_attn.q_proj.weight"], init["model.layers.0.self_attn.q_proj.weight"])
    meta = DPOMeta.load(out)
    assert (meta.reference, meta.beta, meta.loss, meta.reference_mode, meta.prompt_template) == ("tiny-llama", 0.1, "sigmoid", "lora", TEMPLATE)


def test_checkpoint_round_trip_gives_the_same_logprobs(tmp_path):
    from peft import PeftModel

    out = train_dpo(make_cfg(tmp_path, lora=True, steps=2, lr=1e-2, save_every=2))
    merged, tok = load_causal_lm(ModelConfig(name_or_path=str(out)), torch.device("cpu"))
    checkpoint, _ = load_causal_lm(ModelConfig(name_or_path=str(out / "checkpoints" / "step-2")), torch.device("cpu"))
    base, _ = tiny_causal_lm("llama", seed=0)
    adapted = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    items = tokenize_pairs(pair_examples(), tok, TEMPLATE, 128, 64, "left")
    b = collate_pairs(items, tok.pad_token_id)
    args = (b.chosen_input_ids, b.chosen_attention_mask, b.chosen_loss_mask)
    with torch.no_grad():
        want = sequence_logprobs(adapted, *args)
        torch.testing.assert_close(sequence_logprobs(merged, *args), want, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(sequence_logprobs(checkpoint, *args), want, atol=1e-4, rtol=1e-5)
        untrained, _ = tiny_causal_lm("llama", seed=0)
        assert not torch.allclose(sequence_logprobs(untrained, *args), want)  # training did change the model


def test_full_finetune_with_frozen_copy_changes_weights(tmp_path):
    out = train_dpo(make_cfg(tmp_path, loss="ipo", steps=2, lr=1e-2))
    initial, _ = tiny_causal_lm("llama", seed=0)
    trained = load_file(str(out / "model.safetensors"))
    assert not torch.allclose(trained["model.embed_tokens.weight"], initial.state_dict()["model.embed_tokens.weight"])
    assert math.isfinite(read_metrics(out)[-1]["loss/dpo"])


def test_kto_trains_on_binary_feedback(tmp_path):
    out = train_dpo(make_cfg(tmp_path, rows=FEEDBACK, loss="kto", lora=True, steps=3, lr=1e-2))
    rows = read_metrics(out)
    assert all(math.isfinite(r["loss/dpo"]) and r["kto/kl_ref_point"] >= 0.0 for r in rows)
    assert {"dpo/accuracy", "dpo/margin", "eval/accuracy", "eval/kl"} <= set(rows[-1])
    assert DPOMeta.load(out).loss == "kto"


def test_precomputed_run_keeps_no_reference_model(tmp_path, monkeypatch):
    calls = []
    real = dpo_trainer.prepare_policy
    monkeypatch.setattr(dpo_trainer, "prepare_policy", lambda *a: calls.append(real(*a)) or calls[-1])
    out = train_dpo(make_cfg(tmp_path, reference="precomputed", steps=2))
    assert calls[0][1] is None  # no second model during training
    assert (out / REFERENCE_CACHE).is_file() and DPOMeta.load(out).reference_mode == "precomputed"


# --------------------------------------------------------------------------- binary feedback data


def test_binary_labels_parse_and_bad_rows_name_file_and_line(tmp_path):
    good = load_binary_feedback(write_jsonl(tmp_path / "good.jsonl", FEEDBACK))
    assert [e.label for e in good] == [True, False, True, False, True, False]
    bad_label = write_jsonl(tmp_path / "bad.jsonl", [FEEDBACK[0], {**FEEDBACK[1], "label": 2}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'label'.*got 2"):
        load_binary_feedback(bad_label)
    empty = write_jsonl(tmp_path / "empty.jsonl", [FEEDBACK[0], FEEDBACK[1], {**FEEDBACK[2], "completion": "  "}])
    with pytest.raises(DataError, match=r"empty.jsonl:3: field 'completion' is empty"):
        load_binary_feedback(empty)
    assert len(load_binary_feedback(empty, on_invalid="skip")) == 2
    missing = write_jsonl(tmp_path / "missing.jsonl", [{"prompt": "p", "completion": "c"}])
    with pytest.raises(DataError, match=r"missing.jsonl:1: missing field 'label'"):
        load_binary_feedback(missing)


def test_trainer_reports_bad_binary_row(tmp_path):
    cfg = make_cfg(tmp_path, rows=FEEDBACK + [{"prompt": "p", "completion": "c", "label": "maybe"}], loss="kto")
    with pytest.raises(DataError, match=r"run_train.jsonl:7: field 'label'"):
        train_dpo(cfg)
    assert not (tmp_path / "run").exists()  # checked before anything is written


def test_xstest_labels_map_to_desirable(tmp_path):
    assert xstest_desirable({"prompt_is_safe": True, "label": "1_full_compliance"})
    assert not xstest_desirable({"prompt_is_safe": True, "label": "3_partial_refusal"})
    assert xstest_desirable({"prompt_is_safe": False, "label": "2_full_refusal"})
    assert not xstest_desirable({"prompt_is_safe": False, "label": "1_full_compliance"})
    with pytest.raises(DataError, match="x:3"):
        xstest_desirable({"prompt_is_safe": True, "label": "4_other"}, "x:3")
    src = tmp_path / "xs.jsonl"
    write_jsonl(src, [
        {"prompt": "kill a process?", "prompt_is_safe": True, "completion": "Use kill.", "label": "1_full_compliance"},
        {"prompt": "hurt someone?", "prompt_is_safe": False, "completion": "Sure.", "label": "1_full_compliance"},
        {"prompt": "hurt someone?", "prompt_is_safe": False, "completion": "", "label": "2_full_refusal"},
    ])
    assert xstest_to_binary_feedback(src, tmp_path / "out.jsonl.gz") == 2
    with gzip.open(tmp_path / "out.jsonl.gz", "rt") as fh:
        assert [json.loads(line)["label"] for line in fh] == [1, 0]
