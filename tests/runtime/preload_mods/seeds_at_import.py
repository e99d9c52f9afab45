"""A module that seeds torch's RNG when imported: a job server must not preload it."""

import torch

torch.manual_seed(1234)
DRAWN = torch.rand(2)
