"""``aiotrain runs ...`` in subprocesses: ls, show, plot, export, and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from aiotrain.tracking import Track


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "track"
    Track.set_dir(root)
    try:
        with Track.run("mnist", name="base", config={"lr": 0.1}, tags=["t1"]) as run:
            for i in range(5):
                run.log({"train/loss": 1.0 / (i + 1), "acc": i / 5})
            run.log_histogram("weights", torch.arange(10.0))
            run.log_image("sample", torch.rand(3, 8, 8))
        with pytest.raises(RuntimeError), Track.run("other", name="broken") as bad:
            raise RuntimeError("oops")
    finally:
        Track.set_dir(None)
    return root, run, bad


def cli(root, *args, cwd=None):
    env = {**os.environ, "AIOTRAIN_DIR": str(root)}
    return subprocess.run([sys.executable, "-m", "aiotrain", "runs", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=120)


def test_ls(root):
    root, run, bad = root
    out = cli(root, "ls")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["ID", "PROJECT", "NAME", "HOST", "STATUS", "CREATED", "TAGS"]
    assert run.id in lines[1] and "finished" in lines[1] and "t1" in lines[1]
    assert bad.id in lines[2] and "crashed" in lines[2]
    only = cli(root, "ls", "--project", "other")
    assert bad.id in only.stdout and run.id not in only.stdout


def test_show(root):
    root, run, bad = root
    out = cli(root, "show", run.id)
    assert out.returncode == 0, out.stderr
    assert f"id: {run.id}" in out.stdout and "lr: 0.1" in out.stdout
    assert '"train/loss": 0.2' in out.stdout and "weights: <histogram>" in out.stdout
    crashed = cli(root, "show", "broken")
    assert "status: crashed" in crashed.stdout and "RuntimeError: oops" in crashed.stdout


def test_plot(root, tmp_path):
    root, run, _ = root
    target = tmp_path / "loss.png"
    out = cli(root, "plot", run.id, "--metric", "train/loss", "-o", str(target))
    assert out.returncode == 0, out.stderr
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    default = cli(root, "plot", f"mnist/{run.id}", "--metric", "acc", cwd=tmp_path)
    assert default.returncode == 0 and (tmp_path / f"{run.id}_acc.png").is_file()


def test_export_tensorboard_is_readable(root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from aiotrain.tracking.export import tensorboard_folder
    from aiotrain.tracking.reader import load_run

    root, run, _ = root
    out = cli(root, "export", run.id, "--tensorboard", str(tmp_path / "tb"))
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "tb" / tensorboard_folder(load_run(run.dir))
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "acc"} <= set(tags["scalars"])
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [0, 1, 2, 3, 4]
    assert [round(e.value, 6) for e in loss] == [round(1.0 / (i + 1), 6) for i in range(5)]
    assert "weights" in tags["histograms"] and acc.Histograms("weights")[0].histogram_value.num == 10
    assert "sample" in tags["images"]


@pytest.mark.parametrize("args, needle", [
    (["show", "nope"], "no run 'nope'"),
    (["ls", "--filter", "lr"], "KEY OP VALUE"),
    (["export", "base"], "--tensorboard"),
    (["plot", "base", "--metric", "missing"], "no scalar metric 'missing'"),
    (["plot", "base"], "--metric"),
    (["bogus"], "invalid choice"),
    (["ls", "--project", "../x"], "path separators"),
    ([], "required"),
])
def test_mistakes_print_one_line(root, args, needle):
    out = cli(root[0], *args)
    assert out.returncode == 2
    assert needle in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr


def test_unwritable_output_exits_1(root, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = cli(root[0], "plot", "base", "--metric", "acc", "-o", str(blocker / "loss.png"))
    assert out.returncode == 1, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
