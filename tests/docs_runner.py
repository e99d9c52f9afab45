"""Runs the code blocks of README.md and docs/*.md as written, for tests/test_docs.py.

``python tests/docs_runner.py SANDBOX PLAN RESULTS``: PLAN is a JSON list of blocks (as
:func:`parse` returns them, skipped ones left out); each block's outcome is appended to RESULTS
as one JSON line the moment it is known, so a runner that is stopped still reports what it ran.

A block is run as a reader would run it, in one folder (SANDBOX, the working directory):
shell blocks line by line with bash (``aiotrain`` and ``.venv/bin/...`` are this interpreter's
venv), Python blocks in this process (top-level ``await`` allowed, on one event loop), SDN
blocks parsed. What a block assumes but does not show (a model, a data file, a stopped run)
comes from a hidden fixture named in an HTML comment right above the block:

    <!-- doctest: setup=NAME[,NAME] -->      run the fixtures NAME (see SETUPS) first
    <!-- doctest: continue -->               Python: reuse the previous Python block's names
    <!-- doctest: file=PATH -->              write the block to PATH (and still check SDN)
    <!-- doctest: raises=NAME -->            Python: the block ends raising exception NAME
    <!-- doctest: skip-line=TEXT: REASON --> shell: leave out the lines that contain TEXT
    <!-- doctest: skip: REASON -->           not run at all (tests/test_docs.py reports why)

The sandbox holds a copy of examples/ whose configs train for 2 epochs instead of their
documented length (the commands stay as written), and ``.venv`` pointing at this venv.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
KINDS = {"sh": "shell", "bash": "shell", "shell": "shell", "console": "shell",
         "python": "python", "py": "python", "sdn": "sdn"}
COMMAND_WORDS = ("aiotrain ", ".venv/", "python ", "torchrun ", "curl ", "make ")
BLOCK_TIMEOUT = 300  # seconds for one Python block or one shell command
EPOCHS = 2  # what the sandbox's copies of the example configs train for


@dataclass
class Block:
    """One fenced code block and its doctest directives."""

    file: str
    line: int
    kind: str  # shell, python, sdn, or "" for an untagged block
    body: str
    setup: list[str] = field(default_factory=list)
    cont: bool = False
    target: str | None = None
    raises: str | None = None
    skip: str | None = None
    skip_lines: list[tuple[str, str]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def looks_runnable(self) -> bool:
        """An untagged block that holds commands (it should say it is ``sh``, or be skipped)."""
        return any(ln.strip().startswith(COMMAND_WORDS) for ln in self.body.splitlines())


_DIRECTIVE = re.compile(r"^\s*<!--\s*doctest:\s*(.*?)\s*-->\s*$")


def parse(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with the directives written above each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^\s*```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith("```"):
            end += 1
        name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
        block = Block(name, i + 1, KINDS.get(m.group(1), m.group(1)),
                      "\n".join(lines[i + 1:end]) + "\n")
        j = i - 1
        while j >= 0 and _DIRECTIVE.match(lines[j]):
            _directive(block, _DIRECTIVE.match(lines[j]).group(1))  # type: ignore[union-attr]
            j -= 1
        blocks.append(block)
        i = end + 1
    return blocks


def _directive(block: Block, text: str) -> None:
    name, _, value = text.partition("=") if "=" in text.split(":")[0] else text.partition(":")
    name, value = name.strip(), value.strip()
    if name == "setup":
        block.setup[:0] = [s.strip() for s in value.split(",") if s.strip()]
    elif name == "continue":
        block.cont = True
    elif name == "file":
        block.target = value
    elif name == "raises":
        block.raises = value
    elif name == "skip":
        block.skip = value
    elif name == "skip-line":
        pattern, _, reason = value.partition(":")
        block.skip_lines.append((pattern.strip(), reason.strip()))
    else:
        raise ValueError(f"{block.id}: unknown doctest directive {text!r}")


# --------------------------------------------------------------------------- hidden fixtures

SETUPS: dict[str, str] = {
    # the Engine tour (README, docs/engine.md): a small classifier, its data and an evaluator
    "engine": """
