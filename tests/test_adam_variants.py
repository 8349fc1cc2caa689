"""Adam's relatives (AMSGrad, Adamax, NAdam, NAdamW, RAdam, AdaBelief, Yogi; Adam's
``nesterov`` and ``maximize``) against an independent NumPy reference
(tests/reference_adam_variants.py), torch.optim, and the optax equivalences of issue 3.

Trajectories are 100 steps on a small pytree with gradients of a quadratic + sine loss at
the current params; float64 runs (``x64``) must agree to 1e-10 relatively after every step.
"""

from __future__ import annotations

import contextlib
import decimal
import functools
import inspect
import math
import zlib
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference_adam_variants as ref
from trajectories import assert_trajectories_close as _assert_close
from trajectories import max_rel_error, stack

from adamx.blocks._base import Moments
from adamx.blocks._rules import NesterovState, normalize_rectified, sma_length
from adamx.optimizers._adam import adam, adamw
from adamx.optimizers._variants import adamax, amsgrad, nadam, nadamw
from adamx.optimizers._variants_nu import adabelief, radam, yogi

ALIASES = {
    "adam": adam,
    "adamw": adamw,
    "amsgrad": amsgrad,
    "adamax": adamax,
    "nadam": nadam,
    "nadamw": nadamw,
    "radam": radam,
    "adabelief": adabelief,
    "yogi": yogi,
}
STEPS = 100
RTOL = 1e-10
assert_trajectories_close = functools.partial(_assert_close, rtol=RTOL)


# ----------------------------------------------------------------------------- the problem
SHAPES = [(4, 3), (3,), (2, 2, 2), ()]


def tree_of(leaves):
    kernel, bias, block, scalar = leaves
    return {"dense": {"kernel": kernel, "bias": bias}, "blocks": [block, (scalar,)]}


TREEDEF = jax.tree_util.tree_structure(tree_of([0] * len(SHAPES)))
ORDER = jax.tree_util.tree_leaves(tree_of(list(range(len(SHAPES)))))  # SHAPES index per leaf


def make_problem(seed):
    """Initial params (a tree) and per-leaf constants ``(s, a, c, w)`` of the loss
    ``s * (a/2 (p - c)**2 + 0.3 sin(w p))``: the minimum is 3 to 5 away and the leaves'
    gradient scales span 1e-2 to 10."""
    rng = np.random.default_rng(seed)
    params, consts = [], []
    for shape in SHAPES:
        p = rng.normal(size=shape)
        c = p + rng.choice([-1.0, 1.0], size=shape) * rng.uniform(3.0, 5.0, size=shape)
        consts.append(
            (
                10.0 ** rng.uniform(-2, 1),
                rng.uniform(0.5, 2.0, shape),
                c,
                rng.uniform(0.5, 2, shape),
            )
        )
        params.append(p)
    return tree_of(params), [consts[i] for i in ORDER]  # consts in the order of the leaves


def grad_fn(consts, xp):
    """The loss gradient for NumPy (``xp=np``) or JAX (``xp=jnp``) params trees."""

    def grad(params):
        leaves = jax.tree_util.tree_leaves(params)
        return jax.tree_util.tree_unflatten(
            TREEDEF,
            [
                s * (a * (p - c) + 0.3 * w * xp.cos(w * p))
                for (s, a, c, w), p in zip(consts, leaves)
            ],
        )

    return grad


def decay_mask(params):
    """Decay only leaves with at least two dimensions."""
    return jax.tree.map(lambda p: np.ndim(p) >= 2, params)


def cosine(k):
    """A float64 schedule (runs under ``x64``), read at ``k = t - 1``."""
    return 5e-3 * (1 + jnp.cos(jnp.pi * k.astype(jnp.float64) / 150)) / 2


