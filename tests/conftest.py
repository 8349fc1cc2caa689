"""Test-wide JAX settings: silent dtype promotion and rank broadcasting are bugs.

The run shares one persistent compilation cache between its xdist workers (a fresh
temporary directory per run, removed at the end): many tests compile the same step, and a
worker that finds another's executable skips XLA's compile. Set ``ADAMX_TEST_COMPILATION_CACHE``
to a directory to keep it between runs; ``=off`` to compile everything in every process.
"""

import os
import shutil
import tempfile

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

_CACHE_ENV = "ADAMX_TEST_COMPILATION_CACHE"


def pytest_configure(config):
    path = os.environ.get(_CACHE_ENV)
    if path is None:  # the controller (or a run without xdist): the workers inherit it
        path = tempfile.mkdtemp(prefix="adamx-test-jax-cache-")
        os.environ[_CACHE_ENV] = path
        config.stash[_owned] = path
    if path == "off":
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    path = config.stash.get(_owned, None)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


_owned = pytest.StashKey[str]()


@pytest.fixture
def x64():
    """Run a test with 64-bit floats enabled."""
    with jax.enable_x64(True):
        yield
