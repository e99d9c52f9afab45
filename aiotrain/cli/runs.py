"""``aiotrain runs``: list, show, plot and export tracked runs.

    aiotrain runs ls [--project P] [--dir ROOT]
    aiotrain runs show RUN [--dir ROOT]
    aiotrain runs plot RUN --metric M [-o FILE.png] [--dir ROOT]
    aiotrain runs export RUN --tensorboard DIR [--dir ROOT]

RUN is a run folder, a run id, ``PROJECT/ID`` or a run name (the newest of that name). ROOT
defaults to ``$AIOTRAIN_DIR`` or ``./.aiotrain``. Exit codes follow :mod:`aiotrain.errors`: a
mistake (unknown run, missing metric, bad option or name) prints one line to stderr and exits 2;
an OS error (unreadable or unwritable files) exits 1.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from ..errors import ExitCode, UserError
from .command import Parser, run_command

__all__ = ["main"]


def _parser() -> Parser:
    parser = Parser(prog="aiotrain runs", description="list, show, plot and export tracked runs")
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("ls", help="list runs")
    ls.add_argument("--project", help="only this project")
    show = sub.add_parser("show", help="a run's metadata, config and summary")
    show.add_argument("run")
    plot = sub.add_parser("plot", help="plot one metric against steps (matplotlib)")
    plot.add_argument("run")
    plot.add_argument("--metric", required=True)
    plot.add_argument("-o", "--output", help="PNG file (default: RUNID_METRIC.png)")
    export = sub.add_parser("export", help="write a run's history as TensorBoard event files")
    export.add_argument("run")
    export.add_argument("--tensorboard", required=True, metavar="DIR")
    for p in (ls, show, plot, export):
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


def _root(args: argparse.Namespace) -> Path:
    from ..tracking.store import get_dir

    return Path(args.dir) if args.dir else get_dir()


def _find(args: argparse.Namespace) -> Any:
    from ..tracking.reader import find_run

    return find_run(args.run, _root(args))


def _when(ts: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if isinstance(ts, int | float) else "-"


def _cmd_ls(args: argparse.Namespace) -> int:
    from ..tracking.reader import list_runs
    from ..tracking.store import check_name

    if args.project is not None:
        check_name("project", args.project)
    runs = list_runs(args.project, _root(args))
    rows = [("ID", "PROJECT", "NAME", "STATUS", "CREATED", "TAGS")]
    rows += [(r.id, r.project, r.name, r.status, _when(r.created_at), ",".join(r.tags)) for r in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _brief(value: Any) -> Any:
    """Summaries hold histograms and image records; show them as one word."""
    if isinstance(value, dict) and "_type" in value:
        return f"<{value['_type']}>"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _cmd_show(args: argparse.Namespace) -> int:
    from ..config import sdn
    from ..tracking.store import encode_nonfinite

    record = _find(args)
    meta = record.metadata
    info = {"id": record.id, "name": record.name, "project": record.project, "status": record.status,
            "dir": str(record.dir), "created": _when(meta.get("created_at")),
            "finished": _when(meta.get("finished_at")), "tags": record.tags, "notes": meta.get("notes", "")}
    if meta.get("error"):
        info["error"] = meta["error"]
    doc = {"run": info, "config": record.config,
           "summary": {k: _brief(v) for k, v in record.summary.items()}}
    print(sdn.dumps(encode_nonfinite(doc), extra_depth=1), end="")  # the config sits one level down
    return 0


def _scalar_points(record: Any, metric: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    seen: set[str] = set()
    for entry in record.history():
        seen.update(entry)
        value = entry.get(metric)
        if isinstance(value, int | float) and not isinstance(value, bool):
            steps.append(entry["step"])
            values.append(float(value))
    if not steps:
        known = sorted(k for k in seen if k not in ("step", "timestamp"))
        raise LookupError(f"run {record.id} has no scalar metric {metric!r}; it has: {', '.join(known) or 'none'}")
    return steps, values


def _cmd_plot(args: argparse.Namespace) -> int:
    from ..tracking.media import safe_filename

    record = _find(args)
    steps, values = _scalar_points(record, args.metric)
    out = Path(args.output or f"{record.id}_{safe_filename(args.metric)}.png")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        ax.plot(steps, values)
        ax.set_xlabel("step")
        ax.set_ylabel(args.metric)
        ax.set_title(f"{record.project}/{record.name}")
        ax.grid(True, alpha=0.3)
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)
    print(out)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ..tracking.export import export_tensorboard

    record = _find(args)
    counts = export_tensorboard(record, Path(args.tensorboard))
    print(f"wrote {counts['scalars']} scalars, {counts['histograms']} histograms, "
          f"{counts['images']} images to {args.tensorboard}")
    return 0


_COMMANDS = {"ls": _cmd_ls, "show": _cmd_show, "plot": _cmd_plot, "export": _cmd_export}
