"""Where the test suite's time goes: a pytest plugin and its report.

Run the suite with the plugin (each xdist worker writes one JSON file), then summarise::

    PYTHONPATH=tools .venv/bin/python -m pytest -p suite_cost
    .venv/bin/python tools/suite_cost.py            # per file
    .venv/bin/python tools/suite_cost.py --tests 30 # the 30 costliest tests

Per test it records the process's CPU time, its subprocesses' CPU time (notebook kernels,
the multi-device processes, kernel builds), the wall time, and from ``jax.monitoring`` the
number and duration of XLA compiles, lowerings to MLIR and traces. The suite is CPU-bound
on two cores (two workers), so its wall time is about its CPU time over two, and a test's
CPU time is its cost. Files go to ``$ADAMX_SUITE_COST_DIR`` (default: the system's temporary
directory), one ``suite-cost-<worker>.json`` per process.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import resource
import tempfile
import time

import pytest

_EVENTS = {
    "/jax/core/compile/backend_compile_duration": "compile",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/jaxpr_trace_duration": "trace",
}
_DIR = os.environ.get("ADAMX_SUITE_COST_DIR", tempfile.gettempdir())
_rows: dict[str, dict[str, float]] = {}
_now: collections.Counter = collections.Counter()


def _children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _on_duration(event: str, duration: float, **_) -> None:
    name = _EVENTS.get(event)
    if name is not None:
        _now[name] += duration
        _now["n_" + name] += 1


def pytest_configure(config) -> None:
    import jax.monitoring

    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    if "PYTEST_XDIST_WORKER" not in os.environ:  # the controller: last run's files go
        for path in glob.glob(os.path.join(_DIR, "suite-cost-*.json")):
            os.remove(path)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _now.clear()
    cpu, wall, children = time.process_time(), time.perf_counter(), _children()
    yield
    _rows[item.nodeid] = {
        "cpu": time.process_time() - cpu,
        "children": _children() - children,
        "wall": time.perf_counter() - wall,
        **_now,
    }


def pytest_sessionfinish(session, exitstatus) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.path.join(_DIR, f"suite-cost-{worker}.json"), "w") as fh:
        json.dump(_rows, fh)


def _load(directory: str) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    for path in sorted(glob.glob(os.path.join(directory, "suite-cost-*.json"))):
        with open(path) as fh:
            rows.update(json.load(fh))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=_DIR, help="where the plugin wrote its files")
    parser.add_argument("--tests", type=int, default=0, help="list the N costliest tests")
    args = parser.parse_args()
    rows = _load(args.dir)
    if not rows:
        raise SystemExit(f"no suite-cost-*.json in {args.dir}: run pytest -p suite_cost first")
    columns = ("cpu", "children", "compile", "n_compile", "lower", "trace")
    keyed: dict = rows
    width = 0
    if not args.tests:
        keyed = collections.defaultdict(collections.Counter)
        for nodeid, row in rows.items():
            keyed[nodeid.split("::")[0]].update(row)
            keyed[nodeid.split("::")[0]]["tests"] += 1
        width = 6
    order = sorted(keyed, key=lambda k: -(keyed[k]["cpu"] + keyed[k]["children"]))
    head = "  ".join(f"{c:>9}" for c in ("cpu+child", *columns[1:]))
    print(f"{head}  {'tests':>{width}}  {'file' if not args.tests else 'test'}")
    total: collections.Counter = collections.Counter()
    for key in order[: args.tests or None]:
        row = keyed[key]
        total.update({c: row.get(c, 0) for c in columns})
        cells = [row["cpu"] + row["children"]] + [row.get(c, 0) for c in columns[1:]]
        count = f"{int(row['tests']):>{width}}" if width else ""
        print("  ".join(f"{x:9.1f}" for x in cells) + f"  {count}  {key}")
    cells = [total["cpu"] + total["children"]] + [total[c] for c in columns[1:]]
    print("  ".join(f"{x:9.1f}" for x in cells) + f"  {'':>{width}}  (the rows above)")


if __name__ == "__main__":
    main()
