"""benchmarks/gpu.py runs end to end: ``--smoke`` on the CPU, and a clean exit without a GPU.

Both force the CPU (``JAX_PLATFORMS=cpu``, no CUDA device for torch), so they check the same
thing on any machine; the measurement itself needs a CUDA device (benchmarks/README.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py"
CONTENDERS = ["adamx f32", "optax f32", "adamx 8bit", "adamx bf16+SR"]


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_smoke_run_measures_every_contender_and_writes_the_table(tmp_path):
    out = tmp_path / "gpu.md"
    proc = run("--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr

    table = out.read_text()
    assert table.strip() == proc.stdout.strip()  # the table printed is the table written
    assert "(smoke run: tiny sizes, not a measurement)" in table
    assert "| case | contender | state B/param | median ms |" in table
    results = json.loads(out.with_suffix(".json").read_text())
    assert results["smoke"] and results["copy_bw_bytes_per_s"] > 0
    rows = {(r["case"], r["contender"]): r for r in results["results"]}
    cases = sorted({case for case, _ in rows})
    assert len(cases) == 2  # a few leaves, and more of them
    for case in cases:
        for contender in CONTENDERS:
            row = rows[(case, contender)]
            assert row["status"] == "ok", row
            assert 0 < row["min_s"] <= row["median_s"] and row["compile_s"] > 0, row
            assert f"| {case} | {contender} |" in table
        torch = rows[(case, "torch fused f32")]
        # measured, or left out with a note saying why (no torch, no fused CPU Adam)
        said = any("torch" in note for note in results["notes"])
        assert torch["status"] == "ok" or torch["status"].startswith("failed") or said, torch


def test_without_a_gpu_it_says_so_and_writes_nothing(tmp_path):
    out = tmp_path / "gpu.md"
    proc = run("--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no CUDA device for JAX" in proc.stderr
    assert "nothing measured" in proc.stderr and "--smoke" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not out.with_suffix(".json").exists()
