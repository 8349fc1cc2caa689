"""The habits the project keeps, enforced by the suite: ruff's lint and format, and mypy on
the package (its settings in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ["adamx", "tests", "benchmarks", "examples", "docs", "tools"]


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize(
    "command",
    [("ruff", "check", *CHECKED), ("ruff", "format", "--check", *CHECKED)],
    ids=["ruff-check", "ruff-format"],
)
def test_ruff(command):
    proc = run(*command)
    assert proc.returncode == 0, f"`{' '.join(command)}` failed:\n{proc.stdout}{proc.stderr}"


def test_mypy():
    proc = run("mypy", "--no-incremental")
    assert proc.returncode == 0, f"mypy (settings in pyproject.toml) failed:\n{proc.stdout}"
