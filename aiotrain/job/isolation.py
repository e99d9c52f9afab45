"""Job isolation: a TrainJob in a worker process of its own, with TrainJob's public face.

torch keeps some state per process: the global RNG (seeding, dropout, ``randperm``), the number
of intra-op threads, deterministic-algorithm and anomaly-detection flags, the default dtype.
Two TrainJobs on one event loop share all of it, so neither reproduces its solo result (their
RNG draws interleave). ``ProcessJob(cfg, ...)`` runs the same pipeline in a job worker process
(``runtime.JobProcess``), so a job's result never depends on what runs beside it.

The parent keeps TrainJob's face, the ``Job`` protocol (``protocol.py``): ``await job.run()``
returns a JobResult; ``job.ready`` is set once the engines, the run's identity and its tracked
run exist in the child (``job.identity`` and ``job.run_dir`` say which); ``job.trainer`` and
``job.evaluator`` are ``RemoteEngine`` views with the last known ``state`` (epoch, iteration,
output, metrics), ``observe(...)`` streams (the same Snapshots, the same filters, the same
drop-oldest bound) and ``terminate()``; ``job.stop(reason)`` stops the child's job; ``echo``
receives the job's progress lines, ``on_score`` and ``on_evaluation`` its evaluations (each a
round trip to the parent: that is where a sweep's pruner lives). Cancelling the task that awaits
``run()`` cancels the job in the child (the step in flight ends, checkpoint writes are flushed,
the tracked run is marked ``interrupted``), then the process exits; checkpoints are files, so
they cross the boundary as they are.

``run_evaluated(job, on_evaluation)`` runs any job and calls ``on_evaluation(epoch, metrics)``
after every evaluation; a true answer stops training after that epoch (its checkpoints are
still written).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from ..config import Conf, Config
from ..engine import Snapshot, State
from ..engine.observe import Observer, plain
from ..events import EventKey, Events, EventsList, FilteredEvent, resolve_events
from ..runtime import JobChannel, JobProcess
from ..validation import ValidationMode
from .identity import RunIdentity
from .protocol import EngineView, EvaluationHook, Job, ScoreListener
from .settings import TrainSettings, load_settings
from .train_job import JobResult, TrainJob

__all__ = ["EvaluationHook", "ProcessJob", "RemoteEngine", "run_evaluated"]

# what the child forwards: enough for progress views and the usual observers
_TRAINER_EVENTS = (Events.STARTED | Events.EPOCH_STARTED | Events.ITERATION_COMPLETED
                   | Events.EPOCH_COMPLETED | Events.COMPLETED)
_EVALUATOR_EVENTS = Events.STARTED | Events.COMPLETED
_ITERATION_COUNTED = {Events.ITERATION_STARTED, Events.ITERATION_COMPLETED}
_EPOCH_COUNTED = {Events.EPOCH_STARTED, Events.EPOCH_COMPLETED}


class RemoteEngine:
    """The parent's view of an engine that runs in a job worker process.

    ``state`` follows the child's engine (epoch, iteration, output scalars, metrics), updated
    from the forwarded events: STARTED, EPOCH_STARTED, ITERATION_COMPLETED, EPOCH_COMPLETED and
    COMPLETED for the trainer, STARTED and COMPLETED for the evaluator. ``observe`` takes those
    events (with filters) and works as ``Engine.observe``; ``terminate()`` asks the child's
    engine to stop after the current event.
    """

    def __init__(self, name: str, send: Callable[[str, Any], None]) -> None:
        self.name = name
        self.state = State()
        self._send = send
        self._observers: dict[EventKey, list[Observer]] = {}
        self._counts: dict[EventKey, int] = {}
        self._finished = False

    @contextlib.asynccontextmanager
    async def observe(self, *events: object, maxsize: int = 256) -> AsyncIterator[AsyncIterator[Snapshot]]:
        """``async with view.observe(Events.X) as stream: async for snap in stream`` (see Engine)."""
        obs = Observer(maxsize)
        allowed = set(resolve_events(_TRAINER_EVENTS if self.name == "trainer" else _EVALUATOR_EVENTS))
        keys = []
        for ev in events or (Events.ITERATION_COMPLETED,):
            for key, flt in resolve_events(ev):
                if (key, None) not in allowed:
                    raise ValueError(f"{key!r} is not forwarded from a job process's {self.name}")
                obs.filters[key] = flt
                keys.append(key)
                self._observers.setdefault(key, []).append(obs)
        if self._finished:
            obs.close()
        try:
            yield obs
        finally:
            for key in keys:
                self._observers[key].remove(obs)

    def terminate(self) -> None:
        """Ask the engine in the child to stop after the current event (as ``Engine.terminate``)."""
        self._send("terminate", self.name)

    def _on_snapshot(self, snap: Snapshot) -> None:
        event = Events[snap.event]
        st = self.state
        st.epoch, st.iteration = snap.epoch, snap.iteration
        if snap.output:
            st.output = snap.output
        if snap.metrics:
            st.metrics = dict(snap.metrics)
        if event in _ITERATION_COUNTED:
            count = snap.iteration
        elif event in _EPOCH_COUNTED:
            count = snap.epoch
        else:
            count = self._counts[event] = self._counts.get(event, 0) + 1
        for obs in self._observers.get(event, ()):
            if obs.wants(self, event, count):  # filters read only ``.state``
                obs.push(snap)

    def _close(self, final: bool = False) -> None:
        """The child's run of this engine ended: end the current streams."""
        self._finished = self._finished or final
        for observers in self._observers.values():
            for obs in observers:
                obs.close()


