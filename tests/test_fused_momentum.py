"""The Lion and SGD-with-momentum kernels behind ``adamx.step`` (kernels/csrc/momentum_cpu.cc).

Checked against references that do not run the code under test:

* bitwise, one step against each kernel's float32 formula evaluated operation by operation
  in NumPy, with the scalars made in NumPy from the hyperparameters (``-lr``, ``1 - b``);
* per step, the kernel and the XLA path (``fused=False``) against the float64 NumPy
  references of tests/reference_other_family.py (Lion, from the paper) and
  tests/reference_sgd_family.py (torch.optim.SGD), from the same state;
* in place (donated buffers reused, no copy of the state: Lion's XLA step makes one), no
  retrace, the fallbacks and errors, differentiation and ``vmap`` through the step,
  checkpoints, several devices (in a fresh process).

Skipped only when there is no C++ compiler on PATH or ``ADAMX_FUSED=0`` is set; with a
compiler, a kernel that is not available is a failure.
"""

from __future__ import annotations

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
import reference_other_family as ref_other
import reference_sgd_family as ref_sgd
from test_contract import float32_kwargs
from test_numerics import decay_mask, jax_grad, make_problem, to_jax, tree_of

import adamx
from adamx.kernels import _fused

LION, SGD = "adamx_lion_step_v1", "adamx_sgd_step_v1"  # the custom-call targets
INT32_MAX = 2**31 - 1
RTOL = 1e-6  # float32, one step from the same state
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def kernel():
    """The kernels must be available wherever a compiler is."""
    words = shlex.split(os.environ.get("CXX") or "c++")
    if not words or shutil.which(words[0]) is None:
        pytest.skip(f"no C++ compiler on PATH ({os.environ.get('CXX') or 'c++'})")
    if os.environ.get("ADAMX_FUSED", "").strip().lower() in {"0", "false", "off", "no"}:
        pytest.skip("ADAMX_FUSED=0 is set in the environment")
    info = adamx.kernel_info()
    assert info.available, f"a C++ compiler is on PATH but the kernel is unavailable: {info}"
    return info


def calls(hlo: str, target: str | None = None) -> int:
    """How many calls of the Lion or SGD kernel (or of ``target``) a compiled program makes."""
    targets = (target,) if target else (LION, SGD)
    return sum(hlo.count(f'custom_call_target="{t}"') for t in targets)


def compile_text(fn, *args, **jit_kwargs) -> str:
    return jax.jit(fn, **jit_kwargs).lower(*args).compile().as_text()


def train_step(opt):
    """``(params, state, grads) -> (params, state)``: donated arguments first, in the order
    of the results."""
    return lambda params, state, grads: adamx.step(opt, grads, state, params)


def xla_step(opt):
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def buffer_state(state) -> adamx.LionMomentsState | adamx.MomentumState:
    kinds = (adamx.LionMomentsState, adamx.MomentumState)
    found = [s for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, kinds))]
    found = [s for s in found if isinstance(s, kinds)]
    assert len(found) == 1, found
    return found[0]


def buffer_of(state):
    held = buffer_state(state)
    return held.mu if isinstance(held, adamx.LionMomentsState) else held.trace


def with_buffer(state, buffer, count: int):
    """``state`` with its Lion ``mu`` / SGD ``trace`` and that block's count replaced."""

    def replace(s):
        if isinstance(s, adamx.LionMomentsState):
            return s._replace(mu=buffer, count=jnp.asarray(count, jnp.int32))
        if isinstance(s, adamx.MomentumState):
            return s._replace(trace=buffer, count=jnp.asarray(count, jnp.int32))
        return s

    kinds = (adamx.LionMomentsState, adamx.MomentumState)
    return jax.tree.map(replace, state, is_leaf=lambda s: isinstance(s, kinds))


def f64_leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def assert_trees_equal(got, want) -> None:
    """Same structure, dtypes and bits (NaN equal to NaN)."""
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        g, w = np.asarray(g), np.asarray(w)
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)


