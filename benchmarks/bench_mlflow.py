"""The live MLflow mirror's cost to training, beside MLflow's own logging, in one run.

A real ``mlflow server`` (sqlite backend) runs on 127.0.0.1. Each variant logs ``--calls`` scalar
records of 4 metrics, one per step of a 2 ms step. The step is a sleep, so it holds no GIL, as a
GPU step would not. Figures per variant:

- ``log_us``: the median and p99 of one logging call, and the mean over all calls;
- ``steps_per_s`` relative to the same loop with no logging (``throughput_vs_none``);
- for the mirror, ``visible_after_finish_s``: from ``finish()`` returning to every value being
  readable from the server (0 when finish already waited for it).

Variants: aiotrain ``run.log`` with no mirror; with the mirror (``mlflow_uri=``); MLflow's
``MlflowClient.log_batch`` per step (synchronous HTTP); ``mlflow.log_metrics(...,
synchronous=False)`` (MLflow's own async logging). One JSON line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import emit  # noqa: E402

from tests.tracking.mlflow_server import MlflowServer  # noqa: E402

STEP_S = 0.002


def _loop(calls: int, log) -> tuple[list[float], float]:
    costs = []
    start = time.perf_counter()
    for step in range(calls):
        time.sleep(STEP_S)
        t0 = time.perf_counter()
        log(step)
        costs.append(time.perf_counter() - t0)
    return costs, calls / (time.perf_counter() - start)


def _figures(costs: list[float], rate: float, base: float) -> dict:
    q = statistics.quantiles(costs, n=100)
    return {"log_us_median": round(statistics.median(costs) * 1e6, 2),
            "log_us_p99": round(q[98] * 1e6, 2), "log_us_mean": round(statistics.fmean(costs) * 1e6, 2),
            "steps_per_s": round(rate, 1), "throughput_vs_none": round(rate / base, 4)}


def _values(step: int) -> dict[str, float]:
    return {"train/loss": 1.0 / (step + 1), "train/acc": step / 1e4, "lr": 0.1, "grad_norm": 1.5}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import mlflow
    from mlflow.tracking import MlflowClient

    from aiotrain import Track
    from aiotrain.tracking.mlflow_sink import MlflowCursor

    tmp = Path(tempfile.mkdtemp(prefix="bench-mlflow-"))
    server = MlflowServer(tmp)
    out: dict = {"calls": args.calls, "step_ms": STEP_S * 1e3, "load_avg": os.getloadavg()[0]}
    try:
        _, base = _loop(args.calls, lambda step: None)
        out["none_steps_per_s"] = round(base, 1)
        for name in ("aiotrain_local", "aiotrain_mirror"):
            if name == "aiotrain_mirror":  # started here: its workers' start-up would share the
                server.start()             # cores with the local variant
                time.sleep(5)
            uri = server.url if name == "aiotrain_mirror" else ""
            with Track.run("bench", dir=tmp / name, mlflow_uri=uri, system_interval=None) as run:
                costs, rate = _loop(args.calls, lambda step: run.log(_values(step), step=step))
                finishing = time.perf_counter()
            out[name] = _figures(costs, rate, base)
            out[name]["finish_s"] = round(time.perf_counter() - finishing, 3)
            if uri:
                cursor = MlflowCursor.load(run.dir, uri)
                history = MlflowClient(tracking_uri=uri).get_metric_history(cursor.run_id, "train/loss")
                out[name]["values_on_server"] = len(history)
        client = MlflowClient(tracking_uri=server.url)
        exp = client.create_experiment("bench-client")
        run_id = client.create_run(exp).info.run_id
        from mlflow.entities import Metric

        costs, rate = _loop(args.calls, lambda step: client.log_batch(run_id, metrics=[
            Metric(k, v, int(time.time() * 1000), step) for k, v in _values(step).items()]))
        out["mlflow_client_sync"] = _figures(costs, rate, base)
        mlflow.set_tracking_uri(server.url)
        mlflow.set_experiment("bench-async")
        with mlflow.start_run():
            costs, rate = _loop(args.calls, lambda step: mlflow.log_metrics(_values(step), step=step,
                                                                               synchronous=False))
            finishing = time.perf_counter()
        out["mlflow_async"] = _figures(costs, rate, base)
        out["mlflow_async"]["finish_s"] = round(time.perf_counter() - finishing, 3)
        out["mirror_log_vs_local"] = round(out["aiotrain_mirror"]["log_us_mean"] / out["aiotrain_local"]["log_us_mean"], 3)
        out["mirror_log_vs_mlflow_async"] = round(out["aiotrain_mirror"]["log_us_mean"] / out["mlflow_async"]["log_us_mean"], 4)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    emit("mlflow", **out)


if __name__ == "__main__":
    main()
