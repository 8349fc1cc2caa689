"""Numerical agreement of adamx.adam / adamx.adamw with an independent NumPy reference
(tests/reference.py, written from REFERENCE.md as PyTorch reads it) and with optax.

Every trajectory is compared after every step. float64 runs (under ``x64``) must agree to
1e-12 relatively; float32 runs are compared with the float64 reference fed the same
(float32-rounded) inputs; bfloat16 / float16 runs loosely, in norm.

float16 params keep their second moment in float32: in float16 it underflows for gradients
below ~0.1 (see test_float16_updates_near_reference_for_small_gradients).
"""

from __future__ import annotations

import decimal
import zlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference as ref
from trajectories import assert_trajectories_close, stack

import adamx

STEPS = 200
INT32_MAX = 2**31 - 1
LOSS_SINE = 0.3  # amplitude of the sine term of the test loss

# Tolerances (rtol, atol) on the params, per dtype of the run. The params reach |p| ~ 4,
# and a run may round each update differently from the reference: in float64 up to an ulp
# of p (4e-16 to 9e-16) a step, so ~1e-13 over 200 steps where p is near 0; in float32 a
# random walk of half-ulps, sqrt(200) * 2.4e-7 ~ 3.4e-6.
TOL = {
    "float64": (1e-12, 1e-13),
    "float32": (1e-5, 5e-6),
}


# ----------------------------------------------------------------------------- problems
def tree_of(leaves):
    """The test tree: nested dict / list / tuple, a matrix, a 3-D block, vectors and two
    0-d leaves (123 parameters)."""
    kernel, bias, block, vec, s1, s2 = leaves
    return {
        "dense": {"kernel": kernel, "bias": bias},
        "blocks": [block, (vec, s1)],
        "scale": s2,
    }


SHAPES = [(8, 6), (6,), (3, 4, 5), (7,), (), ()]
TREEDEF = jax.tree_util.tree_structure(tree_of([0] * len(SHAPES)))


def decay_mask(params):
    """Decay only the leaves with at least two dimensions (not biases, vectors, scalars)."""
    return jax.tree.map(lambda p: np.ndim(p) >= 2, params)


class Problem(NamedTuple):
    """Initial params, the constants of the loss, and a fixed sequence of gradients; every
    array holds values exactly representable in the run's dtype (as float64)."""

    params: Any
    consts: Any  # tree of (a, c, w): loss = a/2 (p - c)^2 + S sin(w p)
    grad_seq: list


def make_problem(seed: int, dtype, steps: int = STEPS) -> Problem:
    rng = np.random.default_rng(seed)

    def rounded(x):
        return np.asarray(np.asarray(x, np.float64).astype(dtype), np.float64)

    params, consts = [], []
    for shape in SHAPES:
        p = rng.normal(size=shape)
        a = rng.uniform(0.5, 2.0, size=shape)
        # The minimum is 3 to 5 away: gradients stay O(1) over the run, so Adam's
        # sign-like steps are well conditioned and float32 does not drift chaotically.
        c = p + rng.choice([-1.0, 1.0], size=shape) * rng.uniform(3.0, 5.0, size=shape)
        w = rng.uniform(0.5, 2.0, size=shape)
        params.append(rounded(p))
        consts.append((rounded(a), rounded(c), rounded(w)))
    scales = [10.0 ** rng.uniform(-2, 1) for _ in SHAPES]
    grad_seq = [
        tree_of([rounded(s * rng.normal(size=shape)) for s, shape in zip(scales, SHAPES)])
        for _ in range(steps)
    ]
    return Problem(tree_of(params), tree_of(consts), grad_seq)


def is_const(x):
    return isinstance(x, tuple) and len(x) == 3 and all(isinstance(y, np.ndarray) for y in x)


def np_grad(consts):
    """Gradient of the test loss, NumPy (float64)."""

    def grad(params):
        return jax.tree.map(
            lambda k, p: k[0] * (p - k[1]) + LOSS_SINE * k[2] * np.cos(k[2] * p),
            consts,
            params,
            is_leaf=is_const,
        )

    return grad


