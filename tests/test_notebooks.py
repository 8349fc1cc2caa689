"""Every notebook in ``notebooks/`` executes without errors and is committed clean."""

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
COLAB_URL = "https://colab.research.google.com/github/adamx-dev/adamx/blob/main/notebooks/"

# Notebook file name -> indices (among all cells) of code cells committed *with* outputs
# on purpose. Every other code cell must be committed with no outputs and no count.
INTENDED_OUTPUTS: dict[str, set[int]] = {}

CELL_TIMEOUT_S = 600


def _ids(path: Path) -> str:
    return path.name


def test_notebooks_exist():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"
    assert NOTEBOOK_DIR / "quickstart.ipynb" in NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    keep = INTENDED_OUTPUTS.get(path.name, set())
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or index in keep:
            continue
        assert cell.outputs == [], f"{path.name} cell {index} has outputs; strip them"
        assert cell.execution_count is None, f"{path.name} cell {index} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_opens_in_colab_and_runs_as_a_script(path):
    """A Colab badge pointing at this file, and no IPython magics or shell escapes, so the
    code cells also run as a plain Python script."""
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    assert "colab-badge.svg" in first.source
    assert COLAB_URL + path.name in first.source
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for line in cell.source.splitlines():
            stripped = line.lstrip()
            assert not stripped.startswith(("!", "%")), (
                f"{path.name} cell {index} uses IPython syntax: {line!r}"
            )
    install = [c.source for c in nb.cells if c.cell_type == "code" and "pip" in c.source]
    assert install, "no install cell"
    assert all('"google.colab" in sys.modules' in src for src in install)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_executes(path, monkeypatch):
    # The kernel inherits this process's environment: a non-interactive matplotlib, the
    # checkout on the path (adamx need not be installed), and JAX's strict promotion
    # rules, as for the test suite.
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.setenv("JAX_NUMPY_DTYPE_PROMOTION", "strict")
    monkeypatch.setenv("JAX_NUMPY_RANK_PROMOTION", "raise")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    try:
        client.execute()
    except CellExecutionError as exc:
        pytest.fail(f"{path.name} raised in a cell:\n{exc}")

    errors = [
        (index, out)
        for index, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "error"
    ]
    assert not errors, f"{path.name}: cells errored: {errors}"
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code_cells), "not every cell ran"

    if path.name == "quickstart.ipynb":
        text = "".join(
            out.get("text", "")
            for cell in code_cells
            for out in cell.outputs
            if out.output_type == "stream" and out.name == "stdout"
        )
        assert "test accuracy" in text
        # the adam run of softmax regression learns the digits, as the demo promises
        rows = [line for line in text.splitlines() if line.startswith("softmax regression")]
        adam = [line for line in rows if re.search(r"\badam\b", line) and "final loss" in line]
        assert len(adam) == 1, text
        accuracy = float(re.search(r"test accuracy ([0-9.]+)%", adam[0]).group(1))
        assert accuracy >= 90.0, adam[0]
