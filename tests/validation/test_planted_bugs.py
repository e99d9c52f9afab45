"""Planted bugs through RuntimeValidator (CHECK_ONLY): each is reported where a user looks for it,
and healthy setups (the test classifier over many seeds and optimizers, the digits example)
pass with no error and no warning."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from validation_helpers import CLASSES, Net, check, dataset, loader

from aiotrain.cli.train import load_config
from aiotrain.job import TrainJob
from aiotrain.validation.training_loop import DIVERGED_FACTOR

ROOT = Path(__file__).resolve().parents[2]


def _only(report, section: str) -> list[str]:
    """The errors of ``section``, after checking that no other section has one."""
    others = [e for e in report.errors if not e.lower().startswith(section)]
    assert not others, report.render()
    return report.section(section).errors


async def test_labels_out_of_range(net):
    report = await check(net, loader(labels_high=CLASSES + 3))
    assert "labels must be class indices in [0, 4)" in report.section("shapes").errors[0]


async def test_nan_inputs(net):
    data = dataset()
    data.tensors[0][:] = float("nan")
    report = await check(net, DataLoader(data, batch_size=16))
    assert report.section("numeric stability").errors[0].startswith("input contains 192 NaN")
    # NaN from the first step on: not blamed on the learning rate
    [loop] = report.section("training loop").errors
    assert loop == "mini-epoch 1, step 1: the loss is nan"


async def test_optimizer_missing_a_layer(net):
    report = await check(net, loader(), torch.optim.SGD(net.body.parameters(), lr=0.1))
    [error] = _only(report, "optimizer")
    assert "in no optimizer group" in error and "head.weight, head.bias" in error


@pytest.mark.parametrize("loss_fn", [nn.MSELoss(), nn.functional.l1_loss])
async def test_mse_on_class_indices(net, loss_fn):
    report = await check(net, loader(), loss_fn=loss_fn)
    [error] = report.section("shapes").errors
    assert "look like class indices (integer (16,) for an output (16, 4) of 4 classes)" in error
    assert "use CrossEntropyLoss" in error
    assert report.section("training loop").errors[0].endswith("on class-index targets (see Shapes)")


async def test_integer_regression_targets_shaped_like_the_output_are_not_class_indices():
    model = nn.Linear(3, 1)
    data = [(torch.randn(16, 3), torch.randint(0, 5, (16, 1)))]  # counts, a real regression
    report = await check(model, data, loss_fn=nn.MSELoss())
    assert not report.section("shapes").errors, report.render()


async def test_dead_relus(net):
    with torch.no_grad():
        net.body[1].bias.fill_(-100.0)  # after BatchNorm every ReLU input is negative
    report = await check(net, loader())
    [warning] = report.section("gradient flow").warnings
    assert "near-zero gradients" in warning and "body.0.weight" in warning


async def test_graph_cut_by_detach():
    class Cut(Net):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x).detach())

    torch.manual_seed(0)
    report = await check(Cut(), loader())
    [error] = _only(report, "gradient flow")
    assert "require grad but got none" in error and "body.0.weight" in error


@pytest.mark.parametrize("lr", [1e3, 10.0])
async def test_divergence_is_an_error_naming_the_learning_rate(net, lr):
    report = await check(net, loader(), torch.optim.SGD(net.parameters(), lr=lr))
    [error] = _only(report, "training loop")
    assert error.startswith("the training diverges: the loss on the same batch grew from"), error
    assert error.endswith(f"lower the learning rate (lr={lr:g})")
    assert not report.section("training loop").passed and report.exit_code == 1


async def test_a_loss_rising_slowly_at_every_mini_epoch_diverges_too():
    model = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.1)
    x, y = torch.ones(8, 4), torch.zeros(8, 1)
    # gradient ascent: each step pushes the weights away from the minimum, a little
    opt = torch.optim.SGD(model.parameters(), lr=0.01, maximize=True)
    report = await check(model, [(x, y), (x, y)], opt, nn.MSELoss())
    [error] = _only(report, "training loop")
    assert "rose at every mini-epoch" in error and "(lr=0.01)" in error
    losses = [float(i.split("loss ")[1].split()[0]) for i in report.section("training loop").infos
              if i.startswith("mini")]
    assert losses[-1] < DIVERGED_FACTOR * losses[0]  # caught by the rise, not by the size


async def test_a_loss_that_does_not_fall_is_a_warning():
    model = nn.Linear(4, 1, bias=False)
    x = torch.ones(8, 4)
    batches = [(x, torch.zeros(8, 1)), (x, torch.ones(8, 1))]  # the two batches pull apart
    with torch.no_grad():
        model.weight.fill_(0.125)  # each step undoes the last: together the losses end higher
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    report = await check(model, batches, opt, nn.MSELoss())
    section = report.section("training loop")
    assert not section.errors and section.passed, report.render()
    [warning] = section.warnings
    assert "did not fall across 3 mini-epochs" in warning and "lr=0.05" in warning


async def test_frozen_parameters_are_listed_as_information(net):
    for p in net.body.parameters():
        p.requires_grad_(False)
    report = await check(net, loader())
    assert not report.errors and not report.warnings, report.render()
    assert ("4 parameter(s) frozen (requires_grad=False), not trained: body.0.weight, body.0.bias, "
            "body.1.weight, body.1.bias") in report.section("training loop").infos


OPTIMIZERS = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
    "adam-slow": lambda p: torch.optim.Adam(p, lr=1e-5),
    "sgd": lambda p: torch.optim.SGD(p, lr=0.01),
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "adamw": lambda p: torch.optim.AdamW(p, lr=3e-3),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
async def test_healthy_setups_pass_clean(name):
    """Dropout is active in the checks: the per-batch seeding keeps its noise out of the verdict."""
    for seed, batch_size in ((0, 4), (1, 16), (2, 32)):
        torch.manual_seed(seed)
        net = Net()
        report = await check(net, loader(batch_size=batch_size), OPTIMIZERS[name](net.parameters()))
        assert not report.errors and not report.warnings, report.render()


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                    reason="the digits example needs scikit-learn (the `examples` extra)")
@pytest.mark.parametrize(("overrides", "verdict"), [
    ((), "clean"), (("optim.name=sgd", "optim.lr=1000"), "lr=1000")])
async def test_the_digits_example(tmp_path, monkeypatch, overrides, verdict):
    monkeypatch.chdir(ROOT)  # the task is imported from the working directory
    cfg = load_config("examples/digits.sdn", [f"tracking.dir={tmp_path}", "data.workers=0",
                                              *overrides])
    result = await TrainJob(cfg, mode="check_only", echo=lambda line: None).run()
    report = result.report
    if verdict == "clean":
        assert not report.errors and not report.warnings, report.render()
    else:
        [error] = _only(report, "training loop")
        assert "the training diverges" in error and error.endswith(f"({verdict})")
