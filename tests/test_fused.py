"""The fused CPU kernel behind ``adamx.step`` (adamx/kernels/csrc/adam_cpu.cc).

Checked against references that do not run the code under test:

* bitwise, one step against the kernel's float32 formula evaluated operation by operation
  in NumPy (its scalars are checked on their own against float64 maths);
* per step, the kernel and the XLA path (``fused=False``) against the float64 NumPy
  reference of tests/reference.py, from the same state;
* in place (donated buffers reused, no copies), no retrace, the fallbacks and errors,
  differentiation and ``vmap`` through the step, checkpoints of its state;
* in fresh processes: no compiler, ``ADAMX_FUSED=0``, several CPU devices, the build cache.

The kernel tests are skipped only when there is no C++ compiler on PATH (or when the
environment turns the kernel off with ``ADAMX_FUSED=0``); with a compiler, a kernel that
is not available is a failure.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference as ref
from test_contract import float32_kwargs
from test_numerics import (
    decay_mask,
    jax_grad,
    make_problem,
    reference_rule,
    set_counts,
    set_moments,
    to_jax,
    tree_of,
)

import adamx
from adamx.kernels import _fused
from adamx.optimizers._adam_rule import AdamRule

TARGET = "adamx_adam_step_v1"  # the custom-call target the kernel registers
INT32_MAX = 2**31 - 1
RTOL = 1e-6  # float32, one step from the same state (see assert_step_close)
REPO = Path(__file__).resolve().parent.parent


def compiler() -> str | None:
    """The C++ compiler adamx would use (``$CXX``, default ``c++``), if it is on PATH."""
    words = shlex.split(os.environ.get("CXX") or "c++")
    return shutil.which(words[0]) if words else None


def disabled_in_env() -> bool:
    return os.environ.get("ADAMX_FUSED", "").strip().lower() in {"0", "false", "off", "no"}


@pytest.fixture(scope="module")
def kernel():
    """The kernel must be available wherever a compiler is."""
    if compiler() is None:
        pytest.skip(f"no C++ compiler on PATH ({os.environ.get('CXX') or 'c++'})")
    if disabled_in_env():
        pytest.skip("ADAMX_FUSED=0 is set in the environment")
    info = adamx.kernel_info()
    assert info.available, f"a C++ compiler is on PATH but the kernel is unavailable: {info}"
    return info


def compile_text(fn, *args, **jit_kwargs) -> str:
    return jax.jit(fn, **jit_kwargs).lower(*args).compile().as_text()


def kernel_calls(hlo: str) -> int:
    """How many calls of the kernel a compiled program makes."""
    return hlo.count(f'custom_call_target="{TARGET}"')


def train_step(opt):
    """``(params, state, grads) -> (params, state)``: the arguments in the order of the
    results, so that donated buffers are matched to the outputs that replace them."""
    return lambda params, state, grads: adamx.step(opt, grads, state, params)


def xla_step(opt):
    """``update`` + ``apply_updates``, the two calls ``adamx.step`` stands for."""

    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def moments_of(state) -> adamx.MomentsState:
    found = [
        s
        for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, adamx.MomentsState))
        if isinstance(s, adamx.MomentsState)
    ]
    assert len(found) == 1, found
    return found[0]


def f64_leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def assert_trees_equal(got, want) -> None:
    """Same structure, dtypes and bits (NaN equal to NaN)."""
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        g, w = np.asarray(g), np.asarray(w)
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)


def assert_trees_close(got, want, rtol: float = RTOL) -> None:
    """Same structure and dtypes, numbers to ``rtol``, or to ``rtol`` of the largest element
    of their leaf: the two paths round an ulp or two apart a step, and a difference carried
    by the moments into a later step is relative to the leaf's scale, not to an element
    that happens to pass near 0."""
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        g, w = np.asarray(g), np.asarray(w)
        assert g.dtype == w.dtype and g.shape == w.shape
        atol = rtol * float(np.max(np.abs(w), initial=0.0))
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- bitwise
def np_formula(p, g, m, v, s, decay: int, maximize: bool):
    """The kernel's documented arithmetic, in NumPy float32, one rounding per operation
    (``decay``: 0 none, 1 coupled L2, 2 decoupled)."""
    f32 = np.float32
    neg_lr, w1, b2, w2, bc1, er_bc2, sq_bc2, eps, wd = (f32(x) for x in np.asarray(s))
    p, g, m, v = (np.asarray(x, f32) for x in (p, g, m, v))
    with np.errstate(all="ignore"):  # inf and nan inputs, overflows
        if maximize:
            g = -g
        if decay == 1:
            g = g + wd * p
        m = m + w1 * (g - m)
        v = b2 * v + (w2 * g) * g
        d = (m / bc1) / (np.sqrt(v + er_bc2) / sq_bc2 + eps)
        if decay == 2:
            d = d + wd * p
        out = p + neg_lr * d
    assert out.dtype == m.dtype == v.dtype == f32  # nothing was promoted
    return out, m, v


SHAPE_SETS = {
    # sizes not multiples of 16 (the vector width), 0-d and empty leaves, odd shapes
    "odd": [(), (1,), (15,), (17,), (3, 5, 7), (0,), (2, 0, 3), (33, 31), ()],
    # > 2**17 elements in all: the threaded path, several 2**16-element chunks
    "threaded": [(401, 503), (7,), (70_001,)],
    # more leaves than one kernel call takes (``_fused.GROUP``), of every kind of shape
    "many_leaves": [() if i % 11 == 0 else ((i % 9) + 1, (i % 4) + 1) for i in range(41)],
}

# (optimizer, keyword arguments, decay mode of the kernel, step number t)
BITWISE_CASES = {
    "adam": ("adam", {"learning_rate": 1e-2}, 0, 7),
    "adam-saturated": ("adam", {"learning_rate": 1e-2, "b2": 0.9999}, 0, INT32_MAX),
    "adam-l2-maximize-eps_root": (
        "adam",
        {"learning_rate": 3e-2, "weight_decay": 0.1, "maximize": True, "eps_root": 1e-3},
        1,
        1,
    ),
    "adamw-mask-maximize": (
        "adamw",
        {"learning_rate": 1e-2, "b1": 0.5, "b2": 0.99, "weight_decay": 0.3, "maximize": True},
        2,
        1234,
    ),
}


def random_leaves(shapes, seed):
    """float32 p, g, m, v for ``shapes``. Some gradients and second moments are 0; a few
    elements are inf or nan, or gradients so large that ``g * g`` would overflow (3e20:
    ``((1 - b2) * g) * g`` does not) or that ``v`` does (1e30). (No subnormals: XLA's
    threads flush them to zero, in the kernel as in XLA's own loops; NumPy does not.)"""
    rng = np.random.default_rng(seed)
    special = np.array([np.inf, -np.inf, np.nan, 3e20, -3e20, 1e30])
    out = []
    for shape in shapes:
        p = rng.normal(size=shape)
        g = rng.normal(size=shape) * 10.0 ** rng.uniform(-3, 1, size=shape)
        g = np.where(rng.uniform(size=shape) < 0.1, 0.0, g)
        g = np.where(rng.uniform(size=shape) < 0.02, rng.choice(special, size=shape), g)
        m = rng.normal(size=shape) * 0.3
        m = np.where(rng.uniform(size=shape) < 0.005, np.inf, m)
        v = rng.uniform(0.0, 2.0, size=shape) * np.abs(rng.normal(size=shape))
        v = np.where(g == 0, 0.0, v)
        v = np.where(rng.uniform(size=shape) < 0.005, np.inf, v)
        out.append(tuple(np.asarray(x, np.float32) for x in (p, g, m, v)))
    return out


BITWISE_RUNS = [  # every case on odd shapes; the large and the many leaves once or twice
    ("adam", "odd"),
    ("adam-saturated", "odd"),
    ("adam", "threaded"),
    ("adam-l2-maximize-eps_root", "odd"),
    ("adam-l2-maximize-eps_root", "many_leaves"),
    ("adamw-mask-maximize", "odd"),
    ("adamw-mask-maximize", "threaded"),
    ("adamw-mask-maximize", "many_leaves"),  # the mask sliced per kernel call
]


@pytest.mark.parametrize(
    ("case", "shapes"), BITWISE_RUNS, ids=[f"{c}-{s}" for c, s in BITWISE_RUNS]
)
def test_one_step_bitwise_equals_numpy_formula(kernel, case, shapes):
    name, kw, decay, t = BITWISE_CASES[case]
    shapes = SHAPE_SETS[shapes]
    mask = [i % 3 != 1 for i in range(len(shapes))] if name == "adamw" else None
    if mask is not None:
        kw = {**kw, "mask": mask}
    leaves = random_leaves(shapes, seed=zlib.crc32(f"{case}-{len(shapes)}".encode()))
    p, g, m, v = (list(x) for x in zip(*leaves))

    opt = getattr(adamx, name)(**kw)
    state = set_counts(set_moments(opt.init(p), m, v), t - 1)
    if t == INT32_MAX:  # the count saturates: step 2**31 - 1 again
        state = set_counts(state, INT32_MAX)

    rule = AdamRule(
        kw.get("b1", 0.9), kw.get("b2", 0.999), kw.get("eps", 1e-8), kw.get("eps_root", 0.0),
        kw["learning_rate"], kw.get("weight_decay", 0.0), decay, None,
        kw.get("maximize", False), 0, 0,
    )  # fmt: skip
    s = np.asarray(_fused.scalars(rule, jnp.asarray(t, jnp.int32), kw["learning_rate"]))
    modes = [decay if mask is None or mask[i] else 0 for i in range(len(shapes))]
    want = [
        np_formula(*leaf, s, mode, kw.get("maximize", False)) for leaf, mode in zip(leaves, modes)
    ]

    # Donated copies: the kernel writes into them, and the NumPy inputs stay as they were.
    args = jax.tree.map(jnp.array, (p, state, g))
    compiled = jax.jit(train_step(opt), donate_argnums=(0, 1)).lower(*args).compile()
    assert kernel_calls(compiled.as_text()) == math.ceil(len(shapes) / _fused.GROUP)
    new_p, new_state = compiled(*args)

    moments = moments_of(new_state)
    assert int(moments.count) == t
    for i, (wp, wm, wv) in enumerate(want):
        for what, got, w in (
            ("p", new_p[i], wp),
            ("m", moments.mu[i], wm),
            ("v", moments.nu[i], wv),
        ):
            got = np.asarray(got)
            assert got.dtype == np.float32 and got.shape == shapes[i], (what, i)
            np.testing.assert_array_equal(got, w, err_msg=f"{what}[{i}] of shape {shapes[i]}")


SCALAR_DECAYS = [(0.9, 0.999), (0.5, 0.9999), (0.0, 0.99)]
SCALAR_COUNTS = [1, 2, 10, 1000, 10**6, INT32_MAX]


@pytest.mark.parametrize("x64_mode", [False, True], ids=["x32", "x64"])
@pytest.mark.parametrize(("b1", "b2"), SCALAR_DECAYS)
def test_kernel_scalars_match_float64_maths(b1, b2, x64_mode):
    lr, eps, eps_root, wd = 3e-4, 1e-8, 1e-6, 0.05
    rule = AdamRule(b1, b2, eps, eps_root, lr, wd, 2, None, False, 0, 0)
    with jax.enable_x64(x64_mode):
        fn = jax.jit(lambda c: jax.vmap(lambda k: _fused.scalars(rule, k, lr))(c))
        got = np.asarray(fn(jnp.asarray(SCALAR_COUNTS, jnp.int32)))
    assert got.dtype == np.float32 and got.shape == (len(SCALAR_COUNTS), 9)
    for row, t in zip(got, SCALAR_COUNTS):
        bc1, bc2 = 1.0 - b1**t, 1.0 - b2**t  # float64
        # Numbers of the configuration: float64 (1 - b on the host), rounded once.
        exact = [-lr, 1.0 - b1, b2, 1.0 - b2, eps, wd]
        np.testing.assert_array_equal(row[[0, 1, 2, 3, 7, 8]], np.asarray(exact, np.float32))
        # Bias corrections: a few float32 ulp (exactly rounded from float64 under x64).
        want = np.array([bc1, eps_root * bc2, math.sqrt(bc2)])
        rtol = 1.2e-7 if x64_mode else RTOL
        np.testing.assert_allclose(row[[4, 5, 6]], want, rtol=rtol, err_msg=f"t={t}")


# ----------------------------------------------------------------------------- per step
def assert_close_to_scale(got, want, scale, rtol: float, what: str) -> None:
    """``|got - want| <= rtol * (|want| + scale)`` elementwise.

    ``scale`` is the size of the terms a float32 sum added up to give this element: its
    rounding errors are relative to them, not to the result, which may cancel to near 0
    (``m + w1 * (g - m)`` when ``g`` is close to ``m``; ``p - lr * d`` when the step
    brings ``p`` to 0). Without it an element at 1e-9 would be held to 1e-15.
    """
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    bad = np.abs(got - want) > rtol * (np.abs(want) + scale)
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} elements differ; first at {i}: got "
            f"{got[i]!r}, want {want[i]!r}, scale {np.broadcast_to(scale, got.shape)[i]!r}"
        )