# ----------------------------------------------------------------------------- cases
# (alias, case id, keyword arguments of the alias)
CASES = [
    ("adam", "nesterov", {"nesterov": True}),
    ("adam", "nesterov+eps_root+b1", {"nesterov": True, "eps_root": 1e-3, "b1": 0.5}),
    ("adam", "maximize", {"maximize": True}),
    ("adam", "maximize+l2", {"maximize": True, "weight_decay": 0.1}),
    ("adam", "maximize+l2+nesterov", {"maximize": True, "weight_decay": 0.1, "nesterov": True}),
    ("adamw", "maximize", {"maximize": True, "weight_decay": 0.5}),
    ("amsgrad", "defaults", {}),
    ("amsgrad", "lr", {"learning_rate": 5e-2}),
    ("amsgrad", "l2+b2", {"learning_rate": 5e-2, "weight_decay": 0.1, "b2": 0.9}),
    ("amsgrad", "maximize", {"learning_rate": 5e-2, "maximize": True}),
    ("amsgrad", "schedule", {"learning_rate": cosine}),
    ("adamax", "defaults", {}),
    ("adamax", "eps+b2", {"learning_rate": 2e-2, "eps": 1e-1, "b2": 0.9}),
    ("adamax", "l2", {"weight_decay": 0.1}),
    ("adamax", "maximize+b1=0", {"maximize": True, "b1": 0.0}),
    ("nadam", "defaults", {}),
    ("nadam", "psi=0.5", {"momentum_decay": 0.5}),
    ("nadam", "psi=0+b1", {"momentum_decay": 0.0, "b1": 0.6}),
    ("nadam", "psi=None", {"momentum_decay": None}),
    ("nadam", "l2", {"weight_decay": 0.1}),
    ("nadam", "maximize+schedule", {"maximize": True, "learning_rate": cosine}),
    ("nadamw", "defaults", {}),
    ("nadamw", "wd", {"learning_rate": 1e-2, "weight_decay": 0.5}),
    ("nadamw", "mask", {"weight_decay": 0.5, "mask": decay_mask}),
    ("nadamw", "maximize+psi=None", {"maximize": True, "momentum_decay": None}),
    ("radam", "defaults", {}),
    ("radam", "b2=0.99", {"b2": 0.99, "learning_rate": 1e-2}),
    ("radam", "threshold=20", {"threshold": 20.0, "learning_rate": 1e-2}),
    ("radam", "eps", {"eps": 1e-2}),
    ("radam", "l2", {"weight_decay": 0.1}),
    ("radam", "decoupled", {"weight_decay": 0.5, "decoupled_weight_decay": True}),
    ("radam", "maximize+schedule", {"maximize": True, "learning_rate": cosine}),
    (
        "radam",
        "maximize+decoupled",
        {"maximize": True, "weight_decay": 0.5, "decoupled_weight_decay": True},
    ),
    ("adabelief", "defaults", {}),
    ("adabelief", "eps", {"eps": 1e-4, "learning_rate": 1e-2}),
    ("adabelief", "eps_root", {"eps": 1e-4, "eps_root": 1e-10}),
    ("adabelief", "l2+b", {"weight_decay": 0.1, "b1": 0.5, "b2": 0.99}),
    ("yogi", "defaults", {}),
    ("yogi", "v0=0+b2", {"initial_accumulator_value": 0.0, "b2": 0.9}),
    ("yogi", "v0=1+eps", {"initial_accumulator_value": 1.0, "eps": 1e-8}),
    ("yogi", "schedule", {"learning_rate": cosine}),
]
IDS = [f"{name}-{case}" for name, case, _ in CASES]


def reference_rule(name, kw, params):
    """The NumPy rule for ``<name>(**kw)``: adamx's argument names mapped to the reference's;
    the defaults are the reference's own."""
    kw = dict(kw)
    renames = {
        "learning_rate": "lr",
        "momentum_decay": "psi",
        "initial_accumulator_value": "v0",
        "decoupled_weight_decay": "decoupled",
    }
    kw = {renames.get(k, k): v for k, v in kw.items()}
    if callable(kw.get("lr")):
        jitted = jax.jit(kw["lr"])
        kw["lr"] = lambda k: jitted(jnp.asarray(k, jnp.int32))
    if callable(kw.get("mask")):
        kw["mask"] = [bool(m) for m in jax.tree_util.tree_leaves(kw["mask"](params))]
    if name in ("adamw", "nadamw"):
        kw = {"weight_decay": 1e-2, "decoupled": True, **kw}
    rule = {
        "adam": ref.Adam,
        "adamw": ref.Adam,
        "amsgrad": lambda **k: ref.Adam(amsgrad=True, **k),
        "adamax": ref.Adamax,
        "nadam": ref.NAdam,
        "nadamw": ref.NAdam,
        "radam": ref.RAdam,
        "adabelief": ref.AdaBelief,
        "yogi": ref.Yogi,
    }[name]
    return rule(**kw)


