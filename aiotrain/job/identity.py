"""Run identity: every training run has its own id and its own checkpoint folder, and a resume
continues exactly one earlier run, the one the user meant.

The folder is ``{checkpoint.dir or {tracking.dir}/checkpoints/{project}}/{run id}``; it holds the
run's checkpoints and ``run.sdn``, the record that makes resuming safe without the tracking
store: id, name, project, status, the pid and host that run it, where it stopped, and the full
config it trained with. The id is the tracked run's id when tracking is on, so ``--resume``
continues the same tracked run (history appended, status back to running).

``--resume`` picks the newest run of the project (of ``tracking.name`` when it is set),
``--resume RUN`` the run with that id or name. ``train.resume = auto`` picks this run's earlier
attempt, if any (``find_attempt``): under torchrun the run this launch started (the same
``TORCHELASTIC_RUN_ID``: a group that torchrun restarts after a worker died), elsewhere the
newest unfinished run of ``tracking.name`` (a job that a scheduler starts again). Resuming is refused, in one line, when the run
finished, when it is still running, and when its config differs from this one in a key that
changes what is trained (the keys in ``RESUMABLE`` may differ: how long and how verbosely to
train, where, how strictly to check); ``--force`` overrides the config check only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, sdn
from ..files import atomic_write
from ..owner import current_owner, process_alive
from ..tracking.system import system_info

__all__ = ["RECORD", "RESUMABLE", "ResumeError", "RunIdentity", "config_diff", "find_attempt",
           "find_run", "launch_id"]

RECORD = "run.sdn"
# keys a resume may change; everything else must match the run's config (or --force)
RESUMABLE = ("train.max_epochs", "train.log_every", "train.device", "train.patience",
             "train.resume", "tracking.tags", "tracking.notes", "tracking.mode", "tracking.mlflow_uri",
             "validation.",
             "checkpoint.every")
# ...but only between values: turning one on or off changes what the checkpoints hold (early
# stopping's state), so the run's checkpoint would not load
SWITCHES = ("train.patience",)


class ResumeError(ConfigError):
    """A resume that would not continue the run the user meant (one line, exit 2)."""


@dataclass
class RunIdentity:
    """Who a run is and where its checkpoints live; ``record`` is its stored ``run.sdn``."""

    id: str
    project: str
    name: str | None
    dir: Path
    record: dict[str, Any]  # a stored document: read back as written

    def write(self, status: str, **fields: object) -> None:
        """Rewrite ``run.sdn`` atomically with ``status`` and ``fields`` (blocking: I/O thread)."""
        self.record.update(fields, id=self.id, project=self.project, name=self.name,
                           status=status, pid=os.getpid(), owner=current_owner(),
                           system={"hostname": system_info()["hostname"]}, updated_at=time.time())
        self.record.setdefault("created_at", self.record["updated_at"])
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.dir / RECORD, sdn.dumps(_plain(self.record)))


def launch_id() -> str | None:
    """The launch this process belongs to under torchrun (``TORCHELASTIC_RUN_ID``: the same for
    every node of one job and across its restarts), None elsewhere."""
    return os.environ.get("TORCHELASTIC_RUN_ID") or None


def _records(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every run folder under ``root`` with its ``run.sdn``, oldest first."""
    found = []
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            path = folder / RECORD
            if path.is_file():
                try:
                    found.append((folder, sdn.load(path)))
                except ConfigError as exc:
                    raise ResumeError(f"resume: {path} is unreadable ({exc.msg})") from None
    found.sort(key=lambda item: float(item[1].get("created_at") or 0.0))
    return found


def find_attempt(root: Path, name: str | None) -> RunIdentity | None:
    """This run's earlier attempt under ``root`` for ``train.resume = auto`` (module docstring),
    or None: this is its first."""
    launch = launch_id()
    for folder, record in reversed(_records(root)):
        if record.get("status") == "finished":
            continue  # nothing to continue: a new run
        if launch is not None and record.get("launch") == launch:
            return _identity(folder, record)
        if launch is None and (name is None or record.get("name") == name):
            return _identity(folder, record)
    return None


def _identity(folder: Path, record: dict[str, Any]) -> RunIdentity:
    return RunIdentity(str(record["id"]), str(record.get("project")), record.get("name"), folder,
                       record)


def find_run(root: Path, ref: str | None, name: str | None) -> RunIdentity:
    """The run to resume under ``root``: ``ref`` (an id or name), else the newest (of ``name``).
    Raises ResumeError naming what was looked for and where."""
    found = _records(root)
    if ref is not None:
        matches = [f for f in found if f[1].get("id") == ref or f[1].get("name") == ref]
        if not matches:
            raise ResumeError(f"resume: no run {ref!r} under {root}")
    else:
        matches = [f for f in found if name is None or f[1].get("name") == name]
        if not matches:
            which = f"named {name!r} " if name else ""
            raise ResumeError(f"resume: no run {which}to resume under {root}; "
                              "start one without --resume")
    folder, record = matches[-1]
    return _identity(folder, record)


def check_resumable(identity: RunIdentity, config: Mapping[str, object], force: bool) -> None:
    """Refuse a finished or live run, and (unless ``force``) a config that differs."""
    rec = identity.record
    status = rec.get("status")
    where = f"epoch {rec.get('epoch', 0)}, iteration {rec.get('iteration', 0)}"
    if status == "finished":
        raise ResumeError(f"resume: run {identity.id} finished ({where}); nothing to resume: "
                          "start a new run without --resume")
    if status == "running" and _alive(rec):
        raise ResumeError(f"resume: run {identity.id} is still running (pid {rec.get('pid')})")
    diff = config_diff(rec.get("config") or {}, config)
    if diff and not force:
        raise ResumeError(f"resume: run {identity.id}'s config differs: {'; '.join(diff)} "
                          "(resume with the same config, or pass --force)")


def config_diff(old: Mapping[str, object], new: Mapping[str, object]) -> list[str]:
    """``key: old -> new`` for every dotted key that differs, except the RESUMABLE ones."""
    a, b = _flatten(old), _flatten(new)
    out = []
    for key in sorted(set(a) | set(b)):
        before, after = a.get(key), b.get(key)
        switched = key in SWITCHES and (before is None) != (after is None)
        if not switched and any(key == r or (r.endswith(".") and key.startswith(r))
                                for r in RESUMABLE):
            continue
        if a.get(key, _ABSENT) != b.get(key, _ABSENT):
            out.append(f"{key}: {_show(a.get(key, _ABSENT))} -> {_show(b.get(key, _ABSENT))}")
    return out


_ABSENT = object()


def _show(value: object) -> str:
    return "(absent)" if value is _ABSENT else repr(value)


def _flatten(tree: object, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict):
        out: dict[str, object] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): tree}


def _plain(value: object) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _alive(record: Mapping[str, object]) -> bool:
    """Whether the process that wrote a "running" record still runs (another host: assume so)."""
    if record.get("pid") == os.getpid():  # this process: whatever ran here has ended
        return False
    return process_alive(record)