def assert_step_close(got_p, got_state, want, old_p, old_state, g_scale, w2, rtol, what):
    """One step's params and moments against ``want = (p, m, v)`` (lists of leaves), each
    to ``rtol`` of the terms it was computed from (see :func:`assert_close_to_scale`):
    ``p`` from ``p_old`` and ``lr * d``; ``m`` from ``m_old`` and the gradient, of size
    ``g_scale`` (``|g|``, plus ``wd * |p|`` when the coupled decay is added to it); ``v``
    adds non-negative terms, but the square of a gradient that cancelled (``wd * p - g``
    under ``maximize``) carries an error up to ``2 * rtol * g_scale**2 * (1 - b2)``."""
    moments, old = moments_of(got_state), moments_of(old_state)
    parts = zip(
        f64_leaves(got_p), f64_leaves(moments.mu), f64_leaves(moments.nu), *want,
        f64_leaves(old_p), f64_leaves(old.mu), g_scale,
    )  # fmt: skip
    for i, (p, m, v, rp, rm, rv, p0, m0, gs) in enumerate(parts):
        assert_close_to_scale(p, rp, np.abs(p0) + np.abs(rp - p0), rtol, f"{what}: p[{i}]")
        assert_close_to_scale(m, rm, np.abs(m0) + gs, rtol, f"{what}: m[{i}]")
        assert_close_to_scale(v, rv, 2 * w2 * gs**2, rtol, f"{what}: v[{i}]")


