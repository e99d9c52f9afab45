"""parallelize in one process: strategy and precision checks, the blocks FSDP shards, and
pointing an optimizer at replaced parameters (the multi-rank runs are in test_distributed.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aiotrain.parallel import default_blocks, parallelize, rebind_optimizer


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.layers = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
        self.act = nn.ReLU()
        self.head = nn.Sequential(nn.Linear(8, 2), nn.ReLU())

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = self.act(layer(x))
        return self.head(x)


def test_default_blocks_look_one_level_into_containers():
    net = Net()
    assert default_blocks(net) == [net.stem, net.layers[0], net.layers[1], net.head[0]]


def test_a_single_process_trains_the_model_itself():
    net = Net()
    assert parallelize(net, "fsdp", "bf16") is net
    assert parallelize(net, "ddp") is net


@pytest.mark.parametrize("kwargs, message", [
    ({"strategy": "zero3"}, "train.strategy must be one of ddp, fsdp, got 'zero3'"),
    ({"precision": "int8"}, "train.precision must be one of fp32, bf16, fp16, 32, 16, got 'int8'"),
])
def test_unknown_strategy_or_precision_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        parallelize(Net(), **kwargs)


def test_rebind_optimizer_points_groups_at_new_parameters():
    net = Net()
    opt = torch.optim.SGD([{"params": list(net.stem.parameters())},
                           {"params": list(net.head.parameters()), "lr": 0.5}], lr=0.1)
    before = list(net.parameters())
    for module in (net.stem, net.head[0]):  # what fully_shard does: new Parameter objects
        module.weight = nn.Parameter(module.weight.detach().clone())
    rebind_optimizer(opt, before, net)
    assert opt.param_groups[0]["params"][0] is net.stem.weight
    assert opt.param_groups[1]["params"][0] is net.head[0].weight and opt.param_groups[1]["lr"] == 0.5


def test_rebind_refuses_an_optimizer_that_has_stepped():
    net = Net()
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(3, 4)).sum().backward()
    opt.step()
    with pytest.raises(ValueError, match="already stepped"):
        rebind_optimizer(opt, list(net.parameters()), net)
