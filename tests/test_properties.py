"""Property-based tests (hypothesis) of every optimizer in the contract table.

Random pytrees (nested dicts, lists and tuples with ``None`` leaves, 0-d and zero-size
arrays) of float32, bfloat16 and float16 leaves (mixed in one tree) are run through every
row of ``test_contract.OPTIMIZERS``, which covers every alias in ``adamx.OPTIMIZERS``:

* structure, shapes and dtypes of the updates and of the state are kept across steps;
* zero gradients from the initial state give zero updates where the rule says so
  (``ZERO_UPDATES`` gives the reason per row);
* the scale-invariant rules give the same update for gradients scaled by ``c > 0`` when
  ``eps = 0`` (``SCALING`` says which rules are, and why the others are not);
* updates are bitwise deterministic: eagerly, and under two independently compiled jits.
  (Eager and jitted results may differ in the last bit: XLA fuses multiply-adds under jit,
  and eager dispatch flushes subnormals to zero on CPU; neither is asserted equal.)

The examples are generated deterministically (``derandomize=True``, no example database),
run eagerly on tiny arrays drawn from a small set of shapes (no compilation per example), and
the jitted runners are compiled once per row.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_contract import OPTIMIZERS, make

import adamx

ROWS = sorted(OPTIMIZERS)

SETTINGS = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# Examples per row and property (x64 draws the row). Each row's first examples are the
# costly ones (a new shape or dtype compiles eager ops); the counts are halved from the
# first version's (10, 8, 8, 6, 6, 5, 30) as the table grew past 40 rows.
EXAMPLES = {"structure": 5, "zero": 4, "scaling": 4, "exact": 3, "eager": 3, "jit": 3, "x64": 15}

SHAPES = ((), (0,), (1,), (3,), (2, 3), (0, 2), (2, 1, 3))
FLOATS = (jnp.float32, jnp.bfloat16, jnp.float16)
KEYS = ("a", "b", "c", "kernel", "bias")


@dataclasses.dataclass(frozen=True)
class Spec:
    """One array leaf of a tree to be drawn: its shape and dtype (a leaf to ``jax.tree``)."""

    shape: tuple[int, ...]
    dtype: Any


def rotated(items, k: int) -> tuple:
    return tuple(items[k % len(items) :]) + tuple(items[: k % len(items)])


def tree_specs(dtypes=FLOATS, salt: str = "") -> st.SearchStrategy:
    """Nested dicts, lists and tuples of ``Spec`` and ``None``, with at least one array.

    ``salt`` (the row's name) rotates the choices, so that the rows of a parametrized test,
    which hypothesis feeds the same (derandomized) choices, see different trees. Trees
    without any array (``{}``, ``[None]``) are the subject of ``test_trees_without_arrays``
    instead: two recipes fail on them.
    """
    k = zlib.crc32(salt.encode())
    shapes, dtypes, keys = rotated(SHAPES, k), rotated(dtypes, k // 7), rotated(KEYS, k // 11)
    array = st.builds(Spec, st.sampled_from(shapes), st.sampled_from(dtypes))
    leaf = st.one_of(st.none(), array)

    def containers(children):
        kinds = (
            st.lists(children, max_size=3),
            st.lists(children, max_size=3).map(tuple),
            st.dictionaries(st.sampled_from(keys), children, max_size=3),
        )
        return st.one_of(rotated(kinds, k // 13))

    tree = st.one_of(array, containers(st.recursive(leaf, containers, max_leaves=6)))
    return tree.filter(lambda t: len(jax.tree.leaves(t)) > 0)


SEEDS = st.integers(0, 2**32 - 1)


def draw(specs, rng: np.random.Generator, kind: str = "normal"):
    """Arrays for a tree of specs. ``kind``: ``normal``; ``away`` (``|x|`` in [0.5, 2], a
    third of the elements exactly 0); ``zeros``."""

    def leaf(spec: Spec):
        if kind == "zeros":
            x = np.zeros(spec.shape)
        elif kind == "away":
            x = rng.choice([-1.0, 1.0], spec.shape) * rng.uniform(0.5, 2.0, spec.shape)
            x = np.where(rng.random(spec.shape) < 1 / 3, 0.0, x)
        else:
            x = rng.standard_normal(spec.shape)
        return jnp.asarray(x, spec.dtype)

    return jax.tree.map(leaf, specs)


def shapes_and_dtypes(tree):
    return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


def bits(tree) -> list[bytes]:
    """The raw bytes of every leaf: equal lists mean bitwise-equal trees (NaNs and -0 too)."""
    return [np.asarray(x).tobytes() for x in jax.tree.leaves(tree)]


def row(name):
    return OPTIMIZERS[name]


def test_every_alias_is_covered():
    covered = {row(name).factory.__name__ for name in ROWS}
    assert set(adamx.OPTIMIZERS) <= covered, set(adamx.OPTIMIZERS) - covered


# ----------------------------------------------------------------------------- structure
def check_step(updates, state, params, state0):
    chex.assert_trees_all_equal_structs(updates, params)
    assert shapes_and_dtypes(updates) == shapes_and_dtypes(params)
    assert jax.tree.structure(state) == jax.tree.structure(state0)
    assert shapes_and_dtypes(state) == shapes_and_dtypes(state0)


def run_and_check_structure(name, specs, seed, steps):
    rng = np.random.default_rng(seed)
    opt = make(name)
    params = draw(specs, rng)
    state0 = state = opt.init(params)
    for _ in range(steps):
        updates, state = opt.update(draw(specs, rng), state, params)
        check_step(updates, state, params, state0)
        chex.assert_tree_all_finite(updates)
        params = optax.apply_updates(params, updates)
    assert shapes_and_dtypes(params) == shapes_and_dtypes(draw(specs, rng))


@pytest.mark.parametrize("name", ROWS)
@settings(max_examples=EXAMPLES["structure"], **SETTINGS)
@given(data=st.data(), seed=SEEDS, steps=st.integers(1, 3))
def test_structure_shapes_and_dtypes_are_kept(name, data, seed, steps):
    run_and_check_structure(name, data.draw(tree_specs(salt=name)), seed, steps)


@settings(max_examples=EXAMPLES["x64"], **SETTINGS)
@given(
    name=st.sampled_from(ROWS),
    specs=tree_specs((jnp.float64, jnp.float32)),
    seed=SEEDS,
    steps=st.integers(1, 2),
)
def test_structure_shapes_and_dtypes_are_kept_with_float64(name, specs, seed, steps, x64):
    run_and_check_structure(name, specs, seed, steps)


NO_ARRAYS = {"empty_dict": {}, "empty_list": [], "nones": (None, [None]), "nested": {"a": [{}]}}


@pytest.mark.parametrize("name", ROWS)
def test_trees_without_arrays(name):
    for params in NO_ARRAYS.values():
        opt = make(name)
        state0 = opt.init(params)
        updates, state = opt.update(params, state0, params)
        check_step(updates, state, params, state0)
    # what optax.masked hands the inner optimizer when every leaf is masked out
    masked = optax.masked(make(name), {"w": False, "b": False})
    params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
    updates, _ = masked.update(params, masked.init(params), params)
    chex.assert_trees_all_equal(updates, params)


# ----------------------------------------------------------------------------- zero gradients
ZERO, DECAY = "zero", "decay"
# Zero gradients and the initial state: every update is zero (ZERO), or only the weight decay
# moves the params, so the update is zero exactly where p = 0 (DECAY).
ZERO_UPDATES = {
    "adam": (ZERO, "m = v = 0: m^ / (sqrt(v^) + eps) = 0 / eps with eps > 0"),
    "adam_eps_root": (ZERO, "0 / (sqrt(0 + eps_root) + eps)"),
    "adam_nesterov": (ZERO, "the look-ahead c_m*m + c_g*g of m = g = 0 is 0, over eps > 0"),
    "adam_l2": (DECAY, "coupled L2: the gradient becomes wd*p, zero only where p = 0"),
    "adamw": (DECAY, "decoupled decay: the update is -lr*(0/eps + wd*p)"),
    "amsgrad": (ZERO, "v_max = 0: 0 / eps"),
    "muon": (DECAY, "NS(0) = 0 (no 0/0), AdamW's 0 over eps; both decay -lr*wd*p"),
    "adan": (DECAY, "m = v = n = 0 (d = 0): 0 / (sqrt(eps_root) + eps), plus -lr*wd*p"),
    "ademamix": (DECAY, "m^ + alpha*s = 0 over eps, plus -lr*wd*p"),
    "simplified_ademamix": (DECAY, "m + alpha*g = 0 over eps, plus -lr*wd*p"),
    "adamax": (ZERO, "u = max(b2*0, |0| + eps) = eps > 0: m^ / u = 0"),
    "nadam": (ZERO, "c_m*m + c_g*g = 0 for m = g = 0, over eps > 0"),
    "nadam_scheduleless": (ZERO, "c_m*m + c_g*g = 0 for m = g = 0, over eps > 0"),
    "nadamw": (DECAY, "decoupled decay: -lr*(0 + wd*p)"),
    "radam": (ZERO, "warm-up steps are -lr*m^ = 0; rectified ones 0*r/(sqrt(0) + eps)"),
    "radam_decoupled": (DECAY, "decoupled decay: -lr*(0 + wd*p)"),
    "adabelief": (ZERO, "m = 0 over sqrt(s^) + eps, s accumulating eps"),
    "yogi": (ZERO, "m = 0 over sqrt(v^) + eps, v staying at initial_accumulator_value"),
    "sgd": (ZERO, "the buffer starts at g = 0 and stays 0"),
    "sgd_nesterov": (ZERO, "g + mu*b with g = b = 0"),
    "sgd_dampening_l2": (DECAY, "coupled L2: the buffer follows wd*p"),
    "rmsprop": (ZERO, "g / (sqrt(0) + eps) = 0, and a momentum buffer of zeros"),
    "rmsprop_centered": (DECAY, "coupled L2: the gradient becomes wd*p"),
    "adagrad": (DECAY, "coupled L2: wd*p / (|wd*p| + eps), a sign step where p != 0"),
    "adadelta": (DECAY, "coupled L2: sqrt(eps)/sqrt(v + eps) * wd*p"),
    "lamb": (DECAY, "r = 0/eps + wd*p, rescaled to ||p||: the update is -lr*p"),
    "lion": (DECAY, "sign(0) = 0, plus the decoupled -lr*wd*p"),
    "adafactor": (DECAY, "0 / sqrt(max(V, eps1**2)) with eps1 > 0, plus -lr*wd*p"),
    "adopt": (ZERO, "the first update is 0 by design; later 0 / max(sqrt(0), eps) = 0"),
    "lazy_adam": (ZERO, "every row's gradient is all zero: rows left alone, update exactly 0"),
    "adamaxw": (DECAY, "decoupled decay: -lr*(0/u + wd*p), u = eps > 0"),
    "lars": (DECAY, "coupled decay: wd*p through the trust ratio and the momentum"),
    "novograd": (DECAY, "0 / (sqrt(0) + eps) + wd*p through the momentum"),
    "optimistic_adam": (ZERO, "r = 0 / eps = 0, and r - r_prev = 0"),
    "schedule_free_adamw": (DECAY, "z moves by -lr*wd*y only, so does y"),
    "schedule_free_sgd": (DECAY, "z moves by -lr*wd*y only, so does y"),
    "sign_sgd": (ZERO, "sign(0) = 0"),
    "signum": (ZERO, "m = 0, sign(0) = 0"),
    "laprop": (DECAY, "d = 0 / (sqrt(0) + eps) = 0, so m = 0; plus the decoupled -lr*wd*p"),
    "cautious_adamw": (DECAY, "AdamW's step at zero params is 0; its decay -lr*wd*p stays"),
    "mars": (DECAY, "c = 0 (g = g_prev = 0): 0 over eps; plus the decoupled -lr*wd*p"),
    "adam_mini": (DECAY, "m = 0 over sqrt(v_B^) + eps, plus -lr*wd*p"),
    "soap": (DECAY, "L = R = 0: the identity basis, m = 0 over sqrt(0) + eps, plus -lr*wd*p"),
    "prodigy": (DECAY, "m = v = 0 over D*eps > 0, plus -lr*D*c*wd*p; D stays (sum|s| = 0)"),
    "dadapt_adamw": (DECAY, "m = v = 0 over eps > 0, plus -D*lr*c*wd*p; D stays (sum|s| = 0)"),
    "galore": (DECAY, "P^T 0 = 0: Adam's 0 / eps, projected back, plus -lr*wd*p"),
    "rprop": (ZERO, "sign(0) = 0: no step (g * prev = 0, the sizes hold)"),
    "asgd": (DECAY, "coupled L2 and lambd: -eta*(wd + lambd)*p"),
    "sm3": (ZERO, "nu = 0 gives d = 0 (not 0/0), and m stays 0"),
    "madgrad": (DECAY, "coupled L2: the sums follow wd*p; z = x0 - s / (cbrt(v) + eps)"),
    "acprop": (DECAY, "0 / (1 + eps), then 0 / (sqrt(s^) + eps) with s >= eps_root; -lr*wd*p"),
}


def test_zero_update_table_covers_every_row():
    assert set(ZERO_UPDATES) == set(OPTIMIZERS)


@pytest.mark.parametrize("name", ROWS)
@settings(max_examples=EXAMPLES["zero"], **SETTINGS)
@given(data=st.data(), seed=SEEDS, steps=st.integers(1, 3))
def test_zero_gradients_from_the_initial_state(name, data, seed, steps):
    specs = data.draw(tree_specs(salt=name))
    kind, reason = ZERO_UPDATES[name]
    opt = make(name)
    params = draw(specs, np.random.default_rng(seed), "away")
    zeros = draw(specs, None, "zeros")
    state = opt.init(params)
    for step in range(1, steps + 1):
        updates, state = opt.update(zeros, state, params)
        leaves = jax.tree_util.tree_leaves_with_path(updates)
        for (path, u), p in zip(leaves, jax.tree.leaves(params)):
            u, p = np.asarray(u, np.float32), np.asarray(p, np.float32)
            where = f"{name} step {step}, updates{jax.tree_util.keystr(path)} ({reason})"
            assert np.all(np.isfinite(u)), where
            if kind == ZERO:
                assert np.all(u == 0), where
            else:
                assert np.all((u == 0) == (p == 0)), where


# ----------------------------------------------------------------------------- scaling
INVARIANT, LINEAR, RECTIFIED, NEITHER = "invariant", "linear", "rectified", "neither"
# How the update responds to gradients g -> c*g (c > 0), with ``overrides`` applied to the row.
# INVARIANT: u(c g) = u(g); LINEAR: u(c g) = c u(g); RECTIFIED (RAdam): linear during the
# warm-up steps (plain momentum), invariant once rectified.
SCALING = {
    "adam": (INVARIANT, {"eps": 0.0}, "m^ ~ c, v^ ~ c**2"),
    "adam_eps_root": (INVARIANT, {"eps": 0.0, "eps_root": 0.0}, "eps_root > 0 breaks it too"),
    "adam_nesterov": (INVARIANT, {"eps": 0.0}, "the look-ahead is linear in m and g"),
    "adam_l2": (NEITHER, {}, "coupled L2: g + wd*p, and wd*p does not scale with c"),
    "adamw": (INVARIANT, {"eps": 0.0}, "decoupled decay does not depend on g"),
    "amsgrad": (INVARIANT, {"eps": 0.0}, "max(v_max, v) ~ c**2"),
    "muon": (INVARIANT, {"adam_eps": 0.0}, "NS normalises by the norm; Adam's m^/sqrt(v^)"),
    "adan": (INVARIANT, {"eps": 0.0, "eps_root": 0.0}, "m, v ~ c, n ~ c**2; decay free of g"),
    "ademamix": (INVARIANT, {"eps": 0.0}, "m^ + alpha*s ~ c, v ~ c**2"),
    "simplified_ademamix": (INVARIANT, {"eps": 0.0}, "m + alpha*g ~ c, v ~ c**2"),
    "adamax": (INVARIANT, {"eps": 0.0}, "u = max(b2*u, |g|) ~ c"),
    "nadam": (INVARIANT, {"eps": 0.0}, "as Adam"),
    "nadam_scheduleless": (INVARIANT, {"eps": 0.0}, "as Adam"),
    "nadamw": (INVARIANT, {"eps": 0.0}, "as Adam, decay independent of g"),
    "radam": (RECTIFIED, {"eps": 0.0}, "warm-up steps are -lr*m^ ~ c"),
    "radam_decoupled": (RECTIFIED, {"eps": 0.0}, "warm-up: -lr*(m^ + wd*p), neither"),
    "adabelief": (INVARIANT, {"eps": 0.0}, "s ~ c**2 once its eps term is 0"),
    "yogi": (
        INVARIANT,
        {"eps": 0.0, "initial_accumulator_value": 0.0},
        "v ~ c**2 only from v0 = 0 (sign(v - g**2) is scale-free)",
    ),
    "sgd": (LINEAR, {}, "plain momentum"),
    "sgd_nesterov": (LINEAR, {}, "plain momentum"),
    "sgd_dampening_l2": (NEITHER, {}, "coupled L2"),
    "rmsprop": (INVARIANT, {"eps": 0.0}, "g / sqrt(v), momentum on the directions"),
    "rmsprop_centered": (INVARIANT, {"eps": 0.0, "weight_decay": 0.0}, "no coupled L2"),
    "adagrad": (INVARIANT, {"eps": 0.0, "weight_decay": 0.0}, "g / sqrt(sum g**2)"),
    "adadelta": (
        NEITHER,
        {},
        "eps sets the units of the step, sqrt(acc + eps)/sqrt(v + eps)*g; with eps = 0 every "
        "step is 0",
    ),
    "lamb": (INVARIANT, {"eps": 0.0}, "Adam's direction + wd*p, then a scale-free ratio"),
    "lion": (INVARIANT, {}, "sign(c*m) = sign(m); decoupled decay"),
    "adafactor": (INVARIANT, {"eps": (0.0, 1e-3)}, "R, C, V ~ c**2; clipping is scale-free"),
    "adopt": (INVARIANT, {"eps": 0.0}, "g / sqrt(v_prev) is scale-free, so is the clip"),
    "lazy_adam": (INVARIANT, {"eps": 0.0}, "as Adam on the rows with a gradient"),
    "adamaxw": (INVARIANT, {"eps": 0.0}, "as Adamax, decay independent of g"),
    "lars": (INVARIANT, {"weight_decay": 0.0}, "c ||p|| g / ||g|| is scale-free, so is b"),
    "novograd": (INVARIANT, {"eps": 0.0, "weight_decay": 0.0}, "g / ||g|| per tensor"),
    "optimistic_adam": (INVARIANT, {"eps": 0.0}, "Adam's r, extrapolated linearly"),
    "schedule_free_adamw": (NEITHER, {}, "params held fixed: y - z does not scale with g"),
    "schedule_free_sgd": (NEITHER, {}, "params held fixed: y - z does not scale with g"),
    "sign_sgd": (INVARIANT, {}, "sign(c g) = sign(g)"),
    "signum": (INVARIANT, {}, "sign(c m) = sign(m)"),
    "laprop": (INVARIANT, {"eps": 0.0}, "g / sqrt(v^) is scale-free before the average"),
    "cautious_adamw": (INVARIANT, {"eps": 0.0}, "AdamW's is; the mask reads only signs"),
    "mars": (INVARIANT, {"eps": 0.0, "max_norm": None}, "c ~ c g unclipped; then AdamW's"),
    "adam_mini": (INVARIANT, {"eps": 0.0}, "v_B = mean(g**2) ~ c**2 per block"),
    "soap": (INVARIANT, {"eps": 0.0}, "L, R ~ c**2 keep their eigenvectors; V ~ c**2"),
    "prodigy": (
        INVARIANT,
        {"eps": 0.0, "weight_decay": 0.0},
        "m ~ c, v ~ c**2; params held fixed: <g, x_0 - x> = 0 and D stays",
    ),
    "dadapt_adamw": (
        NEITHER,
        {},
        "eps sets the unit of s / (sqrt(v) + eps) in D's numerator; with eps = 0 the first "
        "is 0/0 (s = v = 0), as in optax",
    ),
    "galore": (
        NEITHER,
        {},
        "the base Adam's eps (1e-8, not an option of galore) sets the units of m / sqrt(v)",
    ),
    "rprop": (INVARIANT, {}, "only the signs of g and of g * prev are read"),
    "asgd": (LINEAR, {"weight_decay": 0.0, "lambd": 0.0}, "plain SGD steps -eta*g"),
    "sm3": (INVARIANT, {"eps": 0.0}, "nu ~ c**2 (sums, mins and maxes of g**2): g / sqrt(nu)"),
    "madgrad": (NEITHER, {}, "s / cbrt(v) ~ c**(1/3)"),
    "acprop": (NEITHER, {}, "the first step g / (1 + eps) is linear in c, the later ones not"),
}
# Tolerance of the float32 comparison, relative to the leaf's largest update. Observed over
# 24 draws per row: <= 1.2e-6, and 8.8e-6 for RAdam with decoupled decay (d and wd*p cancel).
SCALING_RTOL = 5e-5


def test_scaling_table_covers_every_row():
    assert set(SCALING) == set(OPTIMIZERS)


def rectified(b2: float, t: int, threshold: float = 5.0) -> bool:
    """RAdam's switch, from the paper's formula in float64 (not from adamx)."""
    rho_inf = 2 / (1 - b2) - 1
    return rho_inf - 2 * t * b2**t / (1 - b2**t) > threshold


def times(x, factor):
    """``factor * x``, formed in float64 and rounded once to ``x``'s dtype."""
    return jnp.asarray(np.asarray(x, np.float64) * factor, x.dtype)


def scaled_run(name, specs, seed, c, steps):
    """The updates of every step for gradients g and c*g (float32), params held fixed."""
    _, overrides, _ = SCALING[name]
    opt = row(name).factory(**{**row(name).kwargs, **overrides})
    rng = np.random.default_rng(seed)
    params = draw(specs, rng)
    grads = [draw(specs, rng) for _ in range(steps)]
    runs = []
    for factor in (1.0, c):
        state, out = opt.init(params), []
        for g in grads:
            g = jax.tree.map(functools.partial(times, factor=factor), g)
            u, state = opt.update(g, state, params)
            out.append(u)
        runs.append(out)
    return runs


def expected_scaling(name, step: int) -> str | None:
    """What u(c g) must equal at ``step`` (1-based): ``invariant``, ``linear`` or None."""
    kind = SCALING[name][0]
    if kind != RECTIFIED:
        return kind
    if rectified(row(name).kwargs.get("b2", 0.999), step):
        return INVARIANT
    return None if "weight_decay" in row(name).kwargs else LINEAR


SCALING_ROWS = [n for n in ROWS if SCALING[n][0] != NEITHER]


def assert_scaled(name, plain, scaled, c, rtol):
    for step, (u1, uc) in enumerate(zip(plain, scaled), start=1):
        kind = expected_scaling(name, step)
        if kind is None:
            continue
        factor = c if kind == LINEAR else 1.0
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(u1), jax.tree.leaves(uc)):
            want = np.asarray(a, np.float64) * factor
            got = np.asarray(b, np.float64)
            scale = float(np.max(np.abs(want), initial=0.0))
            where = f"{name} ({kind}) step {step}, c={c!r}: updates{jax.tree_util.keystr(path)}"
            np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale, err_msg=where)


