"""Time to the first training step: model set-up and a large tokenizer load, one after the other
vs overlapped with TokenizerCache.

Model set-up is real CPU work on a ComputeWorker (building and orthogonally initialising an MLP,
about ``--setup-s`` seconds); the tokenizer is a synthetic byte-level BPE (vocab.json +
merges.txt) sized to load in about ``--load-s`` seconds. Both sizes are calibrated at start-up.
torch runs one intra-op thread so the two sides each have one of the (two) cores.

Two set-ups are measured, because the GIL decides how much can overlap: parsing a vocabulary is
GIL-bound (Python loops, and Rust constructors that keep the GIL), so the set-up overlaps with it
only while it runs GIL-free kernels. "wide" (few 1024-wide layers: long QR kernels) is
kernel-bound, as initialising or loading large weights is; "narrow" (many 256-wide layers: many
short ops, each waiting for the GIL; ``--narrow``) is Python-bound and shows the limit.

Sequential: set up, then load, then step. Overlapped: create the TokenizerCache (it starts
loading), set up, ``await wait_ready()``, step. In workers: tokenization is the data pipeline's
job, so the tokenizer loads in AsyncLoader's worker process (``worker_init=tc.load``, started by
``async with loader``) while the main process sets up the model; the first step takes its first
batch of token ids from it. Target: <= 1.1x the longer of the two (plus the step itself), i.e.
>= 30% faster than sequential when the two are equal. CPU seconds per variant and the 1-minute
load average before and after are reported too: wall times only mean something next to them on a
shared machine. Prints one JSON line; the temporary files are removed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import psutil
import torch

from aiotrain.data.loader import AsyncLoader
from aiotrain.data.tokenizer import TokenizerCache, _unicode_to_byte
from aiotrain.runtime import ComputeWorker, run

EMBED_ROWS = 4096
TEXTS = ["the quick brown fox jumps over the lazy dog"] * 8


def write_bpe(folder: str, n_merges: int, seed: int = 0) -> tuple[str, str]:
    """A byte-level BPE vocabulary: the 256 byte symbols plus ``n_merges`` merged tokens."""
    rng = np.random.default_rng(seed)
    base = list(_unicode_to_byte())
    tokens, vocab, merges = list(base), {t: i for i, t in enumerate(base)}, []
    while len(merges) < n_merges:
        a = tokens[int(rng.integers(len(tokens)))]
        b = base[int(rng.integers(len(base)))]
        if a + b in vocab or len(a) > 12:
            continue
        vocab[a + b] = len(tokens)
        tokens.append(a + b)
        merges.append(f"{a} {b}")
    vocab_path, merges_path = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(merges_path, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_path, merges_path


def build_model(layers: int, width: int) -> torch.nn.Module:
    """Model set-up as real CPU work: every Linear orthogonally initialised (a QR each)."""
    torch.manual_seed(0)
    blocks: list[torch.nn.Module] = []
    for _ in range(layers):
        lin = torch.nn.Linear(width, width)
        torch.nn.init.orthogonal_(lin.weight)
        blocks += [lin, torch.nn.ReLU()]
    return torch.nn.Sequential(torch.nn.Embedding(EMBED_ROWS, width), *blocks)


def train_step(model: torch.nn.Module, ids: list[list[int]]) -> float:
    width = max(len(x) for x in ids)
    batch = torch.tensor([x + [0] * (width - len(x)) for x in ids]) % EMBED_ROWS
    loss = model(batch).pow(2).mean()
    loss.backward()
    return float(loss.detach())


async def timed_setup(worker: ComputeWorker, layers: int,
                      width: int) -> tuple[torch.nn.Module, float]:
    t0 = time.perf_counter()
    model = await worker.call(build_model, layers, width)
    return model, time.perf_counter() - t0


async def setup_only(worker: ComputeWorker, layers: int, width: int) -> float:
    return (await timed_setup(worker, layers, width))[1]


async def timed_load(paths: tuple[str, str]) -> float:
    t0 = time.perf_counter()
    await TokenizerCache(*paths).wait_ready()
    return time.perf_counter() - t0


async def first_step(worker: ComputeWorker, layers: int, width: int, paths: tuple[str, str],
                     overlapped: bool) -> float:
    t0 = time.perf_counter()
    if overlapped:
        tc = TokenizerCache(*paths)  # starts loading now, in the background
        model, _ = await timed_setup(worker, layers, width)
        await tc.wait_ready()
    else:
        model, _ = await timed_setup(worker, layers, width)
        tc = await TokenizerCache(*paths).wait_ready()
    ids = [tc.encode(t) for t in TEXTS]
    await worker.call(train_step, model, ids)
    return time.perf_counter() - t0


class Texts:
    """The text items of the first batch (read in the workers)."""

    def __len__(self) -> int:
        return len(TEXTS)

    def __getitem__(self, i: int) -> str:
        return TEXTS[i]


def encoder(tc: TokenizerCache):
    def encode(text: str, gen: torch.Generator) -> torch.Tensor:  # runs in a worker process
        ids = tc.encode(text)[:16]
        return torch.tensor(ids + [0] * (16 - len(ids)))
    return encode


async def first_step_in_workers(worker: ComputeWorker, layers: int, width: int,
                                paths: tuple[str, str]) -> tuple[float, float, float]:
    """Time to first step, this process's CPU time, and the worker's CPU time up to the first
    batch (its start, the load and the batch; not its exit)."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    tc = TokenizerCache(*paths, background=False)
    loader = AsyncLoader(Texts(), len(TEXTS), transform=encoder(tc), workers=1,
                         worker_init=tc.load)
    async with loader:  # opening starts the worker: it loads the tokenizer while we build
        model, _ = await timed_setup(worker, layers, width)
        async for batch in loader:
            times = psutil.Process(loader.worker_pids[0]).cpu_times()
            await worker.call(train_step, model, batch.tolist())
            break
        took, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return took, cpu, times.user + times.system