def gradient_scale(name, kw, params, grads) -> list[np.ndarray]:
    """``|g|``, plus ``wd * |p|`` where Adam adds the (coupled) decay to the gradient."""
    wd = kw.get("weight_decay", 0.0) if name == "adam" else 0.0
    return [np.abs(g) + wd * np.abs(p) for p, g in zip(f64_leaves(params), f64_leaves(grads))]


MASK_TREE = tree_of([True, False, True, False, True, False])

STEP_CASES = {
    "adam": ("adam", {}),
    "adam-l2-maximize": (
        "adam",
        {"learning_rate": 1e-2, "weight_decay": 0.1, "maximize": True},
    ),
    "adam-eps_root": ("adam", {"learning_rate": 1e-2, "eps_root": 1e-3, "b2": 0.99}),
    "adamw-mask-fn": ("adamw", {"learning_rate": 1e-2, "weight_decay": 0.5, "mask": decay_mask}),
    "adamw-mask-tree": ("adamw", {"learning_rate": 1e-2, "weight_decay": 0.5, "mask": MASK_TREE}),
    "adamw-wd=0": ("adamw", {"learning_rate": 1e-2, "weight_decay": 0.0}),
    "adamw-warmup-cosine": (
        "adamw",
        {"learning_rate": optax.warmup_cosine_decay_schedule(0.0, 5e-2, 5, 20, 1e-3)},
    ),
}


