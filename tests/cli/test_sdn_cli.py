"""``aiotrain sdn ...``: the main paths end to end in subprocesses (``python -m aiotrain sdn``),
the details through the same ``main(argv)`` in process (a subprocess costs the package import)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aiotrain.cli.sdn import main
from aiotrain.config import sdn

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """\
# the training config
train:
    lr = 1e-3    # learning rate
    layers = [64, 32]

model:
    name: resnet  # which one
rows |a, b|
    1, x
    2, y
"""


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aiotrain", "sdn", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def call(capsys, monkeypatch):
    """Run ``main(argv)`` in process and return what a subprocess run would."""
    import io

    def go(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)
    return go


@pytest.fixture
def cfg(tmp_path) -> Path:
    p = tmp_path / "train.sdn"
    p.write_text(CONFIG)
    return p


def _one_error_line(r: subprocess.CompletedProcess, code: int = 2) -> str:
    assert r.returncode == code, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_check_ok_and_syntax_error(cfg, tmp_path):
    r = run("check", str(cfg))
    assert r.returncode == 0 and f"{cfg}: ok" in r.stdout
    bad = tmp_path / "bad.sdn"
    bad.write_text("a: 1\nb:\n    c = {x: 1\n")
    assert _one_error_line(run("check", str(bad))).startswith(f"{bad}:3:14: ")


def test_missing_file_is_one_line(call, tmp_path):
    line = _one_error_line(call("check", str(tmp_path / "none.sdn")))
    assert line.startswith(f"{tmp_path / 'none.sdn'}: ")


def test_to_json_and_back(cfg, tmp_path):
    r = run("to-json", str(cfg))
    assert r.returncode == 0
    data = json.loads(r.stdout)
    assert data == sdn.loads(CONFIG)
    j = tmp_path / "c.json"
    j.write_text(r.stdout)
    back = run("from-json", str(j))
    assert back.returncode == 0 and sdn.loads(back.stdout) == data
    assert sdn.loads(run("from-json", "-", stdin=r.stdout).stdout) == data


def test_from_json_errors(call, tmp_path):
    j = tmp_path / "bad.json"
    j.write_text('{"a": 1,\n "b": }')
    assert _one_error_line(call("from-json", str(j))).startswith(f"{j}:2:7: ")
    j.write_text("[1, 2]")
    assert "top level" in _one_error_line(call("from-json", str(j)))


def test_get(call, cfg):
    assert call("get", str(cfg), "train.lr").stdout == "0.001\n"
    assert call("get", str(cfg), "model.name").stdout == "resnet\n"
    assert call("get", str(cfg), "train.layers").stdout == "[64, 32]\n"
    assert call("get", str(cfg), "rows.1.b").stdout == "y\n"
    assert sdn.loads(call("get", str(cfg), "train").stdout) == {"lr": 1e-3, "layers": [64, 32]}
    assert "train.nope" in _one_error_line(call("get", str(cfg), "train.nope"))


def test_set_keeps_comments_and_formatting(cfg):
    r = run("set", str(cfg), "train.lr", "5e-4")
    assert r.returncode == 0, r.stderr
    assert cfg.read_text() == CONFIG.replace("1e-3", "0.0005")
    assert run("set", str(cfg), "model.name", '"vit b"').returncode == 0
    assert run("set", str(cfg), "train.extra", "{a: 1}").returncode == 0
    text = cfg.read_text()
    assert "    name: vit b  # which one\n" in text and text.startswith("# the training config\n")
    assert sdn.loads(text)["train"] == {"lr": 5e-4, "layers": [64, 32], "extra": {"a": 1}}
    assert not list(cfg.parent.glob(".*.tmp"))


def test_set_errors_leave_the_file(call, cfg):
    assert "bad value" in _one_error_line(call("set", str(cfg), "train.lr", "[1,"))
    assert "out of range" in _one_error_line(call("set", str(cfg), "train.layers.7", "1"))
    assert cfg.read_text() == CONFIG


def test_fmt(call, cfg):
    r = call("fmt", str(cfg))
    assert r.returncode == 0 and sdn.loads(r.stdout) == sdn.loads(CONFIG)
    assert cfg.read_text() == CONFIG  # printing never touches the file
    check = call("fmt", "--check", str(cfg))
    assert (check.returncode, check.stderr) == (1, f"{cfg}: not formatted\n")
    assert call("fmt", "-w", str(cfg)).returncode == 0
    assert cfg.read_text() == r.stdout
    assert call("fmt", "--check", str(cfg)).returncode == 0


def test_usage_errors_exit_2(call):
    r = run("bogus")
    assert _one_error_line(r).startswith("aiotrain sdn: argument COMMAND: invalid choice: 'bogus'")
    assert "aiotrain sdn: " in _one_error_line(call())
    assert "PATH" in _one_error_line(call("get", "only-a-file"))
    r = call("--help")
    assert r.returncode == 0 and "to-json" in r.stdout and not r.stderr


def test_unwritable_output_exits_1(call, cfg, monkeypatch):
    def full_disk(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(sdn, "write_atomic", full_disk)
    line = _one_error_line(call("set", str(cfg), "train.lr", "1"), code=1)
    assert line == f"{cfg}: cannot write: {os.strerror(errno.ENOSPC)}"
    assert cfg.read_text() == CONFIG


def test_to_json_into_a_closed_pipe_ends_quietly(cfg):
    """``aiotrain sdn to-json f | head -1``: no BrokenPipeError traceback, exit 1 (output cut)."""
    big = cfg.parent / "big.sdn"
    big.write_text("rows |a, b|\n" + "".join(f"    {i}, x{i}\n" for i in range(50_000)))
    proc = subprocess.Popen([sys.executable, "-m", "aiotrain", "sdn", "to-json", str(big)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # what head does after its first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert err == "", err
