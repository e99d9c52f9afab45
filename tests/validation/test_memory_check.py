"""Check 1, memory: sizes, the simulated memory budget (a model too large for the budget)."""

from __future__ import annotations

import torch
from torch import nn
from validation_helpers import check


def _huge() -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    model = nn.Linear(1000, 10_000)  # 10M parameters: 40 MB of float32 weights, 40 MB of gradients
    batches = [(torch.randn(4, 1000), torch.randint(0, 10_000, (4,))) for _ in range(2)]
    return model, batches


async def test_a_model_near_the_budget_is_a_warning():
    model, batches = _huge()
    report = await check(model, batches, memory_budget=105_000_000)  # needs about 80 MB
    memory = report.section("memory")
    assert not memory.errors and memory.warnings, report.render()
    assert "over 70%" in memory.warnings[0]


async def test_a_model_too_big_for_the_budget_is_an_error_without_running_a_step():
    model, batches = _huge()
    report = await check(model, batches, memory_budget=60_000_000)
    memory = report.section("memory")
    assert "over 90%" in memory.errors[0]
    assert any("not run" in i for i in memory.infos)


async def test_optimizer_state_counts_against_the_budget():
    model, batches = _huge()  # with Adam's two moments the step needs about 160 MB
    report = await check(model, batches, torch.optim.Adam(model.parameters()),
                         memory_budget=105_000_000)
    memory = report.section("memory")
    assert memory.errors and "optimizer state: 76.4 MiB" in memory.infos[1], report.render()


async def test_without_a_budget_the_step_is_measured_against_available_memory(net):
    from validation_helpers import loader

    memory = (await check(net, loader())).section("memory")
    assert memory.passed and "vs available" in memory.infos[-1]
    assert "optimizer state: 0 B" in memory.infos[1]  # plain SGD keeps no state
