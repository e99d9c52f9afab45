"""The training pipeline behind ``aiotrain train`` and services: TrainJob, Task, TrainSettings.

- ``settings``: the runtime's config sections, checked strictly (TrainSettings)
- ``identity``: a run's id, checkpoint folder and what makes a resume safe
- ``task``: Task (what a config's task factory returns) and the factory call
- ``step``: the built-in train and eval steps (precision, accumulation, clipping, on_nan)
- ``parts``: the wiring as an ordered list of small parts
- ``sharding``: a train loader's share of the data under torchrun
- ``train_job``: TrainJob and JobResult
- ``isolation``: ProcessJob (a TrainJob in a worker process of its own) and ``run_evaluated``
- ``protocol``: ``Job``, the face both kinds of job show (a service or a sweep takes either)
"""

from typing import TYPE_CHECKING

from .isolation import ProcessJob, RemoteEngine, run_evaluated
from .parts import JobContext, On, Part
from .protocol import EngineView, EvaluationHook, Job
from .settings import TrainSettings
from .step import NonFiniteError
from .task import Task, default_prepare_batch
from .train_job import JobResult, TrainJob

__all__ = ["EngineView", "EvaluationHook", "Job", "JobContext", "JobResult", "NonFiniteError", "On",
           "Part", "ProcessJob", "RemoteEngine", "Task", "TrainJob", "TrainSettings",
           "default_prepare_batch", "run_evaluated"]

if TYPE_CHECKING:  # `make lint` checks that both kinds of job are a Job, member by member
    _JOBS: tuple[type[Job], ...] = (TrainJob, ProcessJob)