@jax.jit
def _loss_grad(params, consts):
    return jax.tree.map(
        lambda k, p: k[0] * (p - k[1]) + LOSS_SINE * k[2] * jnp.cos(k[2] * p),
        consts,
        params,
        is_leaf=lambda x: isinstance(x, tuple) and len(x) == 3,
    )


def jax_grad(consts, dtype):
    """Gradient of the test loss, JAX, in ``dtype`` (one compilation per dtype)."""
    consts = jax.tree.map(lambda x: jnp.asarray(np.asarray(x).astype(dtype)), consts)
    return lambda params: _loss_grad(params, consts)


def to_jax(tree, dtype):
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x).astype(dtype)), tree)


# ----------------------------------------------------------------------------- runners
_COMPILED: dict = {}


def jitted(key, make_opt):
    """``(opt, step)``: the optimizer ``make_opt()`` and its jitted step
    ``(params, state, grads) -> (params, state)``, made once per ``key`` for the module, so
    the runs of one case share a compilation per dtype."""
    if key not in _COMPILED:
        opt = make_opt()

        def step(p, s, g):
            updates, s = opt.update(g, s, p)
            return optax.apply_updates(p, updates), s

        _COMPILED[key] = (opt, jax.jit(step))
    return _COMPILED[key]


def run_jax(opt_step, params, grads, steps: int = STEPS, state=None):
    """Run ``(opt, step)`` from :func:`jitted`; ``grads`` is a function of the params or a
    sequence of gradient trees. Returns (params after every step, as NumPy; final state)."""
    opt, step = opt_step
    if state is None:
        state = opt.init(params)
    trajectory = []
    for i in range(steps):
        g = grads(params) if callable(grads) else grads[i]
        params, state = step(params, state, g)
        trajectory.append(params)
    return jax.device_get(trajectory), state


def flat(trajectory):
    """A list of trees -> one float64 array of shape (steps, number of parameters)."""
    return np.concatenate([x.reshape(len(trajectory), -1) for x in stack(trajectory)], axis=1)


def global_rel_error(got, want):
    """Per step, ``||got - want|| / ||want||`` over the whole tree."""
    g, w = flat(got), flat(want)
    return np.linalg.norm(g - w, axis=1) / np.linalg.norm(w, axis=1)


def distance_moved(params, trajectory):
    """``||p_end - p_0|| / ||p_0||`` over the whole tree."""
    return float(global_rel_error(trajectory[-1:], [params])[0])


# ----------------------------------------------------------------------------- cases
# (optimizer, case id, keyword arguments of adamx.<optimizer>).
CASES = [
    ("adam", "defaults", {}),
    ("adam", "b1=0", {"b1": 0.0}),
    ("adam", "b2=0.9999", {"b2": 0.9999}),
    ("adam", "eps=0", {"eps": 0.0}),
    ("adam", "eps_root", {"eps_root": 1e-1}),
    ("adam", "l2", {"weight_decay": 0.1}),
    ("adam", "linear_schedule", {"learning_rate": optax.linear_schedule(5e-3, 1e-4, 150)}),
    (
        "adam",
        "exp_decay+l2+betas",
        {
            "learning_rate": optax.exponential_decay(3e-3, 20, 0.7),
            "b1": 0.5,
            "b2": 0.99,
            "weight_decay": 1e-2,
        },
    ),
    ("adamw", "defaults", {}),
    ("adamw", "wd=0.5", {"learning_rate": 3e-3, "weight_decay": 0.5}),
    ("adamw", "mask", {"learning_rate": 3e-3, "weight_decay": 0.5, "mask": decay_mask}),
    (
        "adamw",
        "schedule+eps_root+b2",
        {
            "learning_rate": optax.linear_schedule(5e-3, 1e-4, 150),
            "weight_decay": 0.1,
            "eps_root": 1e-3,
            "b2": 0.9999,
        },
    ),
    ("adamw", "b1=0+eps=0", {"b1": 0.0, "eps": 0.0, "weight_decay": 0.1}),
]
CASE_IDS = [f"{name}-{case}" for name, case, _ in CASES]


