"""TrainJob in-process: run identity and resume, numerics, stopping, services' needs."""

from __future__ import annotations

import asyncio

import pytest
import torch

from aiotrain import Events
from aiotrain.config import Conf, sdn
from aiotrain.job import TrainJob
from aiotrain.job.identity import ResumeError
from aiotrain.runtime import run
from aiotrain.tracking.reader import load_run
from tests.job import tiny_task


def config(tmp_path, **over):
    base = {"task": "tests.job.tiny_task:build", "seed": 0,
            "data": {"n": 64, "batch_size": 8}, "optim": {"lr": 0.05},
            "train": {"max_epochs": 3}, "tracking": {"project": "tiny", "dir": str(tmp_path)}}
    for key, value in over.items():
        node = base
        *head, last = key.split(".")
        for k in head:
            node = node.setdefault(k, {})
        node[last] = value
    return Conf.from_dict(base)


def job(tmp_path, lines=None, **kw):
    over = kw.pop("over", {})
    return TrainJob(config(tmp_path, **over), progress=False,
                    echo=(lines.append if lines is not None else lambda _: None), **kw)


async def interrupted_after_first_epoch(j: TrainJob) -> None:
    """Run ``j`` and cancel it right after its first evaluation."""
    evaluated = asyncio.Event()
    j.score_listeners.append(lambda epoch, score, metrics: evaluated.set())
    task = asyncio.create_task(j.run())
    await evaluated.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def status(j: TrainJob) -> str:
    return sdn.load(j.identity.dir / "run.sdn")["status"]


def test_each_run_has_its_own_id_folder_and_best_model(tmp_path):
    a, b = job(tmp_path), job(tmp_path, over={"optim.lr": 0.001})
    ra, rb = run(a.run()), run(b.run())
    assert ra.run_id != rb.run_id and a.identity.dir != b.identity.dir
    assert a.identity.dir.name == ra.run_id == load_run(ra.run_dir).id
    for j in (a, b):
        bests = sorted(j.identity.dir.glob("best_*.pt"))
        assert bests, list(j.identity.dir.iterdir())
        # the real score, not its negation
        assert all("_loss=-" not in p.name for p in bests) and "_loss=" in bests[0].name
    logged = (tmp_path / "runs" / "tiny" / rb.run_id / "artifacts" / "logged.jsonl").read_text()
    assert "tiny-model" in logged


def test_resume_continues_the_same_tracked_run_and_refuses_it_once_finished(tmp_path):
    lines: list[str] = []
    first = job(tmp_path, lines)
    run(interrupted_after_first_epoch(first))
    assert status(first) == "interrupted"
    stop = [ln for ln in lines if ln.startswith("interrupted after iteration 8 ")]
    assert stop and str(first.stop_checkpoint) in stop[0], lines
    steps_before = [r["step"] for r in load_run(tmp_path / "runs" / "tiny" / first.identity.id).history()]
    assert load_run(tmp_path / "runs" / "tiny" / first.identity.id).status == "interrupted"

    second_lines: list[str] = []
    second = job(tmp_path, second_lines, resume=True)
    result = run(second.run())
    assert result.exit_code == 0 and second.identity.id == first.identity.id
    assert any(ln.startswith(f"resume: run {first.identity.id} from ") for ln in second_lines)
    tracked = load_run(tmp_path / "runs" / "tiny" / first.identity.id)
    assert tracked.status == "finished" and result.state.epoch == 3
    steps = [r["step"] for r in tracked.history()]
    assert steps[:len(steps_before)] == steps_before and len(steps) > len(steps_before)
    assert len(list((tmp_path / "runs" / "tiny").iterdir())) == 1

    with pytest.raises(ResumeError, match=f"resume: run {first.identity.id} finished"):
        run(job(tmp_path, resume=first.identity.id).run())


def test_resume_refuses_a_config_that_differs_unless_forced(tmp_path):
    first = job(tmp_path)
    run(interrupted_after_first_epoch(first))
    with pytest.raises(ResumeError) as err:
        run(job(tmp_path, resume=True, over={"optim.lr": 0.5}).run())
    assert "optim.lr: 0.05 -> 0.5" in err.value.msg and "--force" in err.value.msg
    assert "\n" not in err.value.msg
    forced = job(tmp_path, resume=True, force=True, over={"optim.lr": 0.5})
    assert run(forced.run()).exit_code == 0 and forced.identity.id == first.identity.id


