"""``aiotrain train CONFIG.sdn [--mode=...] [--resume] [key=value ...]``.

Exit codes: 0 trained (or check_only passed), 1 validation errors, 2 usage or config errors,
130 interrupted (Ctrl-C: the step in flight finishes, pending checkpoint writes are flushed, the
tracked run is marked, then the process exits).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from ..config import Conf, ConfigError
from ..validation import ValidationMode

USAGE_ERROR, INTERRUPTED = 2, 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aiotrain train", description=__doc__.splitlines()[0])
    p.add_argument("config", help="the SDN config file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, SDN values")
    p.add_argument("--mode", default=ValidationMode.TRAIN_ONLY.value,
                   choices=[m.value for m in ValidationMode], help="validation mode")
    p.add_argument("--resume", action="store_true", help="resume from the latest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def load_config(path: str, overrides: list[str]) -> object:
    """Load ``path``, merge the dotlist overrides and resolve interpolations."""
    cfg = Conf.load_sdn(path)
    if overrides:
        cfg = Conf.merge(cfg, Conf.from_cli_dotlist(overrides))
    return Conf.resolve(cfg)


def main(argv: list[str]) -> int:
    """Run the command; returns the exit code."""
    args = _parser().parse_intermixed_args(argv)
    from ..job import TrainJob  # heavy imports after argument errors are out of the way
    from ..runtime import run

    try:
        cfg = load_config(args.config, args.overrides)
        job = TrainJob(cfg, mode=args.mode, resume=args.resume, progress=not args.no_progress)
    except (ConfigError, OSError) as exc:
        return _fail(args.config, exc)

    async def go() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, task.cancel)
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            result = await job.run()
            if result.state is not None:
                shown = "  ".join(f"val/{k}={float(v):.4f}" for k, v in result.metrics.items())
                print(f"done: epoch {result.state.epoch}, iteration {result.state.iteration}  {shown}")
            if result.run_dir:
                print(f"dashboard: aiotrain runs serve --dir {Path(result.run_dir).parents[2]}")
            return result.exit_code
        except asyncio.CancelledError:
            print("interrupted: pending checkpoint writes flushed; run marked", file=sys.stderr)
            return INTERRUPTED
        except ConfigError as exc:
            return _fail(args.config, exc)
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)

    return run(go())


def _fail(path: str, exc: BaseException) -> int:
    """One line on stderr: ``FILE:LINE:COL: message`` where the error has a position."""
    line, col = getattr(exc, "line", None), getattr(exc, "col", None)
    where = f"{getattr(exc, 'path', None) or path}:{line}:{col}: " if line else f"{path}: "
    message = getattr(exc, "msg", None) or str(exc)
    print(f"aiotrain train: {where}{message}", file=sys.stderr)
    return USAGE_ERROR
