"""The built-in train step: accumulation, clipping, precision, on_nan, per-iteration LR."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aiotrain import Engine, Events
from aiotrain.job.step import NonFiniteError, SkipLimitError, TrainStep
from aiotrain.job.task import default_prepare_batch

CPU = torch.device("cpu")


def data(n=16, bs=4, seed=0, nan_at=None):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g)
    if nan_at is not None:
        x[nan_at * bs] = float("nan")
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, n, bs)]


def model():
    torch.manual_seed(0)
    return nn.Linear(3, 1)


def train(batches, epochs=1, loss_fn=None, **kw):
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = kw.pop("scheduler", None)
    step = TrainStep(net, opt, loss_fn or nn.MSELoss(), default_prepare_batch, CPU,
                     iteration_scheduler=sched(opt) if sched else None, **kw)
    engine = Engine(step)
    outputs = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output)))
    engine.run_sync(batches, max_epochs=epochs)
    return net, step, outputs


def test_accumulating_two_half_batches_equals_one_full_batch():
    full, _, _ = train(data(bs=8), accumulate=1)
    halves, _, _ = train(data(bs=4), accumulate=2)
    assert torch.allclose(full.weight, halves.weight, atol=1e-6)


def test_a_short_last_group_is_averaged_over_its_real_size():
    # 3 batches with accumulate=2: groups (1, 2) and (3); the last is one batch, not half of one
    b = data(n=12, bs=4)
    grouped, _, outs = train(b, accumulate=2)
    ref, _, _ = train([(torch.cat([b[0][0], b[1][0]]), torch.cat([b[0][1], b[1][1]])), b[2]])
    assert torch.allclose(grouped.weight, ref.weight, atol=1e-6)
    assert "grad_norm" not in outs[0]  # no clip configured


def test_grad_clip_bounds_the_update_and_reports_the_norm():
    net0 = model()
    net, _, outs = train(data(), grad_clip=1e-3)
    assert all("grad_norm" in o for o in outs)
    moved = (net.weight - net0.weight).norm()
    assert moved <= 0.1 * 1e-3 * len(outs) + 1e-7


def test_a_nan_loss_stops_by_default_before_the_weights_change():
    with pytest.raises(NonFiniteError, match="the training loss is nan at epoch 1, iteration 3"):
        train(data(nan_at=2))


def test_skip_step_drops_that_step_and_keeps_training():
    net, step, outs = train(data(nan_at=2), on_nan="skip_step")
    assert step.skipped == 1 and len(outs) == 4
    assert torch.isfinite(net.weight).all()


def test_skip_step_counts_in_the_output_and_fails_past_the_limit():
    _, step, outs = train(data(n=80, nan_at=2), on_nan="skip_step")  # 1 of 20 steps: allowed
    assert [o["skipped"] for o in outs][1:4] == [0, 1, 1] and step.skipped == 1
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(80, 3, generator=g), torch.randn(80, 1, generator=g)
    x[8:] = float("nan")  # steps 3..20 are non-finite: 5% of 20 steps is one
    batches = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 80, 4)]
    with pytest.raises(SkipLimitError, match=r"epoch 1 skipped 2 of its 20 optimizer steps .*iteration 4\).*"
                                             r"train.skip_limit = 0.05"):
        train(batches, on_nan="skip_step")
    _, step, _ = train(batches, on_nan="skip_step", skip_limit=1.0)
    assert step.skipped == 18  # with the limit raised, counted all the same


def test_the_skip_limit_counts_per_epoch_and_per_optimizer_step():
    # one bad micro-batch per epoch, 2 micro-batches per step: 1 of 2 steps, every epoch
    _, step, outs = train(data(n=16, nan_at=1), epochs=3, on_nan="skip_step", accumulate=2)
    assert step.skipped == 3 and step.epoch_skipped == 1 and outs[-1]["skipped"] == 3


def test_ignore_lets_a_nan_through():
    net, _, _ = train(data(nan_at=2), on_nan="ignore")
    assert not torch.isfinite(net.weight).all()


def test_bf16_autocast_on_cpu():
    seen = []

    def loss_fn(out, y):
        seen.append(out.dtype)
        return nn.functional.mse_loss(out.float(), y)

    train(data(), precision="bf16", loss_fn=loss_fn)
    assert seen and all(d == torch.bfloat16 for d in seen)


@pytest.mark.cuda
def test_float16_with_grad_scaler_on_cuda():
    dev = torch.device("cuda")
    net = model().to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    step = TrainStep(net, opt, nn.MSELoss(), default_prepare_batch, dev, precision=16, grad_clip=1.0)
    Engine(step).run_sync(data(), max_epochs=2)
    assert step.scaler is not None and step.scaler.get_scale() > 0
    assert torch.isfinite(net.weight).all()
    assert step.state_dict()["scaler"]["scale"] > 0


def test_per_iteration_schedule_steps_once_per_optimizer_step_and_lr_is_reported():
    def one_cycle(opt):
        # 2 epochs x 4 batches / accumulate 2 = 4 optimizer steps: sized exactly
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=4)

    _, _, outs = train(data(), epochs=2, accumulate=2, scheduler=one_cycle)
    lrs = [o["lr"] for o in outs]
    assert len(lrs) == 8
    assert lrs[0] == lrs[1] and lrs[2] == lrs[3]  # steps only at group ends
    assert lrs[-1] < lrs[2]  # annealing toward the end, no "stepped too many times" error