@pytest.mark.parametrize("damage, why", [("truncate", "truncated or corrupt"),
                                         ("pickle", "unsafe content")])
def test_resume_with_an_unloadable_checkpoint_is_an_error_naming_it(tmp_path, damage, why):
    first = job(tmp_path)
    run(interrupted_after_first_epoch(first))
    (path,) = first.identity.dir.glob("last_*.pt")
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    else:
        torch.save({"model": print}, path)
    with pytest.raises(ResumeError) as err:
        run(job(tmp_path, resume=True).run())
    assert str(path) in err.value.msg and why in err.value.msg, err.value.msg
    assert "weights_only=False" not in err.value.msg and "starting fresh" not in err.value.msg
    meta = sdn.load(tmp_path / "runs" / "tiny" / first.identity.id / "metadata.sdn")
    assert meta["status"] == "interrupted" and status(first) == "interrupted"  # left as it was


def test_a_nan_loss_fails_the_run_without_a_best_checkpoint_or_alias(tmp_path):
    lines: list[str] = []
    j = job(tmp_path, lines, over={"data.nan_from_iteration": 12})  # epoch 2 of 8 steps each
    result = run(j.run())
    assert (result.exit_code, result.status) == (1, "failed")
    assert status(j) == "failed" and load_run(result.run_dir).status == "failed"
    assert any(ln.startswith("failed: the training loss is nan at epoch 2") for ln in lines), lines
    bests = list(j.identity.dir.glob("best_*.pt"))
    assert [p.name.split("_")[2] for p in bests] == ["1"]  # epoch 1's, finite
    assert not (tmp_path / "artifacts").exists()  # no model logged, no alias moved


def test_a_nan_score_is_never_the_best(tmp_path):
    lines: list[str] = []
    j = job(tmp_path, lines, over={"data.nan_from_iteration": 1, "train.on_nan": "ignore",
                                   "train.max_epochs": 1})
    result = run(j.run())
    assert result.exit_code == 0
    assert not list(j.identity.dir.glob("best_*.pt"))
    assert "best: not saved, val/loss is nan" in lines


def test_early_stopping_says_so(tmp_path):
    lines: list[str] = []
    j = job(tmp_path, lines, over={"optim.lr": 0.0, "train.patience": 1, "train.max_epochs": 5})
    result = run(j.run())
    assert result.state.epoch == 2 and result.stop_reason.startswith("early stopping: val/loss")
    assert any(ln.startswith("stopped: early stopping") for ln in lines), lines


def test_everything_goes_to_echo_and_observers_see_validation_metrics(tmp_path, capsys):
    lines: list[str] = []
    j = job(tmp_path, lines, mode="check_and_train", over={"train.max_epochs": 2})
    seen = []

    async def main():
        task = asyncio.create_task(j.run())
        await j.ready.wait()
        async with j.trainer.observe(Events.EPOCH_COMPLETED) as stream:
            async for snap in stream:
                seen.append(snap.metrics)
        return await task

    tiny_task.AsyncResource.closed.clear()
    assert run(main()).exit_code == 0
    assert capsys.readouterr().out == ""
    assert any("RUNTIME VALIDATION REPORT" in ln for ln in lines)
    assert seen and all("val/loss" in m for m in seen), seen
    assert tiny_task.AsyncResource.closed == ["closed"]


def test_parts_listeners_and_task_handlers_run_in_order(tmp_path):
    order: list[str] = []

    class Mine:
        def attach(self, ctx):
            async def mark(engine):
                order.append(f"part@{engine.state.epoch}")
            ctx.trainer.add_event_handler(Events.EPOCH_COMPLETED, mark)

    scores = []
    j = job(tmp_path, parts=[Mine()], over={"train.max_epochs": 2, "data.handlers_log": "t1"},
            on_score=lambda epoch, score, metrics: scores.append((epoch, score, sorted(metrics))))
    run(j.run())
    assert [s[0] for s in scores] == [1, 2] and scores[0][2] == ["loss"]
    assert order == ["part@1", "part@2"]
    assert tiny_task._ORDER["t1"] == ["task@1", "task@2"]


