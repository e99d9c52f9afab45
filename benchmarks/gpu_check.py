"""`make gpu-check`: every CUDA path's tests and the GPU benchmarks, in one run, one JSON line.

The CUDA paths (pinned staging and side-stream copies of checkpoints, non-blocking batch
transfer, fp16 with a GradScaler, CUDA validation, GPU system metrics through nvidia-ml-py) are
skip-guarded on machines without a GPU. This script runs them where there is one, in about two
minutes:

1. ``pytest -m cuda``: every test marked ``@pytest.mark.cuda`` (tests/conftest.py skips them
   without a GPU); counts of passed, failed and skipped, and the failures' names.
2. Benchmarks on the GPU, each beside its own baseline in the same run:
   - ``transfer``: host-to-device GB/s from pinned vs pageable memory, and how much of a copy a
     ``non_blocking`` transfer hides behind a kernel.
   - ``overlap``: a real CUDA step (matmuls, ~``--step-ms``) fed by ``AsyncLoader(device="cuda")``
     from a dataset with per-item latency, vs the same steps on data already on the GPU
     (``efficiency``: 1.0 means loading costs the step nothing).
   - ``checkpoint``: ``Checkpoint`` of a ~``--params-m`` M-parameter model on the GPU behind
     CUDA steps (device -> pinned copies), the step time added per save, vs a blocking
     ``torch.save`` of the same state (``pause_vs_blocking``).

``--dry-run`` runs the same code on the CPU with tiny sizes (what ``make test`` checks, so the
script does not rot on machines that never see a GPU). Exit status: 0 when every CUDA test passed,
1 when one failed, 2 when there is no CUDA device (and not ``--dry-run``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_cuda_tests(timeout: float) -> dict:
    """``pytest -m cuda`` in a subprocess: counts and failed test ids."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
               f"--junitxml={xml}", "tests"]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if not xml.exists():
            return {"error": (proc.stdout + proc.stderr)[-2000:]}
        suite = ET.parse(xml).getroot().find("testsuite")
        assert suite is not None
        failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
                  if case.find("failure") is not None or case.find("error") is not None]
        total, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
        return {"total": total, "passed": total - skipped - len(failed), "failed": failed,
                "skipped": skipped}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_transfer(device: torch.device, mb: int) -> dict:
    """H2D bandwidth from pinned and pageable memory; a non-blocking copy beside a kernel."""
    n = mb * 2**20 // 4
    pageable = torch.randn(n)
    pinned = pageable.pin_memory() if device.type == "cuda" else pageable
    out: dict = {"mb": mb}
    for name, src in (("pinned", pinned), ("pageable", pageable)):
        src.to(device)
        _sync(device)
        start = time.perf_counter()
        for _ in range(5):
            src.to(device, non_blocking=name == "pinned")
        _sync(device)
        out[f"{name}_gb_s"] = round(5 * mb / 1024 / (time.perf_counter() - start), 2)
    a = torch.randn(2048, 2048, device=device)
    start = time.perf_counter()
    for _ in range(10):
        a = a @ a / 2048
    _sync(device)
    kernel_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(10):
        a = a @ a / 2048
    pinned.to(device, non_blocking=True)
    _sync(device)
    both_s = time.perf_counter() - start
    copy_s = mb / 1024 / out["pinned_gb_s"]
    out["copy_hidden"] = round(max(0.0, min(1.0, 1 - (both_s - kernel_s) / copy_s)), 3) if copy_s else None
    return out


class _Slow:
    """A map-style dataset whose items each take ``latency`` seconds to arrive (an object store)."""

    def __init__(self, n: int, latency: float, dim: int) -> None:
        self.n, self.latency, self.dim = n, latency, dim

    def __len__(self) -> int:
        return self.n

    async def aget(self, i: int) -> torch.Tensor:
        await asyncio.sleep(self.latency)
        return torch.full((self.dim,), float(i))


