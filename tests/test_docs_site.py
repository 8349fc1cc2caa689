"""The documentation site builds with no warning, and documents every public name.

The build is the documented command (docs/README.md) with warnings as errors: a broken
cross-reference, a docstring that napoleon or reStructuredText cannot read, a page left out
of the navigation or a README section whose markers moved fails here. It renders the
notebooks' stored outputs and never executes them.
"""

from __future__ import annotations

import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

import adamx

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# The build's budget, in CPU seconds of the process (measured: about 10 on the project's
# 2-core machine): a slower build is a regression worth a look, not noise.
CPU_BUDGET_S = 40


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    for module in ("sphinx", "myst_nb", "furo"):
        pytest.importorskip(module, reason='the docs extra: pip install -e ".[docs]"')
    if not (DOCS / "conf.py").exists():
        pytest.skip("no docs/ folder in this tree")
    out = tmp_path_factory.mktemp("site")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(out / "doctrees"), str(DOCS), str(out / "html")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert proc.returncode == 0, f"the docs build failed or warned:\n{proc.stdout}{proc.stderr}"
    return out / "html", cpu_s


def test_site_builds_without_warnings_within_its_budget(site):
    html, cpu_s = site
    assert (html / "index.html").exists()
    assert cpu_s < CPU_BUDGET_S, f"the docs build took {cpu_s:.1f} s of CPU"


def test_every_public_name_is_on_an_api_page(site):
    html, _ = site
    pages = sorted((html / "api").glob("*.html"))
    text = "".join(page.read_text() for page in pages)
    ids = set(re.findall(r'id="((?:module-)?adamx\.[A-Za-z0-9_.]+)"', text))
    missing = [n for n in adamx.__all__ if {f"adamx.{n}", f"module-adamx.{n}"}.isdisjoint(ids)]
    assert not missing, f"adamx.__all__ names missing from the API pages: {missing}"


def test_notebooks_are_shown_with_their_plots_and_the_rules_with_mathjax(site):
    html, _ = site
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    for notebook in notebooks:
        page = (html / "notebooks" / f"{notebook.stem}.html").read_text()
        assert re.search(r'<img [^>]*src="[^"]*\.png"', page), f"{notebook.name}: no figure"
    assert "mathjax" in (html / "guide" / "recipes.html").read_text().lower()