def run_jax(opt, params, grad, steps=STEPS):
    """Run ``opt`` with one jitted step; return the params after every step (NumPy)."""

    @jax.jit
    def step(p, s):
        updates, s = opt.update(grad(p), s, p)
        return optax.apply_updates(p, updates), s

    state = opt.init(params)
    trajectory = []
    for _ in range(steps):
        params, state = step(params, state)
        trajectory.append(params)
    return jax.device_get(trajectory)


_JAX_RUNS: dict[str, Any] = {}


def jax_trajectory(name, case, kw):
    """The float64 adamx trajectory of a case (run once, shared by the tests)."""
    key = f"{name}-{case}"
    if key not in _JAX_RUNS:
        params, consts = make_problem(zlib.crc32(key.encode()))
        params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
        _JAX_RUNS[key] = run_jax(ALIASES[name](**kw), params, grad_fn(consts, jnp))
    return _JAX_RUNS[key]


# ----------------------------------------------------------------------------- vs NumPy
@pytest.mark.parametrize(("name", "case", "kw"), CASES, ids=IDS)
def test_trajectory_matches_numpy_reference(name, case, kw, x64):
    params, consts = make_problem(zlib.crc32(f"{name}-{case}".encode()))
    want = ref.run(reference_rule(name, kw, params), params, grad_fn(consts, np), STEPS)
    got = jax_trajectory(name, case, kw)
    assert all(x.dtype == np.float64 for x in jax.tree_util.tree_leaves(got[-1]))
    assert max_rel_error([params], [want[-1]]) > 1e-3, "the run barely moved the params"
    assert_trajectories_close(got, want)


@pytest.mark.parametrize(
    ("name", "kw", "other"),
    [
        ("amsgrad", {"learning_rate": 5e-2}, ref.Adam(lr=5e-2)),
        ("radam", {"threshold": 20.0, "learning_rate": 1e-2}, ref.RAdam(lr=1e-2)),
        ("nadam", {"momentum_decay": 0.5}, ref.NAdam(psi=None)),
        ("adabelief", {"eps": 1e-4, "eps_root": 1e-10}, ref.AdaBelief(eps=1e-4)),
        ("yogi", {"initial_accumulator_value": 1.0, "eps": 1e-8}, ref.Yogi(v0=1e-6, eps=1e-8)),
    ],
    ids=["amsgrad-vs-adam", "radam-threshold", "nadam-schedule", "adabelief-eps_root", "yogi-v0"],
)
def test_options_make_a_difference(name, kw, other, x64):
    """The cases above could fail: the neighbouring rule gives another trajectory."""
    case = next(c for n, c, k in CASES if n == name and k == kw)
    params, consts = make_problem(zlib.crc32(f"{name}-{case}".encode()))
    neighbour = ref.run(other, params, grad_fn(consts, np), STEPS)
    assert max_rel_error(jax_trajectory(name, case, kw), neighbour) > 1e-6


# ----------------------------------------------------------------------------- vs torch
def has_torch_twin(name, kw):
    """Whether ``torch.optim`` has ``<name>(**kw)``: no AdaBelief, Yogi, Adam(nesterov),
    scheduleless NAdam, or RAdam threshold other than 5."""
    if name in ("adabelief", "yogi") or kw.get("nesterov") or kw.get("threshold", 5.0) != 5.0:
        return False
    return "momentum_decay" not in kw or kw["momentum_decay"] is not None


