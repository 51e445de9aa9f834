"""Run several `tether` stages one after another in this process, as `tether.cli.main` runs one.

    python run_stages.py PLAN.json RESULT.json

PLAN.json is a list of {"name": ..., "argv": ["sft", "--config", "x.yaml", ...]}. Started by
`accelerate launch`, every process runs every stage (the same as `accelerate launch -m tether.cli sft
--config x.yaml`, once per stage); the main process writes each stage's exit status to RESULT.json.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from tether.cli import main


def run(plan_path: str, result_path: str) -> None:
    torch.set_num_threads(1)
    codes = {}
    for stage in json.loads(open(plan_path).read()):
        codes[stage["name"]] = main(list(stage["argv"]))
    if os.environ.get("RANK", "0") == "0":
        with open(result_path, "w") as fh:
            json.dump(codes, fh)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])
