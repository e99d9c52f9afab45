"""``aiotrain train CONFIG.sdn [--mode=...] [--resume [RUN]] [--force] [key=value ...]``.

Exit codes: 0 trained (or check_only passed), 1 validation errors or a failed run (a non-finite
loss or score under ``train.on_nan = stop``), 2 usage or config errors (one line, no traceback),
130 interrupted (Ctrl-C or SIGTERM: the step in flight finishes, a final ``last`` checkpoint is
written at that point, the run is marked, and the message says how to continue).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from ..config import Conf, ConfigError
from ..validation import ValidationMode

USAGE_ERROR, INTERRUPTED = 2, 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aiotrain train", description=__doc__.splitlines()[0])
    p.add_argument("config", help="the SDN config file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, SDN values")
    p.add_argument("--mode", default=ValidationMode.TRAIN_ONLY.value,
                   choices=[m.value for m in ValidationMode], help="validation mode")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN",
                   help="continue the newest run of the project (or RUN, an id or name)")
    p.add_argument("--force", action="store_true",
                   help="resume even though the config differs from the run's")
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
    if isinstance(args.resume, str) and "=" in args.resume:  # `--resume key=value`: an override
        args.overrides.insert(0, args.resume)
        args.resume = True
    from ..job import TrainJob  # heavy imports after argument errors are out of the way
    from ..runtime import run

    try:
        cfg = load_config(args.config, args.overrides)
        job = TrainJob(cfg, mode=args.mode, resume=args.resume, force=args.force,
                       progress=not args.no_progress)
    except (ConfigError, OSError) as exc:
        return _fail(args.config, exc, args.overrides)

    async def go() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, task.cancel)
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            result = await job.run()
            if result.state is not None:
                shown = "  ".join(f"val/{k}={float(v):.4f}" for k, v in result.metrics.items())
                print(f"{result.status}: epoch {result.state.epoch}, iteration "
                      f"{result.state.iteration}  {shown}".rstrip())
            return result.exit_code
        except asyncio.CancelledError:
            where = (f"checkpoint {job.stop_checkpoint}; continue with: aiotrain train "
                     f"{args.config} --resume {job.identity.id}"
                     if job.stop_checkpoint is not None and job.identity is not None
                     else "no checkpoint written")
            print(f"interrupted: {where}", file=sys.stderr)
            return INTERRUPTED
        except ConfigError as exc:
            return _fail(args.config, exc, args.overrides)
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)

    return run(go())


def _fail(path: str, exc: BaseException, overrides: list[str] = ()) -> int:
    """One line on stderr: ``FILE:LINE:COL: message`` where the error has a position, or names
    a key written in the file (not one given as an override)."""
    line, col = getattr(exc, "line", None), getattr(exc, "col", None)
    if line is None:
        line, col = _locate(path, getattr(exc, "full_key", None), overrides) or (None, None)
    where = f"{getattr(exc, 'path', None) or path}:{line}:{col}: " if line else f"{path}: "
    message = getattr(exc, "msg", None) or str(exc)
    print(f"aiotrain train: {where}{message}", file=sys.stderr)
    return USAGE_ERROR


def _locate(path: str, key: str | None, overrides: list[str]) -> tuple[int, int] | None:
    """Line and column of ``key`` in the config file, when the file sets it."""
    if not key or any(o.partition("=")[0].strip() == key for o in overrides):
        return None
    from ..config.sdn import SdnDocument, split_path

    try:
        with open(path, encoding="utf-8") as f:
            entry = SdnDocument(f.read()).entries.get(tuple(split_path(key)))
    except (OSError, ConfigError, ValueError):
        return None
    if entry is None:
        return None
    idx, indent, _ = entry
    return idx + 1, indent + 1
