"""Artifacts: versioned, content-addressed files with lineage (W&B's ``wandb.Artifact``).

Layout under the tracking root::

    artifacts/objects/{sha[:2]}/{sha256}               file contents, stored once
    artifacts/projects/{project}/{name}/index.json     versions, aliases, producer, consumers
    artifacts/projects/{project}/{name}/.lock          held (filelock) around every index change
    artifacts/projects/{project}/{name}/files/vN/      download() materializations
    runs/{project}/{run_id}/artifacts/logged.jsonl     what a run logged ({"ref", "project"})
    runs/{project}/{run_id}/artifacts/used.jsonl       what a run used

A version's digest is the sha256 of its type and sorted (path, file sha256) list, so logging
identical content again returns the existing version (with any new aliases) instead of a new
one. ``latest`` moves to every new version; other aliases move to the version they are given
to (one version per alias). Object files and the index are written atomically, and the index is
changed only under an exclusive file lock (``filelock``: flock on POSIX, LockFileEx on Windows),
so concurrent processes logging the same name get distinct versions and an intact index.

**Integrity.** Every file is checked against the sha256 its version recorded before it is
used: ``use_artifact`` hashes the version's stored objects, ``download`` hashes each file as it
copies it (and a folder materialized earlier before returning it, rebuilding it from the objects
when it was edited). A mismatch, a missing object, or an index naming a file outside the store
(a member path with ``..``, a digest that is not 64 hex digits) is an ``ArtifactIntegrityError``
naming the artifact and the file; nothing is copied from a file that failed. Hashes are
remembered per process by (device, inode, size, mtime, ctime), so a file is read once per
process unless it changes (a write changes its ctime, which no user can set back; a file
changed in the last two seconds is hashed every time, as file times are coarse).
``log_artifact`` finding a stored object that no longer matches its name replaces it with the
content being logged. This detects corruption and files changed behind the index's back; whoever
can rewrite index.json as well can make any content "recorded" (see docs/security.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import msgspec
from filelock import FileLock

from ..files import make_temp_dir
from .store import atomic_file, check_name, jsonable, read_json, write_json

__all__ = ["Artifact", "ArtifactIntegrityError", "ArtifactRun", "log_artifact", "use_artifact"]

_VERSION = re.compile(r"^v(\d+)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
_HASHED_MAX = 100_000  # remembered hashes (see _hash)
_SETTLED_NS = 2_000_000_000  # a file's ctime must be this old for its hash to be remembered


class ArtifactRun(Protocol):
    """What logging and using an artifact needs of a run (``Run`` is one): where it stores,
    who it is, and its folder created on demand."""

    @property
    def id(self) -> str: ...

    @property
    def project(self) -> str: ...

    @property
    def root(self) -> Path: ...

    @property
    def dir(self) -> Path: ...

    @property
    def disabled(self) -> bool: ...

    def open_files(self) -> None:
        """Create the run's folder and metadata.sdn if they are not there yet (enabled runs)."""


class ArtifactIntegrityError(ValueError):
    """A stored artifact file does not match the sha256 its version recorded, is missing, or is
    named by an index entry that points outside the store. The message names the file."""