def int32_schedule(schedule):
    """The schedule as the optimizer sees it: jitted, read at an int32 count.

    optax's schedules compute in float32 for an int32 count, even under x64, and jitted
    and eager float32 evaluations differ by ~1e-6; the float64 comparison must feed the
    reference the very values the optimizer used. (An off-by-one in the count, k = t
    instead of t - 1, still shows: it changes the rate by ~1e-2 per step.)"""
    if not callable(schedule):
        return schedule
    jitted = jax.jit(schedule)
    return lambda k: jitted(jnp.asarray(k, jnp.int32))


def reference_rule(name, kw, params, dtype=np.float64):
    """The NumPy rule for ``adamx.<name>(**kw)``."""
    kw = dict(kw)
    lr = int32_schedule(kw.pop("learning_rate", 1e-3))
    if name == "adam":
        return ref.Adam(lr=lr, dtype=dtype, **kw)
    mask = kw.pop("mask", None)
    if mask is not None:
        tree = mask(params) if callable(mask) else mask
        mask = [bool(x) for x in jax.tree_util.tree_leaves(tree)]
    return ref.AdamW(lr=lr, mask=mask, dtype=dtype, **kw)


def optax_equivalent(name, kw):
    """The same optimizer written with optax."""
    kw = dict(kw)
    lr = kw.pop("learning_rate", 1e-3)
    if name == "adam":
        wd = kw.pop("weight_decay", 0.0)
        adam = optax.adam(lr, **kw)
        return optax.chain(optax.add_decayed_weights(wd), adam) if wd else adam
    kw.setdefault("weight_decay", 1e-2)  # adamx's (PyTorch's) default; optax's is 1e-4
    return optax.adamw(lr, **kw)


@pytest.fixture(params=["float64", "float32"])
def dtype(request):
    if request.param == "float64":
        request.getfixturevalue("x64")
    return request.param


# ----------------------------------------------------------------------------- the reference
def test_reference_first_step_closed_form():
    """Step 1 has m^ = g and v^ = g^2: the reference must give p - lr * g / (|g| + eps)."""
    p = [np.array([0.5, -1.0, 2.0, 0.25]), np.array(3.0)]
    g = [np.array([0.1, -2.0, 0.0, 1e-3]), np.array(-0.5)]
    lr, wd, eps = 0.01, 0.1, 1e-3

    def sign_step(p, g):
        return [pi - lr * gi / (np.abs(gi) + eps) for pi, gi in zip(p, g)]

    decayed = [pi * (1 - lr * wd) for pi in p]
    coupled = [gi + wd * pi for pi, gi in zip(p, g)]
    for rule, want in [
        (ref.Adam(lr=lr, eps=eps), sign_step(p, g)),
        (ref.Adam(lr=lr, eps=eps, weight_decay=wd), sign_step(p, coupled)),
        (ref.AdamW(lr=lr, eps=eps, weight_decay=wd), sign_step(decayed, g)),
        (
            ref.AdamW(lr=lr, eps=eps, weight_decay=wd, mask=[False, True]),
            sign_step(p, g)[:1] + sign_step(decayed, g)[1:],
        ),
        (ref.Adam(lr=lambda k: 0.01 * (k + 1), eps=eps), sign_step(p, g)),  # read at k = 0
    ]:
        got, state = rule.step(p, g, rule.init(p), 1)
        for x, y in zip(got, want):
            assert x.shape == y.shape
            np.testing.assert_allclose(x, y, rtol=1e-15, atol=1e-17)
    rule = ref.Adam(lr=lr, eps=eps, dtype=np.float32)
    got, state = rule.step(p, g, rule.init(p), 1)
    assert all(x.dtype == np.float32 for x in [*got, *state.m, *state.v])
    for x, y in zip(got, sign_step(p, g)):
        np.testing.assert_allclose(x, y, rtol=1e-6)


