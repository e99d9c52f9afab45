"""Lineage: which runs logged and used which artifact versions, read from the artifact store.

A run's ``artifacts/logged.jsonl`` and ``used.jsonl`` list the versions it made and used; each
version's index entry names its producer and consumers (see :mod:`.artifacts` for the layout).
From them: a run's refs (:func:`run_artifacts`), one version's lineage (:func:`lineage`) and
the catalog of every artifact with the graph between versions and runs (:func:`catalog`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

import msgspec

from .artifacts import Artifact, _fill, _parse_ref, _resolve, _Store
from .store import get_dir, read_json

__all__ = ["ArtifactCatalog", "ArtifactInfo", "ArtifactRefs", "Lineage", "LineageGraph", "RunRef",
           "VersionInfo", "catalog", "lineage", "logged_artifacts", "run_artifacts"]


def _refs(path: Path) -> list[str]:
    """The refs of a run's logged.jsonl / used.jsonl, in order, each once (a torn last line skipped)."""
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return []
    refs = []
    for line in lines:
        with contextlib.suppress(msgspec.DecodeError, KeyError, TypeError):  # a torn last line
            refs.append(msgspec.json.decode(line)["ref"])
    return list(dict.fromkeys(refs))


def _run_refs(root: Path, run: dict[str, str], filename: str) -> list[str]:
    return _refs(root / "runs" / run["project"] / run["id"] / "artifacts" / filename)


class ArtifactRefs(NamedTuple):
    """What one run logged and used, as ``name:vN`` refs in order."""

    logged: list[str]
    used: list[str]


def run_artifacts(run_dir: str | os.PathLike[str]) -> ArtifactRefs:
    """The artifact versions the run in ``run_dir`` logged and used."""
    folder = Path(run_dir) / "artifacts"
    return ArtifactRefs(_refs(folder / "logged.jsonl"), _refs(folder / "used.jsonl"))


class RunRef(TypedDict):
    """A run named by project and id (an artifact's producer or consumer)."""

    project: str
    id: str


class VersionInfo(TypedDict):
    """One stored version as the catalog lists it."""

    version: int
    ref: str
    digest: str  # the first 12 hex digits
    created: float | None
    aliases: list[str]
    files: int
    size: int
    producer: RunRef | None
    consumers: list[RunRef]


class ArtifactInfo(TypedDict):
    """One artifact name of a project with its versions; ``error`` names an unreadable index."""

    project: str
    name: str
    type: str | None
    versions: list[VersionInfo]
    error: str | None


LineageEdge = TypedDict("LineageEdge", {"from": str, "to": str})


class LineageNode(TypedDict, total=False):
    """A run (``kind`` "run") or an artifact version (``kind`` "artifact", with its ``type``)."""

    id: str
    kind: str
    label: str
    type: str | None


class RunRole(TypedDict):
    """A run in an artifact version's lineage: its id, and whether it produced or consumed it."""

    id: str
    role: str


class Lineage(TypedDict):
    """What :func:`lineage` gives for one version: what its producer consumed (``inputs``), the
    runs that made or used it, and what those consuming runs produced (``outputs``)."""

    inputs: list[str]
    runs: list[RunRole]
    outputs: list[str]


class LineageGraph(TypedDict):
    """Runs and versions as nodes; producer -> version and version -> consumer as edges."""

    nodes: list[LineageNode]
    edges: list[LineageEdge]


class ArtifactCatalog(TypedDict):
    """Every artifact under a tracking root and the lineage graph between them and their runs."""

    artifacts: list[ArtifactInfo]
    graph: LineageGraph


