"""The precision of training and inference passes, chosen by the hardware: `train.precision`.

`auto` takes bfloat16 autocast only where bf16 matrix products are native, and float32 elsewhere:

- CUDA: bf16 when the device supports it (`torch.cuda.is_bf16_supported()`, Ampere and newer), else fp32;
- CPU: bf16 with AMX tiles (Intel Sapphire Rapids and newer) or AVX512-BF16 (Intel Cooper Lake, AMD Zen 4
  and newer), detected by torch's own CPU checks or, where torch lacks them, by the `amx_bf16` /
  `avx512_bf16` flags of /proc/cpuinfo; fp32 elsewhere. Without those instructions torch emulates bf16:
  on a 2-core AVX2-only EPYC one training step of the quickstart's 5M-parameter model took about 60 s
  under bf16 autocast against 4-8 s in fp32, while a 2048 x 2048 matrix product ran 2.5 times faster
  in bf16 than in fp32 on a Zen 4 EPYC with AVX512-BF16 (412 against 167 GFLOP/s on 2 threads) and
  about 7 times faster on a Xeon with AMX (docs/precision.md).

`bf16` and `fp16` ask for that autocast dtype whatever the hardware (the printed reason says "slow here"
where it is emulated); fp16 trains with dynamic loss scaling (`torch.amp.GradScaler`, Micikevicius et al. 2018,
"Mixed Precision Training"). Weights stay in their own dtype (`model.dtype`); autocast only changes the
dtype matrix products run in. Each stage prints what it chose and why, and writes it to the run
directory's `precision.json`.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ENV_OVERRIDE = "TETHER_CPU_BF16"
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """A resolved `train.precision`.

    Attributes:
        name: fp32, bf16 or fp16 (never auto).
        requested: what the config asked for (auto, fp32, bf16 or fp16).
        device: the device type the passes run on (cpu or cuda).
        reason: one sentence: why this precision (the hardware feature found or missing).
    """

    name: str
    requested: str
    device: str
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for plain float32 passes."""
        return DTYPES[self.name]

    @property
    def loss_scaling(self) -> bool:
        """fp16 gradients underflow without dynamic loss scaling; bf16 has fp32's exponent range."""
        return self.name == "fp16"

    def autocast(self):
        """An autocast context in `dtype` on `device`, or a no-op context for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device, dtype=self.dtype)

    def describe(self) -> str:
        """One line for the terminal: the precision, what was asked for, the device and the reason."""
        chosen = self.name if self.requested == self.name else f"{self.name} ({self.requested})"
        return f"precision {chosen} on {self.device}: {self.reason}"

    def write(self, run_dir: str | Path) -> None:
        """Record the choice as `precision.json` in `run_dir` (created if needed)."""
        import json

        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "precision.json").write_text(json.dumps(asdict(self), indent=2) + "\n")


def _cpuinfo_flags(path: str = "/proc/cpuinfo") -> set[str]:
    try:
        text = Path(path).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_bf16_native() -> tuple[bool, str]:
    """Whether this CPU multiplies bf16 matrices natively, and the evidence, as (native, reason).

    Asks torch first (`torch.cpu._is_amx_tile_supported`, `torch.cpu._is_avx512_bf16_supported`, the checks
    its oneDNN kernels dispatch on), then the CPU flags of /proc/cpuinfo when torch has no such check. The
    environment variable `TETHER_CPU_BF16=0` (or `1`) overrides both: for a virtual machine whose flags
    do not tell the truth, and for the test suite, which runs `auto` as fp32 on every CPU so that its
    numbers do not depend on the machine.
    """
    forced = os.environ.get(ENV_OVERRIDE, "").strip()
    if forced in ("0", "1"):
        return forced == "1", f"{ENV_OVERRIDE}={forced} is set"
    checks = (("_is_amx_tile_supported", "AMX tiles"), ("_is_avx512_bf16_supported", "AVX512-BF16"))
    asked = False
    for attr, feature in checks:
        fn = getattr(torch.cpu, attr, None)
        if callable(fn):
            asked = True
            if fn():
                return True, f"the CPU has {feature} (torch's CPU check): bf16 matrix products are native"
    if not asked:
        flags = _cpuinfo_flags()
        for flag, feature in (("amx_bf16", "AMX tiles"), ("avx512_bf16", "AVX512-BF16")):
            if flag in flags:
                return True, f"the CPU has {feature} (/proc/cpuinfo flag {flag}): bf16 matrix products are native"
    capability = torch.backends.cpu.get_cpu_capability()
    return False, (
        f"the CPU has neither AMX nor AVX512-BF16 (torch capability {capability}): bf16 would be emulated, "
        "several times slower than fp32"
    )


def cuda_bf16_native(device: torch.device) -> tuple[bool, str]:
    """Whether the CUDA device computes in bf16 natively (compute capability 8.0 and newer)."""
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return True, f"{torch.cuda.get_device_name(device)} supports bf16"
    return False, f"{torch.cuda.get_device_name(device)} has no native bf16"


def resolve_precision(requested: str, device: torch.device | str) -> Precision:
    """Turn `train.precision` into the precision the passes run in on `device`.

    Args:
        requested: auto, fp32, bf16 or fp16.
        device: the device of the stage's models.

    Returns:
        A `Precision` with the reason of the choice.

    Raises:
        ValueError: an unknown name.
    """
    device = torch.device(device)
    return _resolve(requested, device.type, device.index)


@functools.lru_cache(maxsize=None)
def _resolve(requested: str, device_type: str, index: int | None) -> Precision:
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {requested!r}")
    device = torch.device(device_type, index) if index is not None else torch.device(device_type)
    if device_type == "cuda":
        native, why = cuda_bf16_native(device)
    elif device_type == "cpu":
        native, why = cpu_bf16_native()
    else:
        native, why = False, f"no bf16 check for {device_type} devices"
    if requested == "auto":
        return Precision("bf16" if native else "fp32", requested, device_type, why)
    if requested == "fp32":
        return Precision("fp32", requested, device_type, "as configured")
    if requested == "bf16":
        return Precision("bf16", requested, device_type, "as configured" + ("" if native else f"; slow here: {why}"))
    slow = "" if device_type == "cuda" else "; fp16 is emulated on this device and slow"
    return Precision("fp16", requested, device_type, "as configured, with dynamic loss scaling" + slow)
