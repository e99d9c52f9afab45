"""benchmarks/gpu_check.py (`make gpu-check`) runs on the CPU in its dry-run mode, so the script
that checks the CUDA paths on a GPU does not rot on machines that never see one; without a GPU
and without --dry-run it says so and exits 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_the_dry_run_gives_every_figure():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["bench"] == "gpu_check" and out["device"] == "cpu (dry run)"
    assert out["transfer"]["pinned_gb_s"] > 0 and out["overlap"]["efficiency"] > 0
    assert out["checkpoint"]["aiotrain_pause_ms"] is not None


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: make gpu-check runs")
def test_without_a_gpu_it_says_so():
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["cuda"] is False