@pytest.mark.parametrize("name", SCALING_ROWS)
@settings(max_examples=EXAMPLES["scaling"], **SETTINGS)
@given(data=st.data(), seed=SEEDS, c=st.floats(1e-3, 1e3), steps=st.integers(1, 3))
def test_update_responds_to_scaled_gradients(name, data, seed, c, steps):
    specs = data.draw(tree_specs((jnp.float32,), salt=name))
    steps = 7 if SCALING[name][0] == RECTIFIED else steps  # RAdam rectifies from step 6
    plain, scaled = scaled_run(name, specs, seed, c, steps)
    assert_scaled(name, plain, scaled, c, SCALING_RTOL)


@pytest.mark.parametrize("name", SCALING_ROWS)
@settings(max_examples=EXAMPLES["exact"], **SETTINGS)
@given(data=st.data(), seed=SEEDS, k=st.integers(-20, 20))
def test_power_of_two_scaling_is_exact(name, data, seed, k):
    """Multiplying by 2**k commutes with every correctly rounded float operation (away
    from overflow and underflow), so the response to the scaling is exact, bit for bit."""
    specs = data.draw(tree_specs((jnp.float32,), salt=name))
    steps = 7 if SCALING[name][0] == RECTIFIED else 3
    plain, scaled = scaled_run(name, specs, seed, 2.0**k, steps)
    assert_scaled(name, plain, scaled, 2.0**k, 0.0)


