"""``aiotrain train CONFIG.sdn [--mode=...] [--resume [RUN]] [--force] [key=value ...]``.

Exit codes (:mod:`aiotrain.errors`): 0 trained (or check_only passed), 1 validation errors or a
failed run (a non-finite loss or score under ``train.on_nan = stop``), 2 usage or config errors
(one line, ``FILE:LINE:COL:`` when the key is written in the config file), 130 interrupted
(Ctrl-C or SIGTERM: the step in flight finishes, a final ``last`` checkpoint is written at that
point, the run is marked, and the message says how to continue).
"""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import sys
from pathlib import Path

from ..config import Conf, Config, ConfigError
from ..config.overrides import OverrideError, apply_overrides, override_of
from ..config.sdn import SdnDocument
from ..errors import ExitCode, UserError
from ..validation import ValidationMode
from .command import Parser, run_command


def _parser() -> Parser:
    p = Parser(prog="aiotrain train", description="train a model from an SDN config")
    p.add_argument("config", help="the SDN config file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, SDN values")
    p.add_argument("--mode", default=ValidationMode.TRAIN_ONLY.value,
                   choices=[m.value for m in ValidationMode], help="validation mode")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN",
                   help="continue the newest run of the project (or RUN, an id or name)")
    p.add_argument("--force", action="store_true",
                   help="resume even though the config differs from the run's")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (there is none without the progress extra)")
    return p


def load_config(path: str, overrides: list[str]) -> Config:
    """Load ``path``, merge the dotlist overrides (each must change a value the file sets, or a
    key of the runtime's sections, to one of its kind: OverrideError) and resolve."""
    from ..job.settings import RUNTIME_KEYS

    cfg = Conf.load_sdn(path)
    if overrides:
        cfg = apply_overrides(cfg, overrides, source=path, free=RUNTIME_KEYS)
    return Conf.resolve(cfg)


def _has_rich() -> bool:
    """Whether the progress bar can be drawn: without rich (the ``progress`` extra) the epoch
    lines the job prints are the progress shown."""
    return importlib.util.find_spec("rich") is not None


def main(argv: list[str]) -> int:
    """Run the command; returns the exit code (:mod:`aiotrain.errors`)."""
    return run_command("aiotrain train", lambda: _train(argv))


def _train(argv: list[str]) -> int:
    args = _parser().parse_intermixed_args(argv)
    if isinstance(args.resume, str) and "=" in args.resume:  # `--resume key=value`: an override
        args.overrides.insert(0, args.resume)
        args.resume = True
    from ..distributed import is_main
    from ..job import TrainJob  # heavy imports after argument errors are out of the way
    from ..runtime import run

    try:
        cfg = load_config(args.config, args.overrides)
        job = TrainJob(cfg, mode=args.mode, resume=args.resume, force=args.force,
                       progress=not args.no_progress and _has_rich())
    except OSError as exc:
        raise UserError.from_os(exc, args.config) from None
    except ConfigError as exc:
        raise _user_error(exc, args.config, args.overrides) from None

    async def go() -> int:
        task = asyncio.current_task()
        assert task is not None  # go() runs as the main task of run()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, task.cancel)
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            result = await job.run()
            if not is_main():  # under torchrun, rank 0 alone reports (the job echoes likewise)
                return result.exit_code
            if result.state is not None:
                shown = "  ".join(f"val/{k}={float(v):.4f}" for k, v in result.metrics.items())
                print(f"{result.status}: epoch {result.state.epoch}, iteration "
                      f"{result.state.iteration}  {shown}".rstrip())
            if result.run_dir:
                print(f"dashboard: aiotrain runs serve --dir {Path(result.run_dir).parents[2]}")
            return result.exit_code
        except asyncio.CancelledError:
            where = (f"checkpoint {job.stop_checkpoint}; continue with: aiotrain train "
                     f"{args.config} --resume {job.identity.id}"
                     if job.stop_checkpoint is not None and job.identity is not None
                     else "no checkpoint written")
            if is_main():  # rank 0 writes the stop checkpoint, and says where it is
                print(f"interrupted: {where}", file=sys.stderr)
            return ExitCode.INTERRUPTED
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        return run(go())
    except ConfigError as exc:
        raise _user_error(exc, args.config, args.overrides) from None


def _user_error(exc: ConfigError, path: str, overrides: list[str]) -> UserError:
    """The user error for a config error: naming the override that set the key, else placed at
    the key's line when the file sets it; a task's failure keeps its exit code and frames."""
    from ..job.task import TaskError

    item = override_of(exc.full_key, overrides)
    if isinstance(exc, OverrideError):
        err = UserError(exc.msg)
    elif item is not None:
        err = UserError(f"override {item!r}: {exc.msg}")
    else:
        err = UserError.from_config(exc, path)
        if err.line is None and err.file == path and exc.full_key:
            err.line, err.col = _locate(path, exc.full_key) or (None, None)
        if isinstance(exc, TaskError) and exc.path is None and err.line is None:
            err.file = None  # about the task's code or its files, not a place in the config
    if isinstance(exc, TaskError):
        err.code = exc.exit_code
        err.detail = f"your code (most recent call last):\n{exc.frames}" if exc.frames else ""
    return err


def _locate(path: str, key: str) -> tuple[int, int] | None:
    """Line and column of ``key`` in the config file, when the file sets it."""
    try:
        with open(path, "rb") as f:
            return SdnDocument(f.read()).position(key)
    except (OSError, ConfigError):
        return None
