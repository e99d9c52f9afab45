"""Check 8, training loop: three mini-epochs, losses reported, non-finite losses caught."""

from __future__ import annotations

import torch
from validation_helpers import check, loader


async def test_losses_of_three_mini_epochs_are_reported_and_fall(net):
    section = (await check(net, loader(), torch.optim.Adam(net.parameters(), lr=0.05))
               ).section("training loop")
    losses = [float(i.split("loss ")[1].split()[0]) for i in section.infos if i.startswith("mini")]
    assert len(losses) == 3 and losses[2] < losses[0]
    assert section.infos[-1] == "6 training steps ran with finite losses"


async def test_a_diverging_loss_is_an_error(net):
    opt = torch.optim.SGD(net.parameters(), lr=1e38)
    report = await check(net, loader(), opt)
    [error] = report.section("training loop").errors
    assert error.startswith("mini-epoch 1, step 2: the loss is"), error
    assert not report.section("optimizer").errors  # the rate is finite and positive: legal


async def test_an_optimizer_that_never_updates_is_a_warning():
    model = torch.nn.Linear(12, 4)  # deterministic in train mode: the loss moves only with the weights
    opt = torch.optim.SGD(model.parameters(), lr=1e-45)  # an update below float32 resolution
    section = (await check(model, loader(), opt)).section("training loop")
    assert section.passed and "did not change" in section.warnings[0]
