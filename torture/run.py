"""``make torture``: the long fault runs behind docs/reliability.md, one line of counts at the end.

Four parts, each with its own count (``--fuzz``, ``--truncations``, ``--cancels``, ``--kills``;
0 skips a part):

* fuzz: ``--fuzz`` generated configs (``fuzz_configs.py``) read in a worker process; each must
  parse or fail with a ConfigError within ``--input-timeout`` seconds. A worker that overruns
  is killed and the input counted as a hang; a worker that dies is restarted past its input.
* truncations: a data file is truncated in place at a random moment while a MmapDataset /
  CacheManager reader (``truncate_reader.py``) reads it; it must end with a DatasetError naming
  the file, never SIGBUS.
* cancels: the deterministic run of tests/handlers/scripts/resume_train.py is cancelled at a
  random moment; no compute thread may be left, and resuming from its checkpoints must end
  with weights bit-identical to an uninterrupted run.
* kills: the same run as a subprocess, SIGKILLed at random moments (ten per series, checkpoint
  writes included), then run to the end: bit-identical weights again.

Exit status 0 when every count of a failure is zero.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
RESUME_SCRIPT = REPO / "tests" / "handlers" / "scripts" / "resume_train.py"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


# --------------------------------------------------------------------------- fuzzed configs

def fuzz(count: int, timeout: float, seed0: int = 0) -> dict:
    counts = {"inputs": 0, "ok": 0, "error": 0, "wrong": 0, "crash": 0, "hang": 0}
    findings: list[str] = []
    seed, end = seed0, seed0 + count
    while seed < end:
        proc = subprocess.Popen([sys.executable, str(HERE / "fuzz_configs.py"), str(seed), str(end - seed)],
                                stdout=subprocess.PIPE, env=ENV, bufsize=0)
        current, outcome = _follow(proc, timeout, counts, findings)
        if current is not None:  # the worker overran an input's time, or died on it
            proc.kill()
            counts["inputs"] += 1
            counts[outcome] += 1
            findings.append(f"{current}:{outcome}")
            seed = current + 1
        else:
            seed = end
        proc.wait()
        proc.stdout.close()
    if findings:
        print("fuzz findings (seed:outcome):", ", ".join(findings[:20]), file=sys.stderr)
    return counts


def _follow(proc: subprocess.Popen, timeout: float, counts: dict, findings: list) -> tuple[int | None, str]:
    """Read a worker's lines, giving each input ``timeout`` seconds; returns the input it was
    on when it stopped (None: it finished) and ``hang`` or ``crash``."""
    import select

    fd, buf, current, deadline = proc.stdout.fileno(), b"", None, None
    while True:
        while b"\n" not in buf:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and (wait <= 0 or not select.select([fd], [], [], wait)[0]):
                return current, "hang"
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return current, "crash"
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        tag, _, rest = line.decode().partition(" ")
        if tag == ">":
            current, deadline = int(rest), time.monotonic() + timeout
        elif tag == "=":
            s, _, outcome = rest.partition(" ")
            word = outcome.split()[0]
            counts["inputs"] += 1
            counts[word] += 1
            if word in ("crash", "wrong"):
                findings.append(f"{s}:{outcome}")
            current, deadline = None, None


# --------------------------------------------------------------------------- truncations

def truncations(count: int, rng: random.Random) -> dict:
    counts = {"truncations": 0, "named": 0, "sigbus": 0, "unnamed": 0, "other": 0, "unnoticed": 0}
    with tempfile.TemporaryDirectory(prefix="torture-trunc-") as tmp:
        for i in range(count):
            path = Path(tmp) / f"data{i}.bin"
            records = 2048  # 8 MiB of 4 KiB records
            path.write_bytes(os.urandom(records * 4096))
            proc = subprocess.Popen([sys.executable, str(HERE / "truncate_reader.py"), str(path), "3"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
            if proc.stdout.readline().strip() != "ready":
                proc.kill()
                counts["other"] += 1
                print("truncation reader failed to start:", proc.stderr.read()[-300:], file=sys.stderr)
                continue
            time.sleep(rng.uniform(0.0, 0.3))
            os.truncate(path, rng.randrange(0, records // 2) * 4096 + rng.choice([0, 1, 100]))
            out, err = proc.communicate(timeout=120)
            counts["truncations"] += 1
            if proc.returncode == -signal.SIGBUS:
                counts["sigbus"] += 1
            else:
                word = (out.strip().split() or ["other"])[0]
                counts[word if word in counts else "other"] += 1
    return counts


# --------------------------------------------------------------------------- cancels

def _resume_train():
    spec = importlib.util.spec_from_file_location("resume_train", RESUME_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("resume_train", module)
    spec.loader.exec_module(module)
    return module


def cancels(count: int, rng: random.Random) -> dict:
    import torch

    rt = _resume_train()
    counts = {"cancels": 0, "threads_left": 0, "tasks_left": 0, "resumed_identical": 0,
              "resumed_different": 0}

    def compute_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("aiotrain-compute") and t.is_alive()]

    async def main(tmp: Path) -> None:
        ref = rt.build(tmp / "ref")
        await ref.trainer.run(ref.loader, max_epochs=rt.EPOCHS)
        reference = ref.weights()
        for i in range(count):
            run = rt.build(tmp / f"run{i}", step_sleep=0.002)
            task = asyncio.create_task(run.trainer.run(run.loader, max_epochs=rt.EPOCHS))
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            counts["cancels"] += 1
            if compute_threads():
                counts["threads_left"] += 1
            if [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                counts["tasks_left"] += 1  # a prefetch or producer task outlived the run
            resumed = rt.build(tmp / f"run{i}")
            resumed.resume()
            await resumed.trainer.run(resumed.loader, max_epochs=rt.EPOCHS)
            same = all(torch.equal(v, reference[k]) for k, v in resumed.weights().items())
            counts["resumed_identical" if same else "resumed_different"] += 1

    from aiotrain.runtime import run as run_main

    with tempfile.TemporaryDirectory(prefix="torture-cancel-") as tmp:
        run_main(main(Path(tmp)))
    return counts


# --------------------------------------------------------------------------- SIGKILLs

def kills(count: int, rng: random.Random, per_series: int = 10) -> dict:
    import torch

    counts = {"kills": 0, "series": 0, "resumed_identical": 0, "resumed_different": 0, "failed": 0}
    with tempfile.TemporaryDirectory(prefix="torture-kill-") as tmp:
        tmp_path = Path(tmp)

        def launch(folder: Path, out: Path) -> subprocess.Popen:
            return subprocess.Popen([sys.executable, str(RESUME_SCRIPT), str(folder), str(out), "0.015"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)

        ref = launch(tmp_path / "ref", tmp_path / "ref.pt")
        ref.communicate(timeout=600)
        reference = torch.load(tmp_path / "ref.pt")
        series = 0
        while counts["kills"] < count:
            folder, out = tmp_path / f"series{series}", tmp_path / f"series{series}.pt"
            for _ in range(min(per_series, count - counts["kills"])):
                proc = launch(folder, out)
                if not proc.stdout.readline().startswith("start"):
                    counts["failed"] += 1
                    proc.kill()
                    proc.communicate()
                    break
                time.sleep(rng.uniform(0.0, 1.5))
                proc.send_signal(signal.SIGKILL)
                proc.communicate()
                counts["kills"] += 1
            proc = launch(folder, out)
            proc.communicate(timeout=600)
            counts["series"] += 1
            if proc.returncode != 0 or not out.exists():
                counts["failed"] += 1
            else:
                ours = torch.load(out)
                same = ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)
                counts["resumed_identical" if same else "resumed_different"] += 1
            series += 1
    return counts


# --------------------------------------------------------------------------- main

FAILURES = ("wrong", "crash", "hang", "sigbus", "unnamed", "other", "unnoticed", "threads_left",
            "tasks_left", "resumed_different", "failed")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fuzz", type=int, default=100_000)
    p.add_argument("--input-timeout", type=float, default=10.0, help="seconds per fuzzed config")
    p.add_argument("--truncations", type=int, default=100)
    p.add_argument("--cancels", type=int, default=100)
    p.add_argument("--kills", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    t0 = time.monotonic()
    parts: dict[str, dict] = {}
    if args.fuzz:
        parts["fuzz"] = fuzz(args.fuzz, args.input_timeout, args.seed * 10**7)
    if args.truncations:
        parts["truncate"] = truncations(args.truncations, rng)
    if args.cancels:
        parts["cancel"] = cancels(args.cancels, rng)
    if args.kills:
        parts["kill"] = kills(args.kills, rng)
    bad = sum(v for counts in parts.values() for k, v in counts.items() if k in FAILURES)
    line = "; ".join(f"{name}: " + " ".join(f"{k}={v}" for k, v in counts.items())
                     for name, counts in parts.items())
    print(f"torture {'PASS' if not bad else 'FAIL'} ({time.monotonic() - t0:.0f} s) {line}", flush=True)
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
