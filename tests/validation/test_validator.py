"""RuntimeValidator: the check plan, modes, off-loop execution, cancellation, leaving no trace."""

from __future__ import annotations

import asyncio
import copy
import random
import threading
import time

import numpy as np
import pytest
import torch
from torch import nn
from validation_helpers import Net, check, dataset, loader

from aiotrain.data import AsyncLoader
from aiotrain.validation import RuntimeValidator, ValidationMode

SECTIONS = ["Memory", "Shapes", "Gradient flow", "Numeric stability", "Devices", "Data pipeline",
            "Optimizer", "Training loop"]


async def test_healthy_model_passes_every_section(net):
    report = await check(net, loader())
    assert [s.name for s in report.sections] == SECTIONS
    assert not report.has_errors(), report.render()
    assert all(s.passed for s in report.sections), report.render()
    assert report.exit_code == 0 and not report.skipped


async def test_dead_layer_fails_with_its_names_unless_allowed():
    torch.manual_seed(0)
    report = await check(Net(dead=True), loader())
    assert report.has_errors() and report.exit_code == 1
    [error] = report.section("gradient flow").errors
    assert "dead.weight" in error and "dead.bias" in error
    allowed = await check(Net(dead=True), loader(), allow_unused=("dead",))
    assert not allowed.has_errors(), allowed.render()
    assert any("allow_unused" in i for i in allowed.section("gradient flow").infos)


async def test_train_only_skips_and_modes_decide_training():
    report = await RuntimeValidator().validate_all(Net(), loader(), None, None)
    assert report.skipped and report.sections == [] and report.exit_code == 0
    assert "skipped" in report.render()
    failing = await check(Net(dead=True), loader())
    passing = await check(Net(), loader())
    decide = {m: RuntimeValidator(m) for m in ValidationMode}
    assert decide[ValidationMode.TRAIN_ONLY].should_train_after(report)
    assert not decide[ValidationMode.CHECK_ONLY].should_train_after(passing)
    assert decide[ValidationMode.CHECK_AND_TRAIN].should_train_after(passing)
    assert not decide[ValidationMode.CHECK_AND_TRAIN].should_train_after(failing)
    assert [(v.should_check(), v.should_train()) for v in decide.values()] == [
        (True, False), (False, True), (True, True)]


def test_constructor_rejects_bad_settings():
    with pytest.raises(ValueError, match="check_only, train_only, check_and_train"):
        RuntimeValidator("check")
    with pytest.raises(ValueError, match="timeout"):
        RuntimeValidator("check_only", timeout=0)
    with pytest.raises(ValueError, match="memory_budget"):
        RuntimeValidator("check_only", memory_budget=-5)
    with pytest.raises(TypeError, match="allow_unused"):
        RuntimeValidator("check_only", allow_unused="head")


async def test_checks_run_on_daemon_threads_never_on_the_loop(net):
    threads = set()
    net.register_forward_hook(lambda *_: threads.add(threading.current_thread()))
    await check(net, loader())
    assert threads and threading.current_thread() not in threads
    assert all(t.name.startswith("aiotrain-validate") and t.daemon for t in threads)


def _capture(model, optimizer):
    """Deep copies of everything the checks must leave alone."""
    return {"tensors": {k: v.clone() for k, v in model.state_dict().items()},
            "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "modes": [m.training for m in model.modules()],
            "rng": (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())}


def _assert_same(a, b):
    for part in ("tensors", "grads"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    oa, ob = a["optimizer"], b["optimizer"]
    assert oa["param_groups"] == ob["param_groups"] and oa["state"].keys() == ob["state"].keys()
    for i, st in oa["state"].items():
        assert st.keys() == ob["state"][i].keys()
        assert all(torch.equal(v, ob["state"][i][k]) for k, v in st.items()), i
    assert a["modes"] == b["modes"]
    assert torch.equal(a["rng"][0], b["rng"][0]) and np.array_equal(a["rng"][1], b["rng"][1])
    assert a["rng"][2] == b["rng"][2]


async def test_batchnorm_stats_adam_state_grads_mode_and_rngs_are_bit_identical(net):
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    data = loader()
    for x, y in list(data)[:3]:  # Adam state and BatchNorm statistics exist before validating
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()  # a mode the checks must switch away from and back
    grads = {n: p.grad for n, p in net.named_parameters()}
    before = _capture(net, opt)
    report = await check(net, data, opt)
    assert not report.has_errors(), report.render()
    _assert_same(before, _capture(net, opt))
    assert all(p.grad is grads[n] for n, p in net.named_parameters())  # the same tensor objects


def _run(mode: ValidationMode) -> dict[str, torch.Tensor]:
    """Seeded setup, optional validation, then two epochs of plain training."""
    torch.manual_seed(7)
    np.random.seed(7)
    model, data = Net(), loader(n=64)  # shuffled by the global torch RNG
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    validator = RuntimeValidator(mode)
    report = validator.validate_all_sync(model, data, opt, nn.CrossEntropyLoss())
    assert validator.should_train_after(report), report.render()
    for _ in range(2):
        for x, y in data:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.state_dict()


def test_check_and_train_trains_exactly_like_train_only():
    plain, checked = _run(ValidationMode.TRAIN_ONLY), _run(ValidationMode.CHECK_AND_TRAIN)
    assert all(torch.equal(plain[k], checked[k]) for k in plain)


async def test_validate_all_sync_refuses_a_running_loop(net):
    with pytest.raises(RuntimeError, match="await validator.validate_all"):
        RuntimeValidator("check_only").validate_all_sync(net, loader(), None, None)


async def test_async_loader_is_read_on_the_loop_and_its_position_restored(net):
    data = AsyncLoader(dataset(), batch_size=16, shuffle=True)
    data.load_state_dict({"epoch": 2, "position": 1})
    report = await check(net, data)
    assert not report.has_errors(), report.render()
    assert len(report.section("data pipeline").infos) == 4  # three batches and the pass line
    assert data.state_dict() == {"epoch": 2, "position": 1}


async def test_a_hanging_check_is_abandoned_and_reported(net):
    release = threading.Event()
    net.head.register_forward_hook(lambda *_: release.wait(30))
    try:
        start = time.monotonic()
        report = await check(net, loader(), timeout=0.3)
        assert time.monotonic() - start < 10  # a hang would be 30 s per check
    finally:
        release.set()
    assert "within 0.3 s" in report.section("memory").errors[0]
    for name in ("Shapes", "Gradient flow", "Training loop"):
        assert "timed out" in report.section(name).warnings[0]


async def test_cancelling_waits_for_the_check_then_restores_the_model(net):
    net.head.register_forward_hook(lambda *_: time.sleep(0.2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    task = asyncio.create_task(check(net, loader(), torch.optim.SGD(net.parameters(), lr=1.0)))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
