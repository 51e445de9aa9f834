"""Reward-model training features: classifier head, rankings, best-eval selection, truncation, ensembles."""

import json
import math

import torch

from tether.data.tokenize import reward_texts, tokenize_for_reward
from tether.losses.classifier import classifier_loss, classifier_reward, tied_bradley_terry_loss
from tether.models.reward import ENSEMBLE_FILE, META_FILE, EnsembleReward, RewardModel, load_reward
from tether.models.tiny import byte_tokenizer
from tether.trainers import reward as rm_mod
from tether.trainers.reward import train_reward
from test_reward import rm_config  # the same tiny reward-model config as the core tests

CPU = torch.device("cpu")


def test_classifier_loss_and_reward_hand_case():
    logits = torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([1, 1, 0])
    loss, m = classifier_loss(logits, labels)
    expected = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(1.0)) + math.log(2.0)) / 3
    assert abs(loss.item() - expected) < 1e-6
    assert abs(m["rm/accuracy"] - 2 / 3) < 1e-6  # row 3 ties, argmax picks class 0 = its label
    assert torch.equal(classifier_reward(logits), torch.tensor([2.0, 0.0, 0.0]))


def test_tied_pairs_pull_scores_together():
    c, r = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 0.5])
    loss, m = tied_bradley_terry_loss(c, r, torch.tensor([False, True]))
    expected = (math.log(1 + math.exp(-1.0)) + math.log(2.0)) / 2  # tie at d=0: -(log 1/2 + log 1/2)/2
    assert abs(loss.item() - expected) < 1e-6
    assert m["rm/accuracy"] == 1.0 and m["rm/tie_gap"] == 0.0


def test_classifier_reward_model_trains_and_scores_positive_logit(tmp_path, jsonl):
    rows = [{"prompt": f"q{i}", "completion": ("Sure, here it is." if i % 2 else "I cannot help."), "label": i % 2} for i in range(12)]
    out = tmp_path / "cls"
    train_reward(rm_config(jsonl(tmp_path / "t.jsonl", rows), out, data={"holdout_fraction": 0.3}, train={"eval_every": 1}, kind="classifier"))
    meta = json.loads((out / META_FILE).read_text())
    assert meta["kind"] == "classifier"
    rm = RewardModel.load(str(out), CPU)
    assert rm.model.config.num_labels == 2
    texts = reward_texts(["q1"], ["Sure, here it is."], rm.meta.prompt_template)
    ids, mask = tokenize_for_reward(rm.tokenizer, texts, 64)
    logits = rm.model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(rm.score(["q1"], ["Sure, here it is."]), rm.meta.gain * logits[:, 1] + rm.meta.bias, atol=1e-5)
    assert 0.0 <= rm.class_probs(["q1"], ["x"]).item() <= 1.0


def test_rankings_train_with_grouped_batches_and_deduplicated_texts(tmp_path, jsonl, monkeypatch):
    rows = [{"prompt": f"q{i}", "completions": ["one", "two", "three"], "ranking": [1, 2, 2]} for i in range(4)]
    seen = []
    real = rm_mod.text_scores

    def spy(model, tok, texts, meta, max_length, device, *args):
        seen.append(texts)
        return real(model, tok, texts, meta, max_length, device, *args)

    monkeypatch.setattr(rm_mod, "text_scores", spy)
    out = tmp_path / "rk"
    train_reward(rm_config(jsonl(tmp_path / "r.jsonl", rows), out, data={"max_samples": 100}, train={"max_steps": 2, "batch_size": 3}, ties="keep", normalize=False))
    # batch 3 = one prompt's 3 pairs (one of them a tie); its 3 distinct completions are scored once each
    assert [len(t) for t in seen] == [3, 3]
    assert all(len({t.split("Human: ")[1].split("\n")[0] for t in texts}) == 1 for texts in seen)


def test_best_checkpoint_keeps_the_best_eval_step(tiny_data, tmp_path, monkeypatch):
    accuracies = iter([0.5, 0.9, 0.6, 0.7])
    snapshots = {}
    real_state = rm_mod.trainable_state_dict

    def fake_eval(*args, **kwargs):
        return {"eval/loss": 0.5, "eval/accuracy": next(accuracies), "eval/margin": 0.0}

    def spy_state(model):
        state = real_state(model)
        snapshots[len(snapshots) + 1] = state
        return state

    monkeypatch.setattr(rm_mod, "evaluate_pairs", fake_eval)
    monkeypatch.setattr(rm_mod, "trainable_state_dict", spy_state)
    out = tmp_path / "best"
    train_reward(rm_config(tiny_data["prefs"], out, data={"holdout_fraction": 0.3}, train={"max_steps": 4, "eval_every": 1}, normalize=False))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["eval/best_step"] == 2 and rows[-1]["eval/accuracy"] == 0.9
    saved = RewardModel.load(str(out), CPU).model.state_dict()
    kept = snapshots[2]  # snapshots at steps 1 (0.5) and 2 (0.9) only
    assert len(snapshots) == 2
    assert torch.equal(saved["classifier.weight"], kept["classifier.weight"])


def test_left_truncation_keeps_the_response():
    tok = byte_tokenizer()
    text = reward_texts(["x" * 300], ["THE ANSWER"], "\n\nHuman: {prompt}\n\nAssistant:")
    ids, mask = tokenize_for_reward(tok, text, 40)
    assert ids.shape[1] == 40
    assert tok.decode(ids[0], skip_special_tokens=True).endswith("Assistant: THE ANSWER")


def test_ensemble_of_two_members_loads_through_load_reward(tiny_data, tmp_path):
    out = tmp_path / "ens"
    train_reward(rm_config(tiny_data["prefs"], out, train={"max_steps": 2}, ensemble_size=2, ensemble_combine="conservative", ensemble_k=0.5))
    manifest = json.loads((out / ENSEMBLE_FILE).read_text())
    assert manifest == {"members": ["member-0", "member-1"], "combine": "conservative", "k": 0.5}
    reward = load_reward(str(out), None, CPU)
    assert isinstance(reward, EnsembleReward) and reward.tokenizer is not None
    a, b = (RewardModel.load(str(out / f"member-{i}"), CPU) for i in range(2))
    assert not torch.equal(a.model.state_dict()["classifier.weight"], b.model.state_dict()["classifier.weight"])
    s = torch.stack([a.score(["Hi"], ["Hello"]), b.score(["Hi"], ["Hello"])])
    expected = s.mean(0) - 0.5 * s.std(0, unbiased=False)
    assert torch.allclose(reward.score(["Hi"], ["Hello"]), expected, atol=1e-5)
    assert isinstance(RewardModel.load(str(out), CPU), EnsembleReward)


def test_normalisation_on_policy_samples(tiny_data, tmp_path, jsonl, monkeypatch):
    prompts = jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say something {i}"} for i in range(5)])
    calls = []
    real = rm_mod.policy_samples

    def spy(*args):
        out = real(*args)
        calls.append(out)
        return out

    monkeypatch.setattr(rm_mod, "policy_samples", spy)
    out = tmp_path / "norm"
    train_reward(rm_config(tiny_data["prefs"], out, train={"max_steps": 1}, normalize_policy="tiny-llama",
                         normalize_prompts=str(prompts), normalize_samples=4))
    (sample_prompts, responses), = calls
    assert len(sample_prompts) == len(responses) == 4
    rm = RewardModel.load(str(out), CPU)
    scores = rm.score(sample_prompts, responses)
    assert abs(scores.mean().item()) < 1e-3 and abs(scores.std().item() - 1.0) < 1e-3
