"""The runtime's part of a training config: its schema, strict checking, and the merged config.

The sections ``train``, ``scheduler``, ``checkpoint``, ``tracking`` and ``validation`` (and the
top-level ``task`` and ``seed``) belong to the runtime; every other key is the task's. A top-level
key that neither the runtime nor the task factory reads is an error (:func:`check_top_level`:
``sed: 0`` for ``seed`` would otherwise train with the default seed). Inside the
runtime's sections nothing passes unchecked: an unknown key is an error with a "did you mean"
hint, and a bad value is one line naming the key, the value and what is allowed. Values are
checked strictly (``max_epochs = "3"`` is a string, not 3), because a config that means something
other than what it says is worse than one that stops.

One place to extend: add a field to a section Struct below (``Annotated`` bounds and ``Literal``
choices are described in errors automatically), and a semantic check to ``_CHECKS`` when its
validity depends on the machine (devices, precision).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeGuard, TypeVar

import msgspec

from ..config import Conf, Config, SchemaError

if TYPE_CHECKING:
    import torch

__all__ = ["RUNTIME_KEYS", "CheckpointSection", "SchedulerSection", "TrackingSection",
           "TrainSection", "TrainSettings", "ValidationSection", "check_top_level", "load_settings"]

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
Seed = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]  # torch.manual_seed takes 64 bits
S = TypeVar("S", bound=msgspec.Struct)


class TrainSection(msgspec.Struct, frozen=True):
    """The training loop: length, evaluation, logging, device and numerics."""

    max_epochs: PositiveInt = 10
    eval_every: PositiveInt = 1           # epochs between evaluations
    log_every: PositiveInt = 50           # iterations between logged train scalars
    patience: PositiveInt | None = None   # early stopping: evaluations without improvement
    min_delta: NonNegativeFloat = 0.0
    device: str | None = None             # None: cuda when available, else cpu
    grad_clip: PositiveFloat | None = None  # max total gradient norm
    accumulate: PositiveInt = 1           # micro-batches per optimizer step
    precision: Literal[32, 16, "bf16"] = 32  # 16: float16 autocast + GradScaler (CUDA only)
    strategy: Literal["ddp", "fsdp"] = "ddp"  # under torchrun; see aiotrain.parallel
    on_nan: Literal["stop", "skip_step", "ignore"] = "stop"  # a non-finite loss or gradient
    # skip_step: the most optimizer steps an epoch may skip, as a fraction (one always may)
    skip_limit: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.05
    # true: as --resume; auto: continue this run from its checkpoint if it has one (elastic
    # restarts under torchrun), else start it fresh
    resume: bool | Literal["auto"] = False


class SchedulerSection(msgspec.Struct, frozen=True):
    """How the Task's LR scheduler is stepped."""

    per: Literal["epoch", "iteration"] = "epoch"  # iteration: after every optimizer step
    metric: str | None = None  # ReduceLROnPlateau: the validation metric (default: the score)


class CheckpointSection(msgspec.Struct, frozen=True):
    """Where checkpoints go and how many are kept."""

    dir: str | None = None  # parent of the run folders; default {tracking.dir}/checkpoints/{project}
    n_saved: PositiveInt | None = 1  # best checkpoints kept (null: all)
    every: PositiveInt | None = None  # iterations between "last" checkpoints; null: each epoch


class TrackingSection(msgspec.Struct, frozen=True):
    """The tracked run."""

    project: str = "default"
    name: str | None = None
    dir: str | None = None
    tags: list[str] = []
    notes: str = ""
    mode: Literal["offline", "disabled"] = "offline"
    mlflow_uri: str | None = None  # mirror live to this MLflow server; default $MLFLOW_TRACKING_URI


class ValidationSection(msgspec.Struct, frozen=True):
    """The pre-training checks of ``--mode=check_*``."""

    timeout: PositiveFloat = 30.0
    memory_budget: PositiveInt | None = None
    allow_unused: list[str] = []


class TrainSettings(msgspec.Struct, frozen=True):
    """The part of a training config the runtime reads; the task reads the rest."""

    task: str
    seed: Seed = 0
    train: TrainSection = msgspec.field(default_factory=TrainSection)
    scheduler: SchedulerSection = msgspec.field(default_factory=SchedulerSection)
    checkpoint: CheckpointSection = msgspec.field(default_factory=CheckpointSection)
    tracking: TrackingSection = msgspec.field(default_factory=TrackingSection)
    validation: ValidationSection = msgspec.field(default_factory=ValidationSection)


def load_settings(cfg: Config) -> tuple[TrainSettings, Config]:
    """Check the runtime's sections of ``cfg`` strictly; return the settings and ``cfg`` with
    every default filled in (what the task factory receives). Raises SchemaError (one line)."""
    data = Conf.to_dict(cfg, resolve=True)
    if not isinstance(data.get("task"), str):
        got = "missing" if "task" not in data else f"{_show(data['task'])} is not a string"
        raise SchemaError(f"task: {got}; expected 'package.module:function'", full_key="task")
    kwargs: dict[str, Any] = {}  # each checked against its field's type
    for f in msgspec.structs.fields(TrainSettings):
        if f.name not in data:
            continue
        value = data[f.name]
        if _is_struct(f.type):
            kwargs[f.name] = _section(f.type, value, f.name)
        else:
            kwargs[f.name] = _convert(f.type, value, f.name)
    settings = TrainSettings(**kwargs)
    for key, check in _CHECKS.items():
        check(settings, key)
    return settings, Conf.merge(cfg, Conf.from_dict(msgspec.to_builtins(settings)))


