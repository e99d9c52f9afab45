"""``Job``: TrainJob and ProcessJob show the same face (mypy checks it member by member in
``aiotrain/job/__init__.py``; this checks it at run time) and take the same arguments."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from aiotrain.cli.train import load_config
from aiotrain.config import SchemaError
from aiotrain.job import EngineView, Job, ProcessJob, RemoteEngine, TrainJob

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    return load_config("examples/digits.sdn", [f"tracking.dir={tmp_path}"])


def test_both_kinds_of_job_are_jobs(cfg):
    for kind in (TrainJob, ProcessJob):
        job = kind(cfg, resume="abc123")
        assert isinstance(job, Job), kind
        assert job.resume == "abc123" and job.on_evaluation is None and job.stop_reason is None
    assert isinstance(RemoteEngine("trainer", lambda *_: None), EngineView)


def test_the_shared_arguments_match():
    """Every argument both take has the same kind, annotation and (but progress) default."""
    train = inspect.signature(TrainJob).parameters
    proc = inspect.signature(ProcessJob).parameters
    shared = set(train) & set(proc)
    assert shared >= {"cfg", "mode", "resume", "progress", "echo", "force", "on_score", "on_evaluation"}
    for name in shared:
        a, b = train[name], proc[name]
        assert (a.kind, a.annotation) == (b.kind, b.annotation), name
        if name != "progress":  # a worker shares the parent's terminal: no bar by default
            assert a.default == b.default, name
    assert set(train) - shared == {"parts"}  # objects that cannot cross a process boundary
    assert set(proc) - shared == {"grace"}


def test_process_job_checks_its_config_strictly(cfg):
    bad = load_config("examples/digits.sdn", ["train.max_epoch=3"])
    for kind in (TrainJob, ProcessJob):
        with pytest.raises(SchemaError, match="train.max_epoch.*did you mean train.max_epochs"):
            kind(bad)
