"""An async web service that trains models in-process, on the same event loop as its HTTP server.

    python examples/service.py --port 8080

    POST   /jobs               {"config": "examples/digits.sdn", "overrides": ["train.max_epochs=3"],
                                "mode": "train_only"}  -> 201 {"id": ...}
    GET    /jobs/{id}          the job's status, epoch, iteration, metrics
    GET    /jobs/{id}/events   Server-Sent Events from engine.observe (one JSON object per event)
    DELETE /jobs/{id}          cancel: the step in flight finishes, checkpoints are flushed
    GET    /health             answers at once, also while models train
    GET    /dashboard/         the runs dashboard (aiotrain.dashboard) over $AIOTRAIN_DIR: jobs show up live

Training runs as an asyncio task (TrainJob); the model's compute runs on the engine's worker
thread, so the loop keeps serving requests. Binds to 127.0.0.1 by default.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from aiotrain import Events
from aiotrain.cli.train import load_config
from aiotrain.config import ConfigError
from aiotrain.dashboard import dashboard_app
from aiotrain.job import TrainJob
from aiotrain.runtime import to_io


@dataclass
class Job:
    id: str
    job: TrainJob
    task: asyncio.Task[Any] | None = None
    status: str = "pending"
    error: str | None = None
    exit_code: int | None = None
    log: list[str] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        st = self.job.trainer.state if self.job.trainer is not None else None
        ev = self.job.evaluator.state if self.job.evaluator is not None else None
        return {"id": self.id, "status": self.status, "error": self.error, "exit_code": self.exit_code,
                "epoch": st.epoch if st else 0, "iteration": st.iteration if st else 0,
                "metrics": {k: float(v) for k, v in (ev.metrics if ev else {}).items()},
                "log": self.log[-20:]}


class Service:
    """Jobs by id, and the HTTP routes over them."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)

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
        try:
            body = await request.json()
            path, overrides = body["config"], list(body.get("overrides", []))
            cfg = await to_io(load_config, path, overrides)
            train_job = TrainJob(cfg, mode=body.get("mode", "train_only"), resume=bool(body.get("resume")),
                                 progress=False)
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            return _error(400, f"bad request: {exc}")
        except (ConfigError, OSError) as exc:
            return _error(422, f"bad config: {exc}")
        job = Job(str(next(self._ids)), train_job)
        train_job.echo = job.log.append
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
        ready = asyncio.create_task(job.job.ready.wait())
        await asyncio.wait([ready, job.task], return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if job.job.trainer is not None and not job.task.done():
            watched = Events.ITERATION_COMPLETED | Events.EPOCH_COMPLETED | Events.COMPLETED
            async with job.job.trainer.observe(watched, maxsize=256) as stream:
                async for snap in stream:
                    await resp.write(f"event: {snap.event.lower()}\ndata: {json.dumps(snap.to_dict())}\n\n".encode())
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


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(Service().app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]
    print(f"listening on http://{host}:{bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description="aiotrain training service")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    a = p.parse_args()
    from aiotrain.runtime import run

    try:
        run(serve(a.host, a.port))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