def per_step_run(name, kw, steps, dtype=np.float32, injected=False):
    """Run ``steps`` steps of the XLA path; from every state on the way take one step of
    ``adamx.step`` (the kernel), of the XLA path and of the reference, and compare them.
    Returns the compiled ``adamx.step`` program's HLO text.

    ``injected``: wrap the factory in ``optax.inject_hyperparams``; both steps then use
    the wrapper (whose ``update`` is what ``adamx.step`` sees)."""
    prob = make_problem(zlib.crc32(f"fused-{name}-{kw}".encode()), dtype, steps=steps)
    params = to_jax(prob.params, dtype)
    grads = [to_jax(g, dtype) for g in prob.grad_seq]
    if injected:
        kernel_opt = optax.inject_hyperparams(getattr(adamx, name))(**kw)
        xla_opt = kernel_opt
    else:
        kernel_opt = getattr(adamx, name)(**kw)
        xla_opt = getattr(adamx, name)(**kw, fused=False)
    k_step, x_step = jax.jit(train_step(kernel_opt)), jax.jit(xla_step(xla_opt))
    state = xla_opt.init(params)
    k_hlo = k_step.lower(params, state, grads[0]).compile().as_text()
    assert kernel_calls(x_step.lower(params, state, grads[0]).compile().as_text()) == 0

    # The reference has no ``maximize``: it is fed -g (torch's reading, to which the
    # coupled decay is then added). Injected hyperparameters are float32 arrays (1 - b2 is
    # formed from float32(b2)): the reference gets the same numbers.
    ref_kw = {k: v for k, v in (float32_kwargs(kw) if injected else kw).items() if k != "maximize"}
    sign = -1.0 if kw.get("maximize") else 1.0
    rule = reference_rule(name, ref_kw, prob.params)
    rtol = 1e-12 if dtype == np.float64 else RTOL
    for t, (g, g64) in enumerate(zip(grads, prob.grad_seq), start=1):
        pk, sk = k_step(params, state, g)
        px, sx = x_step(params, state, g)
        mom = moments_of(state)
        rstate = ref.AdamState(m=f64_leaves(mom.mu), v=f64_leaves(mom.nu))
        g_ref = [sign * x for x in f64_leaves(g64)]
        want_p, want_state = rule.step(f64_leaves(params), g_ref, rstate, t)
        scale = gradient_scale(name, kw, params, g64)
        xla = (f64_leaves(px), f64_leaves(moments_of(sx).mu), f64_leaves(moments_of(sx).nu))
        for got_p, got_s, want, what in (
            (pk, sk, (want_p, want_state.m, want_state.v), "kernel vs reference"),
            (px, sx, (want_p, want_state.m, want_state.v), "xla vs reference"),
            (pk, sk, xla, "kernel vs xla"),
        ):
            assert all(x.dtype == dtype for x in jax.tree.leaves(got_p))
            w2 = 1.0 - rule.b2
            assert_step_close(
                got_p, got_s, want, params, state, scale, w2, rtol, f"{what}, step {t}"
            )
        # The rest of the state (counts) and its structure: the same.
        assert jax.tree.structure(sk) == jax.tree.structure(sx)
        for a, b in zip(jax.tree.leaves(sk), jax.tree.leaves(sx)):
            assert a.dtype == b.dtype and a.shape == b.shape
            if jnp.issubdtype(a.dtype, jnp.integer):
                assert np.array_equal(a, b)
        params, state = px, sx
    # The run moved the params, or agreeing would prove little.
    moved = np.linalg.norm(
        np.concatenate([x.ravel() for x in f64_leaves(params)])
        - np.concatenate([x.ravel() for x in f64_leaves(prob.params)])
    )
    assert moved > 1e-3
    return k_hlo


@pytest.mark.parametrize("case", list(STEP_CASES), ids=list(STEP_CASES))
def test_each_step_matches_reference_and_xla_path(kernel, case):
    name, kw = STEP_CASES[case]
    # optax's warmup_cosine_decay_schedule mixes int32 and Python floats: it does not run
    # under strict promotion (nor do optax's own optimizers).
    strict = "warmup" not in case
    with contextlib.nullcontext() if strict else jax.numpy_dtype_promotion("standard"):
        hlo = per_step_run(name, kw, steps=20)
    assert kernel_calls(hlo) == 1


def test_inject_hyperparams_through_step_matches_reference(kernel):
    # Every number spelled out: inject_hyperparams makes float32 arrays of defaults too.
    kw = {"learning_rate": 2e-2, "weight_decay": 0.1, "b1": 0.8, "b2": 0.999, "eps": 1e-8}
    per_step_run("adamw", kw, steps=20, injected=True)


def test_traced_hyperparameters_use_the_kernel(kernel):
    """Hyperparameters that are traced arrays (built inside ``jit``, as
    ``inject_hyperparams`` does) run the kernel with no recompilation per value."""
    prob = make_problem(5, np.float32, steps=6)
    params = to_jax(prob.params, np.float32)
    grads = [to_jax(g, np.float32) for g in prob.grad_seq]
    traces = []

    def step(hyper, params, state, g):
        traces.append(1)
        opt = adamx.adamw(**hyper)
        return adamx.step(opt, g, state, params)

    jitted = jax.jit(step)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    state = adamx.adamw().init(params)
    hyper = {"learning_rate": f32(0.0), "b1": f32(0.8), "b2": f32(0.99), "weight_decay": f32(0.1)}
    assert kernel_calls(jitted.lower(hyper, params, state, grads[0]).compile().as_text()) == 1
    rstate = ref.AdamState(m=f64_leaves(moments_of(state).mu), v=f64_leaves(moments_of(state).nu))
    p_ref = f64_leaves(prob.params)
    for t, (g, g64) in enumerate(zip(grads, prob.grad_seq), start=1):
        lr = 0.01 * t
        hyper = {**hyper, "learning_rate": f32(lr)}
        new_params, new_state = jitted(hyper, params, state, g)
        rule = ref.AdamW(**float32_kwargs({"lr": lr, "b1": 0.8, "b2": 0.99, "weight_decay": 0.1}))
        p_ref, rstate_new = rule.step(f64_leaves(params), f64_leaves(g64), rstate, t)
        # Traced b1, b2 are float32: the reference gets those numbers (1 - float32(b) is
        # exact in float32).
        want = (p_ref, rstate_new.m, rstate_new.v)
        scale = gradient_scale("adamw", {}, params, g64)
        assert_step_close(new_params, new_state, want, params, state, scale, 0.01, RTOL, f"t={t}")
        params, state, rstate = new_params, new_state, rstate_new
    assert len(traces) == 1


