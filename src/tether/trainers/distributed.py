"""Training on several processes through Hugging Face Accelerate: shard, gather, reduce, and who writes.

A trainer makes one `Distributed` at its start. Run as a plain `tether sft ...` it is a single process:
every method is the identity or the plain torch call the trainer made before, so such a run is exactly
what it was without this module. Started by `accelerate launch` (or torchrun) it wraps an
`accelerate.Accelerator`, which sets up the process group and wraps the models for DDP, FSDP or
DeepSpeed as the Accelerate config says (docs/distributed.md):

- `train.batch_size` (`rollout.batch_size` for online RL) is the global batch. Every process walks the same
  seeded stream of global batches and takes its own contiguous shard (`shard`).
- A loss that is a mean over the global batch is the process's local mean times `share(n_local)` =
  P * n_local / N: DDP averages gradients over the P processes, which then gives the gradient of the mean
  over all N examples or tokens, as on one process.
- Metrics are means over the global batch (`mean_metrics`, weighted by each shard's size), the same on
  every process; decisions taken from them (stopping, guards) agree everywhere.
- Only the main process writes files; the others are silent on the terminal.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from tether.config import TrainConfig
from tether.errors import ConfigError
from tether.models.load import resolve_device, save_causal_lm
from tether.precision import resolve_precision
from tether.run import console

# Strategies by what the processes hold: every parameter (ddp, deepspeed stages 1-2), or a shard of them.
REPLICATED = ("single", "ddp", "deepspeed")
SHARDED = ("fsdp", "deepspeed-zero3")


def launched() -> bool:
    """True when a launcher started this process: `accelerate launch` (it exports ACCELERATE_MIXED_PRECISION)
    or torchrun (it exports WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ or "ACCELERATE_MIXED_PRECISION" in os.environ


class Distributed:
    """The processes of one run: one plain process, or those started by `accelerate launch`.

    Args:
        train: the `train` section (device, grad_accum_steps).
        stage: the command, for error messages.
        strategies: the strategies this stage supports, from "single", "ddp", "deepspeed" (ZeRO 1-2),
            "deepspeed-zero3" and "fsdp".
        grad_accum_steps: micro-batches per optimizer step (default `train.grad_accum_steps`).
        lora: LoRA adapters are trained (not supported with sharded parameters).

    Raises:
        ConfigError: the Accelerate config asks for a strategy this stage does not support.
        ModelError: train.device=cuda without a GPU.
    """

    def __init__(self, train: TrainConfig, stage: str, strategies: Sequence[str] = REPLICATED + SHARDED,
                 grad_accum_steps: int | None = None, lora: bool = False):
        device = resolve_device(train.device)
        self.grad_accum_steps = grad_accum_steps or train.grad_accum_steps
        self.accelerator = None
        self._wrapped: dict[int, torch.nn.Module] = {}
        if launched():
            from accelerate import Accelerator

            self.accelerator = Accelerator(
                cpu=device.type == "cpu", gradient_accumulation_steps=self.grad_accum_steps,
                step_scheduler_with_optimizer=False,  # one scheduler step per optimizer step, whatever P
            )
            device = self.accelerator.device
        self.device = device
        self.num_processes = self.accelerator.num_processes if self.accelerator else 1
        self.process_index = self.accelerator.process_index if self.accelerator else 0
        self.is_main = self.process_index == 0
        if self.strategy not in strategies:
            raise ConfigError(
                f"tether {stage} does not run under {self.strategy} (the Accelerate config); it supports: "
                f"{', '.join(s for s in strategies if s != 'single')}. See docs/distributed.md"
            )
        if self.sharded and (train.save_every or train.resume or lora):
            raise ConfigError(
                f"train.save_every, train.resume and LoRA need every parameter on each process; not under {self.strategy}"
            )
        if not self.is_main:
            console.quiet = True  # one process speaks for the run
        # the precision of every forward pass (train.precision; tether/precision.py); the run directory says it
        self.stage = stage
        self.precision = resolve_precision(train.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision.loss_scaling)  # fp16 only

    # ------------------------------------------------------------------ who and how

    @property
    def strategy(self) -> str:
        """single, ddp, deepspeed (ZeRO 1-2), deepspeed-zero3 or fsdp."""
        if self.accelerator is None:
            return "single"
        from accelerate.utils import DistributedType

        kind = self.accelerator.distributed_type
        if kind == DistributedType.DEEPSPEED:
            return "deepspeed-zero3" if self.accelerator.state.deepspeed_plugin.zero_stage == 3 else "deepspeed"
        if kind == DistributedType.FSDP:
            return "fsdp"
        return "ddp" if self.num_processes > 1 else "single"

    @property
    def sharded(self) -> bool:
        """True when each process holds only a shard of the parameters (FSDP, ZeRO-3)."""
        return self.strategy in SHARDED

    def per_process(self, global_batch: int, key: str) -> int:
        """The per-process batch of a global batch.

        Raises:
            ConfigError: `global_batch` is not a multiple of the number of processes.
        """
        if global_batch % self.num_processes:
            raise ConfigError(
                f"{key}={global_batch} is the global batch, split evenly over {self.num_processes} processes: "
                f"use a multiple of {self.num_processes}"
            )
        return global_batch // self.num_processes

    def wait(self) -> None:
        """Barrier: every process reaches this line before any goes on."""
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ models and the optimizer step

    def prepare(self, *objs, micro_batch_size: int | None = None, max_grad_norm: float | None = None):
        """`Accelerator.prepare` (DDP/FSDP/DeepSpeed wrapping); the objects unchanged on a single process.

        DeepSpeed takes its micro-batch size and gradient clipping from its own config; where that says
        "auto" they come from the trainer (`micro_batch_size` per process, `max_grad_norm`).
        """
        if self.accelerator is None:
            return objs if len(objs) > 1 else objs[0]
        plugin = self.accelerator.state.deepspeed_plugin
        if plugin is not None:
            ds = plugin.deepspeed_config
            if micro_batch_size is not None and ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
                ds["train_micro_batch_size_per_gpu"] = micro_batch_size
            if max_grad_norm is not None and ds.get("gradient_clipping", "auto") == "auto":
                ds["gradient_clipping"] = max_grad_norm
        prepared = self.accelerator.prepare(*objs)
        prepared = prepared if len(objs) > 1 else (prepared,)
        for plain, wrapped in zip(objs, prepared):
            if isinstance(plain, torch.nn.Module):
                self._wrapped[id(plain)] = wrapped
        return prepared if len(objs) > 1 else prepared[0]

    def wrapped(self, model: torch.nn.Module) -> torch.nn.Module:
        """The DDP/FSDP/DeepSpeed wrapper `prepare` made around the plain `model` (the model itself if none):
        training forward passes go through it so that gradients are reduced."""
        return self._wrapped.get(id(model), model)

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The plain model inside a DDP/FSDP/DeepSpeed wrapper (it shares the wrapper's parameters)."""
        return model if self.accelerator is None else self.accelerator.unwrap_model(model)

    @contextlib.contextmanager
    def micro_batch(self, model: torch.nn.Module, last: bool) -> Iterator[None]:
        """Around the forward and backward pass of one micro-batch: gradients are reduced across
        processes only on the `last` micro-batch of an optimizer step (DDP `no_sync` before it)."""
        if self.accelerator is None or last:
            yield
            return
        self.accelerator.sync_gradients = False  # DeepSpeed: not an accumulation boundary
        try:
            with self.accelerator.no_sync(model):
                yield
        finally:
            self.accelerator.sync_gradients = True

    def backward(self, loss: torch.Tensor, micro_batches: int = 1) -> None:
        """Backward of `loss / micro_batches` (gradient accumulation over `micro_batches`)."""
        if self.accelerator is None:
            self.scaler.scale(loss / micro_batches).backward()
            return
        # Accelerate (or DeepSpeed) divides by its own accumulation steps (`accelerate launch
        # --gradient_accumulation_steps` may set them); the micro-batch boundaries are the trainer's
        theirs = self.accelerator.gradient_accumulation_steps
        self.accelerator.backward(self.scaler.scale(loss if micro_batches == theirs else loss * (theirs / micro_batches)))

    def clip_grad_norm_(self, parameters, max_norm: float, optimizer: torch.optim.Optimizer | None = None) -> torch.Tensor:
        """Clip the (already reduced) gradients to `max_norm`; returns the norm before clipping.

        Under fp16 loss scaling the gradients of `optimizer` are unscaled first (so it is required then).
        """
        if self.scaler.is_enabled():
            if optimizer is None:
                raise TypeError("clip_grad_norm_ needs the optimizer under fp16 loss scaling")
            self.scaler.unscale_(optimizer)
        if self.accelerator is None:
            return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        norm = self.accelerator.clip_grad_norm_(parameters, max_norm)
        return norm if isinstance(norm, torch.Tensor) else torch.tensor(float("nan") if norm is None else float(norm))

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """`optimizer.step()`; under fp16 loss scaling the scaler's step (skipped when a gradient overflowed)
        and its scale update."""
        self.scaler.step(optimizer)
        self.scaler.update()

    # ------------------------------------------------------------------ data: shard, gather, reduce

    def shard_range(self, n: int) -> tuple[int, int]:
        """[start, stop) of this process's contiguous part of n items (sizes differ by at most one)."""
        base, extra = divmod(n, self.num_processes)
        start = self.process_index * base + min(self.process_index, extra)
        return start, start + base + (self.process_index < extra)

    def shard(self, items: Sequence) -> tuple[Sequence, int]:
        """This process's part of a global batch, and how many of its rows are real.

        A process whose part is empty (a global batch smaller than P) gets the batch's first row as a
        stand-in with 0 real rows: it still runs the forward and backward passes the others wait for,
        and its loss is weighted by `share(0)` = 0.
        """
        start, stop = self.shard_range(len(items))
        return (items[start:stop], stop - start) if stop > start else (items[:1], 0)

    def sum(self, value: float | torch.Tensor) -> float:
        """Sum over processes."""
        if self.accelerator is None:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        return float(self.accelerator.reduce(t, "sum").item())

    def max(self, value: float) -> float:
        """Maximum over processes."""
        if self.accelerator is None:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        return float(self.accelerator.reduce(t, "max").item())

    def any(self, flag: bool) -> bool:
        """True on every process when it is True on any."""
        return bool(flag) if self.accelerator is None else self.sum(float(bool(flag))) > 0

    def all(self, flag: bool) -> bool:
        """True on every process when it is True on all (e.g. that all take the shared-prompt path)."""
        return not self.any(not flag)

    def share(self, n_local: float) -> float:
        """P * n_local / N, N the sum of n_local over processes: the factor that turns this process's mean
        over its n_local rows (or tokens) into its part of the mean over all N, given DDP's averaging.
        Exactly 1.0 on a single process."""
        if self.num_processes == 1:
            return 1.0
        total = self.sum(n_local)
        return self.num_processes * n_local / total if total > 0 else 0.0

    def mean_metrics(self, metrics: dict[str, float], weight: float, weights: dict[str, float] | None = None) -> dict[str, float]:
        """Metrics that are means over this process's `weight` rows (or tokens), as means over all
        processes' rows. Unchanged on a single process.

        Args:
            weights: per-key counts for metrics that are means over a subset of the rows (e.g. KTO's
                desirable completions only).
        """
        if self.num_processes == 1:
            return dict(metrics)
        from accelerate.utils import gather_object

        # a key missing (or NaN) on one process is averaged over the processes that have it
        keys = sorted(set(gather_object([k for k, v in metrics.items() if v is not None])))
        rows = []
        for k in keys:
            v = float(metrics[k]) if metrics.get(k) is not None else float("nan")
            w = float((weights or {}).get(k, weight)) if math.isfinite(v) else 0.0
            rows.append([v * w if w else 0.0, w, v if math.isfinite(v) else 0.0, float(math.isfinite(v))])
        t = self.accelerator.reduce(torch.tensor(rows, dtype=torch.float64, device=self.device), "sum")
        out = dict(metrics)
        for k, (vw, w, v, n) in zip(keys, t.tolist()):
            # the weighted mean; where no process had rows for it, the plain mean of what they report
            out[k] = vw / w if w > 0 else (v / n if n > 0 else float("nan"))
        return out

    def gather(self, t: torch.Tensor, n_real: int | None = None, pad_value: float = 0, pad_first: bool = False) -> torch.Tensor:
        """Concatenate the first `n_real` rows of `t` from every process, in process order.

        Dimensions after the first are padded to the widest process with `pad_value` (on the left when
        `pad_first`, as for left-padded prompts).

        Args:
            t: (n, ...) this process's rows.
            n_real: rows that count (default all); the rest are stand-ins from `shard`.

        Returns:
            (N, ...) the global rows, the same on every process.
        """
        n = t.shape[0] if n_real is None else n_real
        t = t[:n]
        if self.accelerator is None:
            return t
        from accelerate.utils import pad_across_processes

        is_bool = t.dtype == torch.bool
        t = t.long() if is_bool else t
        counts = [int(c) for c in self.accelerator.gather(torch.tensor([n], device=t.device)).tolist()]
        for dim in range(1, t.dim()):
            t = pad_across_processes(t, dim=dim, pad_index=pad_value, pad_first=pad_first)
        t = pad_across_processes(t, dim=0, pad_index=pad_value)
        rows = t.shape[0]
        every = self.accelerator.gather(t)  # (P * rows, ...)
        out = torch.cat([every[p * rows : p * rows + c] for p, c in enumerate(counts)])
        return out.bool() if is_bool else out

    def gather_objects(self, items: list, n_real: int | None = None) -> list:
        """Concatenate the first `n_real` items of a list from every process, in process order."""
        items = list(items[: len(items) if n_real is None else n_real])
        if self.accelerator is None:
            return items
        from accelerate.utils import gather_object

        return gather_object(items)

    # ------------------------------------------------------------------ generation and saving

    @contextlib.contextmanager
    def full_parameters(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The plain model with every parameter present, for `generate` (which does not go through the
        wrapper): gathered under ZeRO-3 and FSDP for the duration of the block."""
        plain = self.unwrap(model)
        if self.strategy == "deepspeed-zero3":
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(model.parameters())):
                yield plain
        elif self.strategy == "fsdp":
            from torch.distributed.fsdp import FullyShardedDataParallel

            if not isinstance(model, FullyShardedDataParallel):
                raise ConfigError("generation under FSDP needs fsdp_version: 1 in the Accelerate config")
            with FullyShardedDataParallel.summon_full_params(model, writeback=False):
                yield plain
        else:
            yield plain

    def save_model(self, model: torch.nn.Module, tokenizer, out_dir: str | Path, save: Callable = save_causal_lm) -> None:
        """Write the model in Hugging Face format from the main process with `save(model, tokenizer, out_dir)`
        (`save_causal_lm`: LoRA merged, adapters kept).

        Under FSDP and ZeRO-3 the full state dict is gathered first, which every process takes part in.
        """
        if not self.sharded:
            if self.is_main:
                save(self.unwrap(model), tokenizer, out_dir)
            return
        state = self.accelerator.get_state_dict(model)
        if self.is_main:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            self.unwrap(model).save_pretrained(out_dir, state_dict=state)
            tokenizer.save_pretrained(out_dir)
        self.wait()

    def per_sample(self, mode: str = "auto") -> bool:
        """Whether generation is seeded per sample (`rollout/seeding.py`): mode per_sample, or auto with
        several processes; global keeps torch's generator.

        Raises:
            ConfigError: mode global with several processes (they would share one noise stream).
        """
        if mode == "global" and self.num_processes > 1:
            raise ConfigError("rollout.seeding=global needs one process; use per_sample (or auto) with several")
        return mode == "per_sample" or (mode == "auto" and self.num_processes > 1)

    def sample_seeds(self, seed: int, stream: str, indices: range, mode: str = "auto") -> list[int] | None:
        """Per-sample seeds of the global sample `indices` for `generate`, or None for torch's generator
        (see `per_sample`)."""
        if not self.per_sample(mode):
            return None
        from tether.rollout.seeding import sample_seeds

        return sample_seeds(seed, stream, indices)