class Artifact:
    """A named, typed set of files: ``Artifact("mnist", type="dataset")`` then ``add_file`` /
    ``add_dir`` and ``run.log_artifact(a)``. An artifact returned by ``log_artifact`` or
    ``use_artifact`` has ``version`` (an int), ``ref`` (``"name:vN"``), ``aliases``,
    ``manifest`` (path -> sha256 and size) and ``download()``."""

    def __init__(self, name: str, type: str, description: str = "",
                 metadata: Mapping[str, object] | None = None) -> None:
        check_name("artifact", name)
        if ":" in name:
            raise ValueError(f"artifact name {name!r} must not contain ':' (it separates the version)")
        if not isinstance(type, str) or not type.strip():
            raise ValueError(f"artifact type must be a non-empty string, got {type!r}")
        self.name = name
        self.type = type
        self.description = str(description)
        self.metadata: dict[str, Any] = jsonable(dict(metadata or {}))
        self.version: int | None = None
        self.project: str | None = None
        self.aliases: list[str] = []
        self.digest: str | None = None
        self.manifest: dict[str, dict[str, object]] = {}  # member -> sha256, size
        self._sources: dict[str, Path] = {}
        self._root: Path | None = None

    @property
    def ref(self) -> str:
        """``name:vN`` once stored (``name`` before)."""
        return self.name if self.version is None else f"{self.name}:v{self.version}"

    def add_file(self, local_path: str | os.PathLike[str], name: str | None = None) -> None:
        """Include one file, stored as ``name`` (default: its base name)."""
        path = Path(local_path)
        if not path.is_file():
            raise FileNotFoundError(f"add_file: {path} is not a file")
        self._add(_check_member(name or path.name), path)

    def add_dir(self, local_path: str | os.PathLike[str], name: str | None = None) -> None:
        """Include every file under a folder, stored under ``name/`` (default: at the top)."""
        root = Path(local_path)
        if not root.is_dir():
            raise NotADirectoryError(f"add_dir: {root} is not a directory")
        prefix = _check_member(name) + "/" if name else ""
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            self._add(prefix + path.relative_to(root).as_posix(), path)

    def _add(self, member: str, path: Path) -> None:
        if self.version is not None:
            raise RuntimeError(f"artifact {self.ref} is stored; create a new Artifact to change it")
        self._sources[member] = path

    def download(self, root: str | os.PathLike[str] | None = None) -> Path:
        """A local folder holding this version's files (copies; editing them is safe).

        Default: ``artifacts/projects/{project}/{name}/files/vN`` in the store, built once and
        atomically; with ``root``, the files are copied there.
        """
        if self.version is None or self._root is None or self.project is None:
            raise RuntimeError(f"artifact {self.name!r} has no stored version; log or use it first")
        store = _Store(self._root)
        if root is not None:
            target = Path(root)
            _materialize(store, self.ref, self.manifest, target)
            return target
        target = store.folder(self.project, self.name) / "files" / f"v{self.version}"
        if not _complete(target, self.manifest):  # absent, or edited since: built again from the objects
            staging = make_temp_dir(target.parent.parent, ".files-")
            try:
                _materialize(store, self.ref, self.manifest, staging)
                if target.exists():
                    shutil.rmtree(target)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(staging, target)
                except OSError:  # another process finished the same download first
                    if not _complete(target, self.manifest):
                        raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return target

    def __repr__(self) -> str:
        return f"Artifact({self.ref!r}, type={self.type!r}, files={len(self.manifest or self._sources)})"


def _check_member(name: str) -> str:
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts:
        raise ValueError(f"artifact file name {name!r} must be a relative path without '..'")
    return Path(name).as_posix()


class _Store:
    """The artifact store under one tracking root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.base = root / "artifacts"

    def object(self, digest: str) -> Path:
        return self.base / "objects" / digest[:2] / digest

    def folder(self, project: str, name: str) -> Path:
        return self.base / "projects" / project / name

    def put(self, source: Path) -> tuple[str, int]:
        """Copy ``source`` into the object store (once per content); returns (sha256, size)."""
        digest, size = _sha256(source)
        target = self.object(digest)
        try:
            stored = _hash(target) == digest
        except FileNotFoundError:
            stored = False
        if not stored:  # absent, or corrupt: (re)written from the content being logged
            with atomic_file(target) as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out, _CHUNK)
        return digest, size

    @contextlib.contextmanager
    def locked(self, project: str, name: str) -> Iterator[dict[str, Any]]:
        """The index of ``project/name`` under an exclusive lock; changes are saved on exit."""
        folder = self.folder(project, name)
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(folder / ".lock"):
            path = folder / "index.json"
            index = read_json(path) if path.exists() else {"name": name, "project": project,
                                                            "type": None, "versions": [], "aliases": {}}
            before = msgspec.json.encode(index)
            yield index
            if msgspec.json.encode(index) != before:
                write_json(path, index)

    def read(self, project: str, name: str) -> dict[str, Any] | None:
        path = self.folder(project, name) / "index.json"
        return read_json(path) if path.exists() else None

    def projects_with(self, name: str) -> list[str]:
        base = self.base / "projects"
        return sorted(p.name for p in base.glob("*") if (p / name / "index.json").is_file())


def _sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _digest(type_: str, manifest: dict[str, dict[str, object]]) -> str:
    h = hashlib.sha256(type_.encode())
    for member in sorted(manifest):
        h.update(f"\0{member}\0{manifest[member]['sha256']}".encode())
    return h.hexdigest()


_hashed: dict[tuple[int, int, int, int, int], str] = {}
_hashed_lock = threading.Lock()


def _hash(path: Path) -> str:
    """The sha256 of ``path``, remembered by (device, inode, size, mtime, ctime): any write to
    the file changes its ctime, so a remembered hash is never one of older content."""
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _hashed_lock:
        known = _hashed.get(key)
    if known is None:
        known = _sha256(path)[0]
        _remember(path, key, known)
    return known


def _remember(path: Path, key: tuple[int, int, int, int, int], digest: str) -> None:
    """Remember ``digest`` for ``path`` if it did not change while it was read, and if its ctime
    lies over two seconds back: file times are coarse (a write in the same clock tick as the
    last one keeps the ctime), so a hash of a file changed that recently is not trusted to
    describe it later (git's "racily clean" rule)."""
    st = os.stat(path)
    if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) == key \
            and time.time_ns() - st.st_ctime_ns > _SETTLED_NS:
        with _hashed_lock:
            if len(_hashed) >= _HASHED_MAX:
                _hashed.clear()
            _hashed[key] = digest