def bench_overlap(device: torch.device, steps: int, step_ms: float, dim: int) -> dict:
    """A CUDA step fed by AsyncLoader(device=...) vs the same steps on resident data."""
    from aiotrain import AsyncLoader, Engine

    weight = torch.randn(dim, dim, device=device) / dim**0.5
    reps = _calibrate(device, weight, step_ms)

    def step(engine: Engine, batch: torch.Tensor) -> None:
        x = batch
        for _ in range(reps):
            x = torch.tanh(x @ weight)
        _sync(device)

    resident = [torch.randn(64, dim, device=device) for _ in range(steps)]
    start = time.perf_counter()
    Engine(step, device=device).run_sync(resident)
    alone_s = time.perf_counter() - start
    loader = AsyncLoader(_Slow(steps * 64, 0.005, dim), 64, device=device, concurrency=256, prefetch=4)
    start = time.perf_counter()
    Engine(step, device=device).run_sync(loader)
    fed_s = time.perf_counter() - start
    return {"steps": steps, "step_ms": round(alone_s / steps * 1e3, 2),
            "fed_step_ms": round(fed_s / steps * 1e3, 2), "efficiency": round(alone_s / fed_s, 3)}


def _calibrate(device: torch.device, weight: torch.Tensor, step_ms: float) -> int:
    x = torch.randn(64, weight.shape[0], device=device)
    _sync(device)
    start = time.perf_counter()
    for _ in range(20):
        x = torch.tanh(x @ weight)
    _sync(device)
    per = (time.perf_counter() - start) / 20
    return max(1, round(step_ms / 1e3 / per))


def bench_checkpoint(device: torch.device, params_m: float, saves: int, tmp: Path) -> dict:
    """Step time added per save: aiotrain's Checkpoint vs a blocking torch.save of the state."""
    from aiotrain import Engine, Events
    from aiotrain.handlers import Checkpoint

    width = int((params_m * 1e6 / 4) ** 0.5)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(4)]).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    x = torch.randn(32, width, device=device)

    def step(engine: Engine, batch: object) -> None:
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        _sync(device)

    def blocking(engine: Engine) -> None:
        path = tmp / "blocking.pt"
        with open(path, "wb") as f:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, f)
            f.flush()
            os.fsync(f.fileno())

    def timed(handler: object | None, every: int, n: int) -> list[float]:
        times: list[float] = []
        engine = Engine(step, device=device)
        engine.add_event_handler(Events.ITERATION_STARTED, lambda e: times.append(time.perf_counter()))
        if handler is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=every), handler)
        engine.run_sync(range(n))
        return [b - a for a, b in zip(times, times[1:], strict=False)]

    every, n = 4, saves * 4 + 1
    base = statistics.median(timed(None, every, n))
    out: dict = {"params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
                 "step_ms": round(base * 1e3, 2)}
    ckpt = Checkpoint({"model": model, "optimizer": opt}, tmp / "ckpt", n_saved=1)
    for name, handler in (("aiotrain", ckpt), ("blocking", blocking)):
        gaps = timed(handler, every, n)
        added = [g - base for i, g in enumerate(gaps) if (i + 1) % every == 0]
        out[f"{name}_pause_ms"] = round(statistics.fmean(added[1:] or added) * 1e3, 2)
    out["pause_vs_blocking"] = round(out["aiotrain_pause_ms"] / out["blocking_pause_ms"], 3) \
        if out["blocking_pause_ms"] > 0 else None
    staged = [b for b in ckpt._staging._buffers.values()]
    out["staging_pinned"] = bool(staged) and all(b.is_pinned() for b in staged) if device.type == "cuda" else None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="the same code on the CPU, tiny sizes")
    ap.add_argument("--params-m", type=float, default=25.0, help="checkpointed model size (M params)")
    ap.add_argument("--step-ms", type=float, default=10.0)
    args = ap.parse_args()
    started = time.perf_counter()
    if not torch.cuda.is_available() and not args.dry_run:
        print(json.dumps({"bench": "gpu_check", "cuda": False,
                          "reason": "no CUDA device: torch.cuda.is_available() is False"}))
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    out: dict = {"bench": "gpu_check", "cuda": device.type == "cuda", "torch": torch.__version__,
                 "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (dry run)"}
    if not args.dry_run:
        out["tests"] = run_cuda_tests(timeout=240)
    small = args.dry_run
    out["transfer"] = bench_transfer(device, mb=4 if small else 256)
    out["overlap"] = bench_overlap(device, steps=4 if small else 60, step_ms=1.0 if small else args.step_ms,
                                   dim=64 if small else 2048)
    with tempfile.TemporaryDirectory() as tmp:
        out["checkpoint"] = bench_checkpoint(device, 0.05 if small else args.params_m,
                                             saves=2 if small else 10, tmp=Path(tmp))
    out["elapsed_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out), flush=True)
    tests = out.get("tests", {})
    return 1 if tests.get("failed") or "error" in tests else 0


if __name__ == "__main__":
    sys.exit(main())
