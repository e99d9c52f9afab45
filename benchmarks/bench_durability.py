"""Tracking's loss window: records lost when a process logging 10 000 records/s is SIGKILLed.

For each ``flush_interval`` setting, a child process (``tests/tracking/scripts/log_storm.py``)
logs ``{"i": i}`` at ``--rate`` records a second and counts, in a shared mapping the kernel
keeps, how many ``log`` calls have returned. After ``--seconds`` the parent SIGKILLs it and
counts the records in metrics.jsonl: lost = returned - written, also in seconds of records.
The promise under test: lost <= flush_interval seconds of records (0: nothing at all). The
cost of each setting is measured in-process: microseconds per ``log`` call of two scalars on
the caller's thread. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STORM = REPO / "tests" / "tracking" / "scripts" / "log_storm.py"


def kill_storm(tmp: Path, interval: float, rate: float, seconds: float) -> dict:
    counter = tmp / f"counter-{interval}"
    counter.write_bytes(bytes(8))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(STORM), str(tmp / f"root-{interval}"), str(counter),
                             "--interval", str(interval), "--rate", str(rate)],
                            stdout=subprocess.PIPE, text=True, env=env)
    metrics = Path(proc.stdout.readline().strip()) / "metrics.jsonl"
    time.sleep(seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    returned = struct.unpack("<q", counter.read_bytes())[0]
    written = metrics.read_bytes().count(b"\n") if metrics.exists() else 0
    lost = max(returned - written, 0)
    return {"flush_interval_s": interval, "logged": returned, "written": written, "lost": lost,
            "lost_s_of_records": round(lost / rate, 3), "within_window": lost <= rate * interval}


def cost_per_call(tmp: Path, interval: float, n: int) -> float:
    from aiotrain.tracking import Track

    run = Track.run("cost", dir=tmp / "cost", flush_interval=interval)
    log = run.log
    t0 = time.perf_counter()
    for i in range(n):
        log({"train/loss": 1.0 / (i + 1), "lr": 0.001})
    us = (time.perf_counter() - t0) / n * 1e6
    run.finish()
    return round(us, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=10_000, help="records per second")
    parser.add_argument("--seconds", type=float, default=3.0, help="logging time before the kill")
    parser.add_argument("--intervals", type=float, nargs="*", default=[1.0, 0.25, 0.0])
    parser.add_argument("--calls", type=int, default=100_000, help="log calls for the cost figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-durability-") as tmp:
        kills = [kill_storm(Path(tmp), i, args.rate, args.seconds) for i in args.intervals]
        cost = {str(i): cost_per_call(Path(tmp), i, args.calls) for i in args.intervals}
    emit("durability", rate_per_s=args.rate, kills=kills, us_per_log_call=cost,
         all_within_window=all(k["within_window"] for k in kills),
         load_avg_1m=round(os.getloadavg()[0], 2))


if __name__ == "__main__":
    main()