def _checked(ref: str, member: str, entry: object) -> str:
    """The recorded sha256 of ``member``, once the index entry is known to name a file inside
    the store and the version's folder (index.json is a file others may write)."""
    digest = entry.get("sha256") if isinstance(entry, dict) else None
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise ArtifactIntegrityError(f"artifact {ref}: file {member!r} has no valid sha256 in its index "
                                     f"({digest!r}); the index is corrupt or was edited")
    parts = Path(member).parts
    if not member or Path(member).is_absolute() or ".." in parts or "\\" in member or "\x00" in member:
        raise ArtifactIntegrityError(f"artifact {ref}: its index names a file outside the version's folder "
                                     f"({member!r}); the index is corrupt or was edited")
    return digest


def _verify(store: _Store, ref: str, manifest: dict[str, dict[str, object]]) -> None:
    """Check every stored object of a version against its recorded sha256 (see the module doc)."""
    for member, entry in manifest.items():
        digest = _checked(ref, member, entry)
        path = store.object(digest)
        try:
            actual = _hash(path)
        except FileNotFoundError:
            raise ArtifactIntegrityError(f"artifact {ref}: stored file {member!r} is missing ({path})") from None
        if actual != digest:
            raise ArtifactIntegrityError(
                f"artifact {ref}: stored file {member!r} ({path}) does not match its recorded sha256 "
                f"(recorded {digest[:12]}..., found {actual[:12]}...): it was changed after it was logged")


def _complete(folder: Path, manifest: dict[str, dict[str, object]]) -> bool:
    """Whether ``folder`` holds exactly the version's content (every file's sha256 checked)."""
    try:
        return folder.is_dir() and all(_hash(folder / m) == e["sha256"] for m, e in manifest.items())
    except OSError:  # a file missing, or a folder where a file should be
        return False


def _materialize(store: _Store, ref: str, manifest: dict[str, dict[str, object]], target: Path) -> None:
    """Copy the version's objects into ``target``, hashing each as it is copied: a file whose
    content does not match is not left in ``target`` and raises ``ArtifactIntegrityError``."""
    for member, entry in manifest.items():
        digest = _checked(ref, member, entry)
        source = store.object(digest)
        dest = target / member
        try:
            with atomic_file(dest) as out, open(source, "rb") as src:
                h = hashlib.sha256()
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                if h.hexdigest() != digest:
                    raise ArtifactIntegrityError(
                        f"artifact {ref}: stored file {member!r} ({source}) does not match its recorded sha256 "
                        f"(recorded {digest[:12]}..., found {h.hexdigest()[:12]}...): it was changed after it "
                        "was logged; nothing was copied from it")
        except FileNotFoundError as exc:
            if exc.filename is not None and Path(exc.filename) == source:
                raise ArtifactIntegrityError(f"artifact {ref}: stored file {member!r} is missing ({source})") from None
            raise
        st = os.stat(dest)
        _remember(dest, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns), digest)


def _check_aliases(aliases: list[str]) -> list[str]:
    for alias in aliases:
        if not isinstance(alias, str) or not alias or ":" in alias or "/" in alias or _VERSION.match(alias):
            raise ValueError(f"alias {alias!r} must be a non-empty name without ':' or '/', not like 'v3'")
    return list(dict.fromkeys(aliases))