def torch_optimizer(torch, name, kw, tensors, params):
    """``torch.optim`` for ``<name>(**kw)`` (single-tensor code path)."""
    kw = dict(kw)
    kw.pop("threshold", None)  # 5.0, fixed in torch
    defaults = {"adamax": 2e-3, "nadam": 2e-3, "nadamw": 2e-3}
    lr = kw.pop("learning_rate", defaults.get(name, 1e-3))
    args = {
        "lr": lr if not callable(lr) else 0.0,
        "betas": (kw.pop("b1", 0.9), kw.pop("b2", 0.999)),
        "eps": kw.pop("eps", 1e-8),
        "maximize": kw.pop("maximize", False),
        "foreach": False,
    }
    wd = kw.pop("weight_decay", 1e-2 if name in ("adamw", "nadamw") else 0.0)
    mask = kw.pop("mask", None)
    if "momentum_decay" in kw:
        args["momentum_decay"] = kw.pop("momentum_decay")
    if name == "radam":
        args["decoupled_weight_decay"] = kw.pop("decoupled_weight_decay", False)
    if name == "nadamw":
        args["decoupled_weight_decay"] = True
    assert not kw, f"unmapped options {kw}"
    cls = {
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "amsgrad": lambda groups, **a: torch.optim.Adam(groups, amsgrad=True, **a),
        "adamax": torch.optim.Adamax,
        "nadam": torch.optim.NAdam,
        "nadamw": torch.optim.NAdam,
        "radam": torch.optim.RAdam,
    }[name]
    keep = [True] * len(tensors)
    if mask is not None:
        keep = [bool(m) for m in jax.tree_util.tree_leaves(mask(params))]
    groups = [{"params": [t], "weight_decay": wd if k else 0.0} for t, k in zip(tensors, keep)]
    return cls(groups, **args)