def test_x64_float32_leaves_use_the_kernel_float64_leaves_do_not(kernel, x64):
    hlo = per_step_run("adam", {"learning_rate": 1e-2, "weight_decay": 0.1}, steps=20)
    assert kernel_calls(hlo) == 1
    kw = {"learning_rate": 1e-2, "weight_decay": 0.5, "mask": decay_mask}
    hlo = per_step_run("adamw", kw, steps=10, dtype=np.float64)
    assert kernel_calls(hlo) == 0


# ----------------------------------------------------------------------------- the state
def test_state_is_the_chains_and_paths_interchange(kernel):
    kw = {
        "learning_rate": optax.linear_schedule(2e-2, 1e-3, 10),
        "weight_decay": 0.3,
        "mask": decay_mask,
        "maximize": True,
    }
    fused, plain = adamx.adamw(**kw), adamx.adamw(**kw, fused=False)
    prob = make_problem(8, np.float32, steps=10)
    params = to_jax(prob.params, np.float32)
    grads = [to_jax(g, np.float32) for g in prob.grad_seq]
    k_step, x_step = jax.jit(train_step(fused)), jax.jit(xla_step(plain))
    state = fused.init(params)
    assert kernel_calls(k_step.lower(params, state, grads[0]).compile().as_text()) == 1

    pk, sk = k_step(params, state, grads[0])
    px, sx = x_step(params, plain.init(params), grads[0])
    assert jax.tree.structure(sk) == jax.tree.structure(sx)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), sk) == jax.tree.map(
        lambda x: (x.shape, x.dtype), sx
    )

    mixed = (params, fused.init(params))
    for i, g in enumerate(grads):
        mixed = (k_step if i < 5 else x_step)(*mixed, g)
    xla = (params, plain.init(params))
    for g in grads:
        xla = x_step(*xla, g)
    assert_trees_close(mixed, xla)
    assert [int(x) for x in jax.tree.leaves(mixed[1]) if x.dtype == jnp.int32] == [10, 10]


# ----------------------------------------------------------------------------- in place
def test_donated_step_is_in_place(kernel):
    rng = np.random.default_rng(1)
    shapes = {"w": (64, 64), "b": (4096,), "s": ()}
    make = lambda: {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}  # noqa: E731
    params, grads = make(), make()
    opt = adamx.adam(1e-2, weight_decay=0.1)
    state = opt.init(params)
    compiled = jax.jit(train_step(opt), donate_argnums=(0, 1)).lower(params, state, grads).compile()
    hlo = compiled.as_text()
    assert kernel_calls(hlo) == 1
    assert " copy(" not in hlo, "the donated params or state are copied"
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    # The scalars and call bookkeeping only: well under a copy of the params (33 KB).
    assert compiled.memory_analysis().temp_size_in_bytes < 0.05 * param_bytes

    pointers = lambda tree: [x.unsafe_buffer_pointer() for x in jax.tree.leaves(tree)]  # noqa: E731
    before = (pointers(params), pointers(moments_of(state).mu), pointers(moments_of(state).nu))
    new_params, new_state = compiled(params, state, grads)
    mom = moments_of(new_state)
    assert (pointers(new_params), pointers(mom.mu), pointers(mom.nu)) == before


def test_inputs_not_donated_are_left_alone(kernel):
    """Without donation the kernel must write elsewhere: jitted or eager, the inputs keep
    their values (grads passed as the params too)."""
    params = to_jax(make_problem(2, np.float32, steps=0).params, np.float32)
    opt = adamx.adamw(1e-2, weight_decay=0.5)
    plain = adamx.adamw(1e-2, weight_decay=0.5, fused=False)
    state = set_moments(opt.init(params), params, jax.tree.map(jnp.abs, params))
    saved = jax.device_get((params, state))
    for run in (jax.jit(train_step(opt)), train_step(opt)):
        got = run(params, state, params)
        assert_trees_equal((params, state), saved)
        assert_trees_close(got, jax.jit(xla_step(plain))(params, state, params))


def test_custom_call_only_when_fused(kernel, monkeypatch):
    params = {"w": jnp.ones((3, 4), jnp.float32), "b": jnp.zeros((4,), jnp.float32)}
    args = (params, adamx.adam().init(params), params)
    assert kernel_calls(compile_text(train_step(adamx.adam()), *args)) == 1
    assert kernel_calls(compile_text(train_step(adamx.adam(fused=True)), *args)) == 1
    assert kernel_calls(compile_text(train_step(adamx.adam(fused=False)), *args)) == 0
    assert kernel_calls(compile_text(xla_step(adamx.adam()), *args)) == 0  # update: XLA
    monkeypatch.setenv("ADAMX_FUSED", "0")  # read when the step is traced
    assert kernel_calls(compile_text(train_step(adamx.adam()), *args)) == 0
    args = (params, adamx.adamw().init(params), params)
    assert kernel_calls(compile_text(train_step(adamx.adamw()), *args)) == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda: adamx.adam(1e-2),
        lambda: adamx.adamw(optax.linear_schedule(1e-2, 1e-3, 5), mask=decay_mask),
    ],
    ids=["adam", "adamw-schedule-mask"],
)
def test_no_retrace_on_later_calls(kernel, make):
    opt = make()
    traces = []

    def step(params, state, grads):
        traces.append(1)
        return adamx.step(opt, grads, state, params)

    jitted = jax.jit(step, donate_argnums=(0, 1))
    prob = make_problem(4, np.float32, steps=3)
    params = to_jax(prob.params, np.float32)
    state = opt.init(params)
    assert kernel_calls(jitted.lower(params, state, params).compile().as_text()) == 1
    for g in prob.grad_seq:
        params, state = jitted(params, state, to_jax(g, np.float32))
    assert len(traces) == 1


