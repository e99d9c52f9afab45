"""The docs run as written: every shell command and Python block of README.md and docs/*.md,
and the examples in aiotrain's docstrings, so that none can drift from what the code does.

One runner process (tests/docs_runner.py) runs every block in order in one sandbox folder, with
the hidden fixtures each block names (``<!-- doctest: ... -->`` above it: setup, continue,
file, raises, skip-line, skip); each block is then one test here. A block that cannot run in a
test (a server, the whole suite, a GPU, minutes of training) says so with ``skip: REASON``, and
is reported as skipped with that reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import docs_runner  # noqa: E402

BLOCKS = [b for path in docs_runner.DOCS for b in docs_runner.parse(path)]
RUN = [b for b in BLOCKS if b.kind in ("shell", "python", "sdn") and b.skip is None]
TIMEOUT = 1500  # the whole runner; each block has its own limit too
pytestmark = pytest.mark.timeout(TIMEOUT + 120)  # the first test waits for the runner


def run_blocks(tmp: Path, blocks: list[docs_runner.Block], docstrings: bool) -> dict[str, str | None]:
    """Run ``blocks`` (then aiotrain's docstring examples) in a runner process; the outcome of
    each by id (None: it ran as written), and the runner's last words under ``<runner>``."""
    plan, out, sandbox = tmp / "plan.json", tmp / "results.jsonl", tmp / "sandbox"
    sandbox.mkdir()
    plan.write_text(docs_runner.plan_of(blocks, docstrings))
    try:
        proc = subprocess.run([sys.executable, str(Path(docs_runner.__file__)), str(sandbox),
                               str(plan), str(out)], capture_output=True, text=True,
                              timeout=TIMEOUT, env=docs_runner.fresh_environment())
        tail = (proc.stdout + proc.stderr)[-3000:]
    except subprocess.TimeoutExpired as exc:
        tail = f"the runner did not end within {TIMEOUT} s: {exc}"
    found = {}
    if out.exists():
        for line in out.read_text().splitlines():
            item = json.loads(line)
            found[item["id"]] = item["error"]
    found["<runner>"] = tail
    return found


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | None]:
    return run_blocks(tmp_path_factory.mktemp("docs"), RUN, docstrings=True)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind in ("shell", "python", "sdn")],
                         ids=lambda b: b.id)
def test_block_runs_as_written(results, block):
    if block.skip is not None:
        pytest.skip(f"{block.id}: {block.skip}")
    if block.id not in results:
        pytest.fail(f"{block.id} was not reached; the runner said:\n{results['<runner>']}")
    error = results[block.id]
    assert error is None, (f"{block.id} ({block.kind}) does not run as written:\n{error}\n(a block "
                           "that needs set-up names a fixture: <!-- doctest: setup=NAME -->, see "
                           "tests/docs_runner.py)")


def test_docstring_examples_run(results):
    """The runnable examples in public docstrings (``>>>``), run with doctest."""
    failed = {k: v for k, v in results.items() if k.startswith("docstring:") and v is not None}
    assert not failed, "\n\n".join(f"{k}:\n{v}" for k, v in failed.items())


def test_the_runner_reports_blocks_that_do_not_run(tmp_path):
    """The harness can fail: a wrong name, a failing command, a missing exception, a bad SDN
    text are each reported; a block after them still runs, and continue keeps the names."""
    md = tmp_path / "doc.md"
    md.write_text("\n".join([
        "```python", "x = 1", "```",
        "<!-- doctest: continue -->", "```python", "assert x == 1", "```",
        "```python", "print(undefined_name)", "```",
        "```sh", "true", "false  # fails", "```",
        "<!-- doctest: raises=KeyError -->", "```python", "y = {}", "```",
        "<!-- doctest: skip-line=false: leaves out the failing line -->", "```sh", "false", "```",
        "```sdn", "a: [1", "```", ""]))
    blocks = docs_runner.parse(md)
    got = run_blocks(tmp_path, blocks, docstrings=False)
    errors = {b.body.splitlines()[0]: got[b.id] for b in blocks}
    assert errors["x = 1"] is None and errors["assert x == 1"] is None
    assert "NameError: name 'undefined_name'" in errors["print(undefined_name)"]
    assert errors["true"].startswith("'false  # fails' exited 1")
    assert errors["y = {}"] == "expected KeyError, nothing was raised"
    assert errors["false"] is None
    assert "SdnError" in errors["a: [1"]


def test_every_command_block_is_run_or_says_why_not():
    """An untagged block holding commands is marked ``sh`` (so it runs) or skipped with a
    reason; every skip and every skipped line gives one; every fixture named exists."""
    for b in BLOCKS:
        assert not (b.kind == "" and b.looks_runnable and b.skip is None), \
            f"{b.id}: commands in an untagged block: tag it ```sh, or <!-- doctest: skip: why -->"
        assert b.skip is None or len(b.skip) > 10, f"{b.id}: say why it is skipped"
        assert all(len(reason) > 10 for _, reason in b.skip_lines), f"{b.id}: say why"
        assert all(name in docs_runner.SETUPS for name in b.setup), f"{b.id}: unknown setup"