# ----------------------------------------------------------------------------- trajectories
@pytest.mark.parametrize("grad_kind", ["loss", "sequence"])
@pytest.mark.parametrize(("name", "case", "kw"), CASES, ids=CASE_IDS)
def test_trajectory_matches_reference(name, case, kw, grad_kind, dtype):
    prob = make_problem(seed=zlib.crc32(f"{name}-{case}-{grad_kind}".encode()), dtype=dtype)
    rtol, atol = TOL[dtype]
    if grad_kind == "loss":
        np_grads, jax_grads = np_grad(prob.consts), jax_grad(prob.consts, dtype)
    else:
        np_grads = prob.grad_seq
        jax_grads = [to_jax(g, dtype) for g in prob.grad_seq]

    want = ref.run_numpy(reference_rule(name, kw, prob.params), prob.params, np_grads, STEPS)
    opt_step = jitted((name, case), lambda: getattr(adamx, name)(**kw))
    got, _ = run_jax(opt_step, to_jax(prob.params, dtype), jax_grads)

    assert all(leaf.dtype == np.dtype(dtype) for leaf in jax.tree_util.tree_leaves(got[-1]))
    # The run must move the params, or agreeing would prove little.
    assert distance_moved(prob.params, want) > 1e-2
    assert_trajectories_close(got, want, rtol, atol)


@pytest.mark.parametrize(("name", "case", "kw"), CASES, ids=CASE_IDS)
def test_matches_optax(name, case, kw, dtype):
    prob = make_problem(seed=zlib.crc32(f"optax-{name}-{case}".encode()), dtype=dtype)
    rtol, atol = TOL[dtype]
    grads = jax_grad(prob.consts, dtype)
    params = to_jax(prob.params, dtype)
    got, _ = run_jax(jitted((name, case), lambda: getattr(adamx, name)(**kw)), params, grads)
    # optax does not run under strict dtype promotion (``decay ** count``).
    with jax.numpy_dtype_promotion("standard"):
        opt_step = jitted(("optax", name, case), lambda: optax_equivalent(name, kw))
        want, _ = run_jax(opt_step, params, grads)
    if dtype == "float32" and kw.get("b2") == 0.9999:
        # optax forms 1 - b2**t in float32, where 1 - float32(0.9999) is 1.7e-4 off
        # relatively: its params drift ~3e-5 from the float64 reference (adamx's ~2e-6).
        atol = 1e-4
    assert_trajectories_close(got, want, rtol, atol)


# ----------------------------------------------------------------------------- bias correction
BC_DECAYS = [0.0, 0.5, 0.9, 0.999, 0.9999, 0.99999]
BC_COUNTS = [1, 2, 10, 1000, 10**5, 10**7, INT32_MAX]


def exact_bias_correction(decay: float, t: int) -> float:
    """``1 - decay**t`` for the double ``decay``, in 60-digit decimal arithmetic."""
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        return float(1 - decimal.Decimal(decay) ** t)


@pytest.mark.parametrize("decay", BC_DECAYS)
def test_bias_correction_float32_accurate(decay):
    counts = jnp.asarray(BC_COUNTS, jnp.int32)
    got = np.asarray(jax.jit(lambda c: adamx.bias_correction(decay, c))(counts))
    assert got.dtype == np.float32
    want = np.array([exact_bias_correction(decay, t) for t in BC_COUNTS])
    # A few float32 ulp (2**-24 = 6e-8 relative each).
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=4e-7, atol=0)


def test_naive_float32_bias_correction_fails_the_same_check():
    """The check above can fail: ``1 - float32(0.999)**t`` loses the digits of 0.999."""
    t = jnp.asarray(BC_COUNTS, jnp.int32)
    naive = np.asarray(1 - jnp.float32(0.999) ** t.astype(jnp.float32), np.float64)
    want = np.array([exact_bias_correction(0.999, int(k)) for k in BC_COUNTS])
    rel = np.abs(naive - want) / want
    assert rel[0] > 1e-5  # 1.3e-5 at t = 1, some 30 times the tolerance above
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(naive, want, rtol=4e-7)


@pytest.mark.parametrize("decay", BC_DECAYS)
def test_bias_correction_float64_accurate(decay, x64):
    counts = jnp.asarray(BC_COUNTS, jnp.int32)
    got = np.asarray(jax.jit(lambda c: adamx.bias_correction(decay, c))(counts))
    assert got.dtype == np.float64
    want = np.array([exact_bias_correction(decay, t) for t in BC_COUNTS])
    np.testing.assert_allclose(got, want, rtol=2e-15, atol=0)


# ----------------------------------------------------------------------------- low precision
LOW = {"bfloat16": jnp.bfloat16, "float16": jnp.float16}