# ----------------------------------------------------------------------------- fallbacks
def test_bfloat16_takes_the_xla_path(kernel):
    params = {"w": jnp.ones((3, 5), jnp.bfloat16), "b": jnp.full((5,), 0.5, jnp.bfloat16)}
    grads = jax.tree.map(lambda x: (x * 0.3).astype(jnp.bfloat16), params)
    auto, plain = adamx.adamw(1e-2), adamx.adamw(1e-2, fused=False)
    args = (params, auto.init(params), grads)
    assert kernel_calls(compile_text(train_step(auto), *args)) == 0
    got = jax.jit(train_step(auto))(*args)
    assert_trees_equal(got, jax.jit(xla_step(plain))(*args))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(got[0]))
    # One bfloat16 leaf among float32 ones: the whole step takes the XLA path.
    mixed = {"w": jnp.ones((3, 5), jnp.float32), "b": jnp.full((5,), 0.5, jnp.bfloat16)}
    args = (mixed, auto.init(mixed), mixed)
    assert kernel_calls(compile_text(train_step(auto), *args)) == 0
    assert_trees_equal(jax.jit(train_step(auto))(*args), jax.jit(xla_step(plain))(*args))


def test_fused_true_refuses_what_the_kernel_cannot_do(kernel):
    params = {"w": jnp.ones((3, 5), jnp.bfloat16)}
    opt = adamx.adam(fused=True)
    with pytest.raises(ValueError, match="float32"):
        adamx.step(opt, params, opt.init(params), params)
    # A mask given as a prefix of the params tree (optax.masked takes it) is not per leaf.
    params = {"dense": {"w": jnp.ones((3, 5), jnp.float32)}, "b": jnp.ones((5,), jnp.float32)}
    prefix = {"dense": True, "b": False}
    opt = adamx.adamw(mask=prefix, fused=True)
    with pytest.raises(ValueError, match="mask"):
        jax.jit(train_step(opt))(params, opt.init(params), params)
    auto = adamx.adamw(mask=prefix)
    args = (params, auto.init(params), params)
    assert kernel_calls(compile_text(train_step(auto), *args)) == 0
    want = jax.jit(xla_step(adamx.adamw(mask=prefix, fused=False)))(*args)
    assert_trees_equal(jax.jit(train_step(auto))(*args), want)


@pytest.mark.parametrize("value", ["yes", 1, 0, "auto"])
def test_fused_must_be_none_or_bool(value):
    for make in (adamx.adam, adamx.adamw):
        with pytest.raises(ValueError, match="fused"):
            make(fused=value)


def test_nesterov_with_fused_true_is_refused():
    with pytest.raises(ValueError, match="nesterov"):
        adamx.adam(nesterov=True, fused=True)
    adamx.adam(nesterov=True)  # automatic: the XLA path, no error


def test_step_needs_params():
    params = {"w": jnp.ones(3, jnp.float32)}
    for opt in (adamx.adam(), optax.sgd(0.1)):
        with pytest.raises(ValueError, match="params"):
            adamx.step(opt, params, opt.init(params), None)


@pytest.mark.parametrize(
    "make",
    [
        lambda: optax.sgd(0.1, momentum=0.9),
        lambda: optax.chain(optax.clip_by_global_norm(1.0), adamx.adam(1e-2)),
        lambda: adamx.adam(1e-2, nesterov=True),
        lambda: adamx.lamb(1e-3),
        lambda: adamx.sgd(1e-3),  # no momentum: no kernel (Lion's and SGD's: test_fused_momentum)
    ],
    ids=["optax.sgd", "chain(clip, adam)", "adam-nesterov", "lamb", "sgd-plain"],
)
def test_other_optimizers_step_as_update_then_apply(make):
    opt = make()
    params = to_jax(make_problem(6, np.float32, steps=0).params, np.float32)
    grads = jax.tree.map(lambda x: x * 0.5 - 1.0, params)
    args = (params, opt.init(params), grads)
    assert kernel_calls(compile_text(train_step(opt), *args)) == 0
    assert_trees_equal(jax.jit(train_step(opt))(*args), jax.jit(xla_step(opt))(*args))


# ----------------------------------------------------------------------------- transforms
DIFF_CASES = {
    "adam-l2": lambda fused: adamx.adam(5e-2, eps_root=1e-8, weight_decay=0.1, fused=fused),
    "adamw-mask-maximize": lambda fused: adamx.adamw(
        5e-2, eps_root=1e-8, weight_decay=0.2, mask=decay_mask, maximize=True, fused=fused
    ),
}


@pytest.mark.parametrize("case", list(DIFF_CASES), ids=list(DIFF_CASES))
def test_grad_through_step_matches_xla_path(kernel, case):
    prob = make_problem(9, np.float32, steps=3)
    params = to_jax(prob.params, np.float32)
    loss_grad = jax_grad(prob.consts, np.float32)  # a function of the params
    plain = DIFF_CASES[case](False)
    state = plain.init(params)
    for g in prob.grad_seq:  # moments away from 0
        params, state = jax.jit(xla_step(plain))(params, state, to_jax(g, np.float32))

    def meta_loss(opt):
        def loss(p):
            new_p, _ = adamx.step(opt, loss_grad(p), state, p)
            return sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(new_p))

        return loss

    fused_loss, plain_loss = meta_loss(DIFF_CASES[case](None)), meta_loss(plain)
    assert "ffi_call" in str(jax.make_jaxpr(fused_loss)(params))  # the kernel, forward
    got, want = jax.jit(jax.grad(fused_loss))(params), jax.jit(jax.grad(plain_loss))(params)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(got))
    assert_trees_close(got, want, rtol=1e-5)
    assert max(np.max(np.abs(x)) for x in jax.tree.leaves(got)) > 1e-2


