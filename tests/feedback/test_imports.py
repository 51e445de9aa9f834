"""storage and feedback never import torch (the app runs on a machine without it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tether


def test_no_torch_import():
    code = (
        "import sys\n"
        "import tether.storage, tether.feedback.app, tether.feedback.cli, tether.feedback.api, tether.feedback.pages\n"
        "import tether.feedback.export, tether.feedback.quality, tether.feedback.loadtest\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    env_path = str(Path(tether.__file__).parents[1])
    result = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": env_path}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