@pytest.mark.parametrize("dtype_name", list(LOW))
def test_first_step_is_a_sign_step_in_low_precision(dtype_name):
    dtype = LOW[dtype_name]
    rng = np.random.default_rng(7)
    lr = 1e-3
    leaves = []
    for shape in SHAPES:
        g = rng.choice([-1.0, 1.0], size=shape) * 10.0 ** rng.uniform(-2, 1, size=shape)
        leaves.append(np.where(rng.uniform(size=shape) < 0.2, 0.0, g))  # some exact zeros
    grads = to_jax(tree_of(leaves), dtype)
    params = to_jax(make_problem(0, np.float32, steps=0).params, dtype)

    opt = adamx.adam(lr)
    updates, state = jax.jit(opt.update)(grads, opt.init(params), params)
    new_params = optax.apply_updates(params, updates)

    for tree in (updates, new_params):
        assert all(x.dtype == dtype for x in jax.tree_util.tree_leaves(tree))
    for u, g in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(grads)):
        u = np.asarray(u, np.float64)
        assert np.all(np.isfinite(u))
        # m^ = g and v^ = g^2 on step 1, so the step is -lr * sign(g), rounded once to dtype.
        want = -lr * np.sign(np.asarray(g, np.float64))
        np.testing.assert_allclose(u, want, rtol=float(jnp.finfo(dtype).eps), atol=0)
    # In the params' own dtype the naive correction is 0 (0.999 rounds to 1 in bfloat16),
    # and m / bc would be inf or nan.
    if dtype == jnp.bfloat16:
        assert float(1 - jnp.asarray(0.999, dtype) ** 1) == 0.0


# Largest ||p - p_ref|| / ||p_ref|| over the tree allowed along a 50-step run at lr 0.1.
# Round-to-nearest of the params alone costs up to 2**-8 (bfloat16) or 2**-11 (float16) of
# |p| a step; observed over 12 seeds: <= 1.25e-2 (bfloat16), <= 1.7e-3 (float16).
LOW_TRAJECTORY_TOL = {"bfloat16": 2e-2, "float16": 4e-3}


@pytest.mark.parametrize("grad_kind", ["loss", "sequence"])
@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize("dtype_name", list(LOW))
def test_low_precision_trajectory_near_reference(dtype_name, name, grad_kind):
    steps, dtype = 50, LOW[dtype_name]
    # Steps of 0.1 are well above the spacing of bfloat16 near |p| ~ 1 (2**-7); at 1e-3
    # the params would not move at all.
    kw = {"learning_rate": 1e-1}
    prob = make_problem(seed=11, dtype=dtype, steps=steps)
    if grad_kind == "loss":
        np_grads, jax_grads = np_grad(prob.consts), jax_grad(prob.consts, dtype)
    else:
        np_grads, jax_grads = prob.grad_seq, [to_jax(g, dtype) for g in prob.grad_seq]

    want = ref.run_numpy(reference_rule(name, kw, prob.params), prob.params, np_grads, steps)
    opt_step = jitted((name, "lr=0.1"), lambda: getattr(adamx, name)(**kw))
    got, _ = run_jax(opt_step, to_jax(prob.params, dtype), jax_grads, steps)

    assert all(x.dtype == dtype for x in jax.tree_util.tree_leaves(got[-1]))
    assert np.all(np.isfinite(flat(got)))
    assert distance_moved(prob.params, want) > 0.5
    err = global_rel_error(got, want)
    assert np.max(err) <= LOW_TRAJECTORY_TOL[dtype_name], (int(np.argmax(err)) + 1, err.max())


def float16_update_error(grad_scale: float, steps: int = 50) -> float:
    """Largest |u - u_ref| / max|u_ref| of adam(1e-2) updates on float16 params fed
    gradients of size ``grad_scale``."""
    rng = np.random.default_rng(5)
    size, lr = 100, 1e-2
    grads = [rng.normal(size=size) * grad_scale for _ in range(steps)]
    grads = [np.asarray(g.astype(np.float16), np.float64) for g in grads]
    opt = adamx.adam(lr)
    update = jax.jit(opt.update)
    state = opt.init(jnp.zeros(size, jnp.float16))
    rule = ref.Adam(lr=lr)
    rstate = rule.init([np.zeros(size)])
    worst = 0.0
    for t, g in enumerate(grads, start=1):
        u, state = update(jnp.asarray(g.astype(np.float16)), state)
        (u_ref,), rstate = rule.step([np.zeros(size)], [g], rstate, t)  # from p = 0: the update
        err = np.max(np.abs(np.asarray(u, np.float64) - u_ref)) / np.max(np.abs(u_ref))
        worst = max(worst, float(err))
    return worst


