"""Test-wide JAX settings: silent dtype promotion and rank broadcasting are bugs.

The run shares one persistent compilation cache between its xdist workers (a fresh
temporary directory per run, removed at the end): many tests compile the same step, and a
worker that finds another's executable skips XLA's compile. Set ``ADAMX_TEST_COMPILATION_CACHE``
to a directory to keep it between runs; ``=off`` to compile everything in every process.

The run also compiles with two XLA:CPU code-generation flags (``TEST_XLA_FLAGS``, added to
``XLA_FLAGS`` before any backend starts, so the workers and every subprocess a test starts
inherit them): the loop emitter instead of the newer fusion emitters, and one LLVM module
per program instead of a parallel split. Nearly all of the suite's CPU time is XLA compiling
thousands of small programs, and these compile them in about half the CPU time.
``tests/test_xla_flags.py`` steps every recipe and storage policy under both settings: the
same bits, but for a few reductions and multiply-adds that round differently in the last
place (it names them and bounds them). The whole suite passes under both; set
``ADAMX_TEST_XLA_FLAGS=default`` to run it with XLA's own defaults. A jaxlib that does not
know a flag runs the suite with its defaults.
"""

import os
import shutil
import subprocess
import sys
import tempfile

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

_CACHE_ENV = "ADAMX_TEST_COMPILATION_CACHE"
_FLAGS_ENV = "ADAMX_TEST_XLA_FLAGS"
TEST_XLA_FLAGS = ("--xla_cpu_use_fusion_emitters=false", "--xla_cpu_parallel_codegen_split_count=1")


def _add_test_xla_flags():
    if os.environ.get(_FLAGS_ENV) == "default":
        return
    flags = os.environ.get("XLA_FLAGS", "").split()
    named = {f.split("=")[0] for f in flags}
    wanted = [f for f in TEST_XLA_FLAGS if f.split("=")[0] not in named]  # the user's win
    if not wanted:
        return
    # XLA aborts the process on a flag it does not know: try them in a child first, so a
    # jaxlib that dropped one runs the suite with its defaults instead of failing every test
    env = dict(os.environ, XLA_FLAGS=" ".join(flags + wanted), JAX_PLATFORMS="cpu")
    probe = "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"
    if subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True).returncode:
        return
    os.environ["XLA_FLAGS"] = env["XLA_FLAGS"]


def pytest_configure(config):
    _add_test_xla_flags()
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
