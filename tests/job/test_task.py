"""Building the task from the config: a failure is one line naming the key or file it was about,
then the user's own frames; a top-level key that nobody reads is refused."""

from __future__ import annotations

import pytest

from aiotrain.config import Conf, SchemaError
from aiotrain.errors import MissingExtra
from aiotrain.job.settings import load_settings
from aiotrain.job.task import TaskError, build_task
from tests.job import task_factories

SPEC = "tests.job.task_factories:"


def config(factory: str, **extra):
    _, cfg = load_settings(Conf.from_dict({"task": SPEC + factory, "optim": {"lr": 0.1}, **extra}))
    return cfg


async def build(factory: str, **extra):
    return await build_task(SPEC + factory, config(factory, **extra))


async def test_a_value_the_failing_call_used_is_named_with_exit_2():
    with pytest.raises(TaskError) as info:
        await build("bad_value", optim={"lr": "fast"})
    err = info.value
    assert err.msg.startswith(f"optim.lr = 'fast': the task {SPEC}bad_value failed on it: "
                              "TypeError: "), err.msg
    assert (err.full_key, err.exit_code) == ("optim.lr", 2)
    assert isinstance(err.__cause__, TypeError)
    assert "task_factories.py" in err.frames and "torch.optim.SGD(" in err.frames
    assert "/aiotrain/" not in err.frames and "site-packages" not in err.frames
    assert "asyncio" not in err.frames and "\n" not in err.msg


async def test_without_a_value_in_the_failing_call_no_key_is_named_and_it_exits_1():
    with pytest.raises(TaskError) as info:
        await build("value_read_earlier", optim={"lr": "fast"})
    assert info.value.msg.startswith(f"the task {SPEC}value_read_earlier failed: TypeError: ")
    assert (info.value.full_key, info.value.exit_code) == (None, 1)
    with pytest.raises(TaskError) as info:
        await build("bug")
    assert info.value.msg == f"the task {SPEC}bug failed: KeyError: 'no such thing'"
    assert info.value.exit_code == 1 and "return {}[" in info.value.frames


async def test_a_file_the_task_cannot_open_is_named_first_with_the_key_it_came_from():
    with pytest.raises(TaskError) as info:
        await build("missing_file", data={"root": "/nonexistent/data"})
    assert info.value.msg.startswith("/nonexistent/data/train.bin: No such file or directory "
                                     "(data.root = '/nonexistent/data')"), info.value.msg
    assert (info.value.full_key, info.value.exit_code) == ("data.root", 2)


async def test_a_config_error_inside_the_factory_keeps_its_key():
    with pytest.raises(TaskError) as info:
        await build("missing_key")
    assert info.value.msg == f"optim.momentum: not found (in the task {SPEC}missing_key)"
    assert (info.value.full_key, info.value.exit_code) == ("optim.momentum", 2)


async def test_a_missing_extra_passes_through_as_its_one_line():
    with pytest.raises(MissingExtra, match=r"this task needs scikit-learn, which is not "
                                           r"installed: pip install 'aiotrain\[examples\]'"):
        await build("needs_extra")


async def test_a_top_level_key_nobody_reads_is_refused_and_the_task_closed():
    task_factories.CLOSED.clear()
    with pytest.raises(SchemaError) as info:
        await build("good", sed=1)
    assert info.value.msg == (f"sed: unknown top-level key: neither the runtime nor the task "
                              f"({SPEC}good) reads it; did you mean seed?")
    assert info.value.full_key == "sed" and task_factories.CLOSED == ["closed"]
    with pytest.raises(SchemaError, match="modle: .* did you mean model?"):
        await build("good", modle={"dim": 3})  # the task asked for model: the likeliest
    task = await build("whole", sed=1)  # a task that uses its config whole reads every key
    assert task.optimizer.param_groups[0]["lr"] == 0.1
    task = await build("good")
    assert task.optimizer.param_groups[0]["lr"] == 0.1