def test_rectified_matches_the_rule():
    # RAdam with b2 = 0.99 takes 5 momentum steps, then rectifies (rho_6 = 5.88 > 5).
    assert [rectified(0.99, t) for t in range(1, 8)] == [False] * 5 + [True] * 2
    assert math.isclose(2 / (1 - 0.99) - 1, 199.0)


# ----------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("name", ROWS)
@settings(max_examples=EXAMPLES["eager"], **SETTINGS)
@given(data=st.data(), seed=SEEDS, steps=st.integers(1, 3))
def test_eager_runs_are_bitwise_repeatable(name, data, seed, steps):
    specs = data.draw(tree_specs(salt=name))
    rng = np.random.default_rng(seed)
    params = draw(specs, rng)
    grads = [draw(specs, rng) for _ in range(steps)]

    def run():
        opt = make(name)
        state, p, out = opt.init(params), params, []
        for g in grads:
            u, state = opt.update(g, state, p)
            p = optax.apply_updates(p, u)
            out.append((u, state))
        return out

    assert bits(run()) == bits(run())


FIXED = {
    "kernel": Spec((2, 3), jnp.float32),
    "misc": [Spec((3,), jnp.bfloat16), None, Spec((), jnp.float16)],
}
# The eager test above builds the optimizer afresh for each run, so it already fails on a
# recipe whose traced program changes between traces (Python-side state, draws at trace
# time). What a fresh jit adds is XLA's compilation: one row per kind of computation XLA
# could order differently (elementwise, norms, row/column sums, block means, cover maxima,
# matrix products in a loop, eigh / QR, SVD).
JIT_ROWS = ["adafactor", "adam", "adam_mini", "galore", "lamb", "muon", "sm3", "soap"]
JIT_STEPS = 3


