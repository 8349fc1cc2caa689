"""pytest plugin: put adamx's optimizers where optax's same-named ones were, then record results.

Loaded by ``optax_suite.py`` as ``pytest -p compat_plugin``; configured by environment variables:

* ``ADAMX_COMPAT_MODE``: ``none`` (baseline, nothing substituted), ``optimizers`` (every name in
  ``adamx.OPTIMIZERS`` that optax also has, in ``optax`` or ``optax.contrib``, and every public
  adamx name bound to one of them, such as ``optimistic_adam_v2``) or ``blocks`` (the
  optimizers and, in addition, every other public adamx callable with an optax namesake).
* ``ADAMX_COMPAT_OUT``: where to write the per-test results (JSON).

Substitution happens in ``pytest_configure``, before any test module is imported: every optax
module is imported, and every module attribute that *is* one of optax's functions to replace
(``optax.adam``, ``optax._src.alias.adam``, ``optax.contrib.adopt``,
``optax.contrib._adopt.adopt``, ...) is rebound to a thin wrapper around adamx's function. The
wrapper forwards ``*args, **kwargs`` untouched and records which substituted names a test called
(and whether from the test itself or from inside optax), so failures can be attributed to an
alias. After collection, every test module's globals are checked: a leftover reference to an
optax original fails the run loudly, as does a substituted run in which adamx was never called.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import pkgutil
import sys
import time

import pytest

MODE = os.environ.get("ADAMX_COMPAT_MODE", "none")
OUT = os.environ.get("ADAMX_COMPAT_OUT")

_CALLS: set[tuple[str, str]] = set()  # (name, "test" | "optax") during the current test
_CALLED_EVER: set[str] = set()
_RESULTS: dict[str, dict] = {}
_PATCHED: list[str] = []  # "module.attr = adamx.name"
_ORIGINALS: dict[int, str] = {}  # id(optax function) -> name
# optax modules that call a factory the test handed them: such calls count as the test's own.
_FACTORY_WRAPPERS = ("optax.schedules._inject",)
# While test modules are imported, an adamx factory that raises (say, at an unknown keyword in a
# module-level table of optimizers) returns a stand-in that raises the same error when used, so
# only the tests using that optimizer fail, not the whole file.
_COLLECTING = True


def substitution_table(mode: str) -> dict[str, tuple[list, object]]:
    """name -> (optax originals, adamx function) for the given mode."""
    import optax
    import optax.contrib

    import adamx

    names = list(adamx.OPTIMIZERS)
    # optax's other names for a registered optimizer (optimistic_adam_v2: the same function)
    registered = [getattr(adamx, n) for n in adamx.OPTIMIZERS]
    names += [
        n
        for n in adamx.__all__
        if n not in names and any(getattr(adamx, n) is f for f in registered)
    ]
    if mode == "blocks":
        names += [n for n in adamx.__all__ if n not in adamx.OPTIMIZERS]
    table = {}
    for name in names:
        ours = getattr(adamx, name)
        theirs = [getattr(ns, name) for ns in (optax, optax.contrib) if hasattr(ns, name)]
        theirs = [t for t in theirs if callable(t) and not isinstance(t, type)]
        if theirs and callable(ours) and not isinstance(ours, type):
            table[name] = (theirs, ours)
    return table


def _wrap(name: str, fn):
    @functools.wraps(fn)
    def substituted(*args, **kwargs):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        internal = caller.startswith("optax.") and caller not in _FACTORY_WRAPPERS
        where = "optax" if internal else "test"
        _CALLS.add((name, where))
        _CALLED_EVER.add(name)
        if not _COLLECTING:
            return fn(*args, **kwargs)
        try:
            return _recording(name, fn(*args, **kwargs))
        except Exception as e:  # at import of a test module: fail the tests using it, not all
            return _deferred(name, e)

    substituted.__adamx__ = fn
    return substituted


def _recording(name: str, tx):
    """Built at import time (so the test did not call the factory): record init/update calls."""

    def record(f):
        @functools.wraps(f)
        def recorded(*args, **kwargs):
            _CALLS.add((name, "test"))
            return f(*args, **kwargs)

        return recorded

    return tx._replace(init=record(tx.init), update=record(tx.update))


def _deferred(name: str, error: Exception):
    """A transformation whose init/update re-raise the error adamx's factory raised."""
    import optax

    def fail(*args, **kwargs):
        _CALLS.add((name, "test"))
        raise type(error)(f"{error} [raised by {name}() when the test module was imported]")

    return optax.GradientTransformationExtraArgs(fail, fail)