def test_a_task_may_supply_its_own_train_step_but_not_with_builtin_step_settings(tmp_path):
    from aiotrain.config import ConfigError

    outputs = []
    j = job(tmp_path, over={"data.custom_step": True, "train.max_epochs": 1},
            parts=[(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output))])
    assert run(j.run()).exit_code == 0 and outputs and outputs[0]["custom"] == 1.0
    with pytest.raises(ConfigError, match="train.grad_clip: applied by the built-in train step"):
        run(job(tmp_path, over={"data.custom_step": True, "train.grad_clip": 1.0}).run())


def test_skip_step_is_counted_said_and_fails_past_the_limit(tmp_path):
    # 8 steps an epoch; from iteration 12 on every loss is nan
    lines: list[str] = []
    j = job(tmp_path, lines, over={"data.nan_from_iteration": 12, "train.on_nan": "skip_step"})
    result = run(j.run())
    assert (result.exit_code, result.status) == (1, "failed")
    failed = [ln for ln in lines if ln.startswith("failed: ")]
    assert len(failed) == 1 and "epoch 2 skipped 2 of its 8 optimizer steps" in failed[0], lines
    assert "train.skip_limit = 0.05" in failed[0]
    assert "skipped: 2 optimizer steps in all (train.on_nan = skip_step)" in lines
    assert load_run(result.run_dir).summary["train/skipped"] == 2

    lines.clear()
    j = job(tmp_path, lines, over={"data.nan_from_iteration": 12, "train.on_nan": "skip_step",
                                   "train.skip_limit": 1.0, "train.log_every": 1})
    result = run(j.run())
    assert result.exit_code == 0 and result.status == "finished"  # told to, it goes on: counted
    assert "epoch 2: skipped 5 optimizer steps (non-finite loss or gradient norm); 5 in all" in lines
    assert "epoch 3: skipped 8 optimizer steps (non-finite loss or gradient norm); 13 in all" in lines
    assert "skipped: 13 optimizer steps in all (train.on_nan = skip_step)" in lines
    record = load_run(result.run_dir)
    assert record.summary["train/skipped"] == 13
    assert [r["train/skipped"] for r in record.history(["train/skipped"])][10:13] == [0, 1, 2]


def test_train_lines_carry_the_steps_scalars_and_val_metrics_once(tmp_path):
    """One metric, one name, logged at the step it was computed: no train/val/* copies."""
    result = run(job(tmp_path, over={"train.log_every": 1}).run())
    history = load_run(result.run_dir).history()
    keys = {k for r in history for k in r} - {"step", "timestamp"}
    assert keys == {"train/loss", "train/lr", "val/loss"}
    assert [r["step"] for r in history if "val/loss" in r] == [8, 16, 24]
    pairs = [(r["step"], k) for r in history for k in r if k not in ("step", "timestamp")]
    assert len(pairs) == len(set(pairs))


def test_train_resume_auto_continues_this_runs_attempt_or_starts_fresh(tmp_path):
    auto = {"train.resume": "auto"}
    first = job(tmp_path, over=auto)
    run(interrupted_after_first_epoch(first))
    record = sdn.load(first.identity.dir / "run.sdn")
    assert record["world_size"] == 1 and record["launch"] is None
    record["world_size"] = 2  # as if two ranks had trained it
    (first.identity.dir / "run.sdn").write_text(sdn.dumps(record))
    lines: list[str] = []
    second = job(tmp_path, lines, over=auto)
    result = run(second.run())
    assert result.exit_code == 0 and second.identity.id == first.identity.id
    assert any(ln.startswith(f"resume: run {first.identity.id} from ") for ln in lines), lines
    assert any("the world size changed from 2 to 1" in ln for ln in lines), lines
    third = job(tmp_path, over=auto)  # that run finished: auto starts a new one
    run(third.run())
    assert third.identity.id != first.identity.id