def fresh_runner(name, traces: list):
    """A newly traced and compiled ``(params, grads[steps]) -> (params, updates, state)``."""
    opt = make(name)

    def body(carry, g):
        p, state = carry
        u, state = opt.update(g, state, p)
        return (optax.apply_updates(p, u), state), u

    def run(params, grads):
        traces.append(name)
        (params, state), updates = jax.lax.scan(body, (params, opt.init(params)), grads)
        return params, updates, state

    return jax.jit(run)


@functools.cache
def runners(name):
    traces = []
    pair = fresh_runner(name, traces), fresh_runner(name, traces)
    return pair, traces


@pytest.mark.parametrize("name", JIT_ROWS)
@settings(max_examples=EXAMPLES["jit"], **SETTINGS)
@given(seed=SEEDS)
def test_jitted_runs_are_bitwise_repeatable_across_fresh_jits(name, seed):
    rng = np.random.default_rng(seed)
    params = draw(FIXED, rng)
    grads = jax.tree.map(lambda *xs: jnp.stack(xs), *[draw(FIXED, rng) for _ in range(JIT_STEPS)])
    (first, second), traces = runners(name)
    a = first(params, grads)
    b = second(params, grads)
    again = first(params, grads)
    assert traces == [name, name]  # each runner traced (and compiled) once, separately
    assert bits(a) == bits(b) == bits(again)