import asyncio, torch
from torch import nn
from aiotrain import AsyncLoader, Engine
from aiotrain.metrics import Accuracy
torch.manual_seed(0)
_x = torch.randn(256, 8)
train_ds = list(zip(_x, (_x.sum(1) > 0).long()))
model = nn.Linear(8, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loss_fn = nn.CrossEntropyLoss()
val_loader = AsyncLoader(train_ds[:64], 32)
def _eval_step(engine, batch):
    x, y = batch
    with torch.no_grad():
        return model(x), y
evaluator = Engine(_eval_step)
evaluator.add_metrics({"accuracy": Accuracy()})
queue = asyncio.Queue()
""",
    # a run in progress to observe (the stream ends with it)
    "observe": """
import asyncio, time
from aiotrain import Engine, Events
trainer = Engine(lambda engine, batch: time.sleep(0.005))
_run = asyncio.get_running_loop().create_task(trainer.run(range(100), max_epochs=2))
await asyncio.sleep(0)
""",
    # the CPU stage: images, a crop drawing from its generator, a trainer
    "stage": """
import torch
from aiotrain import AsyncLoader, Engine
def random_crop(image, gen):
    i, j = torch.randint(0, 3, (2,), generator=gen).tolist()
    return image[:, i:i + 6, j:j + 6]
ds = [(torch.rand(3, 8, 8), i % 10) for i in range(128)]
trainer = Engine(lambda engine, batch: None)
""",
    # data files for CacheManager
    "cache-files": """
import torch
for _name, _size in (("train.bin", 784 * 4 * 16), ("vocab.bin", 4096), ("labels.bin", 64)):
    with open(_name, "wb") as _f:
        _f.write(bytes(_size))
files = ["train.bin", "vocab.bin", "labels.bin"]
""",
    # two shards of int32 records for MmapDataset
    "shards": """
import numpy as np, torch
from aiotrain import AsyncLoader, MmapDataset
for _i, _name in enumerate(("shard0.bin", "shard1.bin")):
    np.full((8, 2048), _i, dtype=np.int32).tofile(_name)
""",
    # a byte-level BPE tokenizer (GPT-2's files: vocab.json, merges.txt) and a model to build
    "tokenizer": """
import torch
from aiotrain import AsyncLoader, Engine, TokenizerCache
from aiotrain.runtime import to_compute
from examples.lm import write_tokenizer
from pathlib import Path
write_tokenizer(Path("."))
async def _build():
    return torch.nn.Linear(4, 4)
def build_model():
    return torch.nn.Linear(4, 4)
""",
    # tokenization in the loader's workers: texts, an encoding transform, an engine
    "tokenizer-workers": """
texts = [f"hello world {i}" for i in range(64)]
def encode(text, gen):
    ids = tc.encode(text)[:8]
    return torch.tensor(ids + [0] * (8 - len(ids)))
engine = Engine(lambda e, batch: None)
""",
    "async-build-model": """
build_model = _build
""",
    # a dataset to construct loaders over
    "dataset": """
import torch
dataset = [(torch.randn(4), i % 2) for i in range(64)]
""",
    # Checkpoint: a model, its optimizer and schedule, a step, a dataset, an evaluator
    "checkpoint": """
import torch
from torch import nn
from aiotrain import Engine
model = nn.Linear(4, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 5)
dataset = [(torch.randn(4), i % 2) for i in range(64)]
def train_step(engine, batch):
    x, y = batch
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return {"loss": loss.item()}
evaluator = Engine(lambda engine, batch: None)
""",
    # what a training loop that tracks has at hand
    "tracking": """
import torch
from aiotrain.tracking import Track
loss, lr = 0.25, 1e-3
model = torch.nn.Module()
model.fc = torch.nn.Linear(4, 2)
images = torch.rand(2, 3, 8, 8)
""",
    "tracking-handler": """
from aiotrain import Engine, Events
from aiotrain.tracking import Track
run = Track.run("mnist")
trainer = Engine(lambda engine, batch: {"loss": 0.5})
evaluator = Engine(lambda engine, batch: None)
""",
    "artifacts": """
import os, torch
from aiotrain.tracking import Track
os.makedirs("data", exist_ok=True)
with open("data/rows.txt", "w") as _f:
    _f.write("1\\n2\\n")
torch.save({"w": torch.zeros(2)}, "model.pt")
""",
    # what a sweep's training function reads
    "sweep": """
val_loss = 0.5
def train(config, run):
    run.log({"val/loss": config["lr"] * 10 + config["dropout"]})
""",
    "aiohttp-app": """
from aiohttp import web
app = web.Application()
""",
    # a TrainJob's config (the digits example, short) and its listeners
    "job": """
import asyncio
from aiotrain import Events
from aiotrain.cli.train import load_config
from aiotrain.job import TrainJob
cfg = load_config("examples/digits.sdn", ["train.max_epochs=1"])
log = []
class MyPart:
    def attach(self, ctx):
        ctx.trainer.add_event_handler(Events.COMPLETED, lambda engine: log.append("done"))
def report(epoch, score, metrics):
    log.append((epoch, score))
""",
    # shell: a JSON file to convert
    "run-json": """
import json
with open("run.json", "w") as _f:
    json.dump({"id": "abc", "config": {"lr": 0.001, "layers": [2, 4]}}, _f)
""",
    # shell: the demo's run, stopped with Ctrl-C after its first epoch (what --resume continues)
    "demo-stopped": """
import os, signal, subprocess, sys
_p = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "aiotrain"), "train",
                       "examples/digits.sdn", "--no-progress"], stdout=subprocess.PIPE,
                      stderr=subprocess.STDOUT, text=True, env=ENV)
