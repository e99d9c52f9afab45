"""``aiotrain runs``: list, show, compare, plot, export, delete and serve tracked runs.

    aiotrain runs ls [--project P] [--columns K,K] [--filter EXPR]... [--sort=[-]KEY] [--dir ROOT]
    aiotrain runs show RUN [--history N|all] [--metric M]... [--dir ROOT]
    aiotrain runs compare RUN RUN... [--all] [--dir ROOT]
    aiotrain runs plot RUN... --metric M [--metric M]... [--x step|time] [-o FILE.png] [--dir ROOT]
    aiotrain runs export RUN... (--tensorboard DIR | --mlflow URI) [--dir ROOT]
    aiotrain runs rm RUN... [--yes] [--dir ROOT]
    aiotrain runs serve [--dir ROOT] [--host 127.0.0.1] [--port 8765]

RUN is a run folder, a run id, ``PROJECT/ID`` or a run name (refused, with the candidates listed,
when several runs have it). ROOT defaults to ``$AIOTRAIN_DIR`` or ``./.aiotrain``. Keys in
``--columns``, ``--filter`` and ``--sort`` are run fields (status, tags, duration, ...),
``config.DOTTED.KEY`` or summary metric names (see ``aiotrain.tracking.query``); ``ls`` shows each
run's HOST (the machine that wrote it: runs from several machines can share one folder); a key that no
run has is refused with the closest keys the runs do have, since its column or filter could only
ever be empty. ``show`` prints the run's metadata, config and summary as SDN, then its metric
history as a table, one row per step, like W&B's ``run.history()`` (``--history N`` rows spread
evenly over the run, first and last kept; ``all`` every step; 0 none). Every command reads
through :mod:`aiotrain.tracking.read`, so a run's summary is the same here and in the dashboard.
Exit codes
follow :mod:`aiotrain.errors`: a mistake (unknown run, missing metric, bad option or name)
prints one line to stderr and exits 2; an OS error (unreadable or unwritable files) exits 1;
Ctrl-C (which is how ``serve`` stops) exits 130.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ..errors import ExitCode, UserError
from .command import Parser, run_command

if TYPE_CHECKING:
    import numpy as np

    from ..tracking.read import RunReader, RunRecord

__all__ = ["main"]

T = TypeVar("T")


def _parser() -> Parser:
    parser = Parser(prog="aiotrain runs", description="list, show, compare, plot, export, delete and serve runs")
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("ls", help="list runs (with chosen columns, filtered and sorted)")
    ls.add_argument("--project", help="only this project")
    ls.add_argument("--columns", default="", help="extra columns: config.KEY or metric names, comma-separated")
    ls.add_argument("--filter", action="append", default=[], metavar="EXPR",
                    help="KEY OP VALUE, OP one of = != < <= > >= ~ (repeatable: all must hold)")
    ls.add_argument("--sort", metavar="[-]KEY", help="sort by KEY; --sort=-KEY: descending")
    show = sub.add_parser("show", help="a run's metadata, config, summary and metric history")
    show.add_argument("run")
    show.add_argument("--history", default="10", metavar="N|all",
                      help="history rows to print, spread over the run (default 10; all: every step; 0: none)")
    show.add_argument("--metric", action="append", default=[], metavar="M",
                      help="history columns (repeatable; default: every scalar metric, up to 12)")
    compare = sub.add_parser("compare", help="config differences and summaries of runs side by side")
    compare.add_argument("runs", nargs="+", metavar="RUN")
    compare.add_argument("--all", action="store_true", help="also the config keys that are the same")
    plot = sub.add_parser("plot", help="plot metrics of one or more runs in one figure (matplotlib)")
    plot.add_argument("runs", nargs="+", metavar="RUN")
    plot.add_argument("--metric", action="append", required=True, help="a scalar metric (repeatable)")
    plot.add_argument("--x", choices=("step", "time"), default="step", help="x axis: step or wall time")
    plot.add_argument("-o", "--output", help="PNG file (default: IDS_METRICS.png)")
    export = sub.add_parser("export", help="write runs as TensorBoard event files or into MLflow")
    export.add_argument("runs", nargs="+", metavar="RUN")
    target = export.add_mutually_exclusive_group(required=True)
    target.add_argument("--tensorboard", metavar="DIR", help="one folder per run under DIR, with hparams")
    target.add_argument("--mlflow", metavar="URI", help="an MLflow tracking URI (e.g. sqlite:///mlflow.db)")
    sync = sub.add_parser("sync", help="send what runs have not yet sent to their MLflow server")
    sync.add_argument("runs", nargs="+", metavar="RUN")
    sync.add_argument("--mlflow", metavar="URI", help="that server (default: each one a run mirrors to "
                      "and has not finished sending to)")
    rm = sub.add_parser("rm", help="delete runs (their folders)")
    rm.add_argument("runs", nargs="+", metavar="RUN")
    rm.add_argument("-y", "--yes", action="store_true", help="really delete (without it: only list)")
    serve = sub.add_parser("serve", help="the web dashboard (live charts, comparison, artifacts)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    serve.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                       help="another Host name the dashboard answers to (repeat; e.g. behind a proxy)")
    for p in (ls, show, compare, plot, export, sync, rm, serve):
        p.add_argument("--dir", help="tracking root (default: $AIOTRAIN_DIR or ./.aiotrain)")
    return parser


def main(argv: list[str]) -> int:
    """Run ``aiotrain runs ...``; returns the exit code (:mod:`aiotrain.errors`)."""
    return run_command("aiotrain runs", lambda: _run(argv))


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except LookupError as exc:  # an unknown run or metric: the message is the first argument
        raise UserError(_first_line(str(exc.args[0]) if exc.args else "")) from None
    except ValueError as exc:  # a bad name
        raise UserError(_first_line(str(exc))) from None
    except OSError as exc:
        raise UserError.from_os(exc, doing="cannot read or write", code=ExitCode.FAILED) from None


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else "invalid argument"


def _reader(args: argparse.Namespace) -> RunReader:
    from ..tracking.read import RunReader

    return RunReader(args.dir or None)


def _find_all(args: argparse.Namespace) -> list[RunRecord]:
    reader = _reader(args)
    records = [reader.find(ref) for ref in args.runs]
    seen: set[Path] = set()
    for r in records:
        if r.dir in seen:
            raise UserError(f"aiotrain runs: run {r.project}/{r.id} is named twice")
        seen.add(r.dir)
    return records


def _when(ts: object) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if isinstance(ts, int | float) else "-"


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _cmd_ls(args: argparse.Namespace) -> int:
    from ..tracking.read import check_name

    reader = _reader(args)
    filters = list(args.filter)
    if args.project is not None:
        check_name("project", args.project)
        filters.append(f"project={args.project}")
    columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    every = reader.rows()
    rows = reader.select(every, filters, args.sort, check=True)
    reader.check_keys(every, columns)
    table = [("ID", "PROJECT", "NAME", "HOST", "STATUS", "CREATED", "TAGS", *(c.upper() for c in columns))]
    for r in rows:
        f = r.fields()
        table.append((f["id"], f["project"], f["name"], f["host"] or "-", f["status"], _when(f["created"]),
                      ",".join(f["tags"]),
                      *(_duration(reader.value(r, c)) if c == "duration" else _cell(reader.value(r, c))
                        for c in columns)))
    _print_table(table)
    return 0


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _brief(value: object) -> object:
    """Summaries hold histograms and image records; show them as one word."""
    if isinstance(value, dict) and "_type" in value:
        return f"<{value['_type']}>"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _cmd_show(args: argparse.Namespace) -> int:
    from ..config import sdn
    from ..tracking.read import encode_nonfinite

    rows = _history_rows(args.history)
    record = _reader(args).find(args.run)
    meta = record.metadata
    info = {"id": record.id, "name": record.name, "project": record.project, "status": record.status,
            "host": record.host, "dir": str(record.dir), "created": _when(meta.get("created_at")),
            "finished": _when(meta.get("finished_at")), "tags": record.tags, "notes": meta.get("notes", "")}
    if meta.get("error"):
        info["error"] = meta["error"]
    doc = {"run": info, "config": record.config,
           "summary": {k: _brief(v) for k, v in record.summary.items()}}
    print(sdn.dumps(encode_nonfinite(doc), extra_depth=1), end="")  # the config sits one level down
    if not record.summary_final:
        print("# summary: the last logged values, read from metrics.jsonl (the run did not finish after it "
              "last logged; run.summary updates made since its last finish were not written)")
    if rows != 0:
        _print_history(record, rows, args.metric)
    return 0


_HISTORY_KEYS = 12  # columns `show` prints when no --metric names them


def _history_rows(text: str) -> int | None:
    """``--history``: a number of rows >= 0, or ``all`` (None)."""
    if text == "all":
        return None
    if text.isdigit():
        return int(text)
    raise UserError(f"aiotrain runs show: --history takes a number of rows or 'all', not {text!r}")


def _print_history(record: RunRecord, rows: int | None, metrics: list[str]) -> None:
    from ..tracking.read import step_rows

    history = step_rows(record.dir, keys=metrics or None)
    missing = [m for m in metrics if m not in history.keys]
    if missing:
        raise LookupError(f"run {record.id} has no scalar metric {missing[0]!r} in its history")
    keys = history.keys if metrics else history.keys[:_HISTORY_KEYS]
    steps = history.rows
    shown = steps if rows is None else _spread(steps, rows)
    print(f"\n# history: {len(steps)} steps", end="")
    if steps:
        print(f" ({steps[0][0]}..{steps[-1][0]}), {len(shown)} shown"
              + ("" if len(shown) == len(steps) else " (--history all: every step)"), end="")
    if len(keys) < len(history.keys):
        print(f"; {len(keys)} of {len(history.keys)} metrics (--metric M: choose)", end="")
    print()
    if shown and keys:
        _print_table([("STEP", *keys), *((str(step), *(_cell(values.get(k)) for k in keys)) for step, values in shown)])


def _spread(items: list[T], n: int) -> list[T]:
    """At most ``n`` of ``items``, evenly spread, the first and the last kept."""
    if len(items) <= n:
        return items
    if n == 1:
        return items[-1:]
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def _cmd_compare(args: argparse.Namespace) -> int:
    from ..tracking.read import flatten

    records = _find_all(args)
    if len(records) < 2:
        raise UserError("aiotrain runs compare: give at least two runs")
    configs = [flatten(r.config) for r in records]
    head = ("KEY", *(f"{r.name} ({r.id})" for r in records))
    keys = list(dict.fromkeys(k for c in configs for k in c))
    differ = [k for k in keys if len({repr(c.get(k, "<unset>")) for c in configs}) > 1]
    shown = keys if args.all else differ
    print(f"config: {len(differ)} of {len(keys)} keys differ" + ("" if args.all else " (--all: every key)"))
    if shown:
        _print_table([head, *((f"config.{k}", *(_cell(c.get(k)) if k in c else "<unset>" for c in configs))
                              for k in shown)])
    summaries = [{k: _brief(v) for k, v in r.summary.items()} for r in records]
    metrics = sorted({k for s in summaries for k in s})
    print(f"\nsummary: {len(metrics)} metrics")
    if metrics:
        _print_table([head, *((k, *(_cell(s.get(k)) for s in summaries)) for k in metrics)])
    return 0


def _points(reader: RunReader, record: RunRecord, metric: str, x: str) -> tuple[np.ndarray, np.ndarray]:
    from ..tracking.read import history_of

    series = reader.history(record.dir, history_of(metric))
    column = series.column(metric)
    if column is None:
        known = series.keys()
        raise LookupError(f"run {record.id} has no scalar metric {metric!r}; it has: {', '.join(known) or 'none'}")
    return (column.step if x == "step" else column.time - record.created_at), column.value


def _cmd_plot(args: argparse.Namespace) -> int:
    from ..tracking.media import safe_filename

    records = _find_all(args)
    reader = _reader(args)
    data = {(r.dir, m): _points(reader, r, m, args.x) for r in records for m in args.metric}
    default = "_".join(r.id for r in records) + "_" + "_".join(args.metric)
    out = Path(args.output or f"{safe_filename(default)[:120]}.png")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(args.metric)
    fig, axes = plt.subplots(n, 1, figsize=(8, 3.2 * n), squeeze=False, sharex=True)
    try:
        for ax, metric in zip(axes[:, 0], args.metric, strict=True):
            for r in records:
                xs, ys = data[r.dir, metric]
                ax.plot(xs, ys, label=f"{r.name} ({r.id})" if len(records) > 1 else None)
            ax.set_ylabel(metric)
            ax.grid(True, alpha=0.3)
            if len(records) > 1:
                ax.legend(fontsize="small")
        axes[-1, 0].set_xlabel("step" if args.x == "step" else "seconds since start")
        title = f"{records[0].project}/{records[0].name}" if len(records) == 1 else f"{len(records)} runs"
        axes[0, 0].set_title(title)
        fig.tight_layout()
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)
    print(out)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ..tracking.export import export_mlflow, export_tensorboard, tensorboard_folder

    records = _find_all(args)
    for record in records:
        name = f"{record.project}/{record.id}"
        if args.tensorboard:
            folder = Path(args.tensorboard) / tensorboard_folder(record)
            counts = export_tensorboard(record, folder)
            print(f"{name}: {counts['scalars']} scalars, {counts['histograms']} histograms, "
                  f"{counts['images']} images, hparams -> {folder}")
        else:
            result = export_mlflow(record, args.mlflow)
            if result["skipped"]:
                print(f"{name}: already in {args.mlflow} as MLflow run {result['run_id']}; skipped")
            else:
                print(f"{name}: {result['params']} params, {result['metrics']} metric values, "
                      f"{result['artifacts']} artifact files -> MLflow run {result['run_id']}")
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    from ..tracking.mlflow_sink import RunFacts, pending_uris, sync_run

    for record in _find_all(args):
        name = f"{record.project}/{record.id}"
        uris = [args.mlflow] if args.mlflow else pending_uris(record.dir)
        if not uris:
            print(f"{name}: nothing left to send")
        for uri in uris:
            try:
                result = sync_run(RunFacts.of_record(record), uri, record.status)
            except Exception as exc:  # the server's or the client's error: one line, the run stays
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise UserError(f"{name}: MLflow at {uri} failed: {first}; nothing was lost, "
                                "run 'aiotrain runs sync' again", code=ExitCode.FAILED) from None
            print(f"{name}: {'complete already' if result.skipped else 'sent'} -> MLflow run "
                  f"{result.run_id} at {uri}")
    return 0


def _cmd_rm(args: argparse.Namespace) -> int:
    import secrets
    import shutil

    records = _find_all(args)
    for r in records:
        if r.status == "running":
            pid = r.metadata.get("pid")
            raise UserError(f"aiotrain runs rm: run {r.project}/{r.id} is still running (pid {pid}); "
                              "stop it first")
    if not args.yes:
        for r in records:
            print(f"would delete {r.project}/{r.id} ({r.name}, {r.status}): {r.dir}")
        raise UserError("aiotrain runs rm: nothing deleted; pass --yes to delete these runs")
    trash = _reader(args).root / ".trash"
    trash.mkdir(parents=True, exist_ok=True)
    for r in records:
        # out of runs/ in one rename, so no reader ever sees half a run; then removed
        target = trash / f"{r.project}-{r.id}-{secrets.token_hex(4)}"
        r.dir.rename(target)
        shutil.rmtree(target)
        print(f"deleted {r.project}/{r.id} ({r.name})")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from ..dashboard.server import serve
    from ..runtime import run

    def ready(url: str) -> None:
        print(f"dashboard on {url}  (Ctrl-C stops it)", flush=True)
        if "?token=" in url:
            print("reachable from the network: every request needs the token in this URL "
                  "(shown only now; the browser keeps it in a cookie)", flush=True)

    run(serve(_reader(args).root, args.host, args.port, on_ready=ready, allowed_hosts=args.allow_host))
    return 0


_COMMANDS = {"ls": _cmd_ls, "show": _cmd_show, "compare": _cmd_compare, "plot": _cmd_plot, "export": _cmd_export,
             "sync": _cmd_sync, "rm": _cmd_rm, "serve": _cmd_serve}
