"""``make compat``: pytorch-ignite's own engine, event, state-dict and handler tests against aiotrain.

Downloads the sdist of the installed pytorch-ignite version (its ``tests/`` folder; nothing of it
is kept in this repository), runs the chosen test files with the ``ignite_shim`` plugin, and
prints one line per file: passed / total, and the group totals against their targets.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

GROUPS = {
    "engine/events/state-dict (target 85%)": (0.85, [
        "engine/test_engine.py", "engine/test_custom_events.py",
        "engine/test_event_handlers.py", "engine/test_engine_state_dict.py"]),
    "EarlyStopping, Checkpoint, Timer, TerminateOnNan (target 90%)": (0.90, [
        "handlers/test_early_stopping.py", "handlers/test_checkpoint.py",
        "handlers/test_timing.py", "handlers/test_terminate_on_nan.py"]),
    "other handlers (no target)": (0.0, ["handlers/test_tqdm_logger.py"]),
}
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def fetch_sdist(dest: Path) -> Path:
    version = importlib.metadata.version("pytorch-ignite")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:",
                    "--no-deps", f"pytorch-ignite=={version}", "-d", str(dest)], check=True)
    archive = next(dest.glob("pytorch*ignite-*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return next(p for p in dest.iterdir() if p.is_dir() and (p / "tests" / "ignite").is_dir())


def run_file(root: Path, rel: str) -> tuple[int, int, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(HERE), str(REPO)]),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "--tb=no", "-p", "ignite_shim", "-p",
           "no:cacheprovider", "--timeout=60", "-m",
           "not distributed and not multinode_distributed and not tpu",
           f"tests/ignite/{rel}"]
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True).stdout
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|error|errors)", out)}
    passed = counts.get("passed", 0)
    failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    failures = "\n".join(line for line in out.splitlines() if line.startswith(("FAILED", "ERROR")))
    return passed, passed + failed, failures


def main() -> int:
    verbose = "-v" in sys.argv
    ok = True
    with tempfile.TemporaryDirectory(prefix="aiotrain-compat-") as tmp:
        root = fetch_sdist(Path(tmp))
        print(f"| Ignite {root.name.split('-')[-1]} test file | passed / run |\n|---|---|")
        summary = []
        for group, (target, files) in GROUPS.items():
            g_pass = g_total = 0
            for rel in files:
                passed, total, failures = run_file(root, rel)
                g_pass, g_total = g_pass + passed, g_total + total
                print(f"| {rel} | {passed} / {total} |", flush=True)
                if verbose and failures:
                    print(failures)
            share = g_pass / g_total if g_total else 0.0
            met = share >= target
            ok &= met
            summary.append(f"| **{group}** | {g_pass} / {g_total} = {share:.0%}"
                           f"{'' if not target else (' (met)' if met else ' (NOT met)')} |")
        print("\n".join(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
