"""The kernel cache is private (adamx/kernels/_build.py).

A library in the cache is code that adamx loads and runs, under a name anyone can predict.
adamx builds into and loads from a directory, and loads a file, only when the current user
owns it and neither group nor others can write to it; otherwise it takes the XLA path and
says why (a ``FusedKernelWarning``; ``fused=True`` raises).

The planted library here is a real shared library whose constructor writes a marker file
when it is loaded. A refusal is checked by the marker's absence, and a control shows that
the same library, planted in a private cache, does run: so the marker would tell.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_fused import compile_text, compiler, disabled_in_env, kernel_calls

import adamx
from adamx.kernels import _build

PLANTED_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
  const char* marker = getenv("ADAMX_TEST_MARKER");
  FILE* f = marker ? fopen(marker, "w") : NULL;
  if (f) { fputs("the planted library ran\n", f); fclose(f); }
}
"""

# A stand-in for the C++ compiler that "builds" by copying the real kernel library to its
# `-o` path with mode 0o777, as a linker that ignores the existing output's mode would.
FAKE_COMPILER = textwrap.dedent(
    """
    import os, shutil, sys
    out = sys.argv[sys.argv.index("-o") + 1]
    shutil.copyfile(os.environ["ADAMX_TEST_REAL_LIBRARY"], out)
    os.chmod(out, 0o777)
    """
)

OTHER_UID = 65534  # nobody


