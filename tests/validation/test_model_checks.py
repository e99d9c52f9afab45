"""Checks 2-5: shapes and labels, gradient flow, numeric stability, devices."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from validation_helpers import CLASSES, Net, check, loader


async def test_nan_output_is_a_numeric_error(net):
    with torch.no_grad():
        net.head.bias[0] = float("nan")
    report = await check(net, loader())
    errors = report.section("numeric stability").errors
    assert errors == ["output contains 16 NaN of 64 values", "loss contains 1 NaN of 1 values"]
    assert report.section("training loop").errors  # the loss is NaN from the first step


async def test_nan_input_is_named_as_the_cause(net):
    batches = [(torch.full((8, 12), float("nan")), torch.zeros(8, dtype=torch.long))]
    section = (await check(net, batches)).section("numeric stability")
    assert section.errors[0].startswith("input contains 96 NaN")
    assert any("fix the data" in i for i in section.infos)


async def test_nan_gradients_with_a_finite_output(net):
    net.head.weight.register_hook(lambda g: g * float("nan"))
    report = await check(net, loader())
    assert not report.section("numeric stability").errors
    [error] = report.section("gradient flow").errors
    assert "NaN/Inf gradients in 1 parameter(s): head.weight" in error


@pytest.mark.parametrize("loss_fn", [nn.CrossEntropyLoss(), nn.functional.cross_entropy,
                                     lambda out, y: nn.functional.nll_loss(out.log_softmax(1), y)])
async def test_out_of_range_labels_are_explained(net, loss_fn):
    report = await check(net, loader(labels_high=CLASSES + 1), loss_fn=loss_fn)
    [error] = report.section("shapes").errors
    assert f"labels must be class indices in [0, {CLASSES})" in error and "max 4" in error
    [loop_error] = report.section("training loop").errors  # a pointer, not a kernel IndexError
    assert loop_error.endswith(f"LabelRangeError: labels outside [0, {CLASSES}) (see Shapes)")


async def test_ignore_index_labels_are_allowed(net):
    x, y = torch.randn(8, 12), torch.tensor([0, 1, 2, 3, -100, -100, 1, 2])
    report = await check(net, [(x, y)], loss_fn=nn.CrossEntropyLoss())
    assert not report.section("shapes").errors, report.render()


async def test_batch_size_mismatch_and_forward_exceptions(net):
    mismatch = await check(net, [(torch.randn(8, 12), torch.zeros(6, dtype=torch.long))])
    assert "batch size mismatch: output has 8 rows, labels 6" in mismatch.section("shapes").errors[0]
    wrong_width = await check(net, [(torch.randn(8, 5), torch.zeros(8, dtype=torch.long))])
    [error] = wrong_width.section("shapes").errors
    assert error.startswith("forward raised RuntimeError: mat1 and mat2 shapes cannot be multiplied")


@pytest.mark.filterwarnings("ignore:Using a target size")
async def test_broadcasting_regression_targets_are_a_warning():
    model = nn.Linear(3, 1)
    report = await check(model, [(torch.randn(8, 3), torch.randn(8))], loss_fn=nn.MSELoss())
    assert "broadcasts them" in report.section("shapes").warnings[0]


async def test_a_detached_loss_is_reported(net):
    report = await check(net, loader(), loss_fn=lambda out, y: nn.functional.cross_entropy(
        out.detach(), y))
    assert "does not require grad" in report.section("gradient flow").errors[0]


async def test_near_zero_gradients_are_a_warning(net):
    with torch.no_grad():
        net.body[0].weight.mul_(1e-30)  # a vanishing path: the ReLU input is all but zero
        net.body[1].weight.zero_()
    section = (await check(net, loader())).section("gradient flow")
    assert "near-zero gradients" in section.warnings[0] and "body.0.weight" in section.warnings[0]


async def test_unmatched_allow_unused_entry_is_a_warning(net):
    section = (await check(net, loader(), allow_unused=("nothing.here",))).section("gradient flow")
    assert section.passed and "'nothing.here' matches no trainable parameter" in section.warnings[0]


async def test_device_mismatch_on_the_meta_device():
    model = Net().to("meta")
    report = await check(model, loader())
    [error] = report.section("devices").errors
    assert "parameters on meta" in error and "input on cpu" in error
    assert report.section("shapes").errors  # the forward fails too, with its own message
    assert all(p.device.type == "meta" for p in model.parameters())
