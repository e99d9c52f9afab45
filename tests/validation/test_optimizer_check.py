"""Check 7, optimizer: missing, foreign and duplicated parameters, learning rates."""

from __future__ import annotations

import torch
from validation_helpers import Net, check, loader


async def test_parameters_missing_from_the_optimizer_are_errors_by_name(net):
    opt = torch.optim.SGD(net.body.parameters(), lr=0.1)
    [error] = (await check(net, loader(), opt)).section("optimizer").errors
    assert "2 trainable parameter(s) are in no optimizer group" in error
    assert "head.weight, head.bias" in error


async def test_an_optimizer_over_another_model_is_an_error(net):
    opt = torch.optim.SGD(Net().parameters(), lr=0.1)
    errors = (await check(net, loader(), opt)).section("optimizer").errors
    assert any("6 optimizer parameter(s) are not the model's" in e for e in errors)


async def test_duplicates_across_groups_and_bad_learning_rates(net):
    opt = torch.optim.SGD([{"params": net.body.parameters()}, {"params": net.head.parameters()}],
                          lr=0.1)
    opt.param_groups[1]["params"].append(net.body[0].weight)  # torch checks this only on add
    opt.param_groups[0]["lr"] = float("nan")
    opt.param_groups[1]["lr"] = 0.0
    errors = (await check(net, loader(), opt)).section("optimizer").errors
    assert "body.0.weight is in groups 0 and 1" in errors
    assert "group 0: learning rate nan must be finite and positive" in errors
    assert "group 1: learning rate 0.0 must be finite and positive" in errors


async def test_frozen_parameters_in_the_optimizer_are_information(net):
    net.body[0].weight.requires_grad_(False)
    section = (await check(net, loader())).section("optimizer")
    assert section.passed and not section.warnings
    assert any(i.startswith("frozen parameters in the optimizer") and "body.0.weight" in i
               for i in section.infos)
