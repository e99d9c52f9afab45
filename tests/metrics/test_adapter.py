"""torchmetrics metrics attached to an Engine give what torchmetrics gives by hand on the same
data: alone, as a collection, per epoch, through TrainJob, and on two Gloo ranks."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

torchmetrics = pytest.importorskip("torchmetrics", reason="torchmetrics is not installed")

from aiotrain.engine import Engine  # noqa: E402
from aiotrain.events import Events  # noqa: E402
from aiotrain.metrics import NotComputableError, TorchMetric, as_metric  # noqa: E402

C = 4


def _batches(n=6, batch=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, C, generator=g), torch.randint(0, C, (batch,), generator=g))
            for _ in range(n)]


def _passthrough(engine, batch):
    return batch


def _by_hand(metric, batches):
    for y_pred, y in batches:
        metric.update(y_pred, y)
    return metric.compute()


def _accuracy():
    return torchmetrics.classification.MulticlassAccuracy(num_classes=C, average="macro")


def test_a_torchmetrics_metric_is_accepted_directly_and_matches_by_hand():
    data = _batches()
    ev = Engine(_passthrough)
    ev.add_metric(_accuracy(), "acc")
    state = ev.run_sync(data)
    want = _by_hand(_accuracy(), data)
    assert isinstance(state.metrics["acc"], float)
    assert state.metrics["acc"] == pytest.approx(want.item())


def test_a_collection_spreads_its_results_under_its_own_keys():
    data = _batches()
    coll = torchmetrics.MetricCollection({"acc": _accuracy(),
                                          "f1": torchmetrics.classification.MulticlassF1Score(C)})
    ev = Engine(_passthrough)
    ev.add_metric(coll, "val")
    state = ev.run_sync(data)
    want = _by_hand(coll.clone(), data)
    for key in ("acc", "f1"):
        assert state.metrics[key] == pytest.approx(want[key].item())
    assert set(state.metrics["val"]) == {"acc", "f1"}


def test_updates_run_on_the_compute_thread_and_reset_each_epoch():
    data = _batches(n=4)
    threads = set()
    inner = _accuracy()
    original = inner.update

    def update(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return original(*args, **kwargs)

    inner.update = update
    ev = Engine(_passthrough)
    TorchMetric(inner).attach(ev, "acc")
    per_epoch = []
    ev.add_event_handler(Events.EPOCH_COMPLETED, lambda e: per_epoch.append(e.state.metrics["acc"]))
    ev.run_sync(data, max_epochs=3)
    assert threading.main_thread().name not in threads and threads
    # the same data each epoch: reset at EPOCH_STARTED gives the same value, not a running one
    assert per_epoch == pytest.approx([_by_hand(_accuracy(), data).item()] * 3)
    assert inner.update_count == len(data)


def test_output_transform_and_mapping_outputs():
    data = _batches()

    def step(engine, batch):
        return {"logits": batch[0], "labels": batch[1], "loss": 0.0}

    ev = Engine(step)
    TorchMetric(_accuracy(), output_transform=lambda o: (o["logits"], o["labels"])).attach(ev, "a")
    TorchMetric(torchmetrics.MeanMetric(),
                output_transform=lambda o: {"value": o["logits"].sum()}).attach(ev, "m")
    state = ev.run_sync(data)
    assert state.metrics["a"] == pytest.approx(_by_hand(_accuracy(), data).item())
    assert state.metrics["m"] == pytest.approx(torch.stack([b[0].sum() for b in data]).mean().item())


def test_no_update_is_not_computable_and_wrong_objects_are_refused():
    m = TorchMetric(_accuracy())
    with pytest.raises(NotComputableError):
        m.compute()
    with pytest.raises(TypeError, match="torchmetrics Metric"):
        TorchMetric(object())
    with pytest.raises(TypeError, match="cannot attach a dict"):
        as_metric({})


def test_importing_aiotrain_metrics_does_not_import_torchmetrics():
    code = "import sys, aiotrain.metrics, aiotrain.engine; print('torchmetrics' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_trainjob_tasks_accept_torchmetrics(tmp_path):
    from aiotrain.config import Conf
    from aiotrain.job import TrainJob
    from aiotrain.runtime import run
    from aiotrain.tracking.reader import load_run
    from tests.metrics import tm_task

    cfg = Conf.from_dict({"task": "tests.metrics.tm_task:build", "seed": 0,
                          "train": {"max_epochs": 2},
                          "tracking": {"project": "tm", "dir": str(tmp_path)}})
    job = TrainJob(cfg, progress=False, echo=lambda _: None)
    result = run(job.run())
    task = tm_task.BUILT[-1]
    by_hand = torchmetrics.classification.MulticlassAccuracy(2)
    x, y = task.val_loader.dataset.tensors
    with torch.no_grad():
        by_hand.update(task.model(x), y)
    assert result.metrics["accuracy"] == pytest.approx(by_hand.compute().item())
    tracked = load_run(result.run_dir)
    assert tracked.summary["val/accuracy"] == pytest.approx(result.metrics["accuracy"])


# two Gloo ranks ------------------------------------------------------------------------------

def _rank_main(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        data = _batches(n=6)
        shard = data[:2] if rank == 0 else data[2:]  # uneven on purpose
        ev = Engine(_passthrough)
        ev.add_metric(_accuracy(), "acc")
        state = ev.run_sync(shard)
        with open(f"{out_dir}/{rank}.json", "w") as f:
            json.dump(state.metrics["acc"], f)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_gloo_ranks_compute_the_global_value(tmp_path):
    mp.spawn(_rank_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    want = _by_hand(_accuracy(), _batches(n=6)).item()
    for rank in range(2):
        assert json.loads((tmp_path / f"{rank}.json").read_text()) == pytest.approx(want)
