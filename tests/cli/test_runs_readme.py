"""The ``aiotrain runs ls`` / ``show`` commands README.md and docs/tracking.md print, run as
written on the kind of run ``make demo`` creates (examples/digits.sdn, one short epoch): every
column they ask for has a value, and ``show`` prints the history it promises."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from aiotrain.cli.runs import main as runs_main

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "docs" / "tracking.md"]


def _commands(path: Path) -> list[list[str]]:
    """Every ``aiotrain runs ls|show`` command in the code blocks of ``path``, as argv after
    ``runs``: continuation lines joined, comments and ``[optional]`` parts dropped."""
    out = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if "aiotrain runs " not in line:
                continue
            while re.search(r"\[[^\[\]]*\]", line):  # innermost first: [--sort=[-]KEY]
                line = re.sub(r"\[[^\[\]]*\]", "", line)
            words = [w for w in shlex.split(line, comments=True) if w != "..."]
            if len(words) > 2 and words[0].endswith("aiotrain") and words[1] == "runs" and words[2] in ("ls", "show"):
                out.append(words[2:])
    return out


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "store"
    env = {**os.environ, "AIOTRAIN_DIR": str(root), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "aiotrain", "train", "examples/digits.sdn", "--mode=train_only",
                           "train.max_epochs=1", "--no-progress"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (root / "runs" / "digits").iterdir()
    return root, run_dir.name


def test_the_docs_show_runs_commands_to_check():
    found = [c for path in DOCS for c in _commands(path)]
    assert any(c[0] == "ls" and "--columns" in c for c in found) and any(c[0] == "show" for c in found)


@pytest.mark.parametrize("argv", list(dict.fromkeys(tuple(c) for path in DOCS for c in _commands(path))), ids=" ".join)
def test_a_documented_runs_command_works_on_the_demo_run(argv, demo_root, monkeypatch, capsys):
    root, run_id = demo_root
    monkeypatch.setenv("AIOTRAIN_DIR", str(root))
    argv = [run_id if w in ("RUN", "<run-id>") else w for w in argv]  # a tuple from the docs
    code = runs_main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    if argv[0] == "ls":
        header, *rows = [line.split() for line in out.splitlines()]
        assert len(rows) == 1 and rows[0][0] == run_id, out
        if "--columns" in argv:
            columns = argv[argv.index("--columns") + 1].split(",")
            values = rows[0][-len(columns):]
            assert header[-len(columns):] == [c.upper() for c in columns]
            assert "-" not in values, f"empty column on the demo's run: {dict(zip(columns, values, strict=True))}"
    else:
        history = out[out.index("# history:"):].splitlines()
        assert history[1].split()[0] == "STEP" and len(history) > 2, out
        assert "train/loss" in history[1] and all(line.split()[0].isdigit() for line in history[2:])


def test_a_column_no_run_has_is_refused_with_the_closest_keys(demo_root, monkeypatch, capsys):
    root, _ = demo_root
    monkeypatch.setenv("AIOTRAIN_DIR", str(root))
    assert runs_main(["ls", "--columns", "config.lr,val/acc"]) == 2
    err = capsys.readouterr().err
    assert "no run has 'config.lr'; did you mean config.optim.lr" in err and len(err.strip().splitlines()) == 1
    assert runs_main(["ls", "--sort=-val/acc"]) == 2
    assert "did you mean val/accuracy" in capsys.readouterr().err


def test_show_prints_every_step_of_the_history_on_request(demo_root, monkeypatch, capsys):
    root, run_id = demo_root
    monkeypatch.setenv("AIOTRAIN_DIR", str(root))
    assert runs_main(["show", run_id, "--history", "all", "--metric", "val/accuracy", "--metric", "train/loss"]) == 0
    out = capsys.readouterr().out
    lines = out[out.index("# history:"):].splitlines()
    assert lines[1].split() == ["STEP", "val/accuracy", "train/loss"]
    steps = [int(line.split()[0]) for line in lines[2:]]
    assert steps == sorted(steps) and len(steps) == int(lines[0].split()[2])  # "# history: N steps"
    assert runs_main(["show", run_id, "--history", "2"]) == 0
    lines = capsys.readouterr().out.split("# history:")[1].splitlines()
    assert len(lines) == 4 and lines[2].split()[0] == str(steps[0]) and lines[3].split()[0] == str(steps[-1])
    assert runs_main(["show", run_id, "--history", "some"]) == 2
    assert runs_main(["show", run_id, "--metric", "nope"]) == 2
    assert "no scalar metric 'nope'" in capsys.readouterr().err
