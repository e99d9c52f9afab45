"""The dashboard's web app: runs table, charts, live updates, run detail, artifacts.

The routes are written once over aiotrain.web's neutral requests (:meth:`Dashboard.routes`),
and served by two thin faces: ``dashboard_app(root)`` returns an ``aiohttp.web.Application``
(``aiotrain runs serve`` runs it; a service mounts it with
``app.add_subapp("/dashboard/", dashboard_app(root))``), and ``asgi_app(dir=root)`` an ASGI app
(``fastapi_app.mount("/runs", asgi_app(dir=root))``). The page uses relative URLs, so any prefix
works. Both check Host, Origin and (when set) a token through one :class:`aiotrain.web.Guard`.
Every disk read runs in the I/O executor; the loop only routes requests, encodes JSON and
streams events.

Routes (GET):
  /                          the single-page UI (static/index.html)
  /static/{name}             its script and style, and plotly.min.js from the installed plotly
  /api/runs                  rows: ?filter=KEY OP VALUE (repeatable) &sort=[-]KEY &q=TEXT &columns=K,K
  /api/runs/{project}/{id}   one run: metadata, config, summary, system info, metric keys, media
  /api/series                chart data: ?run=P/ID&key=K (both repeatable) &points=N, downsampled
  /api/stream                server-sent events: the points appended since the series' cursor
  /api/table/{project}/{id}  rows of a logged table: ?path=tables/...jsonl
  /api/artifacts             every artifact, its versions and aliases, and the lineage graph
  /files/{project}/{id}/{path}  a file inside that run's folder (images); nothing outside it
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from ..runtime import to_io
from ..tracking.read import HISTORIES, Column, History, RunReader, RunRow, history_of
from ..web.guard import Guard
from ..web.http import (
    HTTPError,
    Request,
    Response,
    Routes,
    decode_json,
    file_response,
    json_response,
)

if TYPE_CHECKING:
    from aiohttp import web

    from ..web.asgi_face import ASGIApp

__all__ = ["POLL_S", "Dashboard", "asgi_app", "dashboard_app", "dashboard_routes"]

POLL_S = 0.25  # how often a live stream looks for new lines
_STATIC = Path(__file__).parent / "static"
_SERIES_FILES = 64  # parsed histories kept in memory (least recently used dropped)
_MAX_POINTS = 20_000


def dashboard_app(root: str | os.PathLike[str] | None = None, *,
                  guard: Guard | None = None) -> web.Application:
    """The dashboard over the runs under ``root`` (default: the tracking root in use) as an
    aiohttp Application; ``guard`` (default: answer to loopback names only, no token) says who
    may use it. Needs aiohttp (``pip install 'aiotrain[dashboard]'``)."""
    from ..web.aiohttp_face import aiohttp_app

    return aiohttp_app(dashboard_routes(root), guard or Guard())


def asgi_app(dir: str | os.PathLike[str] | None = None, *, allowed_hosts: tuple[str, ...] = (),
             token: str | None = None) -> ASGIApp:
    """The dashboard over the runs under ``dir`` as an ASGI app, for
    ``app.mount("/runs", asgi_app(dir=...))`` in FastAPI or Starlette. It answers to the
    loopback names and ``allowed_hosts``; with ``token`` every request must carry it (required
    when the app serves a network address)."""
    from ..web.asgi_face import asgi_app as face

    return face(dashboard_routes(dir), Guard.for_bind("localhost", allowed_hosts=allowed_hosts,
                                                                  token=token))


def dashboard_routes(root: str | os.PathLike[str] | None = None) -> Routes:
    """The dashboard's routes over the runs under ``root``, to mount in another app of
    aiotrain.web (the job service mounts them under ``/dashboard/``)."""
    return Dashboard(_reader(root)).routes()


def _reader(root: str | os.PathLike[str] | None) -> RunReader:
    return RunReader(root, keep=_SERIES_FILES, build_caches=True)


def _bad(message: str, status: int = 400) -> HTTPError:
    return HTTPError(status, message)


class Dashboard:
    """State shared by the routes: the run reader (index and parsed histories) and the table's
    cached rows."""

    def __init__(self, reader: RunReader) -> None:
        self.reader = reader
        self.root = reader.root
        self._row_cache: list[RunRow] = []
        self._rows_at = 0.0
        self._keys: tuple[int, tuple[list[str], list[str], list[str]]] = (-1, ([], [], []))
        self._rows_lock = asyncio.Lock()

    def routes(self) -> Routes:
        """The dashboard's routes (all GET), for either face or a mount in another app."""
        r = Routes()
        r.add("GET", "/", self._page)
        r.add("GET", "/static/{name}", self._static)
        r.add("GET", "/api/runs", self._runs)
        r.add("GET", "/api/runs/{project}/{id}", self._run_detail)
        r.add("GET", "/api/series", self._series)
        r.add("GET", "/api/stream", self._stream)
        r.add("GET", "/api/table/{project}/{id}", self._table)
        r.add("GET", "/api/artifacts", self._artifacts)
        r.add("GET", "/files/{project}/{id}/{path*}", self._file)
        return r

    # pages and assets ---------------------------------------------------------------------------
    async def _page(self, request: Request, params: dict[str, str]) -> Response:
        page = file_response(_STATIC / "index.html", trusted=True)
        page.headers["Cache-Control"] = "no-cache"
        return page

    async def _static(self, request: Request, params: dict[str, str]) -> Response:
        name = params["name"]
        if name == "plotly.min.js":
            path = await to_io(_plotly_js)
        elif name in ("app.js", "style.css"):
            path = _STATIC / name
        else:
            raise _bad(f"no static file {name!r}", 404)
        return file_response(path, trusted=True)

    # the runs table --------------------------------------------------------------------------------
    async def _current_rows(self) -> list[RunRow]:
        """The index's rows, refreshed at most once a second (concurrent callers share one)."""
        async with self._rows_lock:
            if time.monotonic() - self._rows_at >= 1.0:
                self._row_cache = await to_io(self.reader.rows)
                self._rows_at = time.monotonic()
            return self._row_cache

    async def _runs(self, request: Request, params: dict[str, str]) -> Response:
        started = time.perf_counter()
        rows = await self._current_rows()
        try:
            shown = self.reader.select(rows, request.args("filter"), request.arg("sort") or None,
                                       request.arg("q", "") or "")
        except ValueError as exc:
            raise _bad(str(exc)) from None
        columns = [c for c in (request.arg("columns") or "").split(",") if c]
        if self._keys[0] != self.reader.generation:
            self._keys = (self.reader.generation, _keys(rows))
        config_keys, metric_keys, varying = self._keys[1]
        data = [_row(r, columns) for r in shown]
        return json_response({"root": str(self.root), "total": len(rows), "rows": data,
                              "config_keys": config_keys, "metric_keys": metric_keys,
                              "varying_config": varying,
                              "elapsed_ms": round((time.perf_counter() - started) * 1000, 2)})

    # one run -----------------------------------------------------------------------------------------
    def run_dir(self, project: str, run_id: str) -> Path:
        try:
            return self.reader.run_dir(project, run_id)
        except ValueError as exc:
            raise _bad(str(exc)) from None

    async def _history(self, run_dir: Path, which: str) -> History:
        """The run's parsed metrics (or system) history, brought up to date."""
        try:
            return await to_io(self.reader.history, run_dir, which)
        except ValueError as exc:
            raise _bad(str(exc), 400) from None

    async def _run_detail(self, request: Request, params: dict[str, str]) -> Response:
        project, run_id = params["project"], params["id"]
        run_dir = self.run_dir(project, run_id)
        try:
            record = await to_io(self.reader.record, project, run_id)
        except LookupError:
            raise _bad(f"no run {project}/{run_id}", 404) from None
        metrics = await self._history(run_dir, "metrics")
        system = await self._history(run_dir, "system")
        media = await to_io(self.reader.media, metrics)
        summary = {k: v for k, v in record.summary.items() if not isinstance(v, dict)}
        logged, used = await to_io(self.reader.artifact_refs, run_dir)
        meta = record.metadata
        return json_response({
            "key": f"{record.project}/{record.id}", "id": record.id, "name": record.name,
            "project": record.project, "status": record.status, "tags": record.tags,
            "notes": meta.get("notes") or "", "created": meta.get("created_at"),
            "finished": meta.get("finished_at"), "error": meta.get("error"), "config": record.config,
            "summary": summary,
            "system": meta.get("system") or {}, "metric_keys": metrics.keys(), "system_keys": system.keys(),
            "images": media["image"], "histograms": media["histogram"], "tables": media["table"],
            "artifacts": {"logged": logged, "used": used}})

    # charts ---------------------------------------------------------------------------------------------
    def _refs(self, request: Request) -> list[tuple[str, Path]]:
        refs = request.args("run")
        if not refs:
            raise _bad("give at least one run=PROJECT/ID")
        out = []
        for ref in refs:
            project, _, run_id = ref.partition("/")
            out.append((ref, self.run_dir(project, run_id)))
        return out

    async def _series(self, request: Request, params: dict[str, str]) -> Response:
        started = time.perf_counter()
        keys = request.args("key")
        try:
            points = int(request.arg("points", "1500") or "")
        except ValueError:
            raise _bad("points must be an integer") from None
        if not 4 <= points <= _MAX_POINTS:
            raise _bad(f"points must be between 4 and {_MAX_POINTS}")
        out, cursor = [], {}
        for ref, run_dir in self._refs(request):
            files = {which: await self._history(run_dir, which) for which in HISTORIES}
            cursor[ref] = {which: f.offset for which, f in files.items()}
            for key in keys:
                found = await to_io(files[history_of(key)].downsampled, key, points)
                if found is not None:
                    out.append({"run": ref, "key": key, "total": found[0], **_points(found[1])})
        return json_response({"series": out, "cursor": cursor,
                              "elapsed_ms": round((time.perf_counter() - started) * 1000, 2)})

    async def _stream(self, request: Request, params: dict[str, str]) -> Response:
        """Server-sent events: every ``POLL_S`` the lines appended to each run's files since the
        cursor, as ``{"run", "key", "step": [...], "time": [...], "value": [...]}`` messages."""
        refs = self._refs(request)
        keys = request.args("key")
        what = "cursor (the JSON object /api/series returned)"
        cursor = decode_json(request.arg("cursor", "{}") or "{}", what)
        try:
            if not isinstance(cursor, dict):
                raise TypeError(cursor)
            offsets = {(ref, which): int(cursor.get(ref, {}).get(which, 0))
                       for ref, _ in refs for which in HISTORIES}
        except (ValueError, TypeError, AttributeError, OverflowError):
            raise _bad(f"{what} must map each run to its files' offsets") from None
        if any(o < 0 for o in offsets.values()):
            raise _bad(f"{what} holds a negative offset")
        wanted = {which: [k for k in keys if history_of(k) == which] for which in HISTORIES}
        return Response(200, self._events(request, refs, offsets, wanted), "text/event-stream",
                        {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _events(self, request: Request, refs: list[tuple[str, Path]],
                      offsets: dict[tuple[str, str], int], wanted: dict[str, list[str]]) -> AsyncIterator[bytes]:
        yield b"retry: 1000\n: connected\n\n"
        idle = 0.0
        while not request.disconnected():
            sent = False
            for ref, run_dir in refs:
                for which in HISTORIES:
                    if not wanted[which]:
                        continue
                    records, offsets[ref, which] = await to_io(
                        self.reader.tail, run_dir, which, offsets[ref, which])
                    for message in _messages(ref, wanted[which], records):
                        yield b"data: " + msgspec.json.encode(message) + b"\n\n"
                        sent = True
            idle = 0.0 if sent else idle + POLL_S
            if idle >= 15.0:  # a comment line keeps proxies from closing an idle stream
                yield b": ping\n\n"
                idle = 0.0
            await asyncio.sleep(POLL_S)

    # tables, artifacts, files -------------------------------------------------------------------------
    async def _table(self, request: Request, params: dict[str, str]) -> Response:
        run_dir = self.run_dir(params["project"], params["id"])
        path = await to_io(_inside, run_dir, request.arg("path", "") or "")
        try:
            limit = min(int(request.arg("limit", "100") or ""), 10_000)
        except ValueError:
            raise _bad("limit must be an integer") from None
        if limit < 0:
            raise _bad("limit must not be negative")
        try:
            rows = await to_io(self.reader.table, path, limit)
        except FileNotFoundError:
            raise _bad("no such table", 404) from None
        except (ValueError, KeyError, msgspec.DecodeError) as exc:
            raise _bad(f"not a table file: {exc}") from None
        return json_response(rows)

    async def _artifacts(self, request: Request, params: dict[str, str]) -> Response:
        return json_response(await to_io(self.reader.artifacts))

    async def _file(self, request: Request, params: dict[str, str]) -> Response:
        run_dir = self.run_dir(params["project"], params["id"])
        path = await to_io(_inside, run_dir, params["path"])
        if not await to_io(path.is_file):
            raise _bad("no such file", 404)
        return file_response(path)


# helpers ---------------------------------------------------------------------------------------------
def _plotly_js() -> Path:
    """plotly.min.js as shipped inside the installed ``plotly`` package (never copied here)."""
    try:
        import plotly
    except ImportError:
        raise _bad("the charts need the plotly package: pip install 'aiotrain[dashboard]'", 404) from None
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise _bad(f"{path} is missing from the installed plotly package", 404)
    return path


def _inside(run_dir: Path, rel: str) -> Path:
    """``run_dir / rel`` when it stays inside ``run_dir`` after resolving links; 403 otherwise."""
    parts = Path(rel).parts
    if not rel or Path(rel).is_absolute() or ".." in parts or "\x00" in rel:
        raise _bad(f"path {rel!r} must be relative to the run folder, without '..'", 403)
    base = run_dir.resolve()
    target = (run_dir / rel).resolve()
    if not target.is_relative_to(base):
        raise _bad(f"path {rel!r} leaves the run folder", 403)
    return target


def _points(column: Column) -> dict[str, list[Any]]:
    return {"step": column.step.tolist(), "time": column.time.tolist(), "value": column.value.tolist()}


def _messages(ref: str, keys: list[str], records: list[dict[str, Any]]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for key in keys:
        steps, times, values = [], [], []
        for r in records:
            v = r.get(key)
            if isinstance(v, str):
                v = float(v) if v in ("inf", "-inf") else None
            if isinstance(v, int | float) and not isinstance(v, bool):
                steps.append(r.get("step"))
                times.append(r.get("timestamp"))
                values.append(v)
        if values:
            out.append({"run": ref, "key": key, "step": steps, "time": times, "value": values})
    return out


def _keys(rows: list[RunRow]) -> tuple[list[str], list[str], list[str]]:
    """Config keys and metric keys by how many runs have them; config keys whose values differ."""
    config: Counter[str] = Counter()
    metrics: Counter[str] = Counter()
    values: dict[str, set[str]] = {}
    for row in rows:
        config.update(row.config.keys())  # keys, not the mapping: Counter would add its values
        metrics.update(row.summary.keys())
        for k, v in row.config.items():
            values.setdefault(k, set()).add(json.dumps(v, sort_keys=True, default=str))
    varying = [k for k, _ in config.most_common() if len(values[k]) > 1]
    return [k for k, _ in config.most_common()], [k for k, _ in metrics.most_common()], varying


def _row(row: RunRow, columns: list[str]) -> dict[str, object]:
    data = row.to_dict()
    if columns:  # only what the table shows: keeps a 1,000-run answer small
        data["config"] = {c[7:]: row.config.get(c[7:]) for c in columns if c.startswith("config.")}
        data["summary"] = {c: row.summary.get(c) for c in columns if not c.startswith("config.")
                           and c in row.summary}
    return data
