"""The fused CPU kernel: built on first use with the system C++ compiler, cached, loaded.

``adamx/kernels/csrc/adam_cpu.cc`` is an XLA FFI handler. Nothing is compiled at install time
(the README's one install command stays the same): the first Adam/AdamW step traced for
the CPU compiles it (``BUILD_TIME``, the one place that says how long; one line on
stderr says a build has started) into a cache directory and registers it with
``jax.ffi``; later processes load the cached library. If that fails (no compiler, headers
missing, a read-only cache) adamx keeps working through the XLA path and says so once
with a :class:`FusedKernelWarning`.

A library in the cache is code this process runs, and its name is predictable (a hash of
the sources, the compiler, jax and the CPU), so the cache must be private: adamx builds
into and loads from a directory, and loads a file, only if the current user owns it and
neither group nor others can write to it, and only if every directory above it is owned
by root or the current user and not writable by group or others unless sticky (``/tmp``),
so that nobody else can swap it either. Otherwise (a shared ``/tmp`` path, a
group-writable home) it takes the XLA path and the warning says which directory or file
and why. It creates the directory (and any missing one above it) ``0o700``, and its
libraries without group or other write permission.

Environment:
  ``ADAMX_FUSED=0``: never use the kernel (no build, no warning).
  ``ADAMX_MARCH``: the ``-march`` to build for (default ``native``).
  ``ADAMX_CACHE_DIR``: where the built library goes (default
  ``$XDG_CACHE_HOME/adamx`` or ``~/.cache/adamx``); a directory of the current user's,
  not writable by group or others.
  ``CXX``: the compiler (default ``c++``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import jax

_SOURCE = Path(__file__).parent / "csrc" / "adam_cpu.cc"
# Adam/AdamW with moments stored in bfloat16 or 8 bits (adamx/kernels/_fused_storage.py); built
# into the same library.
_STORAGE_SOURCE = Path(__file__).parent / "csrc" / "adam_storage_cpu.cc"
# Lion and SGD with momentum (adamx/kernels/_fused_momentum.py); built into the same library.
_MOMENTUM_SOURCE = Path(__file__).parent / "csrc" / "momentum_cpu.cc"
_SOURCES = (_SOURCE, _STORAGE_SOURCE, _MOMENTUM_SOURCE)
# Measured 2026-12-06: 22 s of one core (g++ 12.2, -O3, the three sources) on the 2-core
# Xeon VM of benchmarks/RESULTS.md; the README and the build's stderr line quote this.
BUILD_TIME = "about 20 s of one core"
# Included by both (Adam's arithmetic; futures and the thread-pool loop): hashed into the
# cache key, not compiled.
_HEADERS = tuple(Path(__file__).parent / "csrc" / h for h in ("adam_math.h", "pool.h"))
_SYMBOL = "AdamxAdamStep"
TARGET = "adamx_adam_step_v1"
# The same step with m and v in one flat buffer each (the "flat" storage policy).
_FLAT_SYMBOL = "AdamxAdamFlatStep"
FLAT_TARGET = "adamx_adam_flat_step_v1"
_STORAGE_SYMBOL = "AdamxAdamStorageStep"
STORAGE_TARGET = "adamx_adam_storage_step_v1"
LION_TARGET = "adamx_lion_step_v1"
SGD_TARGET = "adamx_sgd_step_v1"
_MOMENTUM_TARGETS = (("AdamxLionStep", LION_TARGET), ("AdamxSgdStep", SGD_TARGET))
# -ffp-contract=off: no fused multiply-adds, so each element is exactly the float32
# formula, operation by operation (tested bitwise against NumPy). -fno-math-errno lets
# sqrt vectorise without changing its results.
_FLAGS = (
    "-O3", "-fno-math-errno", "-ffp-contract=off", "-std=c++17", "-shared", "-fPIC", "-w",
)  # fmt: skip


def _flags() -> tuple[str, ...]:
    """The compiler flags: ``_FLAGS`` and ``-march=$ADAMX_MARCH`` (default ``native``; the
    tests build ``haswell`` (AVX2) and ``x86-64`` (scalar) kernels and compare them)."""
    return (f"-march={os.environ.get('ADAMX_MARCH') or 'native'}", *_FLAGS)


class FusedKernelWarning(UserWarning):
    """The fused CPU kernel could not be built or loaded; adamx uses the XLA path."""


class UnsafeCacheError(RuntimeError):
    """The kernel cache directory or library is not private to the current user."""


@dataclass(frozen=True)
class KernelInfo:
    """What :func:`adamx.kernel_info` reports.

    Attributes:
      available: the kernel is built, loaded and registered with ``jax.ffi``.
      reason: why not, when it is not (``""`` when it is).
      path: the shared library in the cache, when built.
      build_seconds: time spent compiling it in this process (0 when it came from the
        cache).
    """

    available: bool
    reason: str
    path: str | None = None
    build_seconds: float = 0.0


_lock = threading.Lock()
_state: KernelInfo | None = None
_registered: set[str] = set()


def disabled_by_env() -> bool:
    """``ADAMX_FUSED`` is set to 0 / false / off."""
    return os.environ.get("ADAMX_FUSED", "").strip().lower() in {"0", "false", "off", "no"}


def cache_dir() -> Path:
    """Where built kernels are kept."""
    if os.environ.get("ADAMX_CACHE_DIR"):
        return Path(os.environ["ADAMX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "adamx"


def _cpu_fingerprint() -> str:
    """A cache key part for ``-march=native``: the CPU model and its feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine() + platform.processor()
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
    return platform.machine() + "".join(sorted(set(lines)))