class ProcessJob:
    """A TrainJob run in a job worker process of its own (see the module docstring).

    The same arguments as TrainJob except ``parts`` (objects that cannot cross a process
    boundary: give them to the Task instead); ``progress`` defaults to False (the worker shares
    the parent's terminal); ``grace`` is the seconds a cancelled worker gets to flush its
    checkpoints before it is killed. The config is checked here, strictly, as TrainJob does.
    """

    def __init__(self, cfg: Config, *, mode: ValidationMode | str = ValidationMode.TRAIN_ONLY,
                 resume: bool | str = False, progress: bool = False,
                 echo: Callable[[str], None] = print, force: bool = False,
                 on_score: ScoreListener | None = None, on_evaluation: EvaluationHook | None = None,
                 grace: float = 60.0) -> None:
        self.settings: TrainSettings
        self.settings, self.cfg = load_settings(cfg)
        self.mode = ValidationMode(mode)
        self.resume, self.force, self.progress, self.echo = resume, force, progress, echo
        self.on_score = on_score
        self.on_evaluation = on_evaluation
        self.grace = grace
        self.trainer = RemoteEngine("trainer", self._send)
        self.evaluator = RemoteEngine("evaluator", self._send)
        self.ready = asyncio.Event()
        self.stop_reason: str | None = None
        self.identity: RunIdentity | None = None
        self.run_dir: str | None = None
        self.pid: int | None = None
        self._proc: JobProcess[JobResult] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def run(self) -> JobResult:
        """Train in a fresh worker process; the JobResult (or the job's exception) comes back."""
        cfg = Conf.to_dict(self.cfg)
        self._proc = JobProcess(_train_in_worker, cfg, self.mode.value, self.resume, self.force,
                                self.progress, self.on_score is not None,
                                self.on_evaluation is not None, on_message=self._on_message,
                                grace=self.grace, name=f"aiotrain-job-{self.settings.tracking.project}")
        try:
            async with self._proc as proc:
                self.pid = proc.pid
                if self.stop_reason is not None:  # stopped before the worker existed
                    self._send("stop", self.stop_reason)
                result: JobResult = await proc.wait()
                return result
        finally:
            for task in self._pending:
                task.cancel()
            self.trainer._close(final=True)
            self.evaluator._close(final=True)

    def stop(self, reason: str) -> None:
        """End the job after the step in flight (``TrainJob.stop`` in the worker)."""
        self.stop_reason = reason
        self._send("stop", reason)

    def _send(self, kind: str, payload: Any) -> None:
        if self._proc is not None:
            with contextlib.suppress(RuntimeError):  # the worker has ended: nothing to tell it
                self._proc.send(kind, payload)

    def _on_message(self, kind: str, payload: Any) -> None:
        if kind == "event":
            name, snap = payload
            (self.trainer if name == "trainer" else self.evaluator)._on_snapshot(snap)
        elif kind == "echo":
            self.echo(payload)
        elif kind == "ready":
            self.identity = RunIdentity(payload["id"], payload["project"], payload["name"],
                                        Path(payload["dir"]), {})
            self.run_dir = payload["run_dir"]
            self.ready.set()
        elif kind == "closed":
            (self.trainer if payload == "trainer" else self.evaluator)._close()
        elif kind == "score" and self.on_score is not None:
            self._spawn(self._score(*payload))
        elif kind == "evaluated":
            self._spawn(self._verdict(*payload))

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _score(self, epoch: int, score: float, metrics: dict[str, float]) -> None:
        assert self.on_score is not None
        result = self.on_score(epoch, score, metrics)
        if inspect.isawaitable(result):
            await result

    async def _verdict(self, epoch: int, metrics: dict[str, Any]) -> None:
        assert self.on_evaluation is not None
        try:
            stop = self.on_evaluation(epoch, metrics)
            if inspect.isawaitable(stop):
                stop = await stop
        except Exception as exc:  # the child must get an answer, or it waits forever
            self._send("verdict", ("error", f"{type(exc).__name__}: {exc}"))
            raise
        self._send("verdict", ("ok", bool(stop)))