RUNTIME_KEYS = frozenset(f.name for f in msgspec.structs.fields(TrainSettings))
"""The top-level keys the runtime reads: ``task``, ``seed`` and its sections."""


def check_top_level(keys: list[str], read: set[str], task: str) -> None:
    """Every top-level key in ``keys`` is the runtime's or was ``read`` by the task factory
    ``task`` while it built; else a SchemaError naming the first other one, with a hint."""
    unread = [k for k in keys if k not in RUNTIME_KEYS and k not in read]
    if not unread:
        return
    key = unread[0]
    known = sorted(RUNTIME_KEYS | read)  # a key the task asked for and did not find: the likeliest
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else \
        "remove it, or read it in the task (keys read: " + ", ".join(known) + ")"
    raise SchemaError(f"{key}: unknown top-level key: neither the runtime nor the task ({task}) "
                      f"reads it; {hint}", full_key=key)


def resolved_device(settings: TrainSettings) -> torch.device:
    """The torch.device the run uses: ``train.device``, else cuda when available, else cpu."""
    import torch

    return torch.device(settings.train.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _section(schema: type[S], value: object, name: str) -> S:
    if value is None:
        return schema()
    if not isinstance(value, dict):
        raise SchemaError(f"{name}: expected a section (key: value lines), got {_show(value)}",
                          full_key=name)
    fields = {f.name: f for f in msgspec.structs.fields(schema)}
    for key in value:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.6)
            hint = f"did you mean {name}.{close[0]}?" if close else f"known keys: {', '.join(fields)}"
            raise SchemaError(f"{name}.{key}: unknown key in the runtime's '{name}' section; {hint}",
                              full_key=f"{name}.{key}")
    return schema(**{k: _convert(fields[k].type, v, f"{name}.{k}") for k, v in value.items()})


def _convert(tp: object, value: object, key: str) -> object:
    try:
        return msgspec.convert(value, type=tp, strict=True)
    except msgspec.ValidationError:
        hint = ""
        if isinstance(value, str) and _converts(value, tp):
            hint = " (a quoted string: write it without quotes)"
        raise SchemaError(f"{key} = {_show(value)}: not allowed; expected {describe(tp)}{hint}",
                          full_key=key) from None


def _converts(value: str, tp: object) -> bool:
    try:
        msgspec.convert(value, type=tp, strict=False)
    except msgspec.ValidationError:
        return False
    return True


def describe(tp: object) -> str:
    """What a schema type allows, in words: ``an integer >= 1 or null``."""
    return _words(msgspec.inspect.type_info(tp))


def _words(info: msgspec.inspect.Type) -> str:
    mi = msgspec.inspect
    if isinstance(info, mi.UnionType):
        parts = [_words(t) for t in info.types if not isinstance(t, mi.NoneType)]
        none = any(isinstance(t, mi.NoneType) for t in info.types)
        return " or ".join(parts + (["null"] if none else []))
    if isinstance(info, mi.LiteralType):
        return "one of " + ", ".join(str(v) for v in info.values)
    if isinstance(info, mi.IntType | mi.FloatType):
        noun = "an integer" if isinstance(info, mi.IntType) else "a number"
        bounds = [f"{op} {v}" for op, v in ((">=", info.ge), (">", info.gt), ("<=", info.le),
                                            ("<", info.lt)) if v is not None]
        return f"{noun} {' and '.join(bounds)}" if bounds else noun
    if isinstance(info, mi.ListType):
        return f"a list of {_words(info.item_type).removeprefix('a ').removeprefix('an ')}s"
    names: dict[type, str] = {mi.StrType: "a string", mi.BoolType: "true or false",
                              mi.NoneType: "null"}
    return names.get(type(info), type(info).__name__)


def _show(value: object) -> str:
    return repr(value) if isinstance(value, str) else ("null" if value is None else str(value))


def _is_struct(tp: object) -> TypeGuard[type[msgspec.Struct]]:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _check_device(settings: TrainSettings, key: str) -> None:
    import torch

    value = settings.train.device
    if value is None:
        return
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise SchemaError(f"{key} = {_show(value)}: not a device; expected cpu, cuda, cuda:N, mps "
                          "or null (cuda when available, else cpu)", full_key=key)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise SchemaError(f"{key} = {_show(value)}: {why} (torch {torch.__version__}); "
                              "use cpu, or leave it unset", full_key=key)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SchemaError(f"{key} = {_show(value)}: only {torch.cuda.device_count()} GPU(s) "
                              f"are visible (cuda:0 .. cuda:{torch.cuda.device_count() - 1})",
                              full_key=key)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SchemaError(f"{key} = {_show(value)}: MPS is not available here; use cpu",
                          full_key=key)


def _check_precision(settings: TrainSettings, key: str) -> None:
    precision = settings.train.precision
    device = resolved_device(settings)
    if precision == 16 and device.type != "cuda":
        raise SchemaError(f"{key} = 16: float16 training with a GradScaler needs a CUDA device "
                          f"(this run uses {device.type}); use bf16 or 32", full_key=key)
    if precision == "bf16" and device.type == "mps":
        raise SchemaError(f"{key} = bf16: not supported on mps; use 32", full_key=key)


# semantic checks that depend on the machine, by the key they are about; run in this order
_CHECKS: dict[str, Callable[[TrainSettings, str], None]] = {
    "train.device": _check_device,
    "train.precision": _check_precision,
}
