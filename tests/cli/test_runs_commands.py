"""``aiotrain runs`` ls with columns, filters and sort; compare; plot of several runs; rm; and
ambiguous names. In-process (``aiotrain.cli.runs.main``) to keep them fast."""

from __future__ import annotations

import pytest

from aiotrain.cli.runs import main
from aiotrain.tracking import Track


@pytest.fixture
def root(tmp_path, monkeypatch):
    root = tmp_path / "track"
    monkeypatch.setenv("AIOTRAIN_DIR", str(root))
    Track.set_dir(root)
    runs = []
    try:
        for i, lr in enumerate([0.1, 0.01, 0.001]):
            with Track.run("p", name="same" if i else "first", config={"lr": lr, "opt": {"name": "sgd", "m": 0.9}},
                           tags=["base"] if i < 2 else ["wide"]) as run:
                for step in range(5):
                    run.log({"loss": (i + 1) / (step + 1), "acc": 0.5 + i / 10})
            runs.append(run)
    finally:
        Track.set_dir(None)
    return root, runs


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_ls_columns_filter_sort(root, capsys):
    _, runs = root
    code, out, err = run_cli(capsys, "ls", "--columns", "config.lr,acc,duration", "--sort=-acc")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "PROJECT", "NAME", "HOST", "STATUS", "CREATED", "TAGS", "CONFIG.LR", "ACC",
                                 "DURATION"]
    assert [line.split()[0] for line in lines[1:]] == [r.id for r in reversed(runs)]
    assert lines[1].split()[-3:-1] == ["0.001", "0.7"]
    code, out, _ = run_cli(capsys, "ls", "--filter", "config.lr<0.05", "--filter", "tag=base")
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == [runs[1].id]
    code, out, _ = run_cli(capsys, "ls", "--filter", "acc>=0.55", "--filter", "acc<=0.65", "--filter", "status=finished")
    assert [line.split()[0] for line in out.splitlines()[1:]] == [runs[1].id]
    code, out, err = run_cli(capsys, "ls", "--filter", "name>3")
    assert code == 2 and "needs a number" in err and len(err.strip().splitlines()) == 1


def test_show_refuses_an_ambiguous_name(root, capsys):
    _, runs = root
    code, out, err = run_cli(capsys, "show", "same")
    assert code == 2 and "ambiguous" in err
    assert f"p/{runs[1].id}" in err and f"p/{runs[2].id}" in err and len(err.strip().splitlines()) == 1
    code, out, _ = run_cli(capsys, "show", "first")
    assert code == 0 and f"id: {runs[0].id}" in out


def test_compare_shows_config_diff_and_summaries(root, capsys):
    _, runs = root
    code, out, err = run_cli(capsys, "compare", runs[0].id, f"p/{runs[2].id}")
    assert code == 0, err
    assert "config: 1 of 3 keys differ" in out
    assert "config.lr" in out and "config.opt.name" not in out
    acc = next(line for line in out.splitlines() if line.startswith("acc"))
    assert acc.split()[1:] == ["0.5", "0.7"]
    code, out, _ = run_cli(capsys, "compare", runs[0].id, runs[2].id, "--all")
    assert "config.opt.name" in out and "config.opt.m" in out
    code, _, err = run_cli(capsys, "compare", runs[0].id)
    assert code == 2 and "at least two" in err


def test_plot_several_runs_and_metrics(root, capsys, tmp_path):
    _, runs = root
    target = tmp_path / "cmp.png"
    code, out, err = run_cli(capsys, "plot", runs[0].id, runs[1].id, "--metric", "loss", "--metric", "acc",
                             "--x", "time", "-o", str(target))
    assert code == 0, err
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(target) as img:
        assert img.height > img.width * 0.6  # two stacked panels
    code, _, err = run_cli(capsys, "plot", runs[0].id, "--metric", "nope")
    assert code == 2 and "no scalar metric 'nope'" in err and "acc, loss" in err


def test_rm_lists_then_deletes(root, capsys):
    root, runs = root
    code, out, err = run_cli(capsys, "rm", runs[0].id)
    assert code == 2 and "--yes" in err and f"would delete p/{runs[0].id}" in out
    assert runs[0].dir.is_dir()
    code, out, err = run_cli(capsys, "rm", runs[0].id, "--yes")
    assert code == 0, err
    assert not runs[0].dir.exists() and runs[1].dir.is_dir()
    assert not any((root / ".trash").iterdir())
    code, _, err = run_cli(capsys, "rm", runs[0].id, "--yes")
    assert code == 2 and "no run" in err
