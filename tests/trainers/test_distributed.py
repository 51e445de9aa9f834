"""`Distributed` without a launcher: sharding arithmetic, the global-mean rule, and the single-process identity.

The multi-process behaviour itself is tested with two real processes in tests/distributed/.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tether.config import SFTConfig, TrainConfig, validate
from tether.errors import ConfigError
from tether.precision import resolve_precision
from tether.run import RunDir
from tether.trainers.distributed import Distributed, launched


@pytest.fixture
def dist(monkeypatch):
    for name in ("WORLD_SIZE", "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.delenv(name, raising=False)
    return Distributed(TrainConfig(device="cpu"), "test")


def _as(dist: Distributed, processes: int, index: int) -> Distributed:
    dist.num_processes, dist.process_index = processes, index
    return dist


def test_launched_reads_the_launcher_environment(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert not launched()
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun
    assert launched()
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # accelerate launch
    assert launched()


@pytest.mark.parametrize("processes", [1, 2, 3, 4])
def test_shards_cover_every_item_once_in_order(dist, processes):
    for n in range(12):
        parts = [list(range(n))[slice(*_as(dist, processes, p).shard_range(n))] for p in range(processes)]
        assert [i for part in parts for i in part] == list(range(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_a_batch_smaller_than_the_processes_gets_a_stand_in_row(dist):
    assert _as(dist, 2, 0).shard(["a"]) == (["a"], 1)
    assert _as(dist, 2, 1).shard(["a"]) == (["a"], 0)  # runs the same passes, weighs nothing
    rows, n_real = _as(dist, 2, 1).shard(torch.tensor([7, 8, 9]))
    assert rows.tolist() == [9] and n_real == 1  # tensors are sliced too


def test_the_global_batch_must_split_evenly(dist):
    assert _as(dist, 2, 0).per_process(8, "train.batch_size") == 4
    with pytest.raises(ConfigError, match=r"train.batch_size=3 is the global batch.*multiple of 2"):
        _as(dist, 2, 0).per_process(3, "train.batch_size")


def test_share_turns_shard_means_into_the_global_mean(dist, monkeypatch):
    # tokens: process 0 has [1, 2, 3], process 1 has [10]; the mean over all 4 tokens is 4
    shards = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0])]
    monkeypatch.setattr(dist, "sum", lambda value: 4.0)  # the all-reduce of the token counts
    scaled = [shard.mean() * _as(dist, 2, p).share(len(shard)) for p, shard in enumerate(shards)]
    assert scaled[0].item() == pytest.approx(2.0 * 2 * 3 / 4)
    assert (sum(scaled) / 2).item() == pytest.approx(4.0)  # what DDP's average of gradients differentiates
    # (a mean of the per-process means would be (2 + 10) / 2 = 6); a stand-in shard weighs nothing
    assert _as(dist, 2, 1).share(0) == 0.0


def test_global_seeding_needs_one_process(dist):
    assert not dist.per_sample("auto") and dist.per_sample("per_sample") and not dist.per_sample("global")
    assert dist.sample_seeds(0, "x", range(3)) is None
    _as(dist, 2, 0)
    assert dist.per_sample("auto")
    with pytest.raises(ConfigError, match="rollout.seeding=global needs one process"):
        dist.per_sample("global")


def test_one_process_is_the_identity(dist):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    prepared = dist.prepare(model, optimizer)
    assert prepared[0] is model and prepared[1] is optimizer and dist.wrapped(model) is model and dist.unwrap(model) is model
    assert dist.num_processes == 1 and dist.is_main and dist.strategy == "single" and not dist.sharded
    assert dist.share(17) == 1.0
    metrics = {"loss": 0.25, "acc": 0.5, "none": None}
    assert dist.mean_metrics(metrics, 3) == metrics
    t = torch.arange(6).view(3, 2)
    assert torch.equal(dist.gather(t, n_real=2), t[:2]) and dist.gather_objects(["a", "b"], 1) == ["a"]
    assert dist.sum(2.5) == 2.5 and dist.max(1.5) == 1.5 and dist.any(True) and not dist.any(False)
    x = torch.tensor([[1.0, 2.0]])
    dist.backward(model(x).sum(), micro_batches=2)
    assert torch.allclose(model.weight.grad, x / 2)  # the loss of one of 2 accumulated micro-batches
    with dist.micro_batch(model, last=False):
        pass


def test_run_directory_is_written_by_the_main_process_only(tmp_path):
    cfg = validate(SFTConfig, {"model": {"name_or_path": "tiny-llama"}, "data": {"train": "x.jsonl"}, "output_dir": str(tmp_path / "run")})
    other = SimpleNamespace(is_main=False, sharded=False, wait=lambda: None)
    run = RunDir(cfg.output_dir, cfg, dist=other)
    run.log(1, {"loss": 1.0})
    run.checkpoint(1, lambda path: path.mkdir(parents=True))
    run.finish({})
    assert not (tmp_path / "run").exists()
    main = SimpleNamespace(is_main=True, sharded=False, wait=lambda: None, stage="sft",
                           precision=resolve_precision("fp32", "cpu"))
    run = RunDir(cfg.output_dir, cfg, dist=main)
    run.log(1, {"loss": 1.0})
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 1
    assert json.loads((tmp_path / "run" / "precision.json").read_text())["name"] == "fp32"
