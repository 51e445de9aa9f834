"""Masked mean pooling for encoder reward models: the head reads the mean of the real tokens' hidden states."""

from __future__ import annotations

import json

import pytest
import torch

from tether.data.tokenize import tokenize_for_reward
from tether.errors import ModelError
from tether.models.reward import META_FILE, RewardMeta, RewardModel, load_sequence_classifier

CPU = torch.device("cpu")


def test_mean_pooled_logits_equal_the_head_on_the_masked_mean():
    model, tok = load_sequence_classifier("tiny-bert", seed=1, pooling="mean")
    ids, mask = tokenize_for_reward(tok, ["a short reply", "a much longer reply with many more tokens in it"], 64)
    assert mask[0].sum() < mask[1].sum()  # row 0 is padded
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, 0]
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state  # (2, T, H)
        expected = []
        for row in range(2):
            real = hidden[row, mask[row].bool()]  # (n_real, H)
            expected.append(model.classifier(real.mean(dim=0))[0])
    torch.testing.assert_close(logits, torch.stack(expected), rtol=1e-5, atol=1e-6)


def test_mean_pooling_ignores_padding_and_differs_from_cls():
    mean_model, tok = load_sequence_classifier("tiny-bert", seed=1, pooling="mean")
    cls_model, _ = load_sequence_classifier("tiny-bert", seed=1)
    texts = ["tiny", "a considerably longer reply so the first row gets padding"]
    ids, mask = tokenize_for_reward(tok, texts, 64)
    alone_ids, alone_mask = tokenize_for_reward(tok, texts[:1], 64)
    with torch.no_grad():
        batched = mean_model(input_ids=ids, attention_mask=mask).logits[0]
        alone = mean_model(input_ids=alone_ids, attention_mask=alone_mask).logits[0]
        cls = cls_model(input_ids=alone_ids, attention_mask=alone_mask).logits[0]
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(alone, cls)


def test_pooling_is_saved_and_restored(tmp_path):
    model, tok = load_sequence_classifier("tiny-bert", seed=2, pooling="mean")
    RewardModel(model, tok, RewardMeta(pooling="mean")).save(tmp_path)
    assert json.loads((tmp_path / META_FILE).read_text())["pooling"] == "mean"
    loaded = RewardModel.load(str(tmp_path), CPU)
    prompts, replies = ["q1", "q2"], ["an answer", "another, longer answer"]
    with torch.no_grad():
        original = RewardModel(model.eval(), tok, RewardMeta(pooling="mean")).score(prompts, replies)
    torch.testing.assert_close(loaded.score(prompts, replies), original)


def test_mean_pooling_needs_an_encoder_and_bad_meta_is_named(tmp_path):
    with pytest.raises(ModelError, match="pooling 'mean' needs an encoder"):
        load_sequence_classifier("tiny-llama", pooling="mean")
    (tmp_path / META_FILE).write_text(json.dumps({"pooling": "max"}))
    with pytest.raises(ModelError, match="pooling must be one of"):
        RewardMeta.read(tmp_path / META_FILE)
