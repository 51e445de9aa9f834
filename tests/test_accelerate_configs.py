"""The example Accelerate configs load with Accelerate's own reader and say how to launch them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "accelerate"
EXPECTED = {  # file: (distributed type, processes, machines)
    "1gpu.yaml": ("NO", 1, 1),
    "8gpu_ddp.yaml": ("MULTI_GPU", 8, 1),
    "8gpu_fsdp.yaml": ("FSDP", 8, 1),
    "8gpu_zero2.yaml": ("DEEPSPEED", 8, 1),
    "8gpu_zero3.yaml": ("DEEPSPEED", 8, 1),
    "2x8gpu_ddp.yaml": ("MULTI_GPU", 16, 2),
}


def test_every_config_is_listed():
    assert sorted(p.name for p in CONFIG_DIR.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_and_its_launch_line_names_it(name):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(CONFIG_DIR / name))
    kind, processes, machines = EXPECTED[name]
    assert (cfg.distributed_type.value, cfg.num_processes, cfg.num_machines) == (kind, processes, machines)
    text = (CONFIG_DIR / name).read_text()
    launches = re.findall(r"accelerate launch --config_file (\S+) .*-m tether\.cli (\w+) --config (\S+)", text)
    assert launches, "a commented launch command"
    root = CONFIG_DIR.parent.parent
    for path, _command, tether_config in launches:
        assert path == f"configs/accelerate/{name}" and (root / tether_config).is_file()
    if name.startswith("8gpu_zero"):
        assert cfg.deepspeed_config["zero_stage"] == int(name[-6])