for _line in _p.stdout:
    if _line.startswith("epoch 1:"):
        _p.send_signal(signal.SIGINT)
        break
_out = _p.communicate(timeout=120)[0]
assert _p.returncode == 130, _out
""",
}


# --------------------------------------------------------------------------- running

def fresh_environment() -> dict[str, str]:
    """This environment less what would make the docs' runs differ from a fresh machine's: a
    tracking root, or an MLflow server to mirror to (``mlflow.set_tracking_uri``, which Ignite's
    MLflowLogger calls, sets ``MLFLOW_TRACKING_URI`` for the whole process)."""
    return {k: v for k, v in os.environ.items() if k not in ("AIOTRAIN_DIR", "MLFLOW_TRACKING_URI")}


def prepare(sandbox: Path) -> dict[str, str]:
    """The sandbox (examples/ copied with short configs, .venv) and the environment to run in."""
    from aiotrain.config.sdn import SdnDocument

    shutil.copytree(ROOT / "examples", sandbox / "examples",
                    ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    for cfg in (sandbox / "examples").glob("*.sdn"):
        doc = SdnDocument(cfg.read_text())
        if "max_epochs" in doc.data.get("train", {}):
            doc.set("train.max_epochs", EPOCHS)
            cfg.write_text(str(doc))
    venv = sandbox / ".venv"
    if not venv.exists():
        venv.symlink_to(Path(sys.prefix))
    env = fresh_environment()
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join([str(sandbox), str(ROOT)]), PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS="1")
    return env


class Runner:
    """Runs blocks in order in one sandbox; Python blocks share this process and one loop."""

    def __init__(self, sandbox: Path, env: dict[str, str]) -> None:
        self.sandbox, self.env = sandbox, env
        self.ns: dict[str, Any] = {}
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)

    def run(self, block: Block) -> str | None:
        """None when the block ran as written, else what went wrong."""
        if block.target is not None:
            target = self.sandbox / block.target
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.body)
        if block.kind == "sdn":
            from aiotrain.config import sdn

            sdn.loads(block.body)
            return None
        if block.target is not None:
            return None
        fixtures = {"ENV": self.env} if block.kind == "shell" else (self.ns if block.cont else {})
        if block.kind == "python":
            self.ns = fixtures
        for name in block.setup:
            self._python(SETUPS[name], fixtures, f"{block.id} setup {name}")
        if block.kind == "shell":
            return self._shell(block)
        try:
            self._python(block.body, fixtures, block.id)
        except Exception as exc:
            if block.raises and type(exc).__name__ == block.raises:
                return None
            raise
        return f"expected {block.raises}, nothing was raised" if block.raises else None

    def _python(self, source: str, ns: dict[str, Any], name: str) -> None:
        ns.setdefault("__name__", "__docs__")
        code = compile(source, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
        signal.alarm(BLOCK_TIMEOUT)
        try:
            if code.co_flags & inspect.CO_COROUTINE:
                self.loop.run_until_complete(eval(code, ns))
            else:
                exec(code, ns)
        finally:
            signal.alarm(0)

    def _shell(self, block: Block) -> str | None:
        for command in _commands(block.body):
            if any(pattern in command for pattern, _ in block.skip_lines):
                continue
            command = command.replace("<run-id>", self._newest_run())
            try:
                r = subprocess.run(["bash", "-c", command], cwd=self.sandbox, env=self.env,
                                   capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
            except subprocess.TimeoutExpired:
                return f"{command!r} did not end within {BLOCK_TIMEOUT} s"
            if r.returncode != 0:
                return f"{command!r} exited {r.returncode}:\n{(r.stdout + r.stderr)[-3000:]}"
        return None

    def _newest_run(self) -> str:
        runs = sorted((self.sandbox / ".aiotrain" / "runs").glob("*/*/metadata.sdn"),
                      key=lambda p: p.stat().st_mtime_ns)
        return runs[-1].parent.name if runs else "<run-id>"


def _commands(body: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, blank and comment lines out."""
    out: list[str] = []
    pending = ""
    for line in body.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        command = (pending + line).strip()
        pending = ""
        if command and not command.startswith("#"):
            out.append(command)
    return out


