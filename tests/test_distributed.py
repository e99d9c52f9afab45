"""Two processes under torchrun (Gloo, CPU) train the same weights as one process over the
same global batches; metrics are global on every rank; rank 0 alone writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aiotrain import distributed as dist

ROOT = Path(__file__).resolve().parents[1]
# SGD, no dropout: with Adam, float reduction-order noise in near-zero gradients flips update
# signs and the comparison would measure Adam's sensitivity, not the sharding
ARGS = ["examples/digits.sdn", "train.max_epochs=2", "model.dropout=0.0", "train.patience=null",
        "optim.name=sgd", "optim.lr=0.05", "--no-progress"]


def _run(tmp: Path, nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "AIOTRAIN_DIR": str(tmp), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "aiotrain", "train", *ARGS] if nproc > 1 else \
          [sys.executable, "-m", "aiotrain", "train", *ARGS]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _final_model(tmp: Path) -> dict:
    (last,) = sorted((tmp / "checkpoints").rglob("last*.pt"))
    return torch.load(last, weights_only=True)["model"]


def test_two_gloo_processes_match_one_process(tmp_path):
    one = _run(tmp_path / "one", 1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run(tmp_path / "two", 2)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _final_model(tmp_path / "one"), _final_model(tmp_path / "two")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    # rank 0 alone wrote: one run folder, one set of checkpoints
    assert len(list((tmp_path / "two" / "runs").rglob("metadata.sdn"))) == 1
    acc_one = [ln for ln in one.stdout.splitlines() if ln.startswith("epoch 2")]
    acc_two = [ln for ln in two.stdout.splitlines() if ln.startswith("epoch 2")]
    assert len(acc_two) == 1, two.stdout  # printed once, by rank 0
    assert acc_one[0].split("val/accuracy=")[1][:5] == acc_two[0].split("val/accuracy=")[1][:5]


def test_helpers_in_a_single_process():
    assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
    t = torch.tensor([1.0, 2.0])
    assert dist.all_reduce(t) is t and t.tolist() == [1.0, 2.0]
    assert dist.all_gather_object({"a": 1}) == [{"a": 1}]
    assert dist.rank_zero_only(lambda: 5)() == 5
    assert dist.init() is False


def test_init_without_torchrun_environment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(RuntimeError, match="MASTER_ADDR.*torchrun"):
        dist.init()
