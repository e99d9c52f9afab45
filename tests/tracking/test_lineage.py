"""Lineage: one artifact version's producer, consumers, inputs and outputs (tracking/lineage.py)."""

from __future__ import annotations

import json

import pytest

from aiotrain.tracking import Track


def make(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_lineage(tmp_path):
    raw = make(tmp_path / "raw.txt", "raw")
    with Track.run("p") as prep:
        ds = Track.Artifact("ds", "dataset")
        ds.add_file(raw)
        prep.log_artifact(ds)
    with Track.run("p") as train:
        train.use_artifact("ds:latest")
        model = Track.Artifact("model", "model")
        model.add_file(make(tmp_path / "w.pt", "weights"))
        train.log_artifact(model)
    with Track.run("p") as evaluate:
        evaluate.use_artifact("model:v0")
        report = Track.Artifact("report", "eval")
        report.add_file(make(tmp_path / "r.json", "{}"))
        evaluate.log_artifact(report)

    assert Track.lineage("ds:v0") == {
        "inputs": [], "runs": [{"id": prep.id, "role": "producer"}, {"id": train.id, "role": "consumer"}],
        "outputs": ["model:v0"]}
    got = Track.lineage("model:latest")
    assert got == {"inputs": ["ds:v0"],
                   "runs": [{"id": train.id, "role": "producer"}, {"id": evaluate.id, "role": "consumer"}],
                   "outputs": ["report:v0"]}
    json.dumps(got)
    with Track.run("q") as elsewhere:
        other = Track.Artifact("ds", "dataset")
        other.add_file(raw)
        elsewhere.log_artifact(other)
    with pytest.raises(ValueError, match="project"):
        Track.lineage("ds:v0")
    assert Track.lineage("ds:v0", project="q")["runs"] == [{"id": elsewhere.id, "role": "producer"}]
    with pytest.raises(LookupError):
        Track.lineage("missing:v0")
