"""Fixtures for the validation tests."""

from __future__ import annotations

import pytest
import torch
from validation_helpers import Net


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net()
