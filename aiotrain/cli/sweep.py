"""``aiotrain sweep CONFIG.sdn --trials N [--parallel K] [--method grid|random|bayes] key=SPEC ...``.

Each ``key=SPEC`` is a distribution (``loguniform(1e-4,1e-1)``, ``uniform(a,b)``,
``intuniform(a,b)``, ``normal(mu,sigma)``, ``choice(32,64,128)``), a Hydra-multirun list
(``a=1,2,3``: a choice, one grid axis) or a plain value (a fixed override). The table of trials
is redrawn as they start, report and end (one line per change when stdout is not a terminal),
then the best config is printed. ``--resume ID`` continues a sweep after a crash or kill -9.

``--storage URL --study NAME`` shares the sweep through an Optuna storage (``sqlite:///x.db``,
``postgresql+psycopg://...``, ``journal:///shared/x.log``): run the same command on any number
of machines (later ones may leave out the key=SPEC parameters: the study has them) and they run
one sweep together; ``--trials`` counts for the whole study (see ``aiotrain/sweeps/study.py``).

Exit codes: 0 the sweep ran and has a best trial, 1 every trial failed, 2 usage or config
errors, 130 interrupted (Ctrl-C: trials in flight flush their checkpoints; resume with --resume).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import TextIO

from ..config import ConfigError
from ..errors import ExitCode, UserError
from ..sweeps.record import SweepRecord, TrialRecord
from ..sweeps.space import Distribution, parse_parameter, unflatten
from ..sweeps.sweep import GOALS, METHODS
from .command import Parser, run_command
from .signals import cancel_on_signals


def _parser() -> Parser:
    p = Parser(prog="aiotrain sweep", description="search hyperparameters: trials of a config")
    p.add_argument("config", nargs="?", help="the SDN config file of one trial")
    p.add_argument("params", nargs="*", metavar="key=SPEC", help="distributions, a,b,c lists or fixed values")
    p.add_argument("--trials", type=int, help="how many trials (default for grid: the whole grid)")
    p.add_argument("--parallel", type=int, default=1, help="trials at a time, each in its own process")
    p.add_argument("--method", default="random", choices=METHODS)
    p.add_argument("--metric", default="accuracy", help="an evaluated metric (default: accuracy)")
    p.add_argument("--goal", default="maximize", choices=GOALS)
    p.add_argument("--prune", choices=("median", "hyperband"), help="stop poor trials early")
    p.add_argument("--seed", type=int, default=0, help="the search's seed (random and bayes)")
    p.add_argument("--in-process", action="store_true", help="run trials in this process (one at a time)")
    p.add_argument("--resume", metavar="ID", help="continue the sweep ID after a crash")
    p.add_argument("--dir", help="the tracking root (default: $AIOTRAIN_DIR or ./.aiotrain)")
    p.add_argument("--storage", metavar="URL", help="share the sweep through this Optuna storage")
    p.add_argument("--study", metavar="NAME", help="the shared sweep's name in --storage")
    p.add_argument("--retries", type=int, default=1,
                   help="shared: runs of a trial whose worker died (0: move on to a new trial)")
    p.add_argument("--heartbeat-timeout", type=float, default=60.0, metavar="S",
                   help="shared: a worker silent this long has died (same host: known at once)")
    return p


def main(argv: list[str]) -> int:
    """Run the command; returns the exit code (:mod:`aiotrain.errors`)."""
    from ..runtime import discard_prestarted_job_server

    try:
        return run_command("aiotrain sweep", lambda: _sweep(argv))
    finally:  # a sweep refused before its first trial leaves no job server behind
        discard_prestarted_job_server()


def _sweep(argv: list[str]) -> int:
    args = _parser().parse_intermixed_args(argv)
    if args.resume is None and args.config is None:
        raise UserError("give a CONFIG.sdn (or --resume ID)")
    if (args.storage is None) != (args.study is None):
        raise UserError("a shared sweep needs both --storage URL and --study NAME")
    if args.storage is not None and args.resume is not None:
        raise UserError("a shared sweep needs no --resume: run the same command again to join it")
    from ..runtime import prestart_job_server, run

    if not args.in_process:  # trials fork from a warm job server: it imports while we do
        from ..sweeps.parallel import idle_threads_yield

        idle_threads_yield(args.parallel)  # before the server loads torch's OpenMP
        prestart_job_server(["aiotrain.job.isolation"])
    from ..sweeps.runner import SweepRunner
    from ..sweeps.sweep import Sweep

    table = LiveTable(sys.stdout)
    runner: SweepRunner | None = None
    try:
        if not args.resume:
            space, fixed = split_params(args.params)
            if args.dir:
                fixed.append(f"tracking.dir={args.dir}")
            if not space and args.storage is not None:
                from ..sweeps.study import stored_sweep

                sweep = stored_sweep(args.storage, args.study)
            elif not space:
                raise ValueError("nothing to search: give at least one key=SPEC with a distribution "
                                 "or a list (e.g. optim.lr=loguniform(1e-4,1e-1) model.channels=8,16)")
            else:
                sweep = Sweep.define(args.method, {"name": args.metric, "goal": args.goal}, space,
                                     seed=args.seed, id=args.study,
                                     early_terminate={"type": args.prune} if args.prune else None)
            runner = SweepRunner(sweep, args.config, fixed, trials=args.trials, parallel=args.parallel,
                                 isolate=not args.in_process, on_update=table.update,
                                 storage=args.storage, study=args.study, retries=args.retries,
                                 heartbeat_timeout=args.heartbeat_timeout)
    except (ValueError, ImportError) as exc:
        raise UserError(str(exc), file=args.config) from None

    async def go() -> int:
        nonlocal runner
        try:
            with cancel_on_signals():
                if runner is None:
                    root = args.dir or os.environ.get("AIOTRAIN_DIR") or ".aiotrain"
                    runner = await SweepRunner.aresume(args.resume, root, on_update=table.update,
                                                      parallel=args.parallel if args.parallel > 1 else None)
                record = await runner.run()
        except asyncio.CancelledError:
            sid = runner.sweep.id if runner is not None else args.resume
            print(f"interrupted: trials in flight flushed their checkpoints; continue with "
                  f"aiotrain sweep --resume {sid}", file=sys.stderr)
            return ExitCode.INTERRUPTED
        except ConfigError as exc:
            raise UserError.from_config(exc, args.config) from None
        except (ValueError, LookupError, RuntimeError, ImportError, OSError) as exc:
            raise UserError(str(exc), file=args.config) from None
        table.finish(record)
        return ExitCode.OK if record.best else ExitCode.FAILED

    return run(go())


def split_params(items: list[str]) -> tuple[dict[str, object], list[str]]:
    """``key=SPEC`` arguments -> (the search space, nested; the fixed ``key=value`` overrides)."""
    space: dict[str, object] = {}
    fixed: list[str] = []
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{item!r} is not key=SPEC")
        try:
            param = parse_parameter(text)
        except ValueError as exc:
            raise ValueError(f"{key.strip()}: {exc}") from None
        if isinstance(param, Distribution):
            space[key.strip()] = param
        else:
            fixed.append(item)
    return unflatten(space), fixed


class LiveTable:
    """The trials as a table: redrawn in place on a terminal, one line per change otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._drawn = 0
        self._seen: dict[int, tuple[str, int]] = {}

    def update(self, record: SweepRecord) -> None:
        if self.tty:
            lines = render(record)
            up = f"\x1b[{self._drawn}F\x1b[J" if self._drawn else ""
            self.out.write(up + "\n".join(lines) + "\n")
            self._drawn = len(lines)
        else:
            for t in record.trials:
                key = (t.status, len(t.intermediate))
                if self._seen.get(t.number) != key:
                    self._seen[t.number] = key
                    self.out.write(_row(t, _keys(record)) + "\n")
        self.out.flush()

    def finish(self, record: SweepRecord) -> None:
        if not self.tty:
            self.out.write("\n".join(render(record)) + "\n")
        best = record.best
        if best:
            params = "  ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())
            self.out.write(f"best: trial {best.number}  {record.metric['name']}="
                           f"{_fmt(best.value)}  {params}\n")
        else:
            self.out.write("best: none (every trial failed; see the error column)\n")
        self.out.flush()