def _timeout(signum: int, frame: Any) -> None:
    raise TimeoutError(f"the block ran longer than {BLOCK_TIMEOUT} s")


def docstring_examples(report: Any) -> None:
    """Run the examples (``>>>``) in the docstrings of every aiotrain module; report each."""
    import doctest
    import importlib
    import pkgutil

    import aiotrain

    finder = doctest.DocTestFinder(exclude_empty=True)
    for info in pkgutil.walk_packages(aiotrain.__path__, "aiotrain."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for test in finder.find(module):
            if not test.examples or not test.name.startswith(info.name):
                continue
            out: list[str] = []
            runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
            signal.alarm(BLOCK_TIMEOUT)
            try:
                result = runner.run(test, out=out.append, clear_globs=True)
            finally:
                signal.alarm(0)
            report(f"docstring:{test.name}", None if not result.failed else "".join(out)[-3000:])


def main(sandbox: Path, plan: Path, results: Path) -> None:
    os.chdir(sandbox)
    sys.path[:0] = [str(sandbox), str(ROOT)]
    signal.signal(signal.SIGALRM, _timeout)
    env = prepare(sandbox)
    runner = Runner(sandbox, env)
    with results.open("a", encoding="utf-8") as out:
        def report(block_id: str, error: str | None) -> None:
            out.write(json.dumps({"id": block_id, "error": error}) + "\n")
            out.flush()

        todo = json.loads(plan.read_text())
        for item in todo["blocks"]:
            block = Block(**{**item, "skip_lines": [tuple(x) for x in item["skip_lines"]]})
            try:
                error = runner.run(block)
            except BaseException as exc:  # noqa: BLE001 - every failure is reported, then on
                error = "".join(traceback.format_exception(exc))[-3000:]
            report(block.id, error)
        try:
            if todo["docstrings"]:
                docstring_examples(report)
        except BaseException as exc:  # noqa: BLE001
            report("docstring:*", "".join(traceback.format_exception(exc))[-3000:])
    # a block may leave a thread or a child behind: do not let the interpreter wait for it
    watchdog = threading.Timer(30, os._exit, (0,))
    watchdog.daemon = True
    watchdog.start()


def plan_of(blocks: list[Block], docstrings: bool = True) -> str:
    """What ``main`` runs: the blocks in order, then (``docstrings``) aiotrain's doctests."""
    return json.dumps({"blocks": [asdict(b) for b in blocks], "docstrings": docstrings})


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