def assert_close_to_scale(got, want, scale, rtol: float, what: str) -> None:
    """``|got - want| <= rtol * (|want| + scale)`` elementwise, ``scale`` the size of the
    terms a float32 sum added up to give this element (its rounding errors are relative to
    them, not to a result that cancels to near 0)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    bad = np.abs(got - want) > rtol * (np.abs(want) + scale)
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} elements differ; first at {i}: got "
            f"{got[i]!r}, want {want[i]!r}"
        )


def assert_trees_close(got, want, rtol: float = RTOL) -> None:
    """Same structure and dtypes, numbers to ``rtol`` of the largest element of their leaf."""
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        g, w = np.asarray(g), np.asarray(w)
        assert g.dtype == w.dtype and g.shape == w.shape
        atol = rtol * float(np.max(np.abs(w), initial=0.0))
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- bitwise
def np_lion(p, g, m, s, decayed: bool):
    """Lion's documented float32 arithmetic in NumPy, one rounding per operation. ``sign``
    keeps +-0 and NaN, as ``jnp.sign`` (NumPy's ``sign`` turns -0 into +0)."""
    neg_lr, w1, w2, wd = s
    with np.errstate(all="ignore"):
        c = m + w1 * (g - m)
        d = np.where(c > 0, np.float32(1), np.where(c < 0, np.float32(-1), c))
        if decayed:
            d = d + wd * p
        out = p + neg_lr * d
        m = m + w2 * (g - m)
    assert out.dtype == m.dtype == np.float32  # nothing was promoted
    return out, m


def np_sgd(p, g, b, s, decayed: bool, maximize: bool, nesterov: bool):
    """SGD's documented float32 arithmetic in NumPy, one rounding per operation."""
    neg_lr, mu, w, wd, first = s
    with np.errstate(all="ignore"):
        if maximize:
            g = -g
        if decayed:
            g = g + wd * p
        b = g.copy() if first else b * mu + w * g
        d = g + mu * b if nesterov else b
        if mu == 0:
            d = g
        out = p + neg_lr * d
    assert out.dtype == b.dtype == np.float32
    return out, b


def f32(x) -> np.float32:
    return np.float32(x)


SHAPE_SETS = {
    # sizes not multiples of the vector width, 0-d and empty leaves, odd shapes
    "odd": [(), (1,), (15,), (17,), (3, 5, 7), (0,), (2, 0, 3), (33, 31), ()],
    # > 2**17 elements in all: the threaded path, several 2**16-element chunks
    "threaded": [(401, 503), (7,), (70_001,)],
    # more leaves than one kernel call takes (``_fused.GROUP``)
    "many_leaves": [() if i % 11 == 0 else ((i % 9) + 1, (i % 4) + 1) for i in range(41)],
}


def random_leaves(shapes, seed):
    """float32 p, g and the state for ``shapes``: some gradients and states are 0, a few
    elements inf, nan or huge (3e38: ``g - m`` and ``b * mu + w * g`` overflow). No
    subnormals (XLA's threads flush them to zero; NumPy does not)."""
    rng = np.random.default_rng(seed)
    special = np.array([np.inf, -np.inf, np.nan, 3e38, -3e38, 0.0])
    out = []
    for shape in shapes:
        p = rng.normal(size=shape)
        p = np.where(rng.uniform(size=shape) < 0.01, rng.choice(special, size=shape), p)
        g = rng.normal(size=shape) * 10.0 ** rng.uniform(-3, 1, size=shape)
        g = np.where(rng.uniform(size=shape) < 0.1, 0.0, g)
        g = np.where(rng.uniform(size=shape) < 0.02, rng.choice(special, size=shape), g)
        m = rng.normal(size=shape) * 0.3
        m = np.where(rng.uniform(size=shape) < 0.05, 0.0, m)
        m = np.where(rng.uniform(size=shape) < 0.01, rng.choice(special, size=shape), m)
        out.append(tuple(np.asarray(x, np.float32) for x in (p, g, m)))
    return out


# name: (recipe, keyword arguments, step count before the step, scalars from NumPy)
LION_CASES = {
    "lion": ({"learning_rate": 1e-2}, 6),
    "lion-decay-mask": ({"learning_rate": 3e-3, "b1": 0.5, "b2": 0.999, "weight_decay": 0.3}, 99),
    "lion-saturated": (
        {"learning_rate": 1e-4, "b1": 0.95, "b2": 0.9, "weight_decay": 1e-3},
        INT32_MAX,
    ),
}
SGD_CASES = {
    "sgd": ({"learning_rate": 1e-2, "momentum": 0.9}, 3),
    "sgd-first-step": ({"learning_rate": 1e-2, "momentum": 0.9, "weight_decay": 0.1}, 0),
    "sgd-nesterov": ({"learning_rate": 3e-2, "momentum": 0.8, "nesterov": True}, 5),
    "sgd-nesterov-first": ({"learning_rate": 3e-2, "momentum": 0.8, "nesterov": True}, 0),
    "sgd-maximize-l2-dampening": (
        {
            "learning_rate": 1e-1,
            "momentum": 0.7,
            "dampening": 0.25,
            "weight_decay": 0.5,
            "maximize": True,
        },
        INT32_MAX,
    ),  # fmt: skip
}
BITWISE_RUNS = [
    ("lion", "odd"),
    ("lion", "threaded"),
    ("lion-decay-mask", "odd"),
    ("lion-decay-mask", "many_leaves"),  # the mask sliced per kernel call
    ("lion-saturated", "odd"),
    ("sgd", "odd"),
    ("sgd", "threaded"),
    ("sgd-first-step", "odd"),
    ("sgd-nesterov", "odd"),
    ("sgd-nesterov-first", "many_leaves"),
    ("sgd-maximize-l2-dampening", "odd"),
    ("sgd-maximize-l2-dampening", "threaded"),
]


def numpy_scalars(case: str, kw: dict, count: int) -> list[np.float32]:
    """The kernel's float32 scalars, from the hyperparameters: ``1 - b`` in float64 on the
    host, rounded once, as the XLA path's ``one_minus``."""
    lr, wd = kw["learning_rate"], kw.get("weight_decay", 0.0)
    if case.startswith("lion"):
        return [-f32(lr), f32(1 - kw.get("b1", 0.9)), f32(1 - kw.get("b2", 0.99)), f32(wd)]
    first = f32(1.0 if count == 0 else 0.0)
    return [-f32(lr), f32(kw["momentum"]), f32(1 - kw.get("dampening", 0.0)), f32(wd), first]


@pytest.mark.parametrize(
    ("case", "shapes"), BITWISE_RUNS, ids=[f"{c}-{s}" for c, s in BITWISE_RUNS]
)
def test_one_step_bitwise_equals_numpy_formula(kernel, case, shapes):
    lion = case.startswith("lion")
    kw, count = (LION_CASES if lion else SGD_CASES)[case]
    shapes = SHAPE_SETS[shapes]
    mask = [i % 3 != 1 for i in range(len(shapes))] if "mask" in case else None
    leaves = random_leaves(shapes, seed=zlib.crc32(f"{case}-{len(shapes)}".encode()))
    p, g, m = (list(x) for x in zip(*leaves))

    opt = adamx.lion(**kw, mask=mask) if lion else adamx.sgd(**kw)
    state = with_buffer(opt.init(p), m, count)
    s = numpy_scalars(case, kw, count)
    decays = [bool(kw.get("weight_decay")) and (mask is None or mask[i]) for i in range(len(p))]
    if lion:
        want = [np_lion(*leaf, s, d) for leaf, d in zip(leaves, decays)]
    else:
        flags = (kw.get("maximize", False), kw.get("nesterov", False))
        want = [np_sgd(*leaf, s, d, *flags) for leaf, d in zip(leaves, decays)]

    # Donated copies: the kernel writes into them, and the NumPy inputs stay as they were.
    args = jax.tree.map(jnp.array, (p, state, g))
    compiled = jax.jit(train_step(opt), donate_argnums=(0, 1)).lower(*args).compile()
    assert calls(compiled.as_text(), LION if lion else SGD) == math.ceil(len(p) / _fused.GROUP)
    new_p, new_state = compiled(*args)

    held = buffer_state(new_state)
    assert int(held.count) == min(count + 1, INT32_MAX)
    for i, (wp, wm) in enumerate(want):
        for what, got, w in (("p", new_p[i], wp), ("state", buffer_of(new_state)[i], wm)):
            got = np.asarray(got)
            assert got.dtype == np.float32 and got.shape == shapes[i], (what, i)
            np.testing.assert_array_equal(got, w, err_msg=f"{what}[{i}] of shape {shapes[i]}")


def test_traced_zero_momentum_is_plain_sgd_bitwise(kernel):
    """A traced ``momentum`` of 0 keeps the buffer (the state's structure does not depend
    on the value) and steps along ``g``, as torch's ``momentum=0``: chosen when the kernel
    runs, from the scalar."""
    leaves = random_leaves(SHAPE_SETS["odd"], seed=5)
    p, g, b = (list(x) for x in zip(*leaves))

    def step(momentum, params, state, grads):
        return adamx.step(adamx.sgd(0.5, momentum), grads, state, params)

    state = with_buffer(adamx.sgd(0.5, 0.9).init(p), b, 4)
    jitted = jax.jit(step)
    args = (jnp.float32(0.0), p, state, g)
    assert calls(jitted.lower(*args).compile().as_text(), SGD) == 2
    new_p, new_state = jitted(*args)
    s = [-f32(0.5), f32(0.0), f32(1.0), f32(0.0), f32(0.0)]
    told_apart = 0
    for i, leaf in enumerate(leaves):
        wp, wb = np_sgd(*leaf, s, False, False, False)
        np.testing.assert_array_equal(np.asarray(new_p[i]), wp)
        np.testing.assert_array_equal(np.asarray(buffer_of(new_state)[i]), wb)
        # where the old buffer is inf, b = inf * 0 + g is NaN: stepping along b (heavy
        # ball) would give NaN params there, stepping along g does not
        told_apart += int(np.sum(np.isnan(wb) & np.isfinite(wp)))
    assert told_apart > 0


# ----------------------------------------------------------------------------- per step
MASK_TREE = tree_of([True, False, True, False, True, False])

STEP_CASES = {
    "lion": ("lion", {"learning_rate": 1e-2}),
    "lion-mask-fn": ("lion", {"learning_rate": 1e-2, "weight_decay": 0.5, "mask": decay_mask}),
    "lion-mask-tree-schedule": (
        "lion",
        {
            "learning_rate": optax.linear_schedule(2e-2, 1e-3, 20),
            "b1": 0.5,
            "b2": 0.999,
            "weight_decay": 0.2,
            "mask": MASK_TREE,
        },
    ),  # fmt: skip
    "lion-mu_dtype-float32": ("lion", {"learning_rate": 1e-2, "mu_dtype": jnp.float32}),
    "sgd": ("sgd", {"learning_rate": 1e-2, "momentum": 0.9}),
    "sgd-nesterov-l2": (
        "sgd",
        {"learning_rate": 1e-2, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
    ),
    "sgd-dampening-maximize-schedule": (
        "sgd",
        {
            "learning_rate": optax.linear_schedule(2e-2, 1e-3, 20),
            "momentum": 0.8,
            "dampening": 0.3,
            "weight_decay": 0.05,
            "maximize": True,
        },
    ),  # fmt: skip
    "sgd-accumulator-float32": (
        "sgd",
        {"learning_rate": 1e-2, "momentum": 0.5, "accumulator_dtype": jnp.float32},
    ),
}


def lr_at(kw, t: int) -> float:
    """The learning rate of step ``t`` (1-based) as the optimizer reads it: a schedule at
    the int32 count ``t - 1``, evaluated by jax as the optimizer's own (float32) step does."""
    lr = kw["learning_rate"]
    return float(jax.jit(lr)(jnp.asarray(t - 1, jnp.int32))) if callable(lr) else float(lr)


def reference_step(name, kw, params, grads, buffer, t):
    """One step of the float64 reference from ``buffer``: (new params, new buffer), lists."""
    lr = lr_at(kw, t)
    if name == "lion":
        mask = kw.get("mask")
        if mask is not None:
            tree = mask(params) if callable(mask) else mask
            mask = [bool(x) for x in jax.tree.leaves(tree)]
        shapes = [np.shape(p) for p in params]
        rule = ref_other.Lion(shapes, lr=lr, b1=kw.get("b1", 0.9), b2=kw.get("b2", 0.99),
                              wd=kw.get("weight_decay", 0.0), decay=mask)  # fmt: skip
        rule.m = [np.array(b) for b in buffer]
        return rule.step(params, grads), rule.m
    rule = ref_sgd.SGD(
        lr=lr, momentum=kw["momentum"], dampening=kw.get("dampening", 0.0),
        nesterov=kw.get("nesterov", False), weight_decay=kw.get("weight_decay", 0.0),
        maximize=kw.get("maximize", False),
    )  # fmt: skip
    new_p, new = rule.step(params, grads, ref_sgd.BufferState(buf=list(buffer)), t)
    return new_p, new.buf


def scales(name, kw, params, grads, buffer, t):
    """The size of the terms each element's float32 result was summed from: for ``p``,
    ``|p| + lr * (|g| + |b|)`` (the step's terms); for the state, ``|b| + |g|``."""
    lr = lr_at(kw, t)
    wd = kw.get("weight_decay", 0.0)
    out = []
    for p, g, b in zip(params, grads, buffer):
        gs = np.abs(g) + (wd * np.abs(p) if name == "sgd" else 0.0)
        out.append((np.abs(p) + lr * (1.0 + gs + np.abs(b) + wd * np.abs(p)), np.abs(b) + gs))
    return out


def per_step_run(name, kw, steps):
    """Run ``steps`` steps of the XLA path; from every state on the way take one step of
    ``adamx.step`` (the kernel), of the XLA path and of the reference, and compare them.
    Returns the compiled kernel step's HLO text."""
    prob = make_problem(zlib.crc32(f"momentum-{name}-{sorted(kw)}".encode()), np.float32, steps)
    params = to_jax(prob.params, np.float32)
    grads = [to_jax(g, np.float32) for g in prob.grad_seq]
    kernel_opt = getattr(adamx, name)(**kw)
    xla_opt = getattr(adamx, name)(**kw, fused=False)
    k_step, x_step = jax.jit(train_step(kernel_opt)), jax.jit(xla_step(xla_opt))
    state = xla_opt.init(params)
    hlo = k_step.lower(params, state, grads[0]).compile().as_text()
    assert calls(x_step.lower(params, state, grads[0]).compile().as_text()) == 0
    for t, (g, g64) in enumerate(zip(grads, prob.grad_seq), start=1):
        pk, sk = k_step(params, state, g)
        px, sx = x_step(params, state, g)
        p0, b0, gl = f64_leaves(params), f64_leaves(buffer_of(state)), f64_leaves(g64)
        want_p, want_b = reference_step(name, kw, p0, gl, b0, t)
        scale = scales(name, kw, p0, gl, b0, t)
        xla = (f64_leaves(px), f64_leaves(buffer_of(sx)))
        for got_p, got_s, want, what in (
            (pk, sk, (want_p, want_b), "kernel vs reference"),
            (px, sx, (want_p, want_b), "xla vs reference"),
            (pk, sk, xla, "kernel vs xla"),
        ):
            got = zip(f64_leaves(got_p), f64_leaves(buffer_of(got_s)), *want, scale)
            for i, (gp, gb, wp, wb, (sp, sb)) in enumerate(got):
                assert_close_to_scale(gp, wp, sp, RTOL, f"{what}, step {t}: p[{i}]")
                assert_close_to_scale(gb, wb, sb, RTOL, f"{what}, step {t}: state[{i}]")
        # The rest of the state (counts) and its structure: the same.
        assert jax.tree.structure(sk) == jax.tree.structure(sx)
        for a, b in zip(jax.tree.leaves(sk), jax.tree.leaves(sx)):
            assert a.dtype == b.dtype and a.shape == b.shape
            if jnp.issubdtype(a.dtype, jnp.integer):
                assert np.array_equal(a, b)
        params, state = px, sx
    moved = max(np.max(np.abs(a - b), initial=0) for a, b in zip(
        f64_leaves(params), f64_leaves(prob.params)))  # fmt: skip
    assert moved > 1e-2  # the run moved the params, or agreeing would prove little
    return hlo


@pytest.mark.parametrize("case", list(STEP_CASES), ids=list(STEP_CASES))
def test_each_step_matches_reference_and_xla_path(kernel, case):
    name, kw = STEP_CASES[case]
    strict = "schedule" not in case  # optax's schedules mix int32 and Python floats
    with jax.numpy_dtype_promotion("strict" if strict else "standard"):
        hlo = per_step_run(name, kw, steps=20)
    assert calls(hlo, LION if name == "lion" else SGD) == 1


@pytest.mark.parametrize("name", ["lion", "sgd"])
def test_traced_hyperparameters_use_the_kernel_without_recompiling(kernel, name):
    """Hyperparameters that are traced arrays (built inside ``jit``) run the kernel, one
    compilation for every value; the reference gets the float32 numbers jit sees."""
    prob = make_problem(7, np.float32, steps=6)
    params = to_jax(prob.params, np.float32)
    traces = []

    def step(hyper, params, state, g):
        traces.append(1)
        return adamx.step(getattr(adamx, name)(**hyper), g, state, params)

    if name == "lion":
        base = {"b1": 0.8, "b2": 0.99, "weight_decay": 0.1}
    else:
        base = {"momentum": 0.8, "dampening": 0.25, "weight_decay": 0.1}
    jitted = jax.jit(step)
    hyper = {k: jnp.float32(v) for k, v in {"learning_rate": 0.0, **base}.items()}
    state = getattr(adamx, name)(**hyper).init(params)
    assert calls(jitted.lower(hyper, params, state, params).compile().as_text()) == 1
    for t, g64 in enumerate(prob.grad_seq, start=1):
        kw = float32_kwargs({"learning_rate": 0.01 * t, **base})
        hyper = {k: jnp.float32(v) for k, v in kw.items()}
        new_params, new_state = jitted(hyper, params, state, to_jax(g64, np.float32))
        p0, b0, gl = f64_leaves(params), f64_leaves(buffer_of(state)), f64_leaves(g64)
        want_p, want_b = reference_step(name, kw, p0, gl, b0, t)
        got = zip(f64_leaves(new_params), f64_leaves(buffer_of(new_state)), want_p, want_b,
                  scales(name, kw, p0, gl, b0, t))  # fmt: skip
        for i, (gp, gb, wp, wb, (sp, sb)) in enumerate(got):
            assert_close_to_scale(gp, wp, sp, RTOL, f"t={t}: p[{i}]")
            assert_close_to_scale(gb, wb, sb, RTOL, f"t={t}: state[{i}]")
        params, state = new_params, new_state
    assert len(traces) == 1


# ----------------------------------------------------------------------------- the state
@pytest.mark.parametrize(
    "make",
    [
        lambda fused: adamx.lion(optax.linear_schedule(2e-2, 1e-3, 10), weight_decay=0.3,
                                 mask=decay_mask, fused=fused),
        lambda fused: adamx.sgd(optax.linear_schedule(2e-2, 1e-3, 10), 0.9, nesterov=True,
                                weight_decay=0.1, fused=fused),
    ],
    ids=["lion", "sgd"],
)  # fmt: skip
def test_state_is_the_chains_and_paths_interchange(kernel, make):
    fused, plain = make(None), make(False)
    prob = make_problem(8, np.float32, steps=10)
    params = to_jax(prob.params, np.float32)
    grads = [to_jax(g, np.float32) for g in prob.grad_seq]
    k_step, x_step = jax.jit(train_step(fused)), jax.jit(xla_step(plain))
    assert calls(k_step.lower(params, fused.init(params), grads[0]).compile().as_text()) == 1
    _, sk = k_step(params, fused.init(params), grads[0])
    _, sx = x_step(params, plain.init(params), grads[0])
    shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)  # noqa: E731
    assert jax.tree.structure(sk) == jax.tree.structure(sx) and shapes(sk) == shapes(sx)

    mixed = (params, fused.init(params))
    for i, g in enumerate(grads):
        mixed = (k_step if i % 2 else x_step)(*mixed, g)
    xla = (params, plain.init(params))
    for g in grads:
        xla = x_step(*xla, g)
    assert_trees_close(mixed, xla, rtol=1e-5)
    assert [int(x) for x in jax.tree.leaves(mixed[1]) if x.dtype == jnp.int32] == [10, 10]


# ----------------------------------------------------------------------------- in place
@pytest.mark.parametrize(
    "make",
    [lambda: adamx.lion(1e-2, weight_decay=0.1), lambda: adamx.sgd(1e-2, 0.9, nesterov=True)],
    ids=["lion", "sgd"],
)
def test_donated_step_is_in_place(kernel, make):
    rng = np.random.default_rng(1)
    shapes = {"w": (64, 64), "b": (4096,), "s": ()}
    new = lambda: {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}  # noqa: E731
    params, grads = new(), new()
    opt = make()
    state = opt.init(params)
    compiled = jax.jit(train_step(opt), donate_argnums=(0, 1)).lower(params, state, grads).compile()
    hlo = compiled.as_text()
    assert calls(hlo) == 1
    # Only a scalar may be copied (SGD's count, read for the first-step flag and replaced).
    copies = [line for line in hlo.splitlines() if " copy(" in line]
    assert all("[] copy(" in line for line in copies), copies
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    # The scalars and call bookkeeping only; Lion's XLA step holds a copy of m (33 KB here).
    assert compiled.memory_analysis().temp_size_in_bytes < 0.05 * param_bytes

    pointers = lambda tree: [x.unsafe_buffer_pointer() for x in jax.tree.leaves(tree)]  # noqa: E731
    before = (pointers(params), pointers(buffer_of(state)))
    new_params, new_state = compiled(params, state, grads)
    assert (pointers(new_params), pointers(buffer_of(new_state))) == before


def test_lion_xla_step_holds_a_copy_of_the_moment(kernel):
    """What the kernel saves: the XLA path reads the old ``m`` twice (the read-out and the
    new ``m``), so it keeps a copy of it (a leaf-sized temporary) even when donated."""
    params = {"w": jnp.ones((256, 256), jnp.float32)}
    plain = adamx.lion(1e-2, fused=False)
    args = (params, plain.init(params), params)
    compiled = jax.jit(xla_step(plain), donate_argnums=(0, 1)).lower(*args).compile()
    assert compiled.memory_analysis().temp_size_in_bytes >= params["w"].nbytes


def test_inputs_not_donated_are_left_alone(kernel):
    params = to_jax(make_problem(2, np.float32, steps=0).params, np.float32)
    for opt, plain in (
        (adamx.lion(1e-2, weight_decay=0.5), adamx.lion(1e-2, weight_decay=0.5, fused=False)),
        (adamx.sgd(1e-2, 0.9), adamx.sgd(1e-2, 0.9, fused=False)),
    ):
        state = with_buffer(opt.init(params), jax.tree.map(jnp.abs, params), 3)
        saved = jax.device_get((params, state))
        for run in (jax.jit(train_step(opt)), train_step(opt)):
            got = run(params, state, params)
            assert_trees_equal((params, state), saved)
            assert_trees_close(got, jax.jit(xla_step(plain))(params, state, params))


@pytest.mark.parametrize(
    "make",
    [
        lambda: adamx.lion(optax.linear_schedule(1e-2, 1e-3, 5), mask=decay_mask, weight_decay=0.1),
        lambda: adamx.sgd(optax.linear_schedule(1e-2, 1e-3, 5), 0.9),
    ],
    ids=["lion", "sgd"],
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
    with jax.numpy_dtype_promotion("standard"):  # optax's schedules
        assert calls(jitted.lower(params, state, params).compile().as_text()) == 1
        for g in prob.grad_seq:
            params, state = jitted(params, state, to_jax(g, np.float32))
    assert len(traces) == 1


# ----------------------------------------------------------------------------- choice
def test_custom_call_only_when_fused(kernel, monkeypatch):
    params = {"w": jnp.ones((3, 4), jnp.float32), "b": jnp.zeros((4,), jnp.float32)}
    for make, target in ((adamx.lion, LION), (lambda **kw: adamx.sgd(0.1, 0.9, **kw), SGD)):
        args = (params, make().init(params), params)
        assert calls(compile_text(train_step(make()), *args), target) == 1
        assert calls(compile_text(train_step(make(fused=True)), *args), target) == 1
        assert calls(compile_text(train_step(make(fused=False)), *args)) == 0
        assert calls(compile_text(xla_step(make()), *args)) == 0  # update: XLA
        monkeypatch.setenv("ADAMX_FUSED", "0")  # read when the step is traced
        assert calls(compile_text(train_step(make()), *args)) == 0
        monkeypatch.delenv("ADAMX_FUSED")


FALLBACKS = {  # what the kernel cannot run, and why; fused=None takes the XLA path
    "lion-mu_dtype-bf16": (lambda **kw: adamx.lion(1e-2, mu_dtype=jnp.bfloat16, **kw), "f32"),
    "sgd-accumulator-bf16": (
        lambda **kw: adamx.sgd(1e-2, 0.9, accumulator_dtype=jnp.bfloat16, **kw),
        "f32",
    ),
    "sgd-no-momentum": (lambda **kw: adamx.sgd(1e-2, **kw), "f32"),
    "sgd-momentum-0": (lambda **kw: adamx.sgd(1e-2, 0, **kw), "f32"),
    "lion-bf16-params": (lambda **kw: adamx.lion(1e-2, **kw), "bf16"),
    "sgd-bf16-params": (lambda **kw: adamx.sgd(1e-2, 0.9, **kw), "bf16"),
    "sgd-mixed-params": (lambda **kw: adamx.sgd(1e-2, 0.9, **kw), "mixed"),
}


def fallback_params(kind):
    dtypes = {"f32": (jnp.float32,) * 2, "bf16": (jnp.bfloat16,) * 2}.get(
        kind, (jnp.float32, jnp.bfloat16)
    )
    return {"w": jnp.full((3, 5), 0.7, dtypes[0]), "b": jnp.full((5,), -0.5, dtypes[1])}


@pytest.mark.parametrize("case", list(FALLBACKS), ids=list(FALLBACKS))
def test_what_the_kernel_cannot_run_takes_the_xla_path(kernel, case):
    make, kind = FALLBACKS[case]
    params = fallback_params(kind)
    grads = jax.tree.map(lambda x: (x * 0.3).astype(x.dtype), params)
    auto = make()
    args = (params, auto.init(params), grads)
    assert calls(compile_text(train_step(auto), *args)) == 0
    got = jax.jit(train_step(auto))(*args)
    assert_trees_equal(got, jax.jit(xla_step(make(fused=False)))(*args))
    assert jax.tree.map(lambda x: x.dtype, got[0]) == jax.tree.map(lambda x: x.dtype, params)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: adamx.lion(mu_dtype=jnp.bfloat16, fused=True), "mu_dtype=bfloat16"),
        (lambda: adamx.sgd(0.1, 0.9, accumulator_dtype="bfloat16", fused=True),
         "accumulator_dtype=bfloat16"),
        (lambda: adamx.sgd(0.1, fused=True), "momentum=None"),
        (lambda: adamx.sgd(0.1, 0, fused=True), "momentum=0"),
        (lambda: adamx.lion(fused="yes"), "`fused` must be None, True or False"),
        (lambda: adamx.sgd(0.1, 0.9, fused=1), "`fused` must be None, True or False"),
    ],
)  # fmt: skip
def test_fused_true_refuses_options_the_kernel_lacks_when_built(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_fused_true_refuses_what_the_kernel_cannot_run_when_stepping(kernel):
    for make in (lambda: adamx.lion(fused=True), lambda: adamx.sgd(0.1, 0.9, fused=True)):
        opt = make()
        params = fallback_params("bf16")
        with pytest.raises(ValueError, match="float32"):
            adamx.step(opt, params, opt.init(params), params)
    # A mask given as a prefix of the params tree (optax.masked takes it) is not per leaf.
    params = {"dense": {"w": jnp.ones((3, 5), jnp.float32)}, "b": jnp.ones((5,), jnp.float32)}
    prefix = {"dense": True, "b": False}
    opt = adamx.lion(weight_decay=0.1, mask=prefix, fused=True)
    with pytest.raises(ValueError, match="mask"):
        jax.jit(train_step(opt))(params, opt.init(params), params)
    auto = adamx.lion(weight_decay=0.1, mask=prefix)
    args = (params, auto.init(params), params)
    assert calls(compile_text(train_step(auto), *args)) == 0
    want = jax.jit(xla_step(adamx.lion(weight_decay=0.1, mask=prefix, fused=False)))(*args)
    assert_trees_equal(jax.jit(train_step(auto))(*args), want)


def test_wrappers_hide_the_kernel():
    """``with_storage`` and ``inject_hyperparams`` do not pass Lion's or SGD's description
    on (the kernel would not see their state): ``adamx.step`` is update + apply_updates."""
    params = {"w": jnp.full((4, 3), 0.5, jnp.float32)}
    for opt in (
        adamx.with_storage(adamx.lion(1e-2), mu="bfloat16"),
        adamx.with_storage(adamx.sgd(1e-2, 0.9), mu="float32"),
        optax.inject_hyperparams(adamx.sgd)(learning_rate=1e-2, momentum=0.9),
        optax.chain(optax.clip_by_global_norm(1.0), adamx.lion(1e-2)),
    ):
        args = (params, opt.init(params), params)
        assert calls(compile_text(train_step(opt), *args)) == 0
        assert_trees_equal(jax.jit(train_step(opt))(*args), jax.jit(xla_step(opt))(*args))


# ----------------------------------------------------------------------------- transforms
DIFF_CASES = {
    "lion-mask": lambda fused: adamx.lion(5e-2, weight_decay=0.3, mask=decay_mask, fused=fused),
    "sgd-nesterov-l2-maximize": lambda fused: adamx.sgd(
        5e-2, 0.9, nesterov=True, weight_decay=0.1, maximize=True, fused=fused
    ),
}


@pytest.mark.parametrize("case", list(DIFF_CASES), ids=list(DIFF_CASES))
def test_grad_through_step_matches_xla_path(kernel, case):
    prob = make_problem(9, np.float32, steps=3)
    params = to_jax(prob.params, np.float32)
    loss_grad = jax_grad(prob.consts, np.float32)
    plain = DIFF_CASES[case](False)
    state = plain.init(params)
    for g in prob.grad_seq:  # a state away from 0
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


@pytest.mark.parametrize(
    "make",
    [
        lambda fused: adamx.lion(1e-2, weight_decay=0.1, mask=decay_mask, fused=fused),
        lambda fused: adamx.sgd(1e-2, 0.9, fused=fused),
    ],
    ids=["lion", "sgd"],
)
def test_vmap_runs_the_kernel_per_example(kernel, make):
    batch = 3
    prob = make_problem(10, np.float32, steps=3)
    stack = lambda tree: jax.tree.map(  # noqa: E731
        lambda x: jnp.stack([jnp.asarray(x, jnp.float32) * (1.0 + 0.5 * i) for i in range(batch)]),
        tree,
    )
    params = stack(prob.params)
    opt, plain = make(None), make(False)
    state = jax.vmap(opt.init)(params)
    batched = jax.jit(jax.vmap(train_step(opt)))
    assert calls(batched.lower(params, state, params).compile().as_text()) >= 1
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


def serialised(x):
    """A state as Orbax gives it back: dicts, lists, None and NumPy arrays."""
    if isinstance(x, optax.EmptyState):
        return None
    if hasattr(x, "_asdict"):
        return {k: serialised(v) for k, v in x._asdict().items()}
    if isinstance(x, (tuple, list)):
        return [serialised(v) for v in x]
    if isinstance(x, dict):
        return {k: serialised(v) for k, v in x.items()}
    return np.asarray(x)


def test_checkpoint_of_kernel_state_restores(kernel):
    for opt in (
        adamx.lion(optax.linear_schedule(1e-2, 1e-3, 5), weight_decay=0.1, mask=decay_mask),
        adamx.sgd(optax.linear_schedule(1e-2, 1e-3, 5), 0.9, dampening=0.1),
    ):
        prob = make_problem(12, np.float32, steps=5)
        params = to_jax(prob.params, np.float32)
        state = opt.init(params)
        step = jax.jit(train_step(opt))
        with jax.numpy_dtype_promotion("standard"):  # optax's schedules
            for g in prob.grad_seq[:3]:
                params, state = step(params, state, to_jax(g, np.float32))
            restored = adamx.restore_state(serialised(state), opt.init(params))
            assert jax.tree.structure(restored) == jax.tree.structure(state)
            a, b = (params, state), (params, restored)
            for g in prob.grad_seq[3:]:
                a, b = step(*a, to_jax(g, np.float32)), step(*b, to_jax(g, np.float32))
        assert_trees_equal(a, b)


# ----------------------------------------------------------------------------- devices
SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    import adamx

    params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(16, 8)), jnp.float32)}
    out = {"devices": jax.device_count()}
    for name, make in (("lion", lambda **kw: adamx.lion(1e-2, weight_decay=0.1, **kw)),
                       ("sgd", lambda **kw: adamx.sgd(1e-2, 0.9, **kw))):
        opt = make()
        step = jax.jit(lambda p, s, g: adamx.step(opt, g, s, p))
        hlo = step.lower(params, opt.init(params), params).compile().as_text()
        try:
            strict = make(fused=True)
            jax.jit(lambda p, s: adamx.step(strict, p, s, p))(params, strict.init(params))
            refused = None
        except ValueError as error:
            refused = str(error)
        from jax.sharding import NamedSharding, PartitionSpec as P
        mesh = jax.make_mesh((jax.device_count(),), ("x",))
        plain = make(fused=False)
        s0 = plain.init(params)

        def per_shard(p, g, s):
            return adamx.step(make(fused=True), g, s, p)

        spec = jax.tree.map(lambda x: P() if np.ndim(x) == 0 else P("x"), s0)
        fn = jax.jit(jax.shard_map(per_shard, mesh=mesh, in_specs=(P("x"), P("x"), spec),
                                   out_specs=(P("x"), spec)))
        put = lambda tree, spec: jax.tree.map(
            lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), tree, spec)
        args = (put(params, {"w": P("x")}), put(params, {"w": P("x")}), put(s0, spec))
        shard_hlo = fn.lower(*args).compile().as_text()
        got = np.asarray(fn(*args)[0]["w"])
        want = np.asarray(jax.jit(lambda p, s, g: adamx.step(plain, g, s, p))(
            params, s0, params)[0]["w"])
        target = 'custom_call_target="adamx_' + name + '_step_v1"'
        out[name] = {
            "auto_calls": hlo.count(target),
            "refused": refused,
            "shard_calls": shard_hlo.count(target),
            "gathers": shard_hlo.count("all-gather"),
            "rel_diff": float(np.max(np.abs(got - want)) / np.max(np.abs(want))),
        }
    print(json.dumps(out))
    """
)


def test_several_devices_take_the_xla_path_or_the_kernel_per_shard(kernel):
    env = {k: v for k, v in os.environ.items() if k != "ADAMX_FUSED"}
    env.update(JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = (
        f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()
    )
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4
    for name in ("lion", "sgd"):
        found = out[name]
        assert found["auto_calls"] == 0, found  # several devices: XLA, no gather of shards
        assert found["refused"] is not None and "shard_map" in found["refused"], found
        assert found["shard_calls"] >= 1 and found["gathers"] == 0, found
        assert found["rel_diff"] <= 3e-7, found