async def run_evaluated(job: Job, on_evaluation: EvaluationHook | None = None
                        ) -> tuple[JobResult, bool]:
    """Run ``job`` (any ``Job``), calling ``on_evaluation(epoch, metrics)`` after every
    evaluation; a true answer stops the job after that epoch's handlers (checkpoints included).
    Returns the JobResult and whether ``on_evaluation`` stopped the job."""
    stopped = False
    if on_evaluation is not None:
        hook = on_evaluation

        async def judged(epoch: int, metrics: dict[str, Any]) -> bool:
            nonlocal stopped
            verdict = hook(epoch, metrics)
            if inspect.isawaitable(verdict):
                verdict = await verdict
            stopped = stopped or bool(verdict)
            return bool(verdict)

        job.on_evaluation = judged
    return await job.run(), stopped


# the worker's side -------------------------------------------------------------------------------
async def _train_in_worker(channel: JobChannel, cfg: dict[str, Any], mode: str, resume: bool | str,
                           force: bool, progress: bool, scores: bool, evaluations: bool) -> JobResult:
    """Runs in the job worker process: the TrainJob, its forwarded events and its verdicts."""
    loop = asyncio.get_running_loop()
    verdicts: list[asyncio.Future[tuple[str, bool | str]]] = []  # ("ok", stop) or ("error", why)

    def on_score(epoch: int, score: float, metrics: dict[str, float]) -> None:
        channel.send("score", (epoch, score, metrics))

    async def ask_parent(epoch: int, metrics: dict[str, Any]) -> bool:
        fut = loop.create_future()
        verdicts.append(fut)
        channel.send("evaluated", (epoch, metrics))
        status, answer = await fut
        if status == "error":
            raise RuntimeError(f"on_evaluation failed in the parent process: {answer}")
        return bool(answer)

    job = TrainJob(Conf.from_dict(cfg), mode=mode, resume=resume, force=force, progress=progress,
                   echo=lambda line: channel.send("echo", str(line)),
                   on_score=on_score if scores else None,
                   on_evaluation=ask_parent if evaluations else None)

    def on_message(kind: str, payload: Any) -> None:
        if kind == "terminate":
            engine = job.trainer if payload == "trainer" else job.evaluator
            if engine is not None:
                engine.terminate()
        elif kind == "stop":
            job.stop(str(payload))
        elif kind == "verdict" and verdicts:
            fut = verdicts.pop(0)
            if not fut.done():
                fut.set_result(payload)

    channel.on_message = on_message
    runner = asyncio.create_task(job.run())
    forwarders: list[asyncio.Task[None]] = []
    try:
        ready = asyncio.create_task(job.ready.wait())
        await asyncio.wait([ready, runner], return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if job.ready.is_set():
            forwarders = [asyncio.create_task(_forward(channel, "trainer", job.trainer, _TRAINER_EVENTS)),
                          asyncio.create_task(_forward(channel, "evaluator", job.evaluator, _EVALUATOR_EVENTS))]
            identity = job.identity
            assert identity is not None  # it exists once the job is ready
            channel.send("ready", {"id": identity.id, "project": identity.project,
                                   "name": identity.name, "dir": str(identity.dir),
                                   "run_dir": job.run_dir})
        result = await runner
    finally:
        runner.cancel()
        for task in forwarders:
            task.cancel()
        await asyncio.gather(runner, *forwarders, return_exceptions=True)
    return _portable(result)


async def _forward(channel: JobChannel, name: str, engine: EngineView | None,
                   events: EventsList | FilteredEvent) -> None:
    """Stream one engine's events to the parent, run after run (the evaluator runs every epoch);
    a job without that engine (no evaluator) forwards nothing."""
    if engine is None:
        return
    while True:
        async with engine.observe(events, maxsize=1024) as stream:
            async for snap in stream:
                channel.send("event", (name, snap))
        channel.send("closed", name)


def _portable(result: JobResult) -> JobResult:
    """The JobResult without what cannot cross a process boundary (tensors, loaders, batches)."""
    st = result.state
    state = None
    if st is not None:
        state = State(epoch=st.epoch, iteration=st.iteration, epoch_iteration=st.epoch_iteration,
                      max_epochs=st.max_epochs, epoch_length=st.epoch_length,
                      metrics=plain(st.metrics), times=dict(st.times), seed=st.seed)
    return dataclasses.replace(result, metrics=plain(result.metrics), state=state)
