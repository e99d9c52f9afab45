"""The job service: training jobs submitted over HTTP, run on this loop's server, bounded.

:class:`JobService` holds the jobs by id and answers the job API through framework-neutral
routes (:meth:`JobService.routes`, with the runs dashboard mounted under ``/dashboard/``):

    POST   /jobs               {"config": "digits.sdn", "overrides": ["train.max_epochs=3"],
                                "mode": "train_only"}  -> 201 {"id": ..., "status": "pending"}
    GET    /jobs/{id}          the job's status, epoch, iteration, metrics, last log lines
    GET    /jobs/{id}/events   Server-Sent Events from engine.observe (one JSON object per event)
    DELETE /jobs/{id}          cancel: the step in flight finishes, checkpoints are flushed
    GET    /health             answers at once, also while models train

Each job runs in a job worker process of its own (ProcessJob), or as a TrainJob on this loop
(``isolate=False``: cheaper, but concurrent jobs share torch's per-process state). At most
``max_running`` jobs train at once; up to ``max_queued`` more wait their turn (status
``pending``), and a submission past that is answered 429. Config loading is admitted ``config_slots`` at a time (429 beyond),
so a burst of heavy configs cannot occupy the I/O threads running jobs write checkpoints with.
An ended job releases its resources at once; the newest ``keep`` summaries are kept.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from ..config import ConfigError
from ..events import Events
from ..runtime import to_io
from ..web.http import HTTPError, Request, Response, Routes, json_response
from .policy import Policy

if TYPE_CHECKING:
    from ..config import Config
    from ..job.protocol import Job as TrainingJob

__all__ = ["Job", "JobService", "JobView", "load_config"]
LOG_LINES = 20


def load_config(path: str, overrides: list[str]) -> Config:
    """The config file merged with the overrides and resolved (the same as ``aiotrain train``)."""
    from ..cli.train import load_config as load

    return load(path, overrides)


class JobView(TypedDict):
    """What GET /jobs/{id} answers."""

    id: str
    status: str
    error: str | None
    exit_code: int | None
    epoch: int
    iteration: int
    metrics: dict[str, float]
    log: list[str]


@dataclass
class Job:
    """One submitted job: its TrainJob or ProcessJob until it ends, then its last view only."""

    id: str
    job: TrainingJob | None  # a TrainJob or a ProcessJob, until it ends
    task: asyncio.Task[None] | None = None
    status: str = "pending"
    error: str | None = None
    exit_code: int | None = None
    log: list[str] = field(default_factory=list)
    final: JobView | None = None

    def view(self) -> JobView:
        """What GET /jobs/{id} answers."""
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


class JobService:
    """Jobs by id, their bounds, and the job API over them (see the module docstring)."""

    def __init__(self, policy: Policy, *, isolate: bool = True, keep: int = 100, config_slots: int = 2,
                 max_running: int = 2, max_queued: int = 8, dashboard: str | Path | None = None) -> None:
        if max_running < 1 or max_queued < 0:
            raise ValueError("max_running must be at least 1 and max_queued not negative")
        self.policy = policy
        self.isolate = isolate
        self.keep = keep
        self.config_slots = config_slots
        self.max_running, self.max_queued = max_running, max_queued
        self.dashboard = dashboard
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self._ids = itertools.count(1)
        self._loading = 0
        self._slots = asyncio.Semaphore(max_running)

    async def astart(self) -> None:
        """Start the loop's job server now, importing the allowed tasks, so that the first job
        starts as fast as later ones (job processes fork from it; ``serve`` calls this once
        bound; an ASGI app may call it in its lifespan). Nothing to do in-process."""
        if self.isolate:
            from ..runtime import start_job_server

            tasks = sorted(t.partition(":")[0] for t in self.policy.tasks if t)
            await start_job_server(["aiotrain.job.isolation", *tasks])

    # the job API ------------------------------------------------------------------------------------
    def routes(self) -> Routes:
        """The job API's routes, with the runs dashboard (over ``dashboard``, default the tracking
        root in use) mounted under ``/dashboard/``."""
        from ..dashboard.app import dashboard_routes

        r = Routes()
        r.add("GET", "/health", self._health)
        r.add("POST", "/jobs", self._create)
        r.add("GET", "/jobs/{id}", self._show)
        r.add("GET", "/jobs/{id}/events", self._events)
        r.add("DELETE", "/jobs/{id}", self._cancel)
        r.mount("/dashboard", dashboard_routes(self.dashboard))
        return r

    async def _health(self, request: Request, params: dict[str, str]) -> Response:
        return json_response({"ok": True, "running_jobs": self.count("running"),
                              "pending_jobs": self.count("pending"), "time": time.time()})

    async def _create(self, request: Request, params: dict[str, str]) -> Response:
        job = await self.asubmit(request.json())
        return json_response({"id": job.id, "status": job.status}, 201)

    async def _show(self, request: Request, params: dict[str, str]) -> Response:
        return json_response(self.get(params["id"]).view())

    async def _events(self, request: Request, params: dict[str, str]) -> Response:
        job = self.get(params["id"])
        return Response(200, self.events(job, request.disconnected), "text/event-stream",
                        {"Cache-Control": "no-cache"})

    async def _cancel(self, request: Request, params: dict[str, str]) -> Response:
        return json_response(await self.acancel(params["id"]))

    # the jobs -----------------------------------------------------------------------------------------
    def count(self, status: str) -> int:
        return sum(j.status == status for j in self.jobs.values())

    async def asubmit(self, body: object) -> Job:
        """Check ``body`` against the policy and the bounds, create the job and queue it.
        Raises HTTPError: 400 malformed, 403 refused by the policy, 422 a bad config, 429 busy."""
        # bounded admission, taken before the first await: config work never queues on I/O threads
        running, pending = self.count("running"), self.count("pending")
        if running + pending + self._loading >= self.max_running + self.max_queued:
            raise HTTPError(429, f"busy: {running} jobs running and {pending} waiting (at most "
                                 f"{self.max_running} + {self.max_queued}); retry later",
                            {"Retry-After": "30"})
        if self._loading >= self.config_slots:
            raise HTTPError(429, "busy: too many configs are being loaded; retry shortly", {"Retry-After": "1"})
        self._loading += 1
        try:
            job = await self._build(body)
        finally:
            self._loading -= 1
        record = Job(str(next(self._ids)), job)
        job.echo = record.echo
        record.task = asyncio.create_task(self._run(record))
        self.jobs[record.id] = record
        return record

    async def _build(self, body: object) -> TrainingJob:
        from ..job import TrainJob
        from ..job.isolation import ProcessJob

        try:
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            path = self.policy.config_path(body.get("config"))
            overrides = self.policy.check_overrides(body.get("overrides", []))
            cfg = await to_io(load_config, str(path), overrides)
            self.policy.check_config(cfg)
            kind = ProcessJob if self.isolate else TrainJob
            return kind(cfg, mode=body.get("mode", "train_only"), resume=bool(body.get("resume")),
                        progress=False)
        except PermissionError as exc:
            raise HTTPError(403, f"refused: {exc}") from None
        except ConfigError as exc:
            raise HTTPError(422, f"bad config: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise HTTPError(400, f"bad request: {exc}") from None
        except OSError as exc:
            raise HTTPError(422, f"bad config: {exc}") from None

    async def _run(self, job: Job) -> None:
        training = job.job
        assert training is not None  # released only once this ends
        try:
            async with self._slots:  # queued until one of max_running slots is free
                job.status = "running"
                result = await training.run()
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
        """Keep the newest ``keep`` ended jobs' summaries; live jobs are never dropped."""
        ended = [k for k, j in self.jobs.items() if j.final is not None]
        for key in ended[:max(0, len(ended) - self.keep)]:
            del self.jobs[key]

    def get(self, job_id: str) -> Job:
        """The job ``job_id``; HTTPError 404 when there is none."""
        job = self.jobs.get(job_id)
        if job is None:
            raise HTTPError(404, f"no job {job_id[:100]!r}")
        return job

    async def acancel(self, job_id: str) -> JobView:
        """Cancel the job (queued or running) and wait until it has ended; its last view."""
        job = self.get(job_id)
        if job.task is not None and not job.task.done():
            job.task.cancel()
            await asyncio.wait([job.task])
        return job.view()

    async def events(self, job: Job, disconnected: Callable[[], bool] = lambda: False) -> AsyncIterator[bytes]:
        """The job's engine events as SSE, then an ``end`` event with its final status; stops
        at the next event after ``disconnected()`` says the client has gone."""
        train_job, task = job.job, job.task
        if train_job is not None and task is not None:
            ready = asyncio.create_task(train_job.ready.wait())
            await asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if train_job.trainer is not None and not task.done():
                watched = Events.ITERATION_COMPLETED | Events.EPOCH_COMPLETED | Events.COMPLETED
                async with train_job.trainer.observe(watched, maxsize=256) as stream:
                    async for snap in stream:
                        if disconnected():
                            return
                        yield f"event: {snap.event.lower()}\ndata: {json.dumps(snap.to_dict())}\n\n".encode()
            del train_job  # the service keeps no reference to an ended job
            await asyncio.wait([task])  # the engine is done; let the job finish its bookkeeping
        yield f"event: end\ndata: {json.dumps({'status': job.status})}\n\n".encode()

    async def shutdown(self) -> None:
        """Cancel every live job and wait for them to end."""
        tasks = [j.task for j in self.jobs.values() if j.task is not None and not j.task.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks)
