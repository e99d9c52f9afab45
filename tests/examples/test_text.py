"""examples/text.sdn: the tokenizer loads through TokenizerCache and the model learns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_text_example_trains(tmp_path):
    env = {**os.environ, "AIOTRAIN_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "aiotrain", "train", "examples/text.sdn",
                        "data.extra_vocab=20000", "train.max_epochs=2", "--no-progress"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    last = [ln for ln in r.stdout.splitlines() if ln.startswith("epoch 2:")]
    assert last and float(last[0].split("val/accuracy=")[1].split()[0]) > 0.9, r.stdout
    assert (tmp_path / "data" / "text" / "vocab.txt").exists()
