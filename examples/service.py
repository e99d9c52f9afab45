"""An async web service that trains models, driven from the same event loop as its HTTP server.

    python examples/service.py --port 8080 [--config examples/digits.sdn ...] [--writable DIR ...]

    POST   /jobs               {"config": "examples/digits.sdn", "overrides": ["train.max_epochs=3"],
                                "mode": "train_only"}  -> 201 {"id": ...}
    GET    /jobs/{id}          the job's status, epoch, iteration, metrics
    GET    /jobs/{id}/events   Server-Sent Events from engine.observe (one JSON object per event)
    DELETE /jobs/{id}          cancel: the step in flight finishes, checkpoints are flushed
    GET    /health             answers at once, also while models train
    GET    /dashboard/         the runs dashboard (aiotrain.dashboard) over $AIOTRAIN_DIR: jobs show up live

Each job runs in a job worker process of its own (``aiotrain.isolation.ProcessJob``), so jobs
running at once never share torch's RNG or settings and each reproduces its solo result;
``--in-process`` runs them as TrainJobs on this loop instead (cheaper to start, but concurrent
jobs then share torch's per-process state: see docs/sweeps.md, "What in-process jobs share").
Either way the loop keeps serving requests. Binds to 127.0.0.1 by default.

The client is not trusted. It names one of the allowed configs (``--config``, by path or file
name); the task a config names must be in the allowed tasks (``--task``; default: the tasks of
the allowed configs); overrides may only touch the allowed key prefixes (``--overridable``) and
may not hold interpolations (``${env:...}`` and the like are refused, so no environment value is
copied from client input); the resolved ``tracking.dir`` and ``checkpoint.dir`` must lie inside a
writable directory (``--writable``; default: $AIOTRAIN_DIR or ./.aiotrain). Config loading is
admitted ``--config-slots`` at a time (default 2) and answered 429 beyond that, so no burst of
heavy configs can occupy the I/O threads that running jobs write their checkpoints with. A job
that ends releases its resources at once (its worker process, or its engines, model and open
files): what remains is a small summary, and only the newest ``--keep`` (default 100) are kept.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from aiotrain import Events
from aiotrain.cli.train import load_config
from aiotrain.config import Conf, ConfigError
from aiotrain.dashboard import dashboard_app
from aiotrain.isolation import ProcessJob
from aiotrain.job import TrainJob
from aiotrain.runtime import start_job_server, to_io

LOG_LINES = 20


@dataclass
class Job:
    id: str
    job: TrainJob | ProcessJob | None
    task: asyncio.Task[Any] | None = None
    status: str = "pending"
    error: str | None = None
    exit_code: int | None = None
    log: list[str] = field(default_factory=list)
    final: dict[str, Any] | None = None

    def view(self) -> dict[str, Any]:
        if self.final is not None:
            return self.final
        job = self.job
        st = job.trainer.state if job is not None and job.trainer is not None else None
        ev = job.evaluator.state if job is not None and job.evaluator is not None else None
        return {"id": self.id, "status": self.status, "error": self.error, "exit_code": self.exit_code,
                "epoch": st.epoch if st else 0, "iteration": st.iteration if st else 0,
                "metrics": {k: float(v) for k, v in (ev.metrics if ev else {}).items()},
                "log": self.log[-LOG_LINES:]}

    def echo(self, line: str) -> None:
        self.log.append(line)
        del self.log[:-LOG_LINES]  # bounded: a long job's progress never grows the service

    def release(self) -> None:
        """The job ended: keep its last view, drop the job (engines, model, loaders, files)."""
        self.final = self.view()
        self.job = None


class Policy:
    """What a client may ask for: which configs and tasks, which keys it may override, where
    jobs may write. Every refusal is one line naming what was refused and what is allowed."""

    def __init__(self, configs: Sequence[str], tasks: Sequence[str] = (), writable: Sequence[str] = (),
                 overridable: Sequence[str] = ("seed", "train.", "optim.", "model.")) -> None:
        self.configs = {Path(c).resolve() for c in configs}
        self.tasks = set(tasks)
        self.writable = [Path(w).resolve() for w in writable or
                         [os.environ.get("AIOTRAIN_DIR") or ".aiotrain"]]
        self.overridable = tuple(overridable)

    def config_path(self, name: Any) -> Path:
        if not isinstance(name, str):
            raise PermissionError("config must be a string naming an allowed config")
        for path in self.configs:
            if Path(name).resolve() == path or name == path.name:
                return path
        raise PermissionError(f"config {name!r} is not allowed; allowed: "
                              f"{sorted(p.name for p in self.configs)}")

    def check_overrides(self, overrides: list[Any]) -> list[str]:
        for item in overrides:
            if not isinstance(item, str) or "=" not in item:
                raise ValueError(f"override {item!r} is not key=value")
            key, _, value = item.partition("=")
            key = key.strip()
            if not any(key == p or p.endswith(".") and key.startswith(p) for p in self.overridable):
                raise PermissionError(f"override of {key!r} is not allowed; overridable: "
                                      f"{', '.join(self.overridable)}")
            if "${" in value:
                raise PermissionError(f"override {key!r}: interpolations are not accepted from clients")
        return overrides

    def check_config(self, cfg: Any) -> None:
        """The resolved config: an allowed task, and writes only inside writable directories."""
        task = Conf.get(cfg, "task", None)
        if task not in self.tasks:
            raise PermissionError(f"task {task!r} is not allowed; allowed: {sorted(self.tasks)}")
        for key in ("tracking.dir", "checkpoint.dir"):
            value = Conf.get(cfg, key, None)
            path = Path(value or os.environ.get("AIOTRAIN_DIR") or ".aiotrain").resolve()
            if not any(path == w or w in path.parents for w in self.writable):
                raise PermissionError(f"{key} {str(path)!r} is outside the writable directories "
                                      f"{[str(w) for w in self.writable]}")


class Service:
    """Jobs by id, and the HTTP routes over them."""

    def __init__(self, policy: Policy, *, isolate: bool = True, keep: int = 100,
                 config_slots: int = 2) -> None:
        self.policy = policy
        self.isolate = isolate
        self.keep = keep
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self._ids = itertools.count(1)
        self.config_slots = config_slots
        self._loading = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_post("/jobs", self.create)
        app.router.add_get("/jobs/{id}", self.show)
        app.router.add_get("/jobs/{id}/events", self.events)
        app.router.add_delete("/jobs/{id}", self.cancel)
        app.on_shutdown.append(self._shutdown)
        app.add_subapp("/dashboard/", dashboard_app())
        return app

    async def health(self, request: web.Request) -> web.Response:
        running = sum(j.status == "running" for j in self.jobs.values())
        return web.json_response({"ok": True, "running_jobs": running, "time": time.time()})

    async def create(self, request: web.Request) -> web.Response:
        # bounded admission, taken before the first await: config work never queues on I/O threads
        if self._loading >= self.config_slots:
            return _error(429, "busy: too many configs are being loaded; retry shortly")
        self._loading += 1
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            path = self.policy.config_path(body["config"])
            overrides = self.policy.check_overrides(list(body.get("overrides", [])))
            cfg = await to_io(load_config, str(path), overrides)
            self.policy.check_config(cfg)
            kind = ProcessJob if self.isolate else TrainJob
            train_job = kind(cfg, mode=body.get("mode", "train_only"), resume=bool(body.get("resume")),
                             progress=False)
        except PermissionError as exc:
            return _error(403, f"refused: {exc}")
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            return _error(400, f"bad request: {exc}")
        except (ConfigError, OSError) as exc:
            return _error(422, f"bad config: {exc}")
        finally:
            self._loading -= 1
        job = Job(str(next(self._ids)), train_job)
        train_job.echo = job.echo
        job.task = asyncio.create_task(self._run(job))
        self.jobs[job.id] = job
        return web.json_response({"id": job.id}, status=201)

    async def _run(self, job: Job) -> None:
        job.status = "running"
        try:
            result = await job.job.run()
            job.exit_code = result.exit_code
            job.status = "completed" if result.exit_code == 0 else "failed"
        except asyncio.CancelledError:
            job.status = "cancelled"
            raise
        except Exception as exc:  # a job's failure is reported, never takes the service down
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            job.release()
            self._forget_old()

    def _forget_old(self) -> None:
        """Keep the newest ``keep`` ended jobs' summaries; running jobs are never dropped."""
        ended = [k for k, j in self.jobs.items() if j.final is not None]
        for key in ended[:max(0, len(ended) - self.keep)]:
            del self.jobs[key]

    def _job(self, request: web.Request) -> Job:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            raise web.HTTPNotFound(text=json.dumps({"error": "no such job"}), content_type="application/json")
        return job

    async def show(self, request: web.Request) -> web.Response:
        return web.json_response(self._job(request).view())

    async def events(self, request: web.Request) -> web.StreamResponse:
        job = self._job(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        train_job = job.job
        if train_job is not None:
            ready = asyncio.create_task(train_job.ready.wait())
            await asyncio.wait([ready, job.task], return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if train_job.trainer is not None and not job.task.done():
                watched = Events.ITERATION_COMPLETED | Events.EPOCH_COMPLETED | Events.COMPLETED
                async with train_job.trainer.observe(watched, maxsize=256) as stream:
                    async for snap in stream:
                        await resp.write(f"event: {snap.event.lower()}\ndata: {json.dumps(snap.to_dict())}\n\n".encode())
            del train_job  # the service keeps no reference to an ended job
            await asyncio.wait([job.task])  # the engine is done; let the job finish its bookkeeping
        await resp.write(f"event: end\ndata: {json.dumps({'status': job.status})}\n\n".encode())
        return resp

    async def cancel(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job.task is not None and not job.task.done():
            job.task.cancel()
            await asyncio.wait([job.task])
        return web.json_response(job.view())

    async def _shutdown(self, app: web.Application) -> None:
        tasks = [j.task for j in self.jobs.values() if j.task is not None and not j.task.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def serve(host: str, port: int, service: Service) -> None:
    runner = web.AppRunner(service.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]
    if service.isolate:  # job processes fork from a warm server: it imports the tasks now
        await start_job_server(["aiotrain.isolation",
                                *sorted(t.partition(":")[0] for t in service.policy.tasks if t)])
    print(f"listening on http://{host}:{bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description="aiotrain training service")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--config", action="append", help="an allowed config (repeat; default: examples/*.sdn)")
    p.add_argument("--task", action="append", help="an allowed task (default: the allowed configs' tasks)")
    p.add_argument("--writable", action="append", help="a directory jobs may write to (repeat)")
    p.add_argument("--overridable", default="seed,train.,optim.,model.",
                   help="comma-separated keys / key prefixes (ending in '.') clients may override")
    p.add_argument("--in-process", action="store_true", help="run jobs on this loop, not in worker processes")
    p.add_argument("--keep", type=int, default=100, help="ended jobs whose summaries are kept")
    p.add_argument("--config-slots", type=int, default=2, help="configs loaded at once (429 beyond)")
    a = p.parse_args()
    from aiotrain.config import sdn
    from aiotrain.runtime import run

    configs = a.config or [str(p) for p in sorted(Path(__file__).parent.glob("*.sdn"))]
    tasks = a.task or [sdn.load(c).get("task") for c in configs]  # before the loop starts
    policy = Policy(configs, tasks, a.writable or (), [k for k in a.overridable.split(",") if k])
    service = Service(policy, isolate=not a.in_process, keep=a.keep, config_slots=a.config_slots)
    try:
        run(serve(a.host, a.port, service))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
