"""``aiotrain train`` end to end in subprocesses: modes, overrides, bad configs, resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def train(tmp_path: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "AIOTRAIN_DIR": str(tmp_path / "store"), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "aiotrain", "train", *args, "--no-progress"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _checkpoints(tmp_path: Path, prefix: str) -> list[Path]:
    return sorted((tmp_path / "store" / "checkpoints").rglob(f"{prefix}*.pt"))


def test_check_and_train_reaches_accuracy_and_tracks(tmp_path):
    r = train(tmp_path, "examples/digits.sdn", "--mode=check_and_train", "train.max_epochs=6")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "checkpoints:" in r.stdout and "run:" in r.stdout
    accs = [float(line.split("val/accuracy=")[1].split()[0]) for line in r.stdout.splitlines()
            if "val/accuracy=" in line]
    assert accs and accs[-1] >= 0.95, r.stdout
    assert _checkpoints(tmp_path, "best") and _checkpoints(tmp_path, "last")
    run_dirs = list((tmp_path / "store" / "runs" / "digits").iterdir())
    assert len(run_dirs) == 1
    assert (run_dirs[0] / "metrics.jsonl").stat().st_size > 0
    assert (run_dirs[0] / "summary.sdn").exists()


def test_check_only_passes_without_training(tmp_path):
    r = train(tmp_path, "examples/digits.sdn", "--mode=check_only")
    assert r.returncode == 0, r.stderr[-3000:]
    assert not _checkpoints(tmp_path, "last")


def test_failing_validation_exits_1(tmp_path):
    r = train(tmp_path, "examples/digits.sdn", "--mode=check_only", "validation.memory_budget=1000")
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert "VALIDATION FAILED" in r.stdout


def _own_frames_only(stderr: str) -> list[str]:
    """The frame lines of an error's traceback part; none may be aiotrain's or a library's."""
    files = [ln.split('"')[1] for ln in stderr.splitlines() if ln.strip().startswith("File ")]
    assert files and all("/aiotrain/" not in f and "site-packages" not in f for f in files), stderr
    return files


def test_a_value_the_task_fails_on_is_named_first_then_the_users_frames(tmp_path):
    """optim.lr = -1.0 reaches torch.optim.Adam inside the factory: one line naming the key and
    the task's failure, then the task's own frames (no runtime, torch or asyncio frames)."""
    r = train(tmp_path, "examples/digits.sdn", "optim.lr=-1.0")
    assert r.returncode == 2, r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith("aiotrain train: override 'optim.lr=-1.0': optim.lr = -1.0"), first
    assert "ValueError: Invalid learning rate: -1.0" in first
    assert _own_frames_only(r.stderr) == [str(ROOT / "examples" / "digits.py")]
    bad = tmp_path / "bad.sdn"  # the same value written in the file: placed at its line
    bad.write_text((ROOT / "examples" / "digits.sdn").read_text().replace("lr = 3e-3", "lr = -1.0"))
    r = train(tmp_path, str(bad))
    assert r.returncode == 2 and r.stderr.startswith(f"{bad}:20:3: optim.lr = -1.0"), r.stderr
    assert "Traceback" not in r.stderr


def test_a_missing_input_of_the_task_exits_2_naming_the_file_and_its_key(tmp_path):
    (tmp_path / "taken").write_text("a file where the data folder should be")
    r = train(tmp_path, "examples/digits.sdn", f"data.root={tmp_path}/taken/digits")
    assert r.returncode == 2, r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith(f"aiotrain train: override 'data.root={tmp_path}/taken/digits': "
                            f"{tmp_path}/taken"), first
    assert f"(data.root = '{tmp_path}/taken/digits')" in first
    _own_frames_only(r.stderr)


def test_a_top_level_key_nobody_reads_is_an_error_with_a_hint(tmp_path):
    typo = tmp_path / "typo.sdn"
    typo.write_text((ROOT / "examples" / "digits.sdn").read_text().replace("seed: 0", "sed: 0"))
    r = train(tmp_path, str(typo), "train.max_epochs=1")
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr
    assert r.stderr.strip() == (f"{typo}:5:1: sed: unknown top-level key: neither the runtime nor "
                                "the task (examples.digits:build) reads it; did you mean seed?")
    assert not list((tmp_path / "runs").rglob("metadata.sdn"))  # refused before any run began