async def calibrate_layers(worker: ComputeWorker, width: int, setup_s: float) -> int:
    await timed_setup(worker, 1, width)  # warm-up: first-call costs are not set-up work
    probe, t = 1, 0.0
    while t < 0.25 * setup_s:  # grow the probe until it is long enough to time
        probe *= 2
        _, t = await timed_setup(worker, probe, width)
    return max(1, round(probe * setup_s / t))


async def calibrate_bpe(folder: str, load_s: float) -> tuple[tuple[str, str], int]:
    probe = 50_000
    t = await timed_load(write_bpe(folder, probe))
    n_merges = max(1000, round(probe * load_s / t))
    return write_bpe(folder, n_merges), n_merges


async def scenario(worker: ComputeWorker, width: int, paths: tuple[str, str],
                   args: argparse.Namespace) -> dict:
    """Set-up alone, load alone, sequential and overlapped, rounds interleaved; medians."""
    layers = await calibrate_layers(worker, width, args.setup_s)
    runs: dict[str, list[float]] = {"setup_s": [], "load_s": [], "sequential_s": [],
                                    "overlapped_s": [], "in_workers_s": []}
    cpu: dict[str, list[float]] = {"setup_s": [], "load_s": [], "sequential_s": [],
                                   "overlapped_s": [], "in_workers_main_s": [],
                                   "in_workers_worker_s": []}
    for _ in range(args.rounds):
        for name, measure in (
                ("setup_s", lambda: setup_only(worker, layers, width)),
                ("load_s", lambda: timed_load(paths)),
                ("sequential_s", lambda: first_step(worker, layers, width, paths, False)),
                ("overlapped_s", lambda: first_step(worker, layers, width, paths, True))):
            cpu0 = time.process_time()
            runs[name].append(await measure())
            cpu[name].append(time.process_time() - cpu0)
        took, main_cpu, worker_cpu = await first_step_in_workers(worker, layers, width, paths)
        runs["in_workers_s"].append(took)
        cpu["in_workers_main_s"].append(main_cpu)
        cpu["in_workers_worker_s"].append(worker_cpu)
    med = {k: statistics.median(v) for k, v in runs.items()}
    cpu_med = {k: round(statistics.median(v), 3) for k, v in cpu.items()}
    # the step itself is in both timings: the sequential run minus set-up and load
    step = max(0.0, med["sequential_s"] - med["setup_s"] - med["load_s"])
    longer = max(med["setup_s"], med["load_s"]) + step
    return {
        "width": width, "layers": layers, **{k: round(v, 3) for k, v in med.items()},
        "step_s": round(step, 3),
        "overlapped_vs_longer": round(med["overlapped_s"] / longer, 3),
        "sequential_vs_overlapped": round(med["sequential_s"] / med["overlapped_s"], 3),
        "in_workers_vs_longer": round(med["in_workers_s"] / longer, 3),
        "in_workers_faster_than_sequential_pct": round(100 * (1 - med["in_workers_s"]
                                                               / med["sequential_s"]), 1),
        "target_met": med["overlapped_s"] <= 1.1 * longer,
        "target_met_in_workers": med["in_workers_s"] <= 1.1 * longer,
        # CPU seconds (all threads) per variant, and the cores the worker variant kept busy:
        # near 2 when set-up and load really ran side by side, near 1 when other work on the
        # machine left them one core between them
        "cpu": cpu_med,
        "in_workers_cores_used": round((cpu_med["in_workers_main_s"] + cpu_med["in_workers_worker_s"])
                                       / med["in_workers_s"], 2),
        **cpu_critical_path(cpu_med),
    }


def cpu_critical_path(cpu: dict[str, float]) -> dict[str, float]:
    """What two free cores would give the worker variant, from CPU time, which other work on a
    shared machine does not inflate: its critical path (the longer of model set-up and the
    worker's load and first batch, then the step) against the longer set-up plus the step, and
    against sequential."""
    step = max(0.0, cpu["sequential_s"] - cpu["setup_s"] - cpu["load_s"])
    longer = max(cpu["setup_s"], cpu["load_s"]) + step
    main, worker = cpu["in_workers_main_s"], cpu["in_workers_worker_s"]
    main_step = max(0.0, main - cpu["setup_s"])  # what the main process did after its set-up
    critical = max(main, worker + main_step)
    return {"in_workers_cpu_critical_s": round(critical, 3),
            "in_workers_cpu_critical_vs_longer": round(critical / longer, 3),
            "in_workers_cpu_critical_faster_than_sequential_pct":
                round(100 * (1 - critical / cpu["sequential_s"]), 1)}


async def main_async(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="aiotrain-bench-tok-") as folder:
        async with ComputeWorker() as worker:
            paths, n_merges = await calibrate_bpe(folder, args.load_s)
            wide = await scenario(worker, 1024, paths, args)
            narrow = await scenario(worker, 256, paths, args) if args.narrow else None
    return {
        "bench": "tokenizer", "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "rounds": args.rounds, "vocab_size": 256 + n_merges, "merges": n_merges,
        "target_overlapped_vs_longer": 1.1, "wide": wide, "narrow": narrow,
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup-s", type=float, default=1.0, help="model set-up time to aim for")
    ap.add_argument("--load-s", type=float, default=1.0, help="tokenizer load time to aim for")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--narrow", action="store_true", help="also run the Python-bound set-up")
    args = ap.parse_args(argv)
    print(json.dumps(run(main_async(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