def test_vmap_runs_the_kernel_per_example(kernel):
    batch = 3
    prob = make_problem(10, np.float32, steps=3)
    stack = lambda tree: jax.tree.map(  # noqa: E731
        lambda x: jnp.stack([jnp.asarray(x, jnp.float32) * (1.0 + 0.5 * i) for i in range(batch)]),
        tree,
    )
    params = stack(prob.params)
    opt, plain = adamx.adamw(1e-2, mask=decay_mask), adamx.adamw(1e-2, mask=decay_mask, fused=False)
    state = jax.vmap(opt.init)(params)
    batched = jax.jit(jax.vmap(train_step(opt)))
    assert kernel_calls(batched.lower(params, state, params).compile().as_text()) >= 1
    single = jax.jit(train_step(opt))
    batched_plain = jax.jit(jax.vmap(xla_step(plain)))
    got, want = (params, state), (params, state)
    for g in prob.grad_seq:
        g = stack(g)
        examples = [single(*jax.tree.map(lambda x, i=i: x[i], (*got, g))) for i in range(batch)]
        got = batched(*got, g)
        want = batched_plain(*want, g)
        for i, example in enumerate(examples):  # the same kernel, one example at a time
            assert_trees_equal(jax.tree.map(lambda x, i=i: x[i], got), example)
    assert_trees_close(got, want)


def test_checkpoint_of_kernel_state_restores(kernel):
    opt = adamx.adamw(optax.linear_schedule(1e-2, 1e-3, 5), weight_decay=0.1, mask=decay_mask)
    prob = make_problem(12, np.float32, steps=5)
    params = to_jax(prob.params, np.float32)
    state = opt.init(params)
    step = jax.jit(train_step(opt))
    for g in prob.grad_seq[:3]:
        params, state = step(params, state, to_jax(g, np.float32))

    def serialised(x):  # as Orbax gives a state back: dicts, lists, None
        if isinstance(x, optax.EmptyState):
            return None
        if hasattr(x, "_asdict"):
            return {k: serialised(v) for k, v in x._asdict().items()}
        if isinstance(x, (tuple, list)):
            return [serialised(v) for v in x]
        if isinstance(x, dict):
            return {k: serialised(v) for k, v in x.items()}
        return np.asarray(x)

    restored = adamx.restore_state(serialised(state), opt.init(params))
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    a, b = (params, state), (params, restored)
    for g in prob.grad_seq[3:]:
        a, b = step(*a, to_jax(g, np.float32)), step(*b, to_jax(g, np.float32))
    assert_trees_equal(a, b)


# ----------------------------------------------------------------------------- processes
# Each scenario runs in a fresh interpreter with its own empty kernel cache. They are
# started when the module's first test runs (if any of them is selected) and run while the
# tests above do; each prints one line of JSON.
SCRIPT = textwrap.dedent(
    """
    import json, os, sys, warnings
    import jax, jax.numpy as jnp, numpy as np
    import adamx

    def tree(seed):
        rng = np.random.default_rng(seed)
        return {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
                "b": jnp.asarray(rng.normal(size=(7,)), jnp.float32)}

    params = tree(0)
    makers = [
        lambda fused: adamx.adam(1e-2, fused=fused),
        lambda fused: adamx.adamw(1e-2, mask={"w": True, "b": False}, fused=fused),
        lambda fused: adamx.adam(1e-2, weight_decay=0.1, maximize=True, fused=fused),
    ][: int(sys.argv[1])]

    def run(opt):
        step = jax.jit(lambda p, s, g: adamx.step(opt, g, s, p))
        p, s = params, opt.init(params)
        compiled = step.lower(p, s, params).compile()
        for i in range(3):
            p, s = compiled(p, s, tree(i + 1))
        leaves = jax.tree.leaves((p, s))
        return np.concatenate([np.ravel(x).astype(np.float64) for x in leaves]), compiled.as_text()

    out = {"devices": jax.device_count()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        diffs, calls = [], 0
        for make in makers:
            got, hlo = run(make(None))
            want, _ = run(make(False))
            calls += hlo.count('custom_call_target="adamx_adam_step_v1"')
            diffs.append(float(np.max(np.abs(got - want)) / np.max(np.abs(want))))
        try:
            opt = adamx.adam(fused=True)
            jax.jit(lambda p, s: adamx.step(opt, p, s, p))(params, opt.init(params))
            out["fused_true"] = None
        except (RuntimeError, ValueError) as error:
            out["fused_true"] = str(error)
        if jax.device_count() > 1:  # fused=True per shard inside shard_map
            from jax.sharding import NamedSharding, PartitionSpec as P
            mesh = jax.make_mesh((jax.device_count(),), ("x",))
            w = {"w": jnp.asarray(np.random.default_rng(5).normal(size=(16, 8)), jnp.float32)}
            plain = adamx.adam(1e-2, fused=False)
            s0 = plain.init(w)

            def per_shard(p, m, v, g):
                opt = adamx.adam(1e-2, fused=True)
                st = (adamx.MomentsState(jnp.zeros([], jnp.int32), m, v),) + tuple(s0[1:])
                return adamx.step(opt, g, st, p)[0]

            fn = jax.jit(jax.shard_map(per_shard, mesh=mesh, in_specs=(P("x"),) * 4,
                                       out_specs=P("x")))
            args = [jax.device_put(t, NamedSharding(mesh, P("x")))
                    for t in (w, s0[0].mu, s0[0].nu, w)]
            hlo = fn.lower(*args).compile().as_text()
            got = np.asarray(fn(*args)["w"])
            want = np.asarray(adamx.step(plain, w, s0, w)[0]["w"])
            out["shard_map"] = {
                "calls": hlo.count('custom_call_target="adamx_adam_step_v1"'),
                "gathers": hlo.count("all-gather"),
                "rel_diff": float(np.max(np.abs(got - want)) / np.max(np.abs(want))),
            }
    out["warnings"] = [[w.category.__name__, str(w.message)] for w in caught]
    out["max_diff"] = max(diffs)
    out["kernel_calls"] = calls
    info = adamx.kernel_info()
    out["info"] = [info.available, info.reason, info.path, info.build_seconds]
    cache = os.environ["ADAMX_CACHE_DIR"]
    out["cache"] = sorted(os.listdir(cache)) if os.path.isdir(cache) else []
    print(json.dumps(out))
    """
)

