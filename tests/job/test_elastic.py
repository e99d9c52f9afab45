"""Elastic training under torchrun: a worker that dies restarts the group, which resumes from the
last checkpoint into the same tracked run (``train.resume = auto``) and ends with the weights of
an uninterrupted run; a multi-node run, simulated by two launchers on localhost, trains the same.
Real torchrun launchers, Gloo on CPU, the tiny task of tests/job (a few seconds of training)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import torch

from tests.job.tiny_task import SDN

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ("train.max_epochs=4", "train.log_every=1", "train.resume=auto")


def torchrun(store: Path, launcher: list[str], *overrides: str) -> subprocess.Popen:
    config = store / "tiny.sdn"
    store.mkdir(parents=True, exist_ok=True)
    config.write_text(SDN)
    env = {**os.environ, "AIOTRAIN_DIR": str(store), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *launcher, "-m",
                             "aiotrain", "train", str(config), "--no-progress", *SETTINGS, *overrides],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finished(proc: subprocess.Popen) -> str:
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-4000:]
    return out


def weights(store: Path) -> dict[str, torch.Tensor]:
    (last,) = (store / "checkpoints").rglob("last_checkpoint_16.pt")
    return torch.load(last, weights_only=True)["model"]


def history(store: Path) -> list[tuple[int, dict]]:
    (path,) = (store / "runs" / "tiny").glob("*/metrics.jsonl")
    records = [msgspec.json.decode(line) for line in path.read_bytes().splitlines() if line.strip()]
    return [(r.pop("step"), {k: v for k, v in r.items() if k != "timestamp"}) for r in records]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(600)
def test_a_dead_worker_restarts_the_group_which_resumes_exactly(tmp_path):
    port = free_port()
    nodes = [torchrun(tmp_path / "nodes", ["--nnodes=2", f"--node-rank={i}", "--nproc-per-node=1",
                                           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                                           "--rdzv-id=two-nodes"])
             for i in (0, 1)]
    elastic = torchrun(tmp_path / "elastic", ["--standalone", "--nproc-per-node=2", "--max-restarts=1"],
                       "data.die_at=10", f"data.die_marker={tmp_path / 'died'}")
    outs = [finished(p) for p in nodes]
    out = finished(elastic)

    # the multi-node run: one tracked run, and only global rank 0 speaks
    speaking = [o for o in outs if "epoch 4: val/loss=" in o]
    assert len(speaking) == 1 and "epoch 1:" not in "".join(o for o in outs if o not in speaking)
    assert len(list((tmp_path / "nodes" / "runs").rglob("metadata.sdn"))) == 1

    # rank 1 died at iteration 10 (epoch 3); the launcher named it and restarted the group
    assert (tmp_path / "died").exists()
    assert "exitcode: -9" in out or "failed (exitcode: -9) local_rank: 1" in out, out[-4000:]
    # from the epoch-2 checkpoint, or from the stop point rank 0 saved when the launcher stopped
    # it (which names iteration 10, the last step both ranks completed, never the failed 11th)
    resumed = [ln for ln in out.splitlines() if ln.startswith("resume: run ")]
    assert len(resumed) == 1, out[-4000:]
    assert resumed[0].endswith(("(epoch 2, iteration 8)", "(epoch 3, iteration 10)")), resumed
    assert out.count("epoch 4: val/loss=") == 1  # printed by rank 0 alone

    # into the same tracked run, whose history holds each step once: the uninterrupted one's
    (meta,) = (tmp_path / "elastic" / "runs").rglob("metadata.sdn")
    from aiotrain.tracking.reader import load_run

    assert load_run(meta.parent).status == "finished"
    assert history(tmp_path / "elastic") == history(tmp_path / "nodes")
    a, b = weights(tmp_path / "nodes"), weights(tmp_path / "elastic")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_ranks_error_reaches_the_launcher_naming_the_rank(tmp_path):
    """Each rank that reports an error names itself, as torch's own tracebacks do (the launcher
    stops the other ranks once one has failed, so one or both lines arrive)."""
    proc = torchrun(tmp_path, ["--standalone", "--nproc-per-node=2"], "train.max_epoch=3")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    lines = [ln for ln in out.splitlines() if "train.max_epoch: unknown key" in ln]
    assert lines and all(ln.split(": ")[0] in ("[rank0]", "[rank1]") for ln in lines), out[-3000:]