@pytest.mark.parametrize("args, fragment", [
    (["examples/digits.sdn", "train.max_epochs=zero"], "train.max_epochs"),
    (["examples/digits.sdn", "task=nowhere.mod:build"], "task"),
    (["examples/digits.sdn", "noequals"], "noequals"),
    (["missing.sdn"], "missing.sdn"),
    (["examples/digits.sdn", "train.max_epoch=2"], "did you mean train.max_epochs?"),
    (["examples/digits.sdn", "tracking.mode=ofline"], "tracking.mode = 'ofline'"),
    (["examples/digits.sdn", "checkpoint.n_saved=-1"], "checkpoint.n_saved = -1"),
    (["examples/digits.sdn", "train.device=cpux"], "train.device = 'cpux'"),
    (["examples/digits.sdn", 'train.max_epochs="3"'], "train.max_epochs = '3'"),
    (["examples/digits.sdn", "--resume", "nosuchrun"], "resume: no run 'nosuchrun'"),
    # an override names itself, not the file: it is not written there
    (["examples/digits.sdn", "train.lr=fast"], "aiotrain train: override 'train.lr=fast': train.lr: "
                                               "unknown key in the runtime's 'train' section"),
    (["examples/digits.sdn", "optim.lr=fast"], "aiotrain train: override 'optim.lr=fast': 'fast' is a "
                                               "string, but examples/digits.sdn:20:3 sets optim.lr to "
                                               "a number (0.003)"),
    (["examples/digits.sdn", "model.dropuot=0.2"], "model.dropuot is not in examples/digits.sdn; did "
                                                   "you mean model.dropout?"),
    (["examples/digits.sdn", "data.root=${nope}"], "override 'data.root=${nope}': data.root: "
                                                   "interpolation key 'nope' not found"),
])
def test_bad_config_exits_2_with_one_clear_line(tmp_path, args, fragment):
    r = train(tmp_path, *args)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and fragment in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_a_bad_key_written_in_the_file_names_its_line(tmp_path):
    bad = tmp_path / "bad.sdn"
    bad.write_text("task: examples.digits:build\ntrain:\n  max_epochs = 2\n  patiense = 3\n")
    r = train(tmp_path, str(bad))
    assert r.returncode == 2
    assert r.stderr.strip() == (f"{bad}:4:3: train.patiense: unknown key in the "
                                "runtime's 'train' section; did you mean train.patience?")