@pytest.fixture(scope="module")
def planted_template(tmp_path_factory) -> Path:
    cxx = compiler()
    if cxx is None:
        pytest.skip("no C++ compiler on PATH")
    workdir = tmp_path_factory.mktemp("planted")
    source = workdir / "planted.cc"
    source.write_text(PLANTED_SOURCE)
    library = workdir / "planted.so"
    subprocess.run([cxx, "-shared", "-fPIC", str(source), "-o", str(library)], check=True)
    return library


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty ``ADAMX_CACHE_DIR`` (mode 0o700) for this test, the kernel state forgotten
    before and after it (the next test loads the kernel from its own cache again)."""
    if disabled_in_env():
        pytest.skip("ADAMX_FUSED=0 is set in the environment")
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    monkeypatch.setenv("ADAMX_CACHE_DIR", str(directory))
    monkeypatch.setenv("ADAMX_TEST_MARKER", str(tmp_path / "marker"))
    _build.reset_for_tests()
    yield directory
    _build.reset_for_tests()


def library_path() -> Path:
    """Where adamx looks for the kernel library in the current ``ADAMX_CACHE_DIR``."""
    return _build._library_path(jax.ffi.include_dir())


def plant(template: Path, mode: int) -> Path:
    path = library_path()
    shutil.copyfile(template, path)
    os.chmod(path, mode)
    return path


def ran(cache: Path) -> bool:
    return (cache.parent / "marker").exists()


def give_away(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    os.chown(path, OTHER_UID, OTHER_UID)


def test_planted_library_in_a_private_cache_runs(cache, planted_template):
    """The control: a private cache is trusted, so what is planted there runs (and, missing
    the kernel's symbols, leaves the kernel unavailable)."""
    plant(planted_template, 0o700)
    info = _build.kernel_info()
    assert not info.available and "AdamxAdamStep" in info.reason, info
    assert ran(cache)


REFUSALS = {  # name: (directory mode, library mode, what is refused, why)
    "directory-group-writable": (0o770, 0o700, "directory", "writable by group or others"),
    "directory-like-tmp": (0o1777, 0o700, "directory", "writable by group or others"),
    "library-group-writable": (0o700, 0o760, "library", "writable by group or others"),
    "library-other-writable": (0o700, 0o702, "library", "writable by group or others"),
    "directory-of-another-user": (0o755, 0o700, "directory", f"owned by uid {OTHER_UID}"),
    "library-of-another-user": (0o700, 0o755, "library", f"owned by uid {OTHER_UID}"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_planted_library_outside_a_private_cache_is_not_run(cache, planted_template, case):
    dir_mode, lib_mode, what, why = REFUSALS[case]
    path = plant(planted_template, lib_mode)
    if case == "library-of-another-user":
        give_away(path)
    os.chmod(cache, dir_mode)
    if case == "directory-of-another-user":
        give_away(cache)
    before = sorted(os.listdir(cache))

    info = _build.kernel_info()

    assert not info.available and info.path is None
    where = cache if what == "directory" else path
    assert f"UnsafeCacheError: refusing the kernel cache {what} {where}: it is {why}" in info.reason
    assert "ADAMX_CACHE_DIR" in info.reason
    assert not ran(cache), "the planted library was loaded"
    assert sorted(os.listdir(cache)) == before  # nothing built there either


ABOVE = {  # name: (mode of the directory above the cache, refused because)
    "group-writable": (0o770, "writable by group or others (mode 0o770, not sticky)"),
    "world-writable": (0o777, "writable by group or others (mode 0o777, not sticky)"),
    "of-another-user": (0o755, f"owned by uid {OTHER_UID} (neither root nor this user)"),
}


@pytest.mark.parametrize("case", list(ABOVE))
def test_cache_below_a_directory_others_can_change_is_refused(cache, planted_template, case):
    """A private cache is not enough if another user can rename it and put theirs in its
    place: refused when a directory above it is not safe."""
    mode, why = ABOVE[case]
    plant(planted_template, 0o700)
    above = cache.parent
    os.chmod(above, mode)
    if case == "of-another-user":
        give_away(above)
    info = _build.kernel_info()
    assert not info.available
    assert (
        f"refusing the kernel cache directory {cache}: the directory {above} above it is {why}"
        in info.reason
    ), info.reason
    assert not ran(cache)


def test_cache_below_a_sticky_directory_is_trusted(cache, planted_template):
    """Like /tmp: world-writable but sticky (only an entry's owner can rename it)."""
    plant(planted_template, 0o700)
    os.chmod(cache.parent, 0o1777)
    info = _build.kernel_info()
    assert not info.available and "AdamxAdamStep" in info.reason, info
    assert ran(cache)


def test_a_library_that_is_a_link_is_refused(cache, planted_template):
    target = cache.parent / "elsewhere.so"
    shutil.copyfile(planted_template, target)
    library_path().symlink_to(target)
    info = _build.kernel_info()
    assert f"refusing the kernel cache library {library_path()}: it is not a regular file" in (
        info.reason
    )
    assert not ran(cache)


def test_cache_owned_by_another_user_is_refused(monkeypatch):
    """Without root (no file can be given away): a directory that root owns."""
    if os.geteuid() == 0:
        pytest.skip("root owns the directory: see test_planted_library_outside_...")
    monkeypatch.setenv("ADAMX_CACHE_DIR", "/")
    _build.reset_for_tests()
    try:
        info = _build.kernel_info()
    finally:
        _build.reset_for_tests()
    assert not info.available
    assert "refusing the kernel cache directory /: it is owned by uid 0" in info.reason


def test_refused_cache_warns_and_takes_the_xla_path(cache):
    os.chmod(cache, 0o777)
    params = {"w": jnp.asarray(np.linspace(-1.0, 1.0, 37), jnp.float32)}
    grads = {"w": jnp.asarray(np.cos(np.arange(37.0)), jnp.float32)}
    auto, xla = adamx.adam(1e-2), adamx.adam(1e-2, fused=False)
    step = lambda opt: lambda p, s, g: adamx.step(opt, g, s, p)  # noqa: E731

    with pytest.warns(adamx.FusedKernelWarning, match="writable by group or others") as caught:
        hlo = compile_text(step(auto), params, auto.init(params), grads)
    assert str(cache) in str(caught[0].message)
    assert "XLA path" in str(caught[0].message)
    assert kernel_calls(hlo) == 0
    got = jax.jit(step(auto))(params, auto.init(params), grads)
    want = jax.jit(step(xla))(params, xla.init(params), grads)
    jax.tree.map(np.testing.assert_array_equal, got, want)

    strict = adamx.adam(1e-2, fused=True)
    with pytest.raises(RuntimeError, match="refusing the kernel cache directory"):
        jax.jit(step(strict))(params, strict.init(params), grads)
    assert os.listdir(cache) == []


def test_new_cache_and_library_are_private_whatever_the_umask(tmp_path, monkeypatch, capfd):
    """Under umask 002 (group-writable by default), with a "compiler" whose output is mode
    0o777: the directories adamx creates are 0o700, the library loses group and other
    write before it gets its name, and it loads. The build says on stderr, once, that it
    started; loading the cached library later says nothing."""
    if compiler() is None:
        pytest.skip("no C++ compiler on PATH")
    if disabled_in_env():
        pytest.skip("ADAMX_FUSED=0 is set in the environment")
    real = adamx.kernel_info()
    assert real.available, real
    fake = tmp_path / "fake_cxx.py"
    fake.write_text(FAKE_COMPILER)
    directory = tmp_path / "new" / "cache"
    monkeypatch.setenv("ADAMX_CACHE_DIR", str(directory))
    monkeypatch.setenv("ADAMX_TEST_REAL_LIBRARY", str(real.path))
    monkeypatch.setenv("CXX", f"{sys.executable} {fake}")
    _build.reset_for_tests()
    old = os.umask(0o002)
    try:
        info = _build.kernel_info()
    finally:
        os.umask(old)
        _build.reset_for_tests()
    assert info.available, info
    assert Path(str(info.path)).parent == directory and info.build_seconds > 0
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(directory.parent.stat().st_mode) == 0o700
    mode = stat.S_IMODE(Path(str(info.path)).stat().st_mode)
    assert mode & (stat.S_IWGRP | stat.S_IWOTH) == 0, oct(mode)
    said = capfd.readouterr().err
    assert said.count("adamx: building the fused CPU kernels into") == 1, said
    assert str(directory) in said and _build.BUILD_TIME in said
    try:
        again = _build.kernel_info()  # a new process would find the library in the cache
    finally:
        _build.reset_for_tests()
    assert again.available and again.build_seconds == 0.0, again
    assert "building" not in capfd.readouterr().err
