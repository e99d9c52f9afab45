"""pytorch-ignite's own handlers and metrics attach to an aiotrain Engine (with Ignite's own
``Events``) and produce what they produce on an Ignite Engine: each scenario runs on both."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine as IgniteEngine
from ignite.engine import Events as IgniteEvents

import aiotrain

ENGINES = {"ignite": IgniteEngine, "aiotrain": aiotrain.Engine}


def run(engine, data, **kw):
    return engine.run_sync(data, **kw) if isinstance(engine, aiotrain.Engine) else engine.run(data, **kw)


def on_both(scenario):
    results = {name: scenario(cls) for name, cls in ENGINES.items()}
    assert results["aiotrain"] == results["ignite"], results
    return results["aiotrain"]


def test_early_stopping(ignite_accepts_aiotrain):
    from ignite.handlers import EarlyStopping

    def scenario(cls):
        scores = iter([0.5, 0.6, 0.55, 0.54, 0.53, 0.9, 0.9])
        trainer = cls(lambda e, b: None)
        evaluator = cls(lambda e, b: None)
        stop = EarlyStopping(patience=2, score_function=lambda e: next(scores), trainer=trainer)
        evaluator.add_event_handler(IgniteEvents.COMPLETED, stop)
        trainer.add_event_handler(IgniteEvents.EPOCH_COMPLETED, lambda e: run(evaluator, [0]))
        return run(trainer, [1, 2], max_epochs=7).epoch

    assert on_both(scenario) == 4


def test_model_checkpoint_and_checkpoint_with_disk_saver_roundtrip(tmp_path: Path):
    from ignite.handlers import Checkpoint, DiskSaver, ModelCheckpoint

    def scenario(cls):
        root = tmp_path / cls.__module__.split(".")[0]
        torch.manual_seed(0)
        model = torch.nn.Linear(2, 1)
        trainer = cls(lambda e, b: model.weight.data.add_(1.0))
        trainer.add_event_handler(IgniteEvents.EPOCH_COMPLETED,
                                  ModelCheckpoint(root / "mc", "m", n_saved=2, require_empty=False),
                                  {"model": model})
        ckpt = Checkpoint({"model": model, "trainer": trainer}, DiskSaver(root / "ck"), n_saved=1)
        trainer.add_event_handler(IgniteEvents.ITERATION_COMPLETED(every=3), ckpt)
        run(trainer, [0, 1], max_epochs=3)
        saved = sorted(p.name for p in (root / "mc").iterdir())
        last = ckpt.last_checkpoint
        fresh_model, fresh = torch.nn.Linear(2, 1), cls(lambda e, b: None)
        Checkpoint.load_objects({"model": fresh_model, "trainer": fresh}, torch.load(last))
        return saved, Path(last).name, fresh_model.weight.tolist(), fresh.state.iteration, fresh.state.epoch

    saved, last, _, iteration, epoch = on_both(scenario)
    assert saved == ["m_model_4.pt", "m_model_6.pt"] and last == "checkpoint_6.pt"
    assert (iteration, epoch) == (6, 3)


def test_timer_counts_steps():
    from ignite.handlers import Timer

    def scenario(cls):
        trainer = cls(lambda e, b: None)
        timer = Timer(average=True)
        timer.attach(trainer, start=IgniteEvents.EPOCH_STARTED, resume=IgniteEvents.ITERATION_STARTED,
                     pause=IgniteEvents.ITERATION_COMPLETED, step=IgniteEvents.ITERATION_COMPLETED)
        run(trainer, range(5), max_epochs=2)
        return timer.step_count, timer.value() >= 0.0

    assert on_both(scenario) == (5.0, True)


def test_terminate_on_nan():
    from ignite.handlers import TerminateOnNan

    def scenario(cls):
        trainer = cls(lambda e, b: torch.tensor(float("nan") if b == 3 else 1.0))
        trainer.add_event_handler(IgniteEvents.ITERATION_COMPLETED, TerminateOnNan())
        return run(trainer, range(6), max_epochs=2).iteration

    assert on_both(scenario) == 4


def test_tqdm_progress_bar(capsys):
    from ignite.handlers import ProgressBar

    def scenario(cls):
        trainer = cls(lambda e, b: float(b))
        ProgressBar(persist=True).attach(trainer, output_transform=lambda x: {"loss": x})
        run(trainer, range(4), max_epochs=2)
        err = capsys.readouterr().err
        return "4/4" in err and "loss=3" in err

    assert on_both(scenario) is True


def test_ignite_metrics_attach_and_agree():
    from ignite.metrics import Accuracy, Loss, RunningAverage

    torch.manual_seed(0)
    batches = [(torch.randn(8, 3), torch.randint(0, 3, (8,))) for _ in range(5)]

    def scenario(cls):
        evaluator = cls(lambda e, b: b)
        Accuracy().attach(evaluator, "acc")
        Loss(torch.nn.functional.cross_entropy).attach(evaluator, "loss")
        RunningAverage(output_transform=lambda o: float(o[0].sum())).attach(evaluator, "ra")
        metrics = run(evaluator, batches).metrics
        return {k: round(float(v), 6) for k, v in metrics.items()}

    got = on_both(scenario)
    assert set(got) == {"acc", "loss", "ra"} and not math.isnan(got["loss"])


def _output_logger_scenario(make_logger, read, prepare=None):
    def scenario(cls):
        trainer = cls(lambda e, b: float(b) * 2)
        logger, handler = make_logger(cls)
        if prepare is not None and cls is aiotrain.Engine:
            prepare(trainer, logger)
        logger.attach(trainer, log_handler=handler, event_name=IgniteEvents.ITERATION_COMPLETED(every=2))
        run(trainer, range(4), max_epochs=1)
        logger.close()
        return read(cls)

    return on_both(scenario)


def test_tensorboard_logger(tmp_path: Path):
    from ignite.handlers import TensorboardLogger
    from ignite.handlers.tensorboard_logger import OutputHandler
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def make(cls):
        return (TensorboardLogger(log_dir=tmp_path / cls.__module__),
                OutputHandler(tag="train", output_transform=lambda o: {"loss": o}))

    def read(cls):
        acc = EventAccumulator(str(tmp_path / cls.__module__))
        acc.Reload()
        return [(s.step, s.value) for s in acc.Scalars("train/loss")]

    assert _output_logger_scenario(make, read) == [(2, 2.0), (4, 6.0)]


def test_mlflow_logger(tmp_path: Path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from ignite.handlers import MLflowLogger
    from ignite.handlers.mlflow_logger import OutputHandler
    from mlflow.tracking import MlflowClient

    loggers = {}

    def make(cls):
        uri = f"file://{tmp_path / cls.__module__}"
        loggers[cls] = (MLflowLogger(tracking_uri=uri), uri)
        return loggers[cls][0], OutputHandler(tag="train", output_transform=lambda o: {"loss": o})

    def read(cls):
        logger, uri = loggers[cls]
        hist = MlflowClient(uri).get_metric_history(logger.active_run.info.run_id, "train loss")
        return [(m.step, m.value) for m in hist]

    def prepare(trainer, logger):
        # MLflow's active run is thread-local and sync handlers run on the compute thread:
        # make the logger's run active there too (the documented recipe, docs/engine.md)
        import mlflow

        run_id = logger.active_run.info.run_id
        trainer.add_event_handler(aiotrain.Events.STARTED, lambda: mlflow.start_run(run_id=run_id))
        trainer.add_event_handler(aiotrain.Events.COMPLETED, lambda: mlflow.end_run())

    assert _output_logger_scenario(make, read, prepare) == [(2, 2.0), (4, 6.0)]


def test_wandb_logger_offline(tmp_path: Path, monkeypatch):
    pytest.importorskip("wandb")
    from ignite.handlers import WandBLogger
    from ignite.handlers.wandb_logger import OutputHandler

    monkeypatch.setenv("WANDB_SILENT", "true")
    logged = {}

    def make(cls):
        logger = WandBLogger(mode="offline", dir=str(tmp_path), project="compat")
        seen = logged.setdefault(cls, [])
        original = logger._wandb.log
        monkeypatch.setattr(logger._wandb, "log", lambda data, step=None, **kw:
                            (seen.append((step, data.get("train/loss"))), original(data, step=step, **kw)))
        return logger, OutputHandler(tag="train", output_transform=lambda o: {"loss": o})

    import wandb

    try:
        assert _output_logger_scenario(make, lambda cls: logged[cls]) == [(2, 2.0), (4, 6.0)]
    finally:
        wandb.teardown()  # stops the wandb-core service process: no child left behind
