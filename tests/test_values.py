"""aiotrain.values: the one integer-argument check and the one tensor-to-number conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aiotrain.values import as_number, check_int, number_or_value


@pytest.mark.parametrize("value", [3, np.int64(3), torch.tensor(3)])
def test_check_int_accepts_every_integer_type(value):
    got = check_int("n", value)
    assert got == 3 and type(got) is int


@pytest.mark.parametrize("value", [0, -1, True, 1.0, 2.5, "3", None, torch.tensor(2.0), [1]])
def test_check_int_rejects_with_the_name_and_the_value(value):
    with pytest.raises(ValueError, match=r"^batch_size must be a positive integer, got "):
        check_int("batch_size", value)


def test_check_int_minimum():
    assert check_int("after", 0, minimum=0) == 0
    with pytest.raises(ValueError, match="after must be a non-negative integer, got -1"):
        check_int("after", -1, minimum=0)
    with pytest.raises(ValueError, match="k must be an integer >= 3, got 2"):
        check_int("k", 2, minimum=3)


@pytest.mark.parametrize("value, expected", [
    (1, 1), (2.5, 2.5), (torch.tensor(3.5), 3.5), (torch.tensor([7]), 7), (np.float32(1.5), 1.5),
    (np.int64(4), 4), (np.array([[2.0]]), 2.0), (np.float64(0.25), 0.25),
])
def test_as_number_gives_plain_python_numbers(value, expected):
    got = as_number(value)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("value", [True, torch.tensor(True), torch.tensor([1, 2]), "1", None, [1],
                                   torch.zeros(0)])
def test_as_number_is_none_for_what_is_not_one_number(value):
    assert as_number(value) is None


def test_number_or_value_keeps_what_is_not_a_number():
    many = torch.tensor([1, 2])
    assert number_or_value(torch.tensor(0.5)) == 0.5
    assert number_or_value(many) is many and number_or_value("x") == "x"