def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CXX") or "c++")


def _jaxlib_version() -> str:
    import jaxlib

    return getattr(jaxlib, "__version__", "")


def _library_path(include: str) -> Path:
    key = hashlib.sha256()
    for part in (
        *(source.read_bytes() for source in _SOURCES + _HEADERS),
        " ".join(_compiler() + list(_flags())).encode(),
        include.encode(),
        jax.__version__.encode(),
        _jaxlib_version().encode(),
        _cpu_fingerprint().encode(),
    ):
        key.update(part)
        key.update(b"\0")
    return cache_dir() / f"adam_cpu-{key.hexdigest()[:16]}.so"


_GROUP_OR_OTHER_WRITE = stat.S_IWGRP | stat.S_IWOTH


def _refuse(what: str, path: Path, why: str, fix: str = "") -> UnsafeCacheError:
    return UnsafeCacheError(
        f"refusing the kernel cache {what} {path}: {why}, so another user could plant a "
        f"library there that this process would run; {fix}set ADAMX_CACHE_DIR to a "
        f"directory of your own"
    )


def _check_private(info: os.stat_result, what: str, path: Path) -> None:
    """Raise :class:`UnsafeCacheError` unless ``info`` (of the cache ``what``, "directory"
    or "library", at ``path``) is owned by the current user and not writable by group or
    others."""
    uid, mode = os.geteuid(), stat.S_IMODE(info.st_mode)
    if info.st_uid != uid:
        raise _refuse(what, path, f"it is owned by uid {info.st_uid}, not by this user (uid {uid})")
    if mode & _GROUP_OR_OTHER_WRITE:
        why = f"it is writable by group or others (mode {mode:#o})"
        raise _refuse(what, path, why, f"run `chmod go-w {path}`, or ")


def _private_cache_dir(directory: Path) -> Path:
    """The cache directory (created ``0o700`` if missing, with any missing directory above
    it), as a path without symbolic links;
    raises :class:`UnsafeCacheError` unless it is private (:func:`_check_private`) and no
    directory above it lets another user replace it: each is owned by root or this user,
    and writable by group or others only with the sticky bit (``/tmp``: there only an
    entry's owner can rename or remove it)."""
    for missing in reversed([d for d in (directory, *directory.parents) if not d.exists()]):
        missing.mkdir(mode=0o700, exist_ok=True)
    real = directory.resolve(strict=True)
    uid = os.geteuid()
    for parent in reversed(real.parents):
        info = os.stat(parent)
        mode = stat.S_IMODE(info.st_mode)
        if info.st_uid not in (0, uid):
            why = f"the directory {parent} above it is owned by uid {info.st_uid}"
            raise _refuse("directory", real, why + " (neither root nor this user)")
        if mode & _GROUP_OR_OTHER_WRITE and not mode & stat.S_ISVTX:
            why = f"the directory {parent} above it is writable by group or others"
            raise _refuse("directory", real, f"{why} (mode {mode:#o}, not sticky)")
    _check_private(os.stat(real), "directory", real)
    return real