def test_float16_updates_near_reference_for_ordinary_gradients():
    assert float16_update_error(grad_scale=0.3) < 0.05


@pytest.mark.parametrize("grad_scale", [1e-2, 1e-3])
def test_float16_updates_near_reference_for_small_gradients(grad_scale):
    assert float16_update_error(grad_scale) < 0.05


# ----------------------------------------------------------------------------- large counts
def set_counts(state, count):
    """Set the step count of every MomentsState (and ScheduleState) inside a chain state."""
    found = []

    def replace(s):
        if isinstance(s, (adamx.MomentsState, adamx.ScheduleState)):
            found.append(type(s))
            return s._replace(count=jnp.asarray(count, jnp.int32))
        return s

    is_node = lambda s: isinstance(s, (adamx.MomentsState, adamx.ScheduleState))  # noqa: E731
    state = jax.tree.map(replace, state, is_leaf=is_node)
    assert adamx.MomentsState in found
    return state


def set_moments(state, mu, nu):
    def replace(s):
        return s._replace(mu=mu, nu=nu) if isinstance(s, adamx.MomentsState) else s

    return jax.tree.map(replace, state, is_leaf=lambda s: isinstance(s, adamx.MomentsState))


def step_counts(state):
    """The counts of every MomentsState and ScheduleState inside a chain state."""
    return [
        int(s.count)
        for s in jax.tree_util.tree_leaves(
            state, is_leaf=lambda s: isinstance(s, (adamx.MomentsState, adamx.ScheduleState))
        )
        if isinstance(s, (adamx.MomentsState, adamx.ScheduleState))
    ]


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("adam", {}),
        ("adam", {"b2": 0.9999, "weight_decay": 0.1}),
        ("adamw", {"weight_decay": 0.1, "learning_rate": optax.linear_schedule(1e-2, 1e-3, 100)}),
    ],
    ids=["adam", "adam-l2", "adamw-schedule"],
)
def test_count_saturates_at_int32_max(name, kw, dtype):
    prob = make_problem(seed=3, dtype=dtype, steps=2)
    rng = np.random.default_rng(4)
    rounded = lambda x: np.asarray(np.asarray(x).astype(dtype), np.float64)  # noqa: E731
    mu = tree_of([rounded(rng.normal(size=s)) for s in SHAPES])
    nu = tree_of([rounded(rng.uniform(0.1, 2.0, size=s)) for s in SHAPES])

    opt_step = jitted((name, "count", repr(kw)), lambda: getattr(adamx, name)(**kw))
    params = to_jax(prob.params, dtype)
    state = opt_step[0].init(params)
    state = set_moments(state, to_jax(mu, dtype), to_jax(nu, dtype))
    state = set_counts(state, INT32_MAX - 1)
    grads = [to_jax(g, dtype) for g in prob.grad_seq]
    got, state = run_jax(opt_step, params, grads, 2, state=state)

    assert step_counts(state) and all(c == INT32_MAX for c in step_counts(state))
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(got))

    # Reference: t = 2**31 - 1 on both steps (the count saturates), so bc1 = bc2 = 1; the
    # schedule (constant by then) is read at k = t - 1.
    rule = reference_rule(name, kw, prob.params)
    leaves = jax.tree_util.tree_leaves
    rstate = ref.AdamState(m=leaves(mu), v=leaves(nu))
    p = leaves(prob.params)
    want = []
    for g in prob.grad_seq:
        assert ref.bias_correction(rule.b2, INT32_MAX) == 1.0
        p, rstate = rule.step(p, leaves(g), rstate, INT32_MAX)
        want.append(jax.tree_util.tree_unflatten(TREEDEF, p))
    rtol, atol = TOL[dtype]
    assert_trajectories_close(got, want, rtol, atol)
