"""The CUDA paths of the checks (skipped without a GPU): peak-allocated memory, restore on device."""

from __future__ import annotations

import pytest
import torch
from validation_helpers import Net, check, loader

pytestmark = pytest.mark.cuda


def _on_cuda(batches):
    return [(x.cuda(), y.cuda()) for x, y in batches]


async def test_cuda_model_passes_with_peak_allocated_memory_and_is_restored_bit_identically():
    torch.manual_seed(0)
    net = Net().cuda()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    batches = _on_cuda(list(loader()))
    for x, y in batches[:2]:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    moments = {k: v.clone() for k, v in opt.state[net.head.weight].items()}
    report = await check(net, batches, opt)
    assert not report.has_errors(), report.render()
    assert "peak allocated on cuda" in report.section("memory").infos[-1]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    after = opt.state[net.head.weight]
    assert all(torch.equal(moments[k], after[k]) and after[k].device == moments[k].device
               for k in moments)


async def test_cpu_batches_for_a_cuda_model_are_a_device_error():
    report = await check(Net().cuda(), loader())
    [error] = report.section("devices").errors
    assert "parameters on cuda:0" in error and "input on cpu" in error
