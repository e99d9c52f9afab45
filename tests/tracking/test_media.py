"""Histograms, images, tables and watch()."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from aiotrain.tracking import Track


def records(run):
    return Track.load_run(run.dir).history()


def test_histogram_entry():
    values = torch.tensor([0.0, 1.0, 1.0, 2.0, float("nan")])
    with Track.run("p") as run:
        run.log_histogram("w", values, bins=2)
        with pytest.raises(ValueError):
            run.log_histogram("w", values, bins=0)
    hist = records(run)[0]["w"]
    assert hist["_type"] == "histogram"
    assert hist["bins"] == [0.0, 1.0, 2.0] and hist["counts"] == [1, 3]
    assert (hist["num"], hist["min"], hist["max"], hist["sum"], hist["sum_squares"]) == (4, 0.0, 2.0, 4.0, 6.0)


def test_image_png_and_layouts():
    chw = torch.zeros(3, 4, 5)
    chw[0] = 1.0  # red
    hwc = np.full((6, 7), 200, dtype=np.uint8)
    with Track.run("p") as run:
        run.log_image("samples/x", chw, caption="red")
        run.log_image("gray", hwc, step=7)
        with pytest.raises(ValueError):
            run.log_image("bad", torch.zeros(2, 2, 2, 2))
    first, second = records(run)
    entry = first["samples/x"]
    assert entry["_type"] == "image" and entry["caption"] == "red"
    assert (entry["width"], entry["height"]) == (5, 4)
    with Image.open(run.dir / entry["path"]) as img:
        assert img.size == (5, 4) and img.convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    assert second["step"] == 7
    with Image.open(run.dir / second["gray"]["path"]) as img:
        assert img.mode == "L" and img.getpixel((1, 1)) == 200


def test_table_round_trip():
    table = Track.Table(["id", "pred"], data=[[1, "cat"]])
    table.add_row(2, "dog")
    with pytest.raises(ValueError):
        table.add_row(3)
    with pytest.raises(ValueError):
        Track.Table(["a", "a"])
    with Track.run("p") as run:
        run.log_table("preds", table)
        with pytest.raises(TypeError):
            run.log_table("x", [[1]])
    entry = records(run)[0]["preds"]
    assert entry == {"_type": "table", "path": entry["path"], "columns": ["id", "pred"], "nrows": 2}
    lines = (run.dir / entry["path"]).read_text().splitlines()
    assert json.loads(lines[0]) == {"columns": ["id", "pred"]}
    loaded = Track.Table.load(run.dir / entry["path"])
    assert loaded.columns == ["id", "pred"] and loaded.data == [[1, "cat"], [2, "dog"]]


def test_watch_logs_gradients_and_parameters_every_log_freq():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    with Track.run("p") as run:
        run.watch(model, log="all", log_freq=2)
        for step in range(4):
            model(torch.randn(5, 3)).sum().backward()
            run.log({"step_done": step})
        model.eval()
        model(torch.randn(1, 3))  # eval forwards are not counted
        run.unwatch()
        model.train()
        model(torch.randn(1, 3)).sum().backward()  # hooks removed: nothing more
        with pytest.raises(ValueError):
            run.watch(model, log="weights")
    hist = records(run)
    grads = [h for h in hist if "gradients/0.weight" in h]
    params = [h for h in hist if "parameters/0.weight" in h]
    assert [h["step"] for h in grads] == [0, 2] and [h["step"] for h in params] == [0, 2]
    assert grads[0]["gradients/0.weight"]["num"] == 6
    assert grads[0]["grad_norm/0.weight"] > 0
    assert all(h["step"] in (0, 2) for h in hist if any(k.startswith("grad") for k in h))
    assert [h["step"] for h in hist if "step_done" in h] == [0, 1, 2, 3]