def log_artifact(run: ArtifactRun, artifact: Artifact, aliases: list[str]) -> Artifact:
    """Store ``artifact``'s files as a version of ``run.project/artifact.name``, produced by ``run``."""
    if not isinstance(artifact, Artifact):
        raise TypeError(f"log_artifact expects a Track.Artifact, got {type(artifact).__name__}")
    aliases = _check_aliases(aliases)
    if run.disabled:
        return artifact
    if not artifact._sources:
        raise ValueError(f"artifact {artifact.name!r} has no files; add_file / add_dir first")
    store = _Store(run.root)
    manifest = {}
    for member, source in artifact._sources.items():
        digest, size = store.put(source)
        manifest[member] = {"sha256": digest, "size": size}
    digest = _digest(artifact.type, manifest)
    with store.locked(run.project, artifact.name) as index:
        if index["type"] not in (None, artifact.type):
            raise ValueError(f"artifact {artifact.name!r} has type {index['type']!r}, not {artifact.type!r}")
        index["type"] = artifact.type
        entry = next((v for v in index["versions"] if v["digest"] == digest), None)
        if entry is None:
            entry = {"version": len(index["versions"]), "digest": digest, "files": manifest,
                     "description": artifact.description, "metadata": artifact.metadata,
                     "created_at": time.time(), "producer": {"id": run.id, "project": run.project},
                     "consumers": []}
            index["versions"].append(entry)
            index["aliases"]["latest"] = entry["version"]
        for alias in aliases:
            index["aliases"][alias] = entry["version"]
        _fill(artifact, run.root, run.project, index, entry)
    _record(run, "logged.jsonl", artifact)
    return artifact


def use_artifact(run: ArtifactRun, ref: str, project: str | None = None) -> Artifact:
    """The version ``ref`` names (``name``, ``name:vN``, ``name:latest``, ``name:alias``), with
    ``run`` recorded as a consumer (unless the run is disabled)."""
    name, spec = _parse_ref(ref)
    project = check_name("project", project) if project is not None else run.project
    store = _Store(run.root)
    stored = store.read(project, name)
    if stored is None:
        raise LookupError(f"no artifact {name!r} in project {project!r} under {run.root}")
    entry = _resolve(stored, spec, ref)
    _verify(store, f"{name}:v{entry['version']}", entry["files"])  # before the run is recorded as its consumer
    if run.disabled:
        index = stored
    else:
        with store.locked(project, name) as index:
            verified, entry = entry, index["versions"][entry["version"]]  # that version, wherever aliases moved since
            if entry["digest"] != verified["digest"] or entry["files"] != verified["files"]:
                raise ArtifactIntegrityError(f"artifact {name}:v{entry['version']}: its index changed while it "
                                             "was being verified; use it again")
            consumer = {"id": run.id, "project": run.project}
            if consumer not in entry["consumers"]:
                entry["consumers"].append(consumer)
    artifact = Artifact(name, index["type"], entry["description"], entry["metadata"])
    _fill(artifact, run.root, project, index, entry)
    if not run.disabled:
        _record(run, "used.jsonl", artifact)
    return artifact


def _parse_ref(ref: str) -> tuple[str, str]:
    if not isinstance(ref, str):
        raise TypeError(f"artifact reference must be a string, got {type(ref).__name__}")
    name, _, spec = ref.partition(":")
    check_name("artifact", name)
    return name, spec or "latest"


def _resolve(index: dict[str, Any], spec: str, ref: str) -> dict[str, Any]:
    match = _VERSION.match(spec)
    number = int(match.group(1)) if match else index["aliases"].get(spec)
    if number is None or not 0 <= number < len(index["versions"]):
        known = [f"v{v['version']}" for v in index["versions"]] + sorted(index["aliases"])
        raise LookupError(f"artifact {ref!r} not found; known: {', '.join(known)}")
    version: dict[str, Any] = index["versions"][number]
    return version


def _fill(artifact: Artifact, root: Path, project: str, index: dict[str, Any], entry: dict[str, Any]) -> None:
    artifact.version = entry["version"]
    artifact.project = project
    artifact.digest = entry["digest"]
    artifact.manifest = entry["files"]
    artifact.aliases = sorted(a for a, v in index["aliases"].items() if v == entry["version"])
    artifact._root = root


def _record(run: ArtifactRun, filename: str, artifact: Artifact) -> None:
    """Append a durable line to the run's artifacts/ log (the run folder is created if needed)."""
    run.open_files()
    line = msgspec.json.encode({"ref": artifact.ref, "project": artifact.project}) + b"\n"
    path = run.dir / "artifacts" / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