@contextlib.contextmanager
def torch_float64(torch):
    """float64 default dtype: NAdam's ``mu_product`` and the step counts become float64."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def run_torch(torch, name, kw, params, grad):
    leaves = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(params)]
    tensors = [torch.tensor(x, dtype=torch.float64) for x in leaves]
    with torch_float64(torch):
        opt = torch_optimizer(torch, name, kw, tensors, params)
        schedule = kw.get("learning_rate")
        schedule = jax.jit(schedule) if callable(schedule) else None
        trajectory = []
        for t in range(1, STEPS + 1):
            current = jax.tree_util.tree_unflatten(
                TREEDEF, [x.detach().numpy().copy() for x in tensors]
            )
            for x, g in zip(tensors, jax.tree_util.tree_leaves(grad(current))):
                x.grad = torch.tensor(np.asarray(g, np.float64))
            if schedule is not None:
                lr = float(schedule(jnp.asarray(t - 1, jnp.int32)))
                for group in opt.param_groups:
                    group["lr"] = lr
            opt.step()
            trajectory.append(
                jax.tree_util.tree_unflatten(TREEDEF, [x.detach().numpy().copy() for x in tensors])
            )
    return trajectory


TORCH_CASES = [(n, c, k) for n, c, k in CASES if has_torch_twin(n, k)]


@pytest.mark.parametrize(
    ("name", "case", "kw"), TORCH_CASES, ids=[f"{n}-{c}" for n, c, _ in TORCH_CASES]
)
def test_trajectory_matches_torch(name, case, kw, x64):
    torch = pytest.importorskip("torch")
    params, consts = make_problem(zlib.crc32(f"{name}-{case}".encode()))
    want = run_torch(torch, name, kw, params, grad_fn(consts, np))
    assert_trajectories_close(jax_trajectory(name, case, kw), want)


# ----------------------------------------------------------------------------- float32
@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("amsgrad", {"learning_rate": 5e-2}),
        ("adamax", {}),
        ("nadam", {}),
        ("radam", {"b2": 0.99, "learning_rate": 1e-2}),
        ("adabelief", {}),
        ("yogi", {}),
        ("adam", {"nesterov": True}),
    ],
    ids=["amsgrad", "adamax", "nadam", "radam", "adabelief", "yogi", "adam-nesterov"],
)
def test_float32_trajectory_near_reference(name, kw):
    params, consts = make_problem(zlib.crc32(f"f32-{name}".encode()))
    params = jax.tree.map(lambda x: np.asarray(np.float32(x), np.float64), params)
    consts = [tuple(np.asarray(np.float32(x), np.float64) for x in c) for c in consts]
    want = ref.run(reference_rule(name, kw, params), params, grad_fn(consts, np), STEPS)
    consts32 = [tuple(jnp.asarray(x, jnp.float32) for x in c) for c in consts]
    params32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    got = run_jax(ALIASES[name](**kw), params32, grad_fn(consts32, jnp))
    assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(got[-1]))
    assert_trajectories_close(got, want, rtol=2e-5, atol=1e-6)


# ----------------------------------------------------------------------------- vs optax
def assert_same_as_optax(opt, other, seed="optax", steps=STEPS, other_state=None):
    params, consts = make_problem(zlib.crc32(seed.encode()))
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
    grad = grad_fn(consts, jnp)
    got = run_jax(opt, params, grad, steps)
    with jax.numpy_dtype_promotion("standard"):  # optax mixes int32 counts and floats
        if other_state is not None:
            inner = other
            other = optax.GradientTransformation(lambda p: other_state(inner.init(p)), inner.update)
        want = run_jax(other, params, grad, steps)
    return got, want


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (lambda: adam(1e-2, nesterov=True), lambda: optax.adam(1e-2, nesterov=True)),
        (
            lambda: adam(1e-2, b1=0.5, eps_root=1e-4, nesterov=True),
            lambda: optax.adam(1e-2, b1=0.5, eps_root=1e-4, nesterov=True),
        ),
        (lambda: nadam(1e-2, momentum_decay=None), lambda: optax.nadam(1e-2)),
        (lambda: nadam(momentum_decay=None, b2=0.9), lambda: optax.nadam(2e-3, b2=0.9)),
        (
            lambda: nadamw(1e-2, momentum_decay=None),
            lambda: optax.nadamw(1e-2, weight_decay=1e-2),
        ),
        (lambda: adamax(1e-2), lambda: optax.adamax(1e-2)),
        (lambda: adamax(eps=1e-1, b2=0.9), lambda: optax.adamax(2e-3, eps=1e-1, b2=0.9)),
        (lambda: adabelief(1e-2), lambda: optax.adabelief(1e-2)),
        (
            lambda: adabelief(1e-2, eps=1e-4, eps_root=1e-16),
            lambda: optax.adabelief(1e-2, eps=1e-4),
        ),
        (lambda: radam(1e-2, eps=0.0), lambda: optax.radam(1e-2, eps=0.0)),
        (lambda: radam(1e-2, eps=0.0, b2=0.99), lambda: optax.radam(1e-2, eps=0.0, b2=0.99)),
    ],
    ids=[
        "adam-nesterov",
        "adam-nesterov-options",
        "nadam-none",
        "nadam-none-b2",
        "nadamw-none",
        "adamax",
        "adamax-eps",
        "adabelief",
        "adabelief-eps_root",
        "radam-eps0",
        "radam-eps0-b2",
    ],
)
def test_equals_optax(ours, theirs, x64):
    got, want = assert_same_as_optax(ours(), theirs())
    assert_trajectories_close(got, want)


def test_yogi_equals_optax_with_a_zero_first_moment(x64):
    """optax.yogi starts m at initial_accumulator_value too; with m = 0 the rules agree."""

    def zero_mu(state):  # optax.yogi is chain(scale_by_yogi, scale_by_learning_rate)
        first, *rest = state
        return (first._replace(mu=jax.tree.map(jnp.zeros_like, first.mu)), *rest)

    got, want = assert_same_as_optax(yogi(), optax.yogi(1e-2), other_state=zero_mu)
    assert_trajectories_close(got, want)
    _, as_is = assert_same_as_optax(yogi(), optax.yogi(1e-2))
    assert max_rel_error(got, as_is) > 1e-10


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (lambda: amsgrad(5e-2), lambda: optax.amsgrad(5e-2)),
        (lambda: radam(1e-2, eps=1e-3), lambda: optax.radam(1e-2, eps=1e-3)),
        (lambda: nadam(1e-2), lambda: optax.nadam(1e-2)),
        (lambda: adabelief(1e-2, eps=1e-4), lambda: optax.adabelief(1e-2, eps=1e-4)),
    ],
    ids=["amsgrad", "radam-eps", "nadam-schedule", "adabelief-eps"],
)
def test_documented_differences_from_optax(ours, theirs, x64):
    got, want = assert_same_as_optax(ours(), theirs())
    assert max_rel_error(got, want) > 1e-8


def test_amsgrad_is_adam_while_v_never_decreases(x64):
    """With |g| non-decreasing, v never decreases, its running max is v: AMSGrad is Adam
    (bit for bit). With shrinking gradients the two part."""
    params, consts = make_problem(1)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
    rng = np.random.default_rng(2)
    base = tree_of([rng.normal(size=s) for s in SHAPES])

    def run(opt, growth):
        def body(carry, factor):
            p, state = carry
            g = jax.tree.map(lambda b: jnp.asarray(b, jnp.float64) * factor, base)
            u, state = opt.update(g, state, p)
            p = optax.apply_updates(p, u)
            return (p, state), p

        factors = jnp.asarray(growth ** np.arange(50), jnp.float64)
        _, out = jax.jit(lambda c: jax.lax.scan(body, c, factors))((params, opt.init(params)))
        return [jax.tree.map(lambda x, i=i: np.asarray(x[i]), out) for i in range(50)]

    for leaves in zip(*(stack(run(o, 1.01)) for o in (amsgrad(1e-2), adam(1e-2)))):
        np.testing.assert_array_equal(*leaves)
    assert max_rel_error(run(amsgrad(1e-2), 0.9), run(adam(1e-2), 0.9)) > 1e-3


# ----------------------------------------------------------------------------- blocks
def test_nesterov_schedule_keeps_a_running_product(x64):
    """NAdam's P_t is a float64 running product (float32 without x64) of the mu_t."""
    opt = nadam(momentum_decay=0.5)
    params = {"w": jnp.ones(2)}
    state = opt.init(params)
    update = jax.jit(opt.update)
    for _ in range(5):
        _, state = update({"w": jnp.ones(2)}, state, params)
    (found,) = [s for s in state if isinstance(s, NesterovState)]
    assert found.mu_product.dtype == jnp.float64
    want = math.prod(0.9 * (1 - 0.5 * 0.96 ** (t * 0.5)) for t in range(1, 6))
    np.testing.assert_allclose(float(found.mu_product), want, rtol=1e-15)


