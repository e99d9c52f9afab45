"""examples/notebook.ipynb executed headless in a real Jupyter kernel (nbclient + ipykernel):
it trains with ``await`` in cells, the progress bar and the run's chart are live outputs of their
cells (final frames kept), and ``run_sync`` in the kernel gives its one-line error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="notebook tests need the notebook extra (nbformat)")
nbclient = pytest.importorskip("nbclient", reason="notebook tests need nbclient")
pytest.importorskip("ipykernel", reason="notebook tests need ipykernel")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> nbformat.NotebookNode:
    tmp = tmp_path_factory.mktemp("nb")
    nb = nbformat.read(ROOT / "examples" / "notebook.ipynb", as_version=4)
    # the kernel inherits the test's environment: runs go to a temp folder, code from this tree
    mp = pytest.MonkeyPatch()
    mp.setenv("AIOTRAIN_DIR", str(tmp / ".aiotrain"))
    mp.setenv("PYTHONPATH", str(ROOT))
    try:
        client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                         resources={"metadata": {"path": str(tmp)}})
        client.execute()
    finally:
        mp.undo()
    return nb


def _outputs(nb, needle: str) -> list[dict]:
    cells = [c for c in nb.cells if c.cell_type == "code" and needle in c.source]
    assert len(cells) == 1, needle
    return cells[0].outputs


def _html(outputs) -> list[str]:
    return [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]


def _text(outputs) -> str:
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")


@pytest.mark.timeout(300)
def test_the_notebook_runs_without_errors(executed):
    for cell in executed.cells:
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", (cell.source, out.get("ename"), out.get("evalue"))
            assert out.get("name") != "stderr" or "Warning" not in out.get("text", ""), out["text"]


def test_the_training_cell_shows_a_progress_bar_and_a_live_chart(executed):
    outputs = _outputs(executed, "async with Track.run")
    html = _html(outputs)
    bars = [h for h in html if "<progress" in h]
    charts = [h for h in html if "<svg" in h]
    assert bars and charts, html
    # each display was replaced in place: one output per epoch bar, one chart
    assert len(bars) == 4 and len(charts) == 1
    assert all(re.search(r'value="12" max="12"', b) for b in bars), bars  # each epoch ended full
    assert "train/loss" in charts[0] and "val/accuracy" in charts[0]
    assert "no metrics logged yet" not in charts[0]
    accuracy = float(re.search(r"val accuracy (\d\.\d+)", _text(outputs)).group(1))
    assert accuracy > 0.8


def test_run_sync_in_the_kernel_gives_its_clear_error(executed):
    text = _text(_outputs(executed, "trainer.run_sync(train"))
    assert "await" in text and "run_sync" in text, text
