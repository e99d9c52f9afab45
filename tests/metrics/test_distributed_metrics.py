"""Two gloo ranks, each with half the data, compute the same value as one process with all of it."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from aiotrain.metrics import MSE, Accuracy, F1Score, Loss, R2Score, RunningAverage

WORLD = 2


def _data():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(40, 4, generator=g), torch.randint(0, 4, (40,), generator=g)
    y = torch.randn(40, generator=g)
    return logits, labels, y + torch.randn(40, generator=g), y


def _metrics():
    return {"acc": Accuracy(), "f1": F1Score(average="macro"), "f1_each": F1Score(average=None),
            "loss": Loss(torch.nn.functional.cross_entropy), "mse": MSE(), "r2": R2Score()}


def _compute(shard: slice) -> dict:
    logits, labels, y_pred, y = _data()
    out = {}
    for name, m in _metrics().items():
        pair = (y_pred[shard], y[shard]) if name in ("mse", "r2") else (logits[shard], labels[shard])
        m.update(pair)
        value = m.compute()
        out[name] = value.tolist() if isinstance(value, torch.Tensor) else value
    return out


def _rank_main(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        shard = slice(0, 13) if rank == 0 else slice(13, 40)  # uneven on purpose
        result = _compute(shard)
        ra = RunningAverage(output_transform=float, alpha=0.5)
        ra.update(torch.tensor(float(rank + 1)))  # mean over ranks: 1.5
        result["ra"] = ra.compute()
        with open(f"{out_dir}/{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_every_rank_computes_the_global_value(tmp_path):
    mp.spawn(_rank_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    want = _compute(slice(0, 40))
    want["ra"] = 1.5
    for rank in range(WORLD):
        got = json.loads((tmp_path / f"{rank}.json").read_text())
        assert got.keys() == want.keys()
        for name in want:
            assert got[name] == pytest.approx(want[name], rel=1e-6), (rank, name)  # loss_fn is float32