def test_nesterov_state_is_float32_without_x64():
    (found,) = [s for s in nadam().init({"w": jnp.ones(2)}) if isinstance(s, NesterovState)]
    assert found.mu_product.dtype == jnp.float32


def exact_sma_length(b2: float, t: int) -> float:
    """RAdam's ``rho_t`` for the double ``b2``, in 60-digit decimal arithmetic."""
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        b = decimal.Decimal(b2)
        return float(2 / (1 - b) - 1 - 2 * t * b**t / (1 - b**t))


SMA_COUNTS = sorted({*range(1, 60), *np.logspace(0, 9.3, 120).astype(int).tolist(), 2**31 - 1})


@pytest.mark.parametrize("b2", [0.0, 0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999])
def test_sma_length_accurate_in_float32(b2):
    """rho_t to a few float32 ulp at every t; the textbook formula is off by far more."""
    counts = jnp.asarray(SMA_COUNTS, jnp.int32)
    got = np.asarray(jax.jit(lambda c: sma_length(b2, c))(counts), np.float64)
    want = np.array([exact_sma_length(b2, t) for t in SMA_COUNTS])
    np.testing.assert_allclose(got, want, rtol=2e-6)
    if b2 >= 0.999:
        t = counts.astype(jnp.float32)
        x, b2_t = jnp.float32(1 - b2), jnp.float32(b2) ** t
        naive = np.asarray((2 / x - 1) - 2 * t * b2_t / (1 - b2_t), np.float64)
        assert np.max(np.abs(naive - want) / want) > 1e-4


def test_sma_length_accurate_in_float64(x64):
    counts = jnp.asarray(SMA_COUNTS, jnp.int32)
    for b2 in (0.9, 0.999, 0.99999):
        got = np.asarray(jax.jit(lambda c, b2=b2: sma_length(b2, c))(counts))
        want = np.array([exact_sma_length(b2, t) for t in SMA_COUNTS])
        np.testing.assert_allclose(got, want, rtol=4e-15)