def catalog(root: str | os.PathLike[str] | None = None) -> ArtifactCatalog:
    """Every artifact index under ``root`` (default: the tracking root), with its versions and
    aliases, and the lineage graph. An index that cannot be decoded is listed with its ``error``
    (and no versions) rather than left out."""
    base = _Store(Path(root) if root is not None else get_dir()).base / "projects"
    artifacts: list[ArtifactInfo] = []
    nodes: dict[str, LineageNode] = {}
    edges: list[LineageEdge] = []
    for index_path in sorted(base.glob("*/*/index.json")) if base.is_dir() else []:
        project, name = index_path.parent.parent.name, index_path.parent.name
        try:
            index = read_json(index_path)
        except FileNotFoundError:  # removed since the listing
            continue
        except (msgspec.DecodeError, ValueError) as exc:
            artifacts.append({"project": project, "name": name, "type": None, "versions": [],
                              "error": f"{index_path}: unreadable index ({exc})"})
            continue
        artifacts.append({"project": project, "name": name, "type": index.get("type"),
                          "versions": _versions(index, project, name, nodes, edges), "error": None})
    return {"artifacts": artifacts, "graph": {"nodes": list(nodes.values()), "edges": edges}}


def _versions(index: dict[str, Any], project: str, name: str, nodes: dict[str, LineageNode],
              edges: list[LineageEdge]) -> list[VersionInfo]:
    aliases: dict[int, list[str]] = {}
    for alias, number in index.get("aliases", {}).items():
        aliases.setdefault(number, []).append(alias)
    versions: list[VersionInfo] = []
    for v in index.get("versions", []):
        ref = f"{name}:v{v['version']}"
        node = f"{project}/{ref}"
        nodes[node] = {"id": node, "kind": "artifact", "label": ref, "type": index.get("type")}
        producer = v.get("producer")
        if producer:
            run = f"{producer['project']}/{producer['id']}"
            nodes.setdefault(run, {"id": run, "kind": "run", "label": run})
            edges.append({"from": run, "to": node})
        for consumer in v.get("consumers", []):
            run = f"{consumer['project']}/{consumer['id']}"
            nodes.setdefault(run, {"id": run, "kind": "run", "label": run})
            edges.append({"from": node, "to": run})
        files = v.get("files", {})
        versions.append({"version": v["version"], "ref": ref, "digest": v["digest"][:12],
                         "created": v.get("created_at"), "aliases": sorted(aliases.get(v["version"], [])),
                         "files": len(files), "size": sum(f.get("size", 0) for f in files.values()),
                         "producer": producer, "consumers": v.get("consumers", [])})
    return versions


def lineage(ref: str, project: str | None = None, root: str | os.PathLike[str] | None = None) -> Lineage:
    """``{"inputs": [...], "runs": [{"id", "role"}], "outputs": [...]}`` for one version: what its
    producer consumed, the runs that made or used it, and what those consuming runs produced."""
    store = _Store(Path(root) if root is not None else get_dir())
    name, spec = _parse_ref(ref)
    if project is None:
        found = store.projects_with(name)
        if not found:
            raise LookupError(f"no artifact {name!r} under {store.root}")
        if len(found) > 1:
            raise ValueError(f"artifact {name!r} exists in projects {found}; pass project=")
        project = found[0]
    index = store.read(project, name)
    if index is None:
        raise LookupError(f"no artifact {name!r} in project {project!r}")
    entry = _resolve(index, spec, ref)
    producer = entry.get("producer")
    runs: list[RunRole] = [{"id": producer["id"], "role": "producer"}] if producer else []
    runs += [{"id": c["id"], "role": "consumer"} for c in entry["consumers"]]
    inputs = _run_refs(store.root, producer, "used.jsonl") if producer else []
    outputs: list[str] = []
    for consumer in entry["consumers"]:
        outputs += _run_refs(store.root, consumer, "logged.jsonl")
    return {"inputs": list(dict.fromkeys(inputs)), "runs": runs, "outputs": list(dict.fromkeys(outputs))}



def logged_artifacts(root: Path, project: str, run_id: str) -> list[Artifact]:
    """The versions a run logged, in order, each once (what an MLflow mirror uploads)."""
    store = _Store(root)
    out: list[Artifact] = []
    for ref in _run_refs(root, {"project": project, "id": run_id}, "logged.jsonl"):
        name, spec = _parse_ref(ref)
        index = store.read(project, name)
        if index is None:
            raise LookupError(f"run {run_id} logged artifact {ref!r}, which is not in the store at {root}")
        entry = _resolve(index, spec, ref)
        artifact = Artifact(name, index["type"], entry["description"], entry["metadata"])
        _fill(artifact, root, project, index, entry)
        out.append(artifact)
    return out
