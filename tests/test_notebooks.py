"""Every notebook in ``notebooks/`` executes without errors and is committed with its outputs."""

import ast
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

CELL_TIMEOUT_S = 600
# The notebooks are committed with their outputs (tools/execute_notebooks.py), figures as
# PNG at a modest resolution, so that GitHub and the docs site show them; each file stays
# small enough to keep the repository light.
MAX_BYTES = 300_000

# The suite runs each notebook at a small size. Each notebook has one code cell tagged
# "parameters" (papermill's convention) that assigns the sizes setting its cost; the test
# inserts the cell below right after it, as papermill inserts "injected-parameters", so the
# same code runs, trains, prints and plots, only on fewer steps and smaller models. The
# committed outputs (tools/execute_notebooks.py) are those of the full sizes.
SMOKE = {
    "anatomy.ipynb": "STEPS = 40\nMLP_STEPS = 30",
    "ecosystem.ipynb": "STEPS = 30",
    "memory_and_speed.ipynb": (
        "STEPS = 20\nCONTEXT, BATCH = 16, 4\nSPEED_LAYERS, SPEED_WIDTH = 2, 128\n"
        "ROUNDS, STEPS_PER_ROUND = 1, 2"
    ),
    "quickstart.ipynb": "STEPS = 150",
    "relatives.ipynb": "STEPS = 12\nCONTEXT, BATCH = 16, 4",
    "trajectories.ipynb": "STEPS = 100\nLR_COUNT = 7",
}


def _ids(path: Path) -> str:
    return path.name


def _assigned(source: str) -> list[str]:
    """The names that the top-level statements of ``source`` assign; every statement must be
    an assignment of names (``A = 1``, ``A, B = 1, 2``)."""
    names = []
    for statement in ast.parse(source).body:
        assert isinstance(statement, (ast.Assign, ast.AnnAssign)), ast.unparse(statement)
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        for target in targets:
            elements = target.elts if isinstance(target, ast.Tuple) else [target]
            assert all(isinstance(e, ast.Name) for e in elements), ast.unparse(target)
            names += [e.id for e in elements]
    return names


def _parameters_cells(nb: nbformat.NotebookNode) -> list[int]:
    return [
        index
        for index, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", [])
    ]


def smoke_sized(nb: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """``nb`` with the cell of ``SMOKE[name]`` inserted after its parameters cell."""
    (index,) = _parameters_cells(nb)
    cell = nbformat.v4.new_code_cell(SMOKE[name], metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, cell)
    return nb


def test_notebooks_exist():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"
    assert NOTEBOOK_DIR / "quickstart.ipynb" in NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_parameters_cell_and_smoke_sizes(path):
    """One code cell tagged "parameters", of plain assignments, and smoke sizes in SMOKE
    that override only names it assigns (a renamed size cannot leave a stale override)."""
    assert set(SMOKE) == {p.name for p in NOTEBOOKS}, "one SMOKE entry per notebook"
    nb = nbformat.read(path, as_version=4)
    cells = _parameters_cells(nb)
    assert len(cells) == 1, f"{path.name}: {len(cells)} cells tagged 'parameters', not one"
    assigned = _assigned(nb.cells[cells[0]].source)
    overridden = _assigned(SMOKE[path.name])
    assert overridden, f"{path.name}: SMOKE overrides nothing"
    stale = sorted(set(overridden) - set(assigned))
    assert not stale, f"{path.name}: SMOKE sets {stale}, which the parameters cell does not"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_is_committed_with_its_outputs(path):
    """Saved by one run top to bottom (tools/execute_notebooks.py): every code cell ran, in
    order, none raised, the figures are there, and the file is small."""
    assert path.stat().st_size < MAX_BYTES, f"{path.name}: {path.stat().st_size:,} bytes"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"{path.name}: execution counts {counts}; rerun tools/execute_notebooks.py"
    )
    outputs = [out for cell in code for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"], f"{path.name}: an error"
    if any("plt.show()" in cell.source for cell in code):
        assert any("image/png" in out.get("data", {}) for out in outputs), (
            f"{path.name} draws figures but stores none (run it with the inline backend)"
        )
    text = "".join(
        str(out.get("text", "")) + str(out.get("data", {}).get("text/plain", "")) for out in outputs
    )
    assert str(ROOT) not in text and str(Path.home()) not in text, (
        f"{path.name}: an output names a path of the machine that ran it"
    )


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
    # The one install cell installs from ADAMX_SOURCE, whose default is this clone (the
    # folder above notebooks/), never a repository URL that may not exist
    install = [c.source for c in nb.cells if c.cell_type == "code" and "pip" in c.source]
    assert len(install) == 1, "one install cell"
    default = re.search(r"^ADAMX_SOURCE = (.+)$", install[0], flags=re.MULTILINE)
    assert default, "the install cell names its source ADAMX_SOURCE"
    source = (path.parent / ast.literal_eval(default.group(1))).resolve()
    assert source == ROOT, f"ADAMX_SOURCE's default is {source}, not this clone"
    assert "ADAMX_SOURCE" in install[0].split("ADAMX_SOURCE =", 1)[1], "ADAMX_SOURCE unused"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_executes(path, monkeypatch):
    """The notebook runs top to bottom, at the smoke sizes of SMOKE."""
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
    # At the smoke sizes most of a notebook's time is XLA compiling its programs (one step
    # per optimizer and policy); compiling with most optimizations off halves that, and the
    # programs and what the notebook checks are the same
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    # the test run's compilation cache (tests/conftest.py), so that a kept one serves the
    # kernels too
    cache = os.environ.get("ADAMX_TEST_COMPILATION_CACHE", "off")
    if cache != "off":
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", cache)
        monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

    nb = smoke_sized(nbformat.read(path, as_version=4), path.name)
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
