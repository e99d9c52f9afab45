"""The runtime's config sections: unknown keys, bad values, defaults reaching the task."""

from __future__ import annotations

import pytest

from aiotrain.config import Conf, SchemaError
from aiotrain.job.settings import describe, load_settings


def settings(**sections):
    return load_settings(Conf.from_dict({"task": "m:f", **sections}))


@pytest.mark.parametrize("sections, fragment", [
    ({"train": {"max_epoch": 2}}, "train.max_epoch: unknown key in the runtime's 'train' section; "
                                  "did you mean train.max_epochs?"),
    ({"tracking": {"mode": "ofline"}}, "tracking.mode = 'ofline': not allowed; expected one of "),
    ({"checkpoint": {"n_saved": -1}}, "checkpoint.n_saved = -1: not allowed; expected an integer >= 1 or null"),
    ({"train": {"max_epochs": "3"}}, "train.max_epochs = '3': not allowed; expected an integer >= 1 "
                                     "(a quoted string: write it without quotes)"),
    ({"train": {"device": "cpux"}}, "train.device = 'cpux': not a device"),
    ({"train": {"device": "cuda"}}, "train.device = 'cuda': "),
    ({"train": {"on_nan": "nope"}}, "train.on_nan = 'nope': not allowed; expected one of ignore, skip_step, stop"),
    ({"train": {"precision": 16}}, "train.precision = 16: float16 training with a GradScaler needs a CUDA"),
    ({"scheduler": {"per": "step"}}, "scheduler.per = 'step': not allowed; expected one of epoch, iteration"),
    ({"train": 3}, "train: expected a section"),
    ({"train": {"grad_clip": 0}}, "train.grad_clip = 0: not allowed; expected a number > 0 or null"),
])
def test_bad_runtime_keys_and_values_are_one_line_errors(sections, fragment):
    import torch

    if "cuda" in str(sections) and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SchemaError) as err:
        settings(**sections)
    assert fragment in err.value.msg
    assert "\n" not in err.value.msg


def test_task_key_is_required_and_a_string():
    with pytest.raises(SchemaError, match="task: missing"):
        load_settings(Conf.from_dict({"seed": 1}))


def test_defaults_and_converted_values_reach_the_task_config():
    s, cfg = settings(train={"min_delta": 0}, model={"dim": 8})
    assert cfg.seed == 0 and cfg.train.max_epochs == 10 and cfg.scheduler.per == "epoch"
    assert cfg.train.min_delta == 0.0 and isinstance(cfg.train.min_delta, float)
    assert cfg.model.dim == 8  # the task's own sections pass through untouched
    assert s.train.on_nan == "stop" and s.train.precision == 32


def test_bf16_and_options_are_accepted():
    s, _ = settings(train={"precision": "bf16", "accumulate": 4, "grad_clip": 1.0,
                           "on_nan": "skip_step"}, scheduler={"per": "iteration"})
    assert (s.train.precision, s.train.accumulate, s.train.grad_clip) == ("bf16", 4, 1.0)


def test_describe_reads_bounds_and_choices():
    from typing import Annotated, Literal

    import msgspec

    assert describe(Annotated[int, msgspec.Meta(ge=1)] | None) == "an integer >= 1 or null"
    assert describe(Literal["a", "b"]) == "one of a, b"
    assert describe(list[str]) == "a list of strings"