def _build(path: Path, include: str) -> float:
    """Compile the kernel into ``path`` (atomically: a temp file, then a rename), without
    group or other write permission whatever the umask."""
    compiler = _compiler()
    if shutil.which(compiler[0]) is None:
        raise RuntimeError(
            f"no C++ compiler: {compiler[0]!r} is not on PATH (set CXX, or install g++/clang)"
        )
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    command = [*compiler, *_flags(), f"-I{include}", *map(str, _SOURCES), "-o", tmp]
    print(  # once per machine and adamx version: later processes load the cached library
        f"adamx: building the fused CPU kernels into {path.parent} (once; {BUILD_TIME}) ...",
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise RuntimeError(f"`{' '.join(command)}` failed: " + " | ".join(tail))
        # the linker makes its output with the umask's permissions (group-writable under
        # umask 002): take group and other write away before the library has its name
        os.chmod(tmp, stat.S_IMODE(os.stat(tmp).st_mode) & ~_GROUP_OR_OTHER_WRITE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return time.perf_counter() - start


def _load_library(path: Path) -> ctypes.CDLL:
    """Load ``path`` (in a private cache directory) if it is a regular file of this user's
    that group and others cannot write; nobody else can replace it in between."""
    info = os.lstat(path)  # FileNotFoundError: build it
    if not stat.S_ISREG(info.st_mode):
        raise _refuse("library", path, "it is not a regular file")
    _check_private(info, "library", path)
    return ctypes.CDLL(str(path))


def _load() -> KernelInfo:
    if disabled_by_env():
        return KernelInfo(False, "disabled by ADAMX_FUSED=0")
    missing = [str(source) for source in _SOURCES + _HEADERS if not source.exists()]
    if missing:
        return KernelInfo(False, f"kernel source missing: {', '.join(missing)}")
    try:
        include = jax.ffi.include_dir()
        path = _library_path(include)
        seconds = 0.0
        real = _private_cache_dir(path.parent) / path.name
        try:
            library = _load_library(real)
        except FileNotFoundError:
            seconds = _build(real, include)
            library = _load_library(real)
        for symbol, target in (
            (_SYMBOL, TARGET),
            (_FLAT_SYMBOL, FLAT_TARGET),
            (_STORAGE_SYMBOL, STORAGE_TARGET),
            *_MOMENTUM_TARGETS,
        ):
            handler = getattr(library, symbol)
            if target not in _registered:  # a target is registered once per process
                jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform="cpu")
                _registered.add(target)
    except Exception as error:  # noqa: BLE001 - any failure means: use the XLA path
        return KernelInfo(False, f"{type(error).__name__}: {error}")
    return KernelInfo(True, "", str(path), seconds)


def kernel_info() -> KernelInfo:
    """Build (first call only), load and register the fused CPU kernel; say how it went.

    Returns:
      A :class:`KernelInfo`. Never raises: a kernel that cannot be had leaves
      ``available=False`` and the reason, and the optimizers use the XLA path.

    Example:
      >>> import adamx
      >>> info = adamx.kernel_info()
      >>> isinstance(info.available, bool)
      True
    """
    global _state
    with _lock:
        if _state is None:
            _state = _load()
        return _state


_warned = False


def ensure_kernel(required: bool) -> bool:
    """Whether the kernel can be used; for an automatic choice (``required=False``) a
    kernel that failed is said once per process, for ``fused=True`` it is an error."""
    global _warned
    info = kernel_info()
    if info.available:
        return True
    if required:
        raise RuntimeError(
            f"fused=True, but the fused CPU kernel is unavailable: {info.reason}. Use "
            f"fused=None (automatic) to fall back to the XLA path."
        )
    if not _warned and not disabled_by_env():
        _warned = True
        warnings.warn(
            f"adamx: the fused CPU kernel is unavailable ({info.reason}); Adam/AdamW run "
            f"through the XLA path instead (same results, slower). Set ADAMX_FUSED=0 to "
            f"choose that path and silence this.",
            FusedKernelWarning,
            stacklevel=4,
        )
    return False


def reset_for_tests() -> None:
    """Forget the loaded state and the warning (tests only)."""
    global _state, _warned
    with _lock:
        _state = None
        _warned = False