SCENARIOS = {  # name: (environment, number of optimizers the script runs)
    "no_compiler": ({"CXX": "/nonexistent/compiler"}, 3),
    "disabled": ({"ADAMX_FUSED": "0"}, 1),
    "devices": ({"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, 1),
    "cached": ({}, 1),  # in the cache the "devices" process built, after it
}


class Processes:
    """The scenario processes, started together on the first result asked for (under
    pytest-xdist, only in the worker that runs this file: the suite distributes whole files)."""

    def __init__(self, root: Path, wanted: list[str]):
        self.root, self.wanted, self.running, self.done = root, wanted, {}, {}

    def start(self, name: str, cache: str | None = None) -> None:
        changes, optimizers = SCENARIOS[name]
        env = {k: v for k, v in os.environ.items() if k != "ADAMX_FUSED"}
        env.update(ADAMX_CACHE_DIR=str(self.cache(cache or name)), JAX_PLATFORMS="cpu")
        flags = " ".join([env.pop("XLA_FLAGS", ""), changes.get("XLA_FLAGS", "")]).strip()
        env.update({k: v for k, v in changes.items() if k != "XLA_FLAGS"})
        if flags:  # XLA reads a non-empty value that is not flags as a file of flags
            env["XLA_FLAGS"] = flags
        command = [sys.executable, "-c", SCRIPT, str(optimizers)]
        self.running[name] = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def cache(self, name: str) -> Path:
        return self.root / name

    def result(self, name: str) -> dict:
        for wanted in self.wanted:
            if wanted not in self.running:
                self.start(wanted)
        if name == "cached" and name not in self.running:
            self.result("devices")
            self.start("cached", cache="devices")
        if name not in self.done:
            process = self.running[name]
            stdout, stderr = process.communicate(timeout=300)
            assert process.returncode == 0, stderr[-3000:]
            self.done[name] = json.loads(stdout.strip().splitlines()[-1])
        return self.done[name]

    def stop(self) -> None:
        for name, process in self.running.items():
            if name not in self.done:  # read (and so close) the pipes of every process
                if process.poll() is None:
                    process.kill()
                process.communicate()


def _needs(request, name: str) -> bool:
    return any(name in item.name for item in request.session.items)


@pytest.fixture(scope="module", autouse=True)
def processes(request, tmp_path_factory):
    wanted: list[str] = []
    for name, test in [
        ("no_compiler", "test_process_without_compiler"),
        ("disabled", "test_process_with_kernel_disabled"),
        ("devices", "process_with_several_devices"),
        ("devices", "second_process"),
    ]:
        if _needs(request, test) and name not in wanted:
            if name != "devices" or compiler() is not None:
                wanted.append(name)
    procs = Processes(tmp_path_factory.mktemp("adamx-cache"), wanted)
    yield procs
    procs.stop()


def test_process_without_compiler_warns_once_and_falls_back(processes):
    out = processes.result("no_compiler")
    assert [w[0] for w in out["warnings"]] == ["FusedKernelWarning"], out["warnings"]
    assert "/nonexistent/compiler" in out["warnings"][0][1]
    available, reason, path, _ = out["info"]
    assert not available and path is None
    assert "/nonexistent/compiler" in reason
    assert out["kernel_calls"] == 0
    assert out["max_diff"] == 0.0  # the XLA path both times
    assert out["fused_true"] is not None and "/nonexistent/compiler" in out["fused_true"]
    assert not [f for f in out["cache"] if f.endswith(".so")]


def test_process_with_kernel_disabled_is_silent(processes):
    out = processes.result("disabled")
    assert out["warnings"] == []
    assert out["kernel_calls"] == 0
    assert out["max_diff"] == 0.0
    available, reason, _, _ = out["info"]
    assert not available and "ADAMX_FUSED" in reason
    assert out["fused_true"] is not None and "ADAMX_FUSED" in out["fused_true"]
    assert out["cache"] == []  # nothing was built


def test_process_with_several_devices_takes_the_xla_path(processes):
    if compiler() is None:
        pytest.skip("no C++ compiler on PATH")
    out = processes.result("devices")
    assert out["devices"] == 8
    assert out["warnings"] == []
    assert out["kernel_calls"] == 0
    assert out["max_diff"] == 0.0
    # fused=True outside shard_map: refused, rather than gathering the shards
    assert out["fused_true"] is not None and "shard_map" in out["fused_true"]
    # inside shard_map: the kernel per shard, no gather, the XLA path's result (2 ulp)
    per_shard = out["shard_map"]
    assert per_shard["calls"] >= 1 and per_shard["gathers"] == 0, per_shard
    assert per_shard["rel_diff"] <= 3e-7, per_shard
    available, reason, path, seconds = out["info"]
    assert available, reason
    assert Path(path).parent == processes.cache("devices") and seconds > 0  # built here


def test_second_process_loads_the_cached_kernel(processes):
    if compiler() is None:
        pytest.skip("no C++ compiler on PATH")
    out = processes.result("cached")
    available, reason, path, seconds = out["info"]
    assert available, reason
    assert seconds == 0.0
    assert path == processes.result("devices")["info"][2]
    assert out["warnings"] == []
    assert out["devices"] == 1 and out["kernel_calls"] == 1
    assert out["max_diff"] < RTOL  # of the largest element
    assert out["fused_true"] is None