def render(record: SweepRecord) -> list[str]:
    """The sweep's table as lines: a header, one row per trial."""
    trials = record.trials
    counts = {s: sum(t.status == s for t in trials) for s in ("running", "finished", "pruned", "crashed")}
    wanted = record.trials_wanted or "grid"
    head = (f"sweep {record.id}  {record.method}  {record.metric['name']} "
            f"({record.metric['goal']})  {len(trials)}/{wanted} trials  "
            + "  ".join(f"{n} {s}" for s, n in counts.items() if n))
    keys = _keys(record)
    cols = ["#", "status", record.metric["name"], "epochs", *keys]
    lines = [head, "  ".join(f"{c:>10}" if i > 1 else f"{c:<9}" for i, c in enumerate(cols))]
    lines += [_row(t, keys) for t in trials]
    return lines


def _row(t: TrialRecord, keys: list[str]) -> str:
    """One trial: its cells, then its error (a crash) or its note (a restart), if any."""
    value = t.value if t.value is not None else (t.intermediate[-1][1] if t.intermediate else None)
    cells = [str(t.number), t.status, _fmt(value), str(len(t.intermediate)),
             *(_fmt(t.params.get(k)) for k in keys)]
    row = "  ".join(f"{c:>10}" if i > 1 else f"{c:<9}" for i, c in enumerate(cells))
    if t.error:
        return f"{row}  error: {t.error}"
    return f"{row}  ({t.note})" if t.note else row


def _keys(record: SweepRecord) -> list[str]:
    """The searched parameters (the record holds their text form; fixed ones have no call)."""
    return [k for k, v in record.parameters.items() if isinstance(parse_parameter(v), Distribution)]


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
