"""Reward-model ensembles: mean and conservative scores on hand-controlled members; loading by path."""

import pytest
import torch

from tether.errors import ModelError
from tether.models.reward import EnsembleReward, RewardMeta, RewardModel, load_reward, write_ensemble_manifest
from tether.models.tiny import tiny_sequence_classifier

CPU = torch.device("cpu")


class Fixed:
    """A member whose scores are given."""

    def __init__(self, scores):
        self.scores = torch.tensor(scores)
        self.tokenizer = "tok"
        self.meta = RewardMeta()

    def score(self, prompts, responses, batch_size=32, max_length=None):
        return self.scores[: len(responses)]


def test_mean_and_conservative_on_hand_members():
    members = [Fixed([1.0, 0.0]), Fixed([3.0, 0.0]), Fixed([2.0, 3.0])]
    mean = EnsembleReward(members, "mean").score(["p", "p"], ["a", "b"])
    assert torch.allclose(mean, torch.tensor([2.0, 1.0]))
    cons = EnsembleReward(members, "conservative", k=2.0).score(["p", "p"], ["a", "b"])
    std = torch.tensor([(2 / 3) ** 0.5, 2 ** 0.5])  # population std of (1, 3, 2) and (0, 0, 3)
    assert torch.allclose(cons, torch.tensor([2.0, 1.0]) - 2.0 * std)
    assert EnsembleReward(members).tokenizer == "tok"


def test_member_scores_shape_and_bad_combine():
    ens = EnsembleReward([Fixed([1.0, 2.0]), Fixed([0.0, 1.0])])
    assert ens.member_scores(["p", "p"], ["a", "b"]).shape == (2, 2)
    with pytest.raises(ModelError, match="combine"):
        EnsembleReward([Fixed([1.0])], "median")
    with pytest.raises(ModelError, match="at least one"):
        EnsembleReward([])


def test_manifest_directory_and_explicit_paths(tmp_path, monkeypatch):
    dirs = []
    for i in range(2):
        model, tok = tiny_sequence_classifier("bert", seed=i)
        RewardModel(model, tok).save(tmp_path / f"m{i}")
        dirs.append(str(tmp_path / f"m{i}"))
    write_ensemble_manifest(tmp_path / "ens", ["../m0", str(tmp_path / "m1")], "conservative", 1.0)
    fixed = {dirs[0]: 1.0, dirs[1]: 3.0}

    def by_dir(self, prompts, responses, batch_size=32, max_length=None):
        return torch.full((len(responses),), fixed[self.origin])

    real_load = RewardModel.load.__func__

    def load(cls, path, device, dtype=torch.float32):
        rm = real_load(cls, path, device, dtype)
        if isinstance(rm, RewardModel):
            rm.origin = str(__import__("pathlib").Path(path).resolve())
        return rm

    monkeypatch.setattr(RewardModel, "load", classmethod(load))
    monkeypatch.setattr(RewardModel, "score", by_dir)
    reward = load_reward(str(tmp_path / "ens"), None, CPU)
    assert isinstance(reward, EnsembleReward) and reward.combine == "conservative"
    assert torch.allclose(reward.score(["p"], ["r"]), torch.tensor([2.0 - 1.0]))
    # overrides, and an explicit list of members
    assert torch.allclose(load_reward(str(tmp_path / "ens"), None, CPU, ensemble="mean").score(["p"], ["r"]), torch.tensor([2.0]))
    assert torch.allclose(load_reward(None, None, CPU, paths=dirs, ensemble="conservative", ensemble_k=0.5).score(["p"], ["r"]), torch.tensor([1.5]))


def test_load_reward_needs_a_source():
    with pytest.raises(ModelError, match="no reward model"):
        load_reward(None, None, CPU)
