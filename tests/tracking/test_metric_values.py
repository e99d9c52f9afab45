"""What a metrics record may hold (tracking/metric_values.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aiotrain.tracking.metric_values import check_step, convert


@pytest.mark.parametrize("step, expected", [(0, 0), (7, 7), (torch.tensor(3), 3), (np.int64(5), 5)])
def test_check_step_takes_integers_and_one_element_tensors(step, expected):
    assert check_step(step) == expected and type(check_step(step)) is int


@pytest.mark.parametrize("step, error", [(True, TypeError), (1.0, TypeError), ("1", TypeError),
                                         (-1, ValueError), (torch.tensor(-2), ValueError)])
def test_check_step_refuses_what_is_not_a_step(step, error):
    with pytest.raises(error):
        check_step(step)


def test_convert_turns_scalars_into_python_values_once():
    out = convert({"a": torch.tensor(1.5), "b": np.bool_(True), "c": torch.tensor([2]), "d": "x", "e": None})
    assert out == {"a": 1.5, "b": True, "c": 2, "d": "x", "e": None}
    assert type(out["a"]) is float and type(out["b"]) is bool and type(out["c"]) is int


def test_convert_refuses_many_values_and_names_that_are_not_strings():
    with pytest.raises(ValueError, match="log_histogram"):
        convert({"a": torch.ones(2)})
    with pytest.raises(TypeError, match="metric names must be strings"):
        convert({1: 2.0})  # type: ignore[dict-item]
