"""The suite's XLA:CPU flags change how long XLA takes to compile, not what a step computes.

``tests/conftest.py`` runs the suite with ``TEST_XLA_FLAGS`` (the loop emitter, one LLVM
module per program), which halve the CPU time the suite spends compiling. Users run XLA's
defaults, so a result that differed between the two would make every bitwise test here
check a program no user runs. This test steps every structural row of the contract table,
plus the stored-moment codecs (8-bit codes rounded stochastically and to nearest, bfloat16
with stochastic rounding, factored), in a subprocess with XLA's defaults and compares the
parameters and states with the same steps under the suite's flags: bit for bit, but for the
rows in ``ROUNDING``, whose reductions or multiply-adds the two emitters round differently
in the last place (measured: at most 5e-7 relative after three steps).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TEST_XLA_FLAGS
from test_contract import STRUCTURAL, grads_like, make, small_tree, train_step

import adamx

HERE = Path(__file__).resolve().parent
STEPS = 3
STORAGE = {
    "8bit": dict(mu="8bit", nu="8bit"),
    "8bit_nearest": dict(
        mu=adamx.storage.blockwise8(stochastic_rounding=False),
        nu=adamx.storage.blockwise8(stochastic_rounding=False),
    ),
    "bfloat16_sr": dict(mu="bfloat16_sr", nu="bfloat16_sr"),
    "factored": dict(nu="factored"),
}

# rows whose results differ in the last places between the two emitters, and where
ROUNDING = {
    "adam_mini": "the mean of v over each block (a reduction)",
    "lars": "the norms of the trust ratio (reductions)",
    "rmsprop_centered": "v - m**2 and its square root (multiply-adds)",
}


def _host(x) -> np.ndarray:
    """A leaf as ``np.savez`` keeps it: bfloat16 (which it would store as void) as its bits."""
    x = np.asarray(x)
    return x.view(f"u{x.itemsize}") if x.dtype.kind == "V" else x


def _steps(opt, params) -> dict[str, np.ndarray]:
    step = jax.jit(train_step(opt))
    state = opt.init(params)
    for t in range(STEPS):
        params, state = step(params, state, grads_like(params, seed=t + 1))
    return {f"{i}:{x.dtype}": _host(x) for i, x in enumerate(jax.tree.leaves((params, state)))}


def outputs() -> dict[str, np.ndarray]:
    """Every leaf of the params and state after ``STEPS`` jitted steps, per row."""
    out = {}
    for name in STRUCTURAL:
        for leaf, x in _steps(make(name), small_tree()).items():
            out[f"{name}/{leaf}"] = x
    # leaves of at least 4,096 elements, so the storage policies do store them
    big = {"w": jax.random.normal(jax.random.key(3), (64, 96)), "b": jnp.ones((8,))}
    for name, policy in STORAGE.items():
        opt = adamx.with_storage(adamx.adam(1e-2, fused=False), **policy)
        for leaf, x in _steps(opt, big).items():
            out[f"storage_{name}/{leaf}"] = x
    return out


SCRIPT = """
import sys
import jax
import numpy as np
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
import test_xla_flags
np.savez(sys.argv[1], **test_xla_flags.outputs())
"""


def test_the_suites_xla_flags_compute_the_same_bits_as_xlas_defaults(tmp_path):
    flags = os.environ.get("XLA_FLAGS", "").split()
    if not set(TEST_XLA_FLAGS) <= set(flags):
        pytest.skip(
            "the suite runs with XLA's defaults "
            "(ADAMX_TEST_XLA_FLAGS=default, or a jaxlib that does not know the flags)"
        )
    names = {f.split("=")[0] for f in TEST_XLA_FLAGS}
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = " ".join(f for f in flags if f.split("=")[0] not in names)
    if not env["XLA_FLAGS"]:
        del env["XLA_FLAGS"]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    path = tmp_path / "defaults.npz"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path)], env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ours = outputs()
    with np.load(path) as saved:
        theirs = {k: saved[k] for k in saved.files}
    assert sorted(theirs) == sorted(ours)
    differ = []
    for key, x in ours.items():
        y = theirs[key]
        assert (x.dtype, x.shape) == (y.dtype, y.shape), key
        if key.split("/")[0] in ROUNDING:
            scale = float(np.max(np.abs(y), initial=0.0))
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6 * scale, err_msg=key)
        elif x.tobytes() != y.tobytes():
            differ.append(key)
    assert not differ, f"under XLA's default flags these leaves differ: {differ}"