def _import_all_optax() -> None:
    import optax

    for info in pkgutil.walk_packages(optax.__path__, "optax."):
        leaf = info.name.rsplit(".", 1)[-1]
        if leaf.endswith("_test") or leaf == "conftest":
            continue
        try:
            importlib.import_module(info.name)
        except Exception:  # an optional dependency missing: nothing to patch there
            pass


def _substitute(mode: str) -> None:
    _import_all_optax()
    table = substitution_table(mode)
    replacement = {}
    for name, (theirs, ours) in table.items():
        wrapper = _wrap(name, ours)
        for t in theirs:
            replacement[id(t)] = wrapper
            _ORIGINALS[id(t)] = name
    for modname, module in list(sys.modules.items()):
        if not (modname == "optax" or modname.startswith("optax.")) or module is None:
            continue
        for attr, value in list(vars(module).items()):
            if id(value) in replacement:
                setattr(module, attr, replacement[id(value)])
                _PATCHED.append(f"{modname}.{attr} = adamx.{_ORIGINALS[id(value)]}")
    _sanity_check_namespaces(table)


def _sanity_check_namespaces(table) -> None:
    import optax
    import optax._src.alias as alias
    import optax.contrib as contrib

    for name, (_, ours) in table.items():
        for ns in (optax, alias, contrib):
            if hasattr(ns, name) and getattr(getattr(ns, name), "__adamx__", None) is not ours:
                raise pytest.UsageError(f"substitution failed: {ns.__name__}.{name} is not adamx's")


def pytest_configure(config):
    if MODE not in ("none", "optimizers", "blocks"):
        raise pytest.UsageError(f"ADAMX_COMPAT_MODE={MODE!r}")
    if MODE != "none":
        _substitute(MODE)


def pytest_report_header(config):
    if MODE == "none":
        return "adamx compat: baseline (nothing substituted)"
    names = sorted({p.rsplit("adamx.", 1)[1] for p in _PATCHED})
    return f"adamx compat: {len(_PATCHED)} optax attributes -> adamx ({', '.join(names)})"


def pytest_collection_finish(session):
    global _COLLECTING
    _COLLECTING = False
    if MODE == "none":
        return
    modules = {item.module for item in session.items if getattr(item, "module", None)}
    leftovers = [
        f"{m.__name__}.{attr} (optax.{_ORIGINALS[id(v)]})"
        for m in modules
        for attr, v in vars(m).items()
        if id(v) in _ORIGINALS
    ]
    if leftovers:
        raise pytest.UsageError("optax originals still bound in test modules: " + str(leftovers))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _CALLS.clear()
    entry = _RESULTS.setdefault(item.nodeid, {"outcome": "passed", "message": ""})
    # absl's parameterized tests carry their parameters (opt_name='adam', ...): for the report.
    entry["params"] = getattr(getattr(item, "obj", None), "__x_params_repr__", "")
    return (yield)


def _message(report) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message
    return str(report.longrepr)[-2000:]


def pytest_runtest_logreport(report):
    entry = _RESULTS.setdefault(report.nodeid, {"outcome": "passed", "message": ""})
    if report.when == "call" or report.outcome != "passed":
        if entry["outcome"] == "passed":  # the first non-pass wins (setup error before teardown)
            failed_outside_call = report.when != "call" and report.failed
            entry["outcome"] = "error" if failed_outside_call else report.outcome
            entry["message"] = _message(report) if not report.passed else ""
    if report.when == "teardown":
        entry["calls"] = sorted(f"{n}@{w}" for n, w in _CALLS)


def pytest_collectreport(report):
    if report.failed:
        _RESULTS[report.nodeid or "<collection>"] = {
            "outcome": "error",
            "message": _message(report),
            "calls": [],
        }


def pytest_sessionfinish(session, exitstatus):
    ran = any(r.get("outcome") in ("passed", "failed") for r in _RESULTS.values())
    if MODE != "none" and ran and not _CALLED_EVER:
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
        print("\nadamx compat: substituted run, but no adamx function was ever called", flush=True)
    if OUT:
        with open(OUT, "w") as f:
            json.dump(
                {"mode": MODE, "patched": _PATCHED, "time": time.time(), "results": _RESULTS},
                f,
                indent=1,
            )
