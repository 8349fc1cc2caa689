"""Execute the notebooks and save them with their outputs, as GitHub and the docs show them.

    python tools/execute_notebooks.py                 # every notebook in notebooks/
    python tools/execute_notebooks.py notebooks/quickstart.ipynb

Each notebook runs top to bottom in a fresh kernel, from its own folder, with this checkout
on the path and JAX's strict promotion rules (as tests/test_notebooks.py runs them). Figures
are stored as PNG at 72 dpi with a 256-colour palette, so that a notebook stays well under
300 KB; no execution timings are stored, so that a rerun changes only what the code printed
or drew. The fused CPU kernel is built first, in this process, so that no notebook stores
the message of its build. Then the size of each file is printed. Run it after changing a
notebook, and commit the result: the docs site renders the stored outputs and never
executes a notebook.
"""

from __future__ import annotations

import base64
import io
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
DPI = 72
KERNEL_ARGS = [
    f"--InlineBackend.rc={{'figure.dpi': {DPI}}}",
    "--InlineBackend.print_figure_kwargs={'bbox_inches': 'tight', 'pil_kwargs': "
    "{'optimize': True}}",
]


def shrink_figures(nb: nbformat.NotebookNode) -> None:
    """Store each PNG with a palette of 256 colours: a plot's few colours and their
    anti-aliased edges look the same, in a file a third of the size. (An octree keeps the
    greys grey; median cut and maximum coverage tint large light-grey areas.)"""
    from PIL import Image

    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "image/png" not in data:
                continue
            image = Image.open(io.BytesIO(base64.b64decode(data["image/png"]))).convert("RGB")
            buffer = io.BytesIO()
            palette = image.quantize(256, Image.Quantize.FASTOCTREE)
            palette.save(buffer, format="PNG", optimize=True)
            data["image/png"] = base64.b64encode(buffer.getvalue()).decode("ascii") + "\n"


def execute(path: Path) -> None:
    """Run the notebook at ``path`` and write it back with its outputs."""
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "JAX_NUMPY_DTYPE_PROMOTION": "strict",
        "JAX_NUMPY_RANK_PROMOTION": "raise",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    os.environ.update(env)  # the kernel inherits this process's environment
    os.environ.pop("MPLBACKEND", None)  # the inline backend, so that figures are stored
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        record_timing=False,
        extra_arguments=KERNEL_ARGS,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    shrink_figures(nb)
    nb.metadata.pop("widgets", None)
    nbformat.validate(nb)
    nbformat.write(nb, path)


def main(argv: list[str]) -> None:
    sys.path.insert(0, str(ROOT))
    import adamx

    # build the fused kernel here, once, so that no notebook stores the build's message
    adamx.kernel_info()
    paths = [Path(p).resolve() for p in argv] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in paths:
        execute(path)
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main(sys.argv[1:])
