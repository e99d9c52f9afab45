"""The remote digits example end to end, as ``make demo-remote`` runs it: the digits packed into a
real local S3 server (moto) and trained from there, with the data figures logged to the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_trains_from_a_local_s3_server(tmp_path):
    pytest.importorskip("obstore", reason="the remote extra (obstore) is not installed")
    pytest.importorskip("moto.server", reason="moto[server] (dev extra) is not installed")
    pytest.importorskip("sklearn", reason="the digits data file comes with scikit-learn")
    from examples.local_s3 import LocalS3

    with LocalS3() as s3:
        url = s3.bucket("digits-demo") + "/digits"
        env = {**os.environ, **s3.env, "AIOTRAIN_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
        pack = subprocess.run([sys.executable, "-m", "examples.remote_digits", "pack", url], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=120)
        assert pack.returncode == 0, pack.stderr[-2000:]
        train = subprocess.run([sys.executable, "-m", "aiotrain", "train", "examples/remote_digits.sdn",
                                f"data.url={url}", "train.max_epochs=1", "--no-progress"],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "finished: epoch 1" in train.stdout
    [metrics] = list((tmp_path / "runs" / "remote-digits").glob("*/metrics.jsonl"))
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    data = [r for r in rows if "data/bytes_per_s" in r]
    assert data and data[0]["data/bytes"] > 0 and 0 <= data[-1]["data/cache_hit_rate"] <= 1
