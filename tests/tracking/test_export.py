"""Export to TensorBoard (one folder per run, hparams read back through TensorBoard's own
readers) and to MLflow (a real local store read back with MLflow's client)."""

from __future__ import annotations

import pytest
import torch

from aiotrain.tracking import Track
from aiotrain.tracking.export import export_mlflow, export_tensorboard, tensorboard_folder
from aiotrain.tracking.reader import load_run


@pytest.fixture
def two_runs(track_root):
    runs = []
    for i, lr in enumerate([0.1, 0.01]):
        with Track.run("exp", name=f"r{i}", config={"lr": lr, "opt": {"name": "adam", "betas": [0.9, 0.99]}},
                       tags=["t1"], notes="a note") as run:
            for step in range(4):
                run.log({"train/loss": (i + 1) / (step + 1)})
            run.log({"val/acc": 0.8 + i / 10}, step=3)
            run.log_image("sample", torch.rand(3, 4, 4))
        runs.append(load_run(run.dir))
    system = runs[0].dir / "system.jsonl"  # as the sampler writes it
    system.write_text('{"step": 3, "timestamp": 1.5, "system/cpu_percent": 42.0}\n')
    return runs


def test_tensorboard_one_folder_per_run_with_hparams(two_runs, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata as hp_meta

    for record in two_runs:
        export_tensorboard(record, tmp_path / "tb" / tensorboard_folder(record))
    folders = sorted(p.name for p in (tmp_path / "tb").iterdir())
    assert folders == sorted(tensorboard_folder(r) for r in two_runs) and len(folders) == 2
    for record in two_runs:
        acc = EventAccumulator(str(tmp_path / "tb" / tensorboard_folder(record)), size_guidance={"scalars": 0})
        acc.Reload()
        assert [e.value for e in acc.Scalars("val/acc")] == [pytest.approx(record.summary["val/acc"])]
        content = acc.PluginTagToContent(hp_meta.PLUGIN_NAME)
        start = hp_meta.parse_session_start_info_plugin_data(content[hp_meta.SESSION_START_INFO_TAG])
        hparams = {k: v.ListFields()[0][1] for k, v in start.hparams.items()}
        assert hparams["lr"] == pytest.approx(record.config["lr"]) and hparams["opt.name"] == "adam"
        assert hparams["opt.betas"] == "[0.9, 0.99]"
        experiment = hp_meta.parse_experiment_plugin_data(content[hp_meta.EXPERIMENT_TAG])
        metric_tags = {m.name.tag for m in experiment.metric_infos}
        assert {"train/loss", "val/acc"} <= metric_tags
    first = EventAccumulator(str(tmp_path / "tb" / tensorboard_folder(two_runs[0])), size_guidance={"scalars": 0})
    first.Reload()
    assert [e.value for e in first.Scalars("system/cpu_percent")] == [42.0]


def test_mlflow_store_reads_back(two_runs, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts of a sqlite store under ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    results = [export_mlflow(r, uri) for r in two_runs]
    assert not any(r["skipped"] for r in results)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("exp")
    found = client.search_runs([exp.experiment_id], order_by=["params.lr DESC"])
    assert [r.info.run_name for r in found] == ["r0", "r1"]
    for record, run in zip(two_runs, found, strict=True):
        assert run.data.params["lr"] == str(record.config["lr"]) and run.data.params["opt.name"] == "adam"
        assert run.data.tags["aiotrain.run_id"] == record.id and run.data.tags["tag.t1"] == "true"
        assert run.data.tags["mlflow.note.content"] == "a note"
        assert run.info.status == "FINISHED" and run.info.start_time == int(record.created_at * 1000)
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == \
            [(s, pytest.approx(float(record.summary["train/loss"]) * 4 / (s + 1))) for s in range(4)]
        assert run.data.metrics["val/acc"] == pytest.approx(record.summary["val/acc"])
        images = client.list_artifacts(run.info.run_id, "media/images")
        assert len(images) == 1 and images[0].path.endswith(".png")
    assert client.get_metric_history(found[0].info.run_id, "system/cpu_percent")[0].value == 42.0
    again = export_mlflow(two_runs[0], uri)
    assert again["skipped"] and again["run_id"] == found[0].info.run_id
    assert len(client.search_runs([exp.experiment_id])) == 2
