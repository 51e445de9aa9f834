"""The PPO value model and the scalar reward model on tiny random-init backbones."""

from __future__ import annotations

import json

import pytest
import torch

from tether.data.tokenize import left_pad
from tether.errors import ModelError
from tether.models.heads import ValueModel
from tether.models.reward import META_FILE, RewardMeta, RewardModel, load_sequence_classifier
from tether.models.tiny import tiny_causal_lm

CPU = torch.device("cpu")
PROMPTS = ["Say hello.", "Name a colour.", "Count to three."]
REPLIES = ["Hello!", "Blue, obviously.", "One two three"]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_value_model_shapes_and_independent_backbone(kind):
    policy, tok = tiny_causal_lm(kind, seed=0)
    vm = ValueModel.from_backbone_of(policy)
    ids, mask = left_pad([tok(t)["input_ids"] for t in ["a", "longer text", "mid"]], tok.pad_token_id)
    values = vm(ids, mask)
    assert values.shape == ids.shape and values.dtype == torch.float32
    assert torch.isfinite(values).all()
    assert all(p.requires_grad for p in vm.parameters())
    # a deep copy: training the critic does not touch the policy
    emb = policy.get_input_embeddings().weight
    before = emb.detach().clone()
    with torch.no_grad():
        for p in vm.backbone.parameters():
            p.add_(1.0)
    assert torch.equal(emb, before)


def test_value_of_a_left_padded_row_equals_the_row_alone():
    policy, tok = tiny_causal_lm("llama", seed=0)
    vm = ValueModel.from_backbone_of(policy).eval()
    short, long = tok("short")["input_ids"], tok("a much longer prompt")["input_ids"]
    ids, mask = left_pad([short, long], tok.pad_token_id)
    with torch.no_grad():
        batched = vm(ids, mask)[0, -len(short):]
        alone = vm(torch.tensor([short]), torch.ones(1, len(short), dtype=torch.long))[0]
    assert (batched - alone).abs().max() < 1e-5


def test_value_model_from_a_saved_directory(tiny_models, tmp_path):
    vm = ValueModel.from_pretrained(tiny_models["llama"])
    ids = torch.tensor([[1, 2, 3, 4]])
    assert vm(ids, torch.ones_like(ids)).shape == (1, 4)
    vm.save(tmp_path / "v")
    assert (tmp_path / "v" / "value_head.pt").is_file() and (tmp_path / "v" / "config.json").is_file()
    with pytest.raises(ModelError, match="value-model backbone"):
        ValueModel.from_pretrained(str(tmp_path / "missing"))


def test_reward_model_applies_gain_and_bias(tiny_models):
    rm = RewardModel.load(tiny_models["rm"], CPU)
    assert (rm.meta.gain, rm.meta.bias, rm.meta.max_length) == (2.0, -0.5, 64)
    assert not any(p.requires_grad for p in rm.parameters())
    from tether.data.tokenize import reward_texts, tokenize_for_reward

    ids, mask = tokenize_for_reward(rm.tokenizer, reward_texts(PROMPTS, REPLIES, rm.meta.prompt_template), 64)
    with torch.no_grad():
        raw = rm.raw_scores(ids, mask)
    scores = rm.score(PROMPTS, REPLIES)
    assert scores.shape == (3,)
    assert torch.allclose(scores, 2.0 * raw - 0.5, atol=1e-5)


def test_reward_scores_do_not_depend_on_batching(tiny_models):
    rm = RewardModel.load(tiny_models["rm"], CPU)
    assert torch.allclose(rm.score(PROMPTS, REPLIES, batch_size=1), rm.score(PROMPTS, REPLIES, batch_size=3), atol=1e-5)


def test_reward_model_save_load_round_trip(tmp_path):
    model, tok = load_sequence_classifier("tiny-bert", seed=3)
    rm = RewardModel(model, tok, RewardMeta(gain=0.25, bias=1.5, prompt_template="Q: {prompt}\nA:", max_length=48))
    rm.eval()
    before = rm.score(PROMPTS, REPLIES)
    rm.save(tmp_path / "rm")
    meta = json.loads((tmp_path / "rm" / META_FILE).read_text())
    assert meta == {"gain": 0.25, "bias": 1.5, "prompt_template": "Q: {prompt}\nA:", "max_length": 48, "kind": "scalar", "positive_index": 1, "pooling": "model"}
    loaded = RewardModel.load(str(tmp_path / "rm"), CPU)
    assert loaded.meta == rm.meta
    assert torch.allclose(loaded.score(PROMPTS, REPLIES), before, atol=1e-5)


def test_reward_model_without_meta_uses_identity(tmp_path):
    model, tok = load_sequence_classifier("tiny-bert")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    rm = RewardModel.load(str(tmp_path), CPU)
    assert rm.meta == RewardMeta()


def test_missing_reward_model_names_the_path(tmp_path):
    with pytest.raises(ModelError) as info:
        RewardModel.load(str(tmp_path / "nope"), CPU)
    assert str(tmp_path / "nope") in str(info.value)
