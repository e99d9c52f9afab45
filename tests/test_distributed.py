"""Two processes under torchrun (Gloo, CPU), with DDP and with FSDP2, train the same weights as
one process over the same global batches; metrics are global on every rank; with DDP rank 0 alone
writes, with FSDP every rank writes its shards of one checkpoint folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aiotrain import distributed as dist

ROOT = Path(__file__).resolve().parents[1]
# Float64 (model.dtype): two ranks sum each gradient in another order than one process, and in
# float32 that rounding differs by machine (SIMD width, BLAS) and grows over the steps; in float64
# it stays near 1e-13 on any x86-64 or arm64 machine, so the comparison measures the sharding.
# SGD at a learning rate where the reference learns (about 0.9 validation accuracy in 2 epochs),
# no dropout (its masks would differ per rank).
ARGS = ["examples/digits.sdn", "train.max_epochs=2", "model.dropout=0.0", "model.dtype=float64",
        "train.patience=null", "optim.name=sgd", "optim.lr=0.5", "data.batch_size=32", "--no-progress"]
RTOL, ATOL = 1e-7, 1e-9  # float64 rounding (~1e-16 per step) amplified over 92 steps, with margin


def _run(tmp: Path, nproc: int, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AIOTRAIN_DIR": str(tmp), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "aiotrain", "train", *ARGS, *extra] if nproc > 1 else \
          [sys.executable, "-m", "aiotrain", "train", *ARGS, *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _final_model(tmp: Path) -> dict:
    (last,) = sorted((tmp / "checkpoints").rglob("last*.pt"))
    return torch.load(last, weights_only=True)["model"]


def _final_sharded_model(tmp: Path) -> dict:
    """The model of the sharded last checkpoint, loaded whole in this (single) process."""
    import importlib.util

    from aiotrain.handlers.checkpoint import Checkpoint

    spec = importlib.util.spec_from_file_location("digits_example", ROOT / "examples" / "digits.py")
    digits = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(digits)
    (last,) = [p for p in (tmp / "checkpoints").rglob("last_*") if p.is_dir()]
    model = digits.SmallCNN(dropout=0.0).to(torch.float64)
    Checkpoint.load_objects({"model": model}, last)
    return model.state_dict()


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One process trained on the global batches: the reference both strategies must match."""
    tmp = tmp_path_factory.mktemp("one")
    proc = _run(tmp, 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, proc


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_processes_match_one_process(tmp_path, single_process, strategy):
    one_dir, one = single_process
    two = _run(tmp_path / "two", 2, f"train.strategy={strategy}")
    assert two.returncode == 0, two.stderr[-3000:]
    a = _final_model(one_dir)
    b = _final_model(tmp_path / "two") if strategy == "ddp" else _final_sharded_model(tmp_path / "two")
    assert a.keys() == b.keys()
    assert all(a[key].dtype == torch.float64 for key in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=RTOL, atol=ATOL, msg=key)
    # rank 0 alone wrote tracking: one run folder
    assert len(list((tmp_path / "two" / "runs").rglob("metadata.sdn"))) == 1
    if strategy == "fsdp":  # each rank wrote its own shards of the one checkpoint folder
        (last,) = [p for p in (tmp_path / "two" / "checkpoints").rglob("last_*") if p.is_dir()]
        assert {"__0_0.distcp", "__1_0.distcp", "rank0.pt", "rank1.pt"} <= set(os.listdir(last))
    acc_one = [ln for ln in one.stdout.splitlines() if ln.startswith("epoch 2")]
    acc_two = [ln for ln in two.stdout.splitlines() if ln.startswith("epoch 2")]
    assert len(acc_two) == 1, two.stdout  # printed once, by rank 0
    ends = [ln.split(":")[0] for ln in two.stdout.splitlines() if ln.startswith(("finished:", "dashboard:"))]
    assert ends == ["finished", "dashboard"], two.stdout  # the command's last lines: rank 0 only
    assert float(acc_one[0].split("val/accuracy=")[1][:6]) > 0.8, one.stdout  # the reference learns
    assert acc_one[0].split("val/accuracy=")[1][:5] == acc_two[0].split("val/accuracy=")[1][:5]


def test_helpers_in_a_single_process():
    assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
    t = torch.tensor([1.0, 2.0])
    assert dist.all_reduce(t) is t and t.tolist() == [1.0, 2.0]
    assert dist.all_gather_object({"a": 1}) == [{"a": 1}]
    assert dist.rank_zero_only(lambda: 5)() == 5
    assert dist.broadcast_object({"b": 2}) == {"b": 2}
    assert dist.any_rank(True) is True and dist.any_rank(False) is False
    assert dist.new_group("gloo") is None  # nothing to group alone
    assert dist.init() is False


def test_init_without_torchrun_environment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(RuntimeError, match="MASTER_ADDR.*torchrun"):
        dist.init()