def test_syntax_error_names_file_line_col(tmp_path):
    bad = tmp_path / "bad.sdn"
    bad.write_text("task: examples.digits:build\ntrain:\n  max_epochs = [1, 2\n")
    r = train(tmp_path, str(bad))
    assert r.returncode == 2
    assert r.stderr.startswith(f"{bad}:3:") and "Traceback" not in r.stderr
    # the same mistake reads the same from every subcommand (one table, one format)
    check = subprocess.run([sys.executable, "-m", "aiotrain", "sdn", "check", str(bad)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert (check.returncode, check.stderr) == (r.returncode, r.stderr)


def test_usage_error_exits_2_with_one_line(tmp_path):
    r = train(tmp_path, "examples/digits.sdn", "--mode=sometimes")
    assert r.returncode == 2
    assert r.stderr.startswith("aiotrain train: argument --mode: invalid choice")
    assert len(r.stderr.strip().splitlines()) == 1


def test_console_script_finds_the_task_from_the_working_directory(tmp_path):
    """`make demo` runs the installed `aiotrain` script, which does not put the cwd on sys.path."""
    script = Path(sys.executable).with_name("aiotrain")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["AIOTRAIN_DIR"] = str(tmp_path)
    r = subprocess.run([str(script), "train", "examples/digits.sdn", "--mode=check_only"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]


def test_ctrl_c_flushes_checkpoints_marks_the_run_and_exits_130(tmp_path):
    import signal
    import time

    from aiotrain.config import sdn
    from aiotrain.handlers import Checkpoint

    env = {**os.environ, "AIOTRAIN_DIR": str(tmp_path / "store"), "PYTHONPATH": str(ROOT),
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "aiotrain", "train", "examples/digits.sdn",
                             "train.max_epochs=3", "train.patience=null", "--no-progress"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("epoch 1:"):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: checkpoint " in err and "--resume " in err and "Traceback" not in err
    (record,) = (tmp_path / "store" / "checkpoints" / "digits").glob("*/run.sdn")
    assert sdn.loads(record.read_text())["status"] == "interrupted"
    latest = Checkpoint.latest(record.parent, "last")
    assert latest is not None and str(latest) in err
    (meta,) = (tmp_path / "store" / "runs" / "digits").glob("*/metadata.sdn")
    assert sdn.loads(meta.read_text())["status"] == "interrupted"
    # the stop point is where the run continues: same run, appended, finished once resumed
    again = train(tmp_path, "examples/digits.sdn", "train.max_epochs=3", "train.patience=null",
                  "--resume", record.parent.name)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resume: run {record.parent.name} from {latest}" in again.stdout
    assert sdn.loads(meta.read_text())["status"] == "finished"
    refused = train(tmp_path, "examples/digits.sdn", "--resume")
    assert refused.returncode == 2 and "finished" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def _deep_config(levels: int) -> str:
    """digits.sdn plus an ``extra`` section whose deepest value sits ``levels`` levels down."""
    text = (ROOT / "examples" / "digits.sdn").read_text()
    block = ["extra:"] + ["    " * i + f"k{i}:" for i in range(1, levels - 1)]
    block.append("    " * (levels - 1) + "v: ${tracking.project}")
    return text + "\n" + "\n".join(block) + "\n"


def test_the_deepest_config_the_parser_accepts_loads_validates_and_is_tracked(tmp_path):
    """Every stage of ``aiotrain train`` before the task: load, override, resolve, validate,
    record in the run's metadata, read back."""
    from aiotrain.cli.train import load_config
    from aiotrain.config import Conf, sdn
    from aiotrain.job import TrainSettings
    from aiotrain.tracking import Track

    path = tmp_path / "deep.sdn"
    path.write_text(_deep_config(sdn.MAX_DEPTH))
    cfg = load_config(str(path), ["train.max_epochs=1", f"tracking.dir={tmp_path}"])
    settings = Conf.validate(TrainSettings, cfg, strict=False)
    assert settings.train.max_epochs == 1 and settings.tracking.project == "digits"
    plain = Conf.to_dict(cfg)
    with Track.run(settings.tracking.project, config=plain, dir=tmp_path) as run:
        run.log({"a": 1})
    record = Track.load_run(run.dir)
    assert record.status == "finished" and record.config == plain
    node = record.config["extra"]
    for i in range(1, sdn.MAX_DEPTH - 1):
        node = node[f"k{i}"]
    assert node == {"v": "digits"}


def test_a_config_deeper_than_the_parser_accepts_is_one_line_naming_the_line(tmp_path):
    path = tmp_path / "deeper.sdn"
    path.write_text(_deep_config(600))  # `aiotrain train` used to die of RecursionError here
    r = train(tmp_path, str(path))
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "nesting deeper than" in err and f"{path}:" in err


def _hiding(tmp_path: Path, hidden: set[str]) -> dict[str, str]:
    """An environment whose Python processes (forked data workers included) cannot import the
    ``hidden`` packages, as after ``pip install .`` without extras: a sitecustomize marks them
    absent (``sys.modules[name] = None``: imports fail, ``importlib.util.find_spec`` is None)."""
    site = tmp_path / f"hide{len(hidden)}"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        f"import sys\nfor _name in {sorted(hidden)!r}:\n    sys.modules[_name] = None\n")
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "AIOTRAIN_DIR": str(tmp_path)}


@pytest.mark.parametrize("argv, extra", [
    (["train", "examples/digits.sdn", "train.max_epochs=1"], "examples"),  # scikit-learn's data
    (["train", "examples/digits.sdn", "--mode=check_only"], "examples"),
    (["runs", "serve", "--port", "0"], "dashboard"),
    (["sweep", "examples/digits.sdn", "--method", "bayes", "--trials", "1",
      "optim.lr=loguniform(1e-4,1e-1)"], "sweeps"),
])
def test_without_the_optional_packages_a_command_names_the_extra_in_one_line(tmp_path, argv, extra):
    from aiotrain.errors import EXTRAS

    env = _hiding(tmp_path, set(EXTRAS))
    r = subprocess.run([sys.executable, "-m", "aiotrain", *argv], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=240)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert f"pip install 'aiotrain[{extra}]'" in lines[0], lines


def test_with_only_the_examples_extra_the_digits_example_trains(tmp_path):
    """What `pip install '.[examples]'` gives: no rich (no bar: the epoch lines show progress),
    no uvloop, no yaml, ... and it trains."""
    from aiotrain.errors import EXTRAS

    env = _hiding(tmp_path, set(EXTRAS) - {"sklearn", "tokenizers", "aiohttp"})
    r = subprocess.run([sys.executable, "-m", "aiotrain", "train", "examples/digits.sdn",
                        "train.max_epochs=1"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "finished: epoch 1" in r.stdout