@pytest.mark.parametrize("b2", [0.9, 0.99, 0.999, 0.9999])
def test_rectification_in_float32_matches_float64(b2):
    """RAdam's read-out at t = 1..3000 in float32 (m = 1, v = 4, eps = 0): rectified on the
    same steps as PyTorch's float64 host arithmetic, with r_t sqrt(bc2) / 2 to 2e-6."""
    block = normalize_rectified(b2, eps=0.0)
    one = jnp.ones((), jnp.float32)

    def read_out(count):
        rec = Moments(grad=one, mu=one, nu=4 * one, count=count)
        return block.update(rec, optax.EmptyState())[0]

    counts = np.arange(1, 3001)
    got = np.asarray(jax.jit(jax.vmap(read_out))(jnp.asarray(counts, jnp.int32)), np.float64)
    rho_inf = 2 / (1 - b2) - 1
    want = []
    for t in counts:
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho > 5:
            r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            want.append(r * math.sqrt(1 - b2**t) / 2)
        else:
            want.append(1.0)
    want = np.asarray(want)
    np.testing.assert_array_equal(got == 1.0, want == 1.0)
    assert (want == 1.0).sum() >= 5 and (want < 1.0).any()
    np.testing.assert_allclose(got, want, rtol=2e-6)


# ----------------------------------------------------------------------------- contract bits
DEFAULT_BUILT = [(n, {}) for n in ALIASES if n not in ("adam", "adamw")] + [
    ("adam", {"nesterov": True, "maximize": True}),
    ("radam", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
]


@pytest.mark.parametrize(("name", "kw"), DEFAULT_BUILT, ids=[n for n, _ in DEFAULT_BUILT])
def test_bfloat16_params_give_bfloat16_updates_and_state(name, kw):
    opt = ALIASES[name](**kw)
    params = tree_of([jnp.full(s, 0.5, jnp.bfloat16) for s in SHAPES])
    grads = tree_of([jnp.full(s, -0.25, jnp.bfloat16) for s in SHAPES])
    state = opt.init(params)
    dtypes = jax.tree.map(lambda x: jnp.result_type(x), state)
    step = jax.jit(opt.update)
    for _ in range(3):
        updates, state = step(grads, state, params)
    chex.assert_trees_all_equal_dtypes(updates, params)
    chex.assert_tree_all_finite(updates)
    assert jax.tree.map(lambda x: jnp.result_type(x), state) == dtypes


INJECTED = [
    ("amsgrad", {"learning_rate": 1e-2, "weight_decay": 1e-2}),
    ("adamax", {"learning_rate": 1e-2, "eps": 1e-3}),
    ("nadam", {"learning_rate": 1e-2, "momentum_decay": 0.1}),
    ("nadamw", {"learning_rate": 1e-2, "weight_decay": 0.1}),
    ("radam", {"learning_rate": 1e-2, "b2": 0.99, "threshold": 6.0}),
    ("adabelief", {"learning_rate": 1e-2, "eps": 1e-8, "eps_root": 1e-12}),
    ("yogi", {"learning_rate": 1e-2, "initial_accumulator_value": 1e-3}),
    ("adam", {"learning_rate": 1e-2, "nesterov": True, "maximize": True}),
]


@pytest.mark.parametrize(("name", "kw"), INJECTED, ids=[n for n, _ in INJECTED])
def test_inject_hyperparams_matches_plain(name, kw):
    """Every numeric hyperparameter may arrive traced (no Python ``if`` on its value)."""
    factory = ALIASES[name]
    params, consts = make_problem(5)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    grad = grad_fn([tuple(jnp.asarray(x, jnp.float32) for x in c) for c in consts], jnp)
    plain = run_jax(factory(**kw), params, grad, steps=10)
    injected = run_jax(optax.inject_hyperparams(factory)(**kw), params, grad, steps=10)
    assert_trajectories_close(injected, plain, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- API and errors
SIGNATURES = {
    "amsgrad": "(learning_rate=0.001, b1=0.9, b2=0.999, eps=1e-08, eps_root=0.0, mu_dtype=None, "
    "bias_correction_mu=True, bias_correction_nu=True, *, weight_decay=None, "
    "maximize=False)",
    "adamax": "(learning_rate=0.002, b1=0.9, b2=0.999, eps=1e-08, *, mu_dtype=None, "
    "weight_decay=None, maximize=False)",
    "nadam": "(learning_rate=0.002, b1=0.9, b2=0.999, eps=1e-08, eps_root=0.0, mu_dtype=None, *, "
    "nesterov=True, momentum_decay=0.004, weight_decay=None, maximize=False)",
    "nadamw": "(learning_rate=0.002, b1=0.9, b2=0.999, eps=1e-08, eps_root=0.0, mu_dtype=None, "
    "weight_decay=0.01, mask=None, *, nesterov=True, momentum_decay=0.004, "
    "maximize=False)",
    "radam": "(learning_rate=0.001, b1=0.9, b2=0.999, eps=1e-08, eps_root=0.0, threshold=5.0, *, "
    "nesterov=False, weight_decay=None, decoupled_weight_decay=False, maximize=False, "
    "mu_dtype=None)",
    "adabelief": "(learning_rate=0.001, b1=0.9, b2=0.999, eps=1e-16, eps_root=None, *, "
    "nesterov=False, weight_decay=None, mu_dtype=None)",
    "yogi": "(learning_rate=0.01, b1=0.9, b2=0.999, eps=0.001, *, "
    "initial_accumulator_value=1e-06, mu_dtype=None)",
    "adam": "(learning_rate=0.001, b1=0.9, b2=0.999, eps=1e-08, eps_root=0.0, mu_dtype=None, *, "
    "nesterov=False, weight_decay=None, maximize=False, fused=None, amsgrad=False)",
    "adamw": "(learning_rate=0.001, b1=0.9, b2=0.999, eps=1e-08, eps_root=0.0, mu_dtype=None, "
    "weight_decay=0.01, mask=None, *, nesterov=False, maximize=False, fused=None, "
    "amsgrad=False)",
}


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_signature_as_in_the_issue(name):
    sig = inspect.signature(ALIASES[name])
    plain = sig.replace(
        parameters=[p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()],
        return_annotation=inspect.Signature.empty,
    )
    assert str(plain) == SIGNATURES[name]


BAD = [
    (amsgrad, "b1", 1.0, "[0.0, 1.0)"),
    (amsgrad, "weight_decay", -1.0, "[0.0, inf)"),
    (amsgrad, "learning_rate", -1e-3, "[0.0, inf)"),
    (adamax, "eps", -1e-8, "[0.0, inf)"),
    (adamax, "b2", 1.0, "[0.0, 1.0)"),
    (nadam, "momentum_decay", -1e-3, "[0.0, inf)"),
    (nadam, "momentum_decay", math.inf, "[0.0, inf)"),
    (nadam, "b1", -0.1, "[0.0, 1.0)"),
    (nadam, "eps", -1.0, "[0.0, inf)"),
    (nadamw, "weight_decay", -1e-2, "[0.0, inf)"),
    (nadamw, "momentum_decay", math.nan, "[0.0, inf)"),
    (radam, "threshold", -1.0, "[4.0, inf)"),
    (radam, "threshold", 3.0, "[4.0, inf)"),
    (radam, "b2", 1.5, "[0.0, 1.0)"),
    (radam, "weight_decay", -0.1, "[0.0, inf)"),
    (adabelief, "eps", -1e-16, "[0.0, inf)"),
    (adabelief, "eps_root", -1.0, "[0.0, inf)"),
    (yogi, "initial_accumulator_value", -1e-6, "[0.0, inf)"),
    (yogi, "b2", 1.0, "[0.0, 1.0)"),
    (yogi, "eps", -1e-3, "[0.0, inf)"),
]


@pytest.mark.parametrize(
    ("factory", "arg", "value", "allowed"), BAD, ids=[f"{f.__name__}-{a}" for f, a, *_ in BAD]
)
def test_bad_hyperparameter_names_argument_value_and_range(factory, arg, value, allowed):
    with pytest.raises(ValueError) as info:
        factory(**{arg: value})
    message = str(info.value)
    assert f"`{arg}`" in message
    assert allowed in message
    assert f"{arg}={value!r}" in message


@pytest.mark.parametrize(
    ("factory", "arg"),
    [(amsgrad, "maximize"), (nadam, "maximize"), (adam, "nesterov"), (adamw, "maximize")]
    + [(radam, "decoupled_weight_decay")],
)
def test_flags_must_be_bools(factory, arg):
    with pytest.raises(ValueError, match=f"`{arg}` must be True or False"):
        factory(**{arg: 1})


def test_traced_hyperparameters_are_not_validated():
    def build(threshold, psi):
        params = jnp.zeros(2)
        radam(threshold=threshold).init(params)
        return nadam(momentum_decay=psi).init(params)

    jax.jit(build)(jnp.asarray(3.0, jnp.float32), jnp.asarray(-1.0, jnp.float32))
