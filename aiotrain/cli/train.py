"""``aiotrain train CONFIG.sdn [--mode=...] [--resume] [key=value ...]``.

Exit codes (:mod:`aiotrain.errors`): 0 trained (or check_only passed), 1 validation errors,
2 usage or config errors, 130 interrupted (Ctrl-C or SIGTERM: the step in flight finishes, pending
checkpoint writes are flushed, the tracked run is marked, then the process exits).
"""

from __future__ import annotations

import asyncio
import signal
import sys

from ..config import Conf, Config, ConfigError
from ..errors import ExitCode, UserError
from ..validation import ValidationMode
from .command import Parser, run_command


def _parser() -> Parser:
    p = Parser(prog="aiotrain train", description="train a model from an SDN config")
    p.add_argument("config", help="the SDN config file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, SDN values")
    p.add_argument("--mode", default=ValidationMode.TRAIN_ONLY.value,
                   choices=[m.value for m in ValidationMode], help="validation mode")
    p.add_argument("--resume", action="store_true", help="resume from the latest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def load_config(path: str, overrides: list[str]) -> Config:
    """Load ``path``, merge the dotlist overrides and resolve interpolations."""
    cfg = Conf.load_sdn(path)
    if overrides:
        cfg = Conf.merge(cfg, Conf.from_cli_dotlist(overrides))
    return Conf.resolve(cfg)


def main(argv: list[str]) -> int:
    """Run the command; returns the exit code (:mod:`aiotrain.errors`)."""
    return run_command("aiotrain train", lambda: _train(argv))


def _train(argv: list[str]) -> int:
    args = _parser().parse_intermixed_args(argv)
    from ..job import TrainJob  # heavy imports after argument errors are out of the way
    from ..runtime import run

    try:
        cfg = load_config(args.config, args.overrides)
        job = TrainJob(cfg, mode=args.mode, resume=args.resume, progress=not args.no_progress)
    except OSError as exc:
        raise UserError.from_os(exc, args.config) from None
    except ConfigError as exc:  # an override or the task: the config file is the place to look
        raise UserError.from_config(exc, args.config) from None

    async def go() -> int:
        task = asyncio.current_task()
        assert task is not None  # go() runs as the main task of run()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, task.cancel)
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            result = await job.run()
            if result.state is not None:
                shown = "  ".join(f"val/{k}={float(v):.4f}" for k, v in result.metrics.items())
                print(f"done: epoch {result.state.epoch}, iteration {result.state.iteration}  {shown}")
            return result.exit_code
        except asyncio.CancelledError:
            print("interrupted: pending checkpoint writes flushed; run marked", file=sys.stderr)
            return ExitCode.INTERRUPTED
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        return run(go())
    except ConfigError as exc:
        raise UserError.from_config(exc, args.config) from None
