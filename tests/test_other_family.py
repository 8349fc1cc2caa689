"""LAMB, Lion, Adafactor, ADOPT and LazyAdam against independent NumPy float64 references
(tests/reference_other_family.py), torch.optim where it has the optimizer (Adafactor,
SparseAdam), and optax where it has the same rule (lamb, lion, contrib.adopt).

Every trajectory is 100 steps of a quadratic + sine loss on a tree with a matrix, a 3-D
block, a vector starting at zero and a scalar, compared after every step in float64.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference_other_family as ref

from adamx.optimizers._adafactor import adafactor
from adamx.optimizers._adam import adam
from adamx.optimizers._adopt import adopt
from adamx.optimizers._lamb_lion import lamb, lion
from adamx.optimizers._lazy import lazy_adam

STEPS = 100
RTOL, ATOL = 1e-10, 1e-14
SHAPES = {"b": (4,), "k": (2, 3, 4), "s": (), "w": (5, 4)}  # sorted: the leaf order


def decay_mask(params):
    """Decay only the leaves with at least two dimensions."""
    return jax.tree.map(lambda p: np.ndim(p) >= 2, params)


DECAY_FLAGS = [len(s) >= 2 for s in SHAPES.values()]


class Problem(NamedTuple):
    params: dict  # name -> float64 array
    consts: dict  # name -> (a, c, w): loss = a/2 (p - c)^2 + 0.3 sin(w p)
    factors: list  # per step: name -> what the gradient is multiplied by (noise, dead rows)


def make_problem(seed=0, sparse=False, every_leaf_live=False) -> Problem:
    rng = np.random.default_rng(seed)
    params, consts = {}, {}
    for name, shape in SHAPES.items():
        p = np.zeros(shape) if name == "b" else rng.normal(size=shape)
        a = rng.uniform(0.5, 2.0, size=shape)
        c = p + rng.choice([-1.0, 1.0], size=shape) * rng.uniform(1.0, 3.0, size=shape)
        params[name], consts[name] = p, (a, c, rng.uniform(0.5, 2.0, size=shape))
    masks = []
    for _ in range(STEPS):
        step = {}
        for name, shape in SHAPES.items():
            rows = shape[:1] + (1,) * (len(shape) - 1)
            live = rng.random(rows) < 0.5 if sparse else np.ones(rows, bool)
            if every_leaf_live and not live.any():
                live.flat[rng.integers(live.size)] = True
            # gradient noise: flips the sign a quarter of the time, so momentum matters
            step[name] = live * rng.uniform(-1.0, 3.0, size=shape)
        masks.append(step)
    return Problem(params, consts, masks)


def np_grad(consts, params):
    return {
        k: a * (params[k] - c) + 0.3 * w * np.cos(w * params[k]) for k, (a, c, w) in consts.items()
    }


def run_jax(opt, problem, steps=STEPS):
    """Params after every step (NumPy float64 dicts), with one jitted step. The gradients
    are computed in NumPy from the current params, as for the reference and torch, so the
    runs differ only in the optimizer's arithmetic."""

    @jax.jit
    def step(p, s, g):
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    p = jax.tree.map(jnp.asarray, problem.params)
    s = opt.init(p)
    out = []
    for k in range(steps):
        g = np_grad(problem.consts, jax.tree.map(np.asarray, p))
        g = {n: g[n] * problem.factors[k][n] for n in g}
        p, s = step(p, s, jax.tree.map(jnp.asarray, g))
        out.append(jax.tree.map(np.asarray, p))
    return out


def run_ref(ref_cls, ref_kwargs, problem, steps=STEPS, lr=None):
    names = sorted(problem.params)
    opt = ref_cls([problem.params[n].shape for n in names], **ref_kwargs)
    p = {k: v.copy() for k, v in problem.params.items()}
    out = []
    for k in range(steps):
        g = np_grad(problem.consts, p)
        g = [g[n] * problem.factors[k][n] for n in names]
        kwargs = {} if lr is None else {"lr": lr(k)}
        p = dict(zip(names, opt.step([p[n] for n in names], g, **kwargs)))
        out.append(p)
    return out


def max_rel(got, want):
    """The largest ``|got - want| / (ATOL + |want|)`` over all steps and elements."""
    return max(
        float(np.max(np.abs(g[n] - w[n]) / (ATOL + np.abs(w[n]))))
        for g, w in zip(got, want)
        for n in w
    )


def assert_close(got, want, rtol=RTOL, atol=ATOL):
    """Every step, every leaf: ``|got - want| <= atol + rtol * |want|``."""
    assert len(got) == len(want) == STEPS
    for k, (g, w) in enumerate(zip(got, want)):
        assert sorted(g) == sorted(w)
        for n in w:
            np.testing.assert_allclose(
                g[n], w[n], rtol=rtol, atol=atol, err_msg=f"leaf {n!r} after step {k + 1}"
            )


def jax_schedule(k):
    return 0.1 / (1.0 + 0.02 * jnp.asarray(k, jnp.float64))


def np_schedule(k):
    return 0.1 / (1.0 + 0.02 * k)


# ------------------------------------------------------------------- NumPy references
# (id, adamx factory, its kwargs, reference class, its kwargs, problem options)
CASES = [
    ("lamb", lamb, dict(learning_rate=1e-2), ref.Lamb, dict(lr=1e-2), {}),
    (
        "lamb-wd-betas-eps",
        lamb,
        dict(learning_rate=2e-2, b1=0.5, b2=0.99, eps=1e-3, weight_decay=0.1),
        ref.Lamb,
        dict(lr=2e-2, b1=0.5, b2=0.99, eps=1e-3, wd=0.1),
        {},
    ),
    (
        "lamb-wd-mask",
        lamb,
        dict(learning_rate=1e-2, weight_decay=0.3, mask=decay_mask),
        ref.Lamb,
        dict(lr=1e-2, wd=0.3, decay=DECAY_FLAGS),
        {},
    ),
    ("lion", lion, dict(learning_rate=3e-3), ref.Lion, dict(lr=3e-3), {}),
    (
        "lion-wd-betas",
        lion,
        dict(learning_rate=3e-3, b1=0.5, b2=0.9, weight_decay=0.5),
        ref.Lion,
        dict(lr=3e-3, b1=0.5, b2=0.9, wd=0.5),
        {},
    ),
    (
        "lion-wd-mask",
        lion,
        dict(learning_rate=3e-3, weight_decay=0.5, mask=decay_mask),
        ref.Lion,
        dict(lr=3e-3, wd=0.5, decay=DECAY_FLAGS),
        {},
    ),
    ("adafactor", adafactor, {}, ref.Adafactor, {}, {}),
    (
        "adafactor-big-lr",  # min(lr, 1/sqrt(t)) switches to 1/sqrt(t) at t = 5
        adafactor,
        dict(learning_rate=0.5),
        ref.Adafactor,
        dict(lr=0.5),
        {},
    ),
    (
        "adafactor-options",
        adafactor,
        dict(learning_rate=0.05, beta2_decay=-0.5, eps=(0.5, 1e-2), d=1.5),
        ref.Adafactor,
        dict(lr=0.05, beta2_decay=-0.5, eps1=0.5, eps2=1e-2, d=1.5),
        {},
    ),
    (
        "adafactor-wd-maximize",
        adafactor,
        dict(learning_rate=0.05, weight_decay=0.2, maximize=True),
        ref.Adafactor,
        dict(lr=0.05, wd=0.2, maximize=True),
        {},
    ),
    (
        "adafactor-schedule-wd",
        adafactor,
        dict(learning_rate=jax_schedule, weight_decay=0.2, beta2_decay=-0.5),
        ref.Adafactor,
        dict(wd=0.2, beta2_decay=-0.5),
        {"lr": np_schedule},
    ),
    ("adopt", adopt, dict(learning_rate=1e-2), ref.Adopt, dict(lr=1e-2), {}),
    (
        "adopt-options",
        adopt,
        dict(learning_rate=2e-2, b1=0.5, b2=0.99, eps=1e-3, clip_exponent=0.5),
        ref.Adopt,
        dict(lr=2e-2, b1=0.5, b2=0.99, eps=1e-3, clip_exponent=0.5),
        {},
    ),
    (
        "adopt-no-clip",
        adopt,
        dict(learning_rate=1e-2, clip_exponent=None),
        ref.Adopt,
        dict(lr=1e-2, clip_exponent=None),
        {},
    ),
    ("lazy_adam-dense", lazy_adam, dict(learning_rate=1e-2), ref.LazyAdam, dict(lr=1e-2), {}),
    (
        "lazy_adam-sparse",
        lazy_adam,
        dict(learning_rate=1e-2, b1=0.8, b2=0.99, eps=1e-3),
        ref.LazyAdam,
        dict(lr=1e-2, b1=0.8, b2=0.99, eps=1e-3),
        {"sparse": True},
    ),
    (
        "lazy_adam-sparse-eps0-maximize",
        lazy_adam,
        dict(learning_rate=1e-2, eps=0.0, maximize=True),
        ref.LazyAdam,
        dict(lr=1e-2, eps=0.0, maximize=True),
        {"sparse": True},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_numpy_reference(x64, case):
    _, factory, kwargs, ref_cls, ref_kwargs, options = case
    problem = make_problem(sparse=options.get("sparse", False))
    got = run_jax(factory(**kwargs), problem)
    want = run_ref(ref_cls, ref_kwargs, problem, lr=options.get("lr"))
    assert_close(got, want)
    # the run moved every leaf: the comparison is not of two resting trajectories
    for n in SHAPES:
        assert np.max(np.abs(got[-1][n] - problem.params[n])) > 1e-4


# A wrong option must be caught: the reference with one option changed differs.
PERTURBED = [
    ("lamb-wd-mask", dict(decay=None)),
    ("lion-wd-betas", dict(b1=0.9, b2=0.5)),
    ("adafactor-options", dict(eps1=1e-3)),
    ("adafactor-options", dict(d=1.0)),
    ("adafactor-wd-maximize", dict(maximize=False)),
    ("adopt", dict(clip_exponent=None)),
    ("lazy_adam-sparse", dict(eps=1e-8)),
]


@pytest.mark.parametrize("case_id, change", PERTURBED, ids=[p[0] for p in PERTURBED])
def test_a_wrong_option_is_detected(x64, case_id, change):
    _, factory, kwargs, ref_cls, ref_kwargs, options = next(c for c in CASES if c[0] == case_id)
    problem = make_problem(sparse=options.get("sparse", False))
    got = run_jax(factory(**kwargs), problem)
    wrong = run_ref(ref_cls, dict(ref_kwargs, **change), problem, lr=options.get("lr"))
    assert max_rel(got, wrong) > 1e-4


# ------------------------------------------------------------------- torch.optim
TORCH_ADAFACTOR = [
    (dict(), dict()),
    (dict(learning_rate=0.5), dict(lr=0.5)),
    (
        dict(learning_rate=0.05, beta2_decay=-0.5, eps=(0.5, 1e-2), d=1.5),
        dict(lr=0.05, beta2_decay=-0.5, eps=(0.5, 1e-2), d=1.5),
    ),
    (
        dict(learning_rate=0.05, weight_decay=0.2, maximize=True),
        dict(lr=0.05, weight_decay=0.2, maximize=True),
    ),
    (
        dict(learning_rate=jax_schedule, weight_decay=0.2, beta2_decay=-0.5),
        dict(weight_decay=0.2, beta2_decay=-0.5),
    ),
]


def run_torch(torch, make_opt, problem, sparse=False, lr=None):
    names = sorted(problem.params)
    params = [torch.tensor(problem.params[n], dtype=torch.float64) for n in names]
    opt = make_opt(params)
    out = []
    for k in range(STEPS):
        current = {n: p.detach().numpy() for n, p in zip(names, params)}
        g = np_grad(problem.consts, current)
        for n, p in zip(names, params):
            grad = torch.tensor(g[n] * problem.factors[k][n], dtype=torch.float64)
            if sparse:
                live = np.any(problem.factors[k][n] != 0, axis=tuple(range(1, len(p.shape))))
                rows = torch.tensor(np.flatnonzero(live))[None]
                grad = torch.sparse_coo_tensor(
                    rows, grad[rows[0]], grad.shape, check_invariants=True
                )
            p.grad = grad
        if lr is not None:
            opt.param_groups[0]["lr"] = lr(k)
        opt.step()
        out.append({n: p.detach().numpy().copy() for n, p in zip(names, params)})
    return out


@pytest.mark.parametrize("kwargs, torch_kwargs", TORCH_ADAFACTOR)
def test_adafactor_matches_torch(x64, kwargs, torch_kwargs):
    torch = pytest.importorskip("torch")
    problem = make_problem()
    got = run_jax(adafactor(**kwargs), problem)
    lr = np_schedule if callable(kwargs.get("learning_rate")) else None
    want = run_torch(
        torch, lambda ps: torch.optim.Adafactor(ps, foreach=False, **torch_kwargs), problem, lr=lr
    )
    assert_close(got, want)


@pytest.mark.parametrize("maximize", [False, True])
def test_lazy_adam_matches_torch_sparse_adam_with_eps_zero(x64, maximize):
    # SparseAdam puts eps on the raw root ("epsilon hat"); with eps = 0 the readings agree.
    torch = pytest.importorskip("torch")
    shapes = {n: s for n, s in SHAPES.items() if s}  # sparse tensors need a first axis
    problem = make_problem(sparse=True, every_leaf_live=True)
    problem = Problem(
        *(
            {n: v for n, v in part.items() if n in shapes}
            for part in (problem.params, problem.consts)
        ),
        [{n: f[n] for n in shapes} for f in problem.factors],
    )
    kw = dict(b1=0.8, b2=0.99)
    got = run_jax(lazy_adam(1e-2, eps=0.0, maximize=maximize, **kw), problem)

    def make(ps):
        opt = torch.optim.SparseAdam(ps, lr=1e-2, betas=(0.8, 0.99), maximize=maximize)
        opt.param_groups[0]["eps"] = 0.0  # its constructor refuses 0, its step takes it
        return opt

    assert_close(got, run_torch(torch, make, problem, sparse=True))


# ------------------------------------------------------------------- optax
OPTAX_EQUIVALENT = [
    ("lamb", lamb(1e-2), lambda: optax.lamb(1e-2)),
    (
        "lamb-wd-mask",
        lamb(2e-2, b1=0.5, b2=0.99, eps=1e-3, weight_decay=0.3, mask=decay_mask),
        lambda: optax.lamb(2e-2, b1=0.5, b2=0.99, eps=1e-3, weight_decay=0.3, mask=decay_mask),
    ),
    ("lion", lion(3e-3), lambda: optax.lion(3e-3, weight_decay=0.0)),
    (
        "lion-wd-mask",
        lion(3e-3, b1=0.5, b2=0.9, weight_decay=0.5, mask=decay_mask),
        lambda: optax.lion(3e-3, b1=0.5, b2=0.9, weight_decay=0.5, mask=decay_mask),
    ),
    ("adopt", adopt(1e-2), lambda: optax.contrib.adopt(1e-2)),
    (
        "adopt-options",
        adopt(2e-2, b1=0.5, b2=0.99, eps=1e-3, clip_exponent=0.5),
        lambda: optax.contrib.adopt(
            2e-2, b1=0.5, b2=0.99, eps=1e-3, clip_value_fn=lambda t: t**0.5
        ),
    ),
    (
        "adopt-no-clip",
        adopt(1e-2, clip_exponent=None),
        lambda: optax.contrib.adopt(1e-2, use_clipping=False),
    ),
]


@pytest.mark.parametrize(
    "name, ours, theirs", OPTAX_EQUIVALENT, ids=[c[0] for c in OPTAX_EQUIVALENT]
)
def test_equals_optax(x64, name, ours, theirs):
    problem = make_problem()
    got = run_jax(ours, problem)
    with jax.numpy_dtype_promotion("standard"):  # optax mixes int32 counts and floats
        want = run_jax(theirs(), problem)
    assert_close(got, want)


# ------------------------------------------------------------------- rule details
def test_lazy_adam_with_dense_gradients_is_adam_bit_for_bit():
    problem = make_problem()
    as_f32 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)  # noqa: E731
    p = as_f32(problem.params)
    opts = lazy_adam(1e-2, b2=0.99), adam(1e-2, b2=0.99)
    states = [o.init(p) for o in opts]
    params = [p, p]
    steps = [jax.jit(lambda p, s, g, o=o: o.update(g, s, p)) for o in opts]
    for k in range(20):
        g = np_grad(problem.consts, jax.tree.map(np.asarray, params[0]))
        g = as_f32({n: g[n] * problem.factors[k][n] for n in g})
        for i in range(2):
            u, states[i] = steps[i](params[i], states[i], g)
            params[i] = optax.apply_updates(params[i], u)
    chex.assert_trees_all_equal(params[0], params[1])
    chex.assert_trees_all_equal(states[0][0], states[1][0])


def test_lazy_adam_leaves_rows_without_gradient_untouched():
    opt = lazy_adam(0.1)
    params = {"emb": jnp.arange(12.0).reshape(4, 3), "s": jnp.asarray(2.0)}
    state = opt.init(params)
    dense = {"emb": jnp.ones((4, 3)), "s": jnp.asarray(1.0)}
    _, state = opt.update(dense, state, params)
    before = state
    grads = {"emb": jnp.asarray([[0.0, 0, 0], [1, 0, 0], [0, 0, 0], [0, -2, 0]]), "s": 0.0}
    updates, state = opt.update(grads, state, params)
    np.testing.assert_array_equal(np.asarray(updates["emb"])[[0, 2]], 0.0)
    assert float(updates["s"]) == 0.0
    assert np.all(np.asarray(updates["emb"])[[1, 3]] != 0)  # the whole row moves
    moments, before_moments = state[0], before[0]
    assert int(moments.count) == 2
    for field in ("mu", "nu"):
        new, old = getattr(moments, field), getattr(before_moments, field)
        np.testing.assert_array_equal(
            np.asarray(new["emb"])[[0, 2]], np.asarray(old["emb"])[[0, 2]]
        )
        assert np.all(np.asarray(new["emb"])[[1, 3]] != np.asarray(old["emb"])[[1, 3]])
        assert float(new["s"]) == float(old["s"])


def test_adopt_first_step_only_initialises_v():
    opt = adopt(0.1)
    params = {"w": jnp.ones((2, 3))}
    g = {"w": jnp.asarray([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])}
    state = opt.init(params)
    updates, state = opt.update(g, state, params)
    np.testing.assert_array_equal(np.asarray(updates["w"]), 0.0)
    rms_state, moments_state = state[0], state[1]
    np.testing.assert_array_equal(np.asarray(rms_state.nu["w"]), np.square(np.asarray(g["w"])))
    np.testing.assert_array_equal(np.asarray(moments_state.mu["w"]), 0.0)
    # the second step: m = (1 - b1) * clip(g / max(|g_0|, eps), 1) with bound 1**0.25 = 1
    updates, _ = opt.update(g, state, params)
    expected = -0.1 * 0.1 * np.clip(np.asarray(g["w"]) / np.maximum(np.abs(g["w"]), 1e-6), -1, 1)
    np.testing.assert_allclose(np.asarray(updates["w"]), expected, rtol=1e-6)


def test_adafactor_keeps_factored_statistics():
    params = {"m": jnp.ones((6, 5)), "t": jnp.ones((2, 3, 4)), "v": jnp.ones(7), "s": 1.0}
    state = adafactor().init(params)
    factored = state[0]
    shapes = lambda tree: jax.tree.map(jnp.shape, tree)  # noqa: E731
    assert shapes(factored.row) == {"m": (6, 1), "t": (2, 3, 1), "v": (1,), "s": (1,)}
    assert shapes(factored.col) == {"m": (1, 5), "t": (2, 1, 4), "v": (1,), "s": (1,)}
    assert shapes(factored.full) == {"m": (1,), "t": (1,), "v": (7,), "s": ()}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_adafactor_default_eps1_is_the_params_dtype_epsilon(dtype):
    # a gradient below eps1 in size: V = g**2 < eps1**2, so U = g / eps1 (PyTorch: finfo.eps)
    eps1 = float(jnp.finfo(dtype).eps)
    params = {"v": jnp.full((4,), 2.0, dtype)}
    grads = {"v": jnp.full((4,), eps1 / 8, dtype)}
    opt = adafactor(0.1)
    updates, _ = opt.update(grads, opt.init(params), params)
    expected = -0.1 * 2.0 * (eps1 / 8) / eps1  # -lr * RMS(p) * U, no clipping (RMS(U) < 1)
    np.testing.assert_allclose(np.asarray(updates["v"], np.float32), expected, rtol=1e-2)
    assert updates["v"].dtype == dtype


def test_lamb_trust_ratio_is_one_for_a_zero_parameter():
    opt = lamb(0.1)
    params = {"z": jnp.zeros(3), "w": jnp.asarray([3.0, 4.0])}
    g = {"z": jnp.asarray([1.0, -1.0, 2.0]), "w": jnp.asarray([1.0, 1.0])}
    updates, _ = opt.update(g, opt.init(params), params)
    # first Adam step is sign(g) (up to eps); the ratio scales w's step to ||w|| = 5
    np.testing.assert_allclose(np.asarray(updates["z"]), -0.1 * np.sign(g["z"]), rtol=1e-5)
    np.testing.assert_allclose(float(jnp.linalg.norm(updates["w"])), 0.1 * 5.0, rtol=1e-5)


# ------------------------------------------------------------------- JAX contract
FACTORIES = {
    "lamb": (lamb, dict(learning_rate=1e-2, weight_decay=1e-2)),
    "lion": (lion, dict(learning_rate=1e-3, weight_decay=1e-2)),
    "adafactor": (adafactor, dict(learning_rate=1e-2, weight_decay=1e-2, d=1.5)),
    "adopt": (adopt, dict(learning_rate=1e-2, clip_exponent=0.3)),
    "lazy_adam": (lazy_adam, dict(learning_rate=1e-2)),
}


def small_tree(dtype=jnp.float32):
    k = iter(jax.random.split(jax.random.key(0), 4))
    return {
        "m": jax.random.normal(next(k), (3, 4), dtype),
        "v": (jax.random.normal(next(k), (4,), dtype), None),
        "s": jnp.asarray(0.5, dtype),
        "e": jnp.zeros((0, 3), dtype),
    }


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_inject_hyperparams_and_bf16(name):
    factory, kwargs = FACTORIES[name]
    params = small_tree()
    grads = [jax.tree.map(lambda x, i=i: jnp.sin(x + i), params) for i in range(4)]
    results = []
    for opt in (factory(**kwargs), optax.inject_hyperparams(factory)(**kwargs)):
        p, s = params, opt.init(params)
        step = jax.jit(lambda p, s, g, opt=opt: opt.update(g, s, p))
        for g in grads:
            u, s = step(p, s, g)
            p = optax.apply_updates(p, u)
        results.append(p)
    chex.assert_trees_all_close(results[0], results[1], rtol=1e-6, atol=1e-7)

    low = small_tree(jnp.bfloat16)
    opt = factory(**kwargs)
    state = opt.init(low)
    step = jax.jit(lambda s: opt.update(jax.tree.map(jnp.cos, low), s, low))
    for _ in range(2):
        u, state = step(state)
    chex.assert_trees_all_equal_dtypes(u, low)
    chex.assert_tree_all_finite(u)
    floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.bfloat16 for x in floats)


# ------------------------------------------------------------------- bad input
# (factory, kwargs, the argument, the allowed range and the value the message must name)
BAD = [
    (lamb, dict(b1=1.0), "b1", "[0.0, 1.0)", "1.0"),
    (lamb, dict(eps=-1e-6), "eps", "[0.0, inf)", "-1e-06"),
    (lamb, dict(weight_decay=-0.1), "weight_decay", "[0.0, inf)", "-0.1"),
    (lamb, dict(learning_rate=-1.0), "learning_rate", "[0.0, inf)", "-1.0"),
    (lion, dict(b1=-0.1), "b1", "[0.0, 1.0)", "-0.1"),
    (lion, dict(b2=1.5), "b2", "[0.0, 1.0)", "1.5"),
    (lion, dict(weight_decay=float("nan")), "weight_decay", "[0.0, inf)", "nan"),
    (adafactor, dict(beta2_decay=0.5), "beta2_decay", "[-inf, 0.0]", "0.5"),
    (adafactor, dict(eps=(-1.0, 1e-3)), "eps[0]", "[0.0, inf)", "-1.0"),
    (adafactor, dict(eps=(None, -2e-3)), "eps[1]", "[0.0, inf)", "-0.002"),
    (adafactor, dict(eps=1e-3), "eps", "pair", "0.001"),
    (adafactor, dict(d=0.5), "d", "[1.0, inf)", "0.5"),
    (adafactor, dict(weight_decay=-1.0), "weight_decay", "[0.0, inf)", "-1.0"),
    (adafactor, dict(maximize=1), "maximize", "True or False", "1"),
    (adopt, dict(b2=1.0), "b2", "[0.0, 1.0)", "1.0"),
    (adopt, dict(eps=-1.0), "eps", "[0.0, inf)", "-1.0"),
    (adopt, dict(clip_exponent=-0.25), "clip_exponent", "[0.0, inf)", "-0.25"),
    (lazy_adam, dict(b1=1.0), "b1", "[0.0, 1.0)", "1.0"),
    (lazy_adam, dict(eps=-1.0), "eps", "[0.0, inf)", "-1.0"),
    (lazy_adam, dict(maximize="yes"), "maximize", "True or False", "'yes'"),
]


@pytest.mark.parametrize(
    "factory, kwargs, argument, allowed, value",
    BAD,
    ids=[f"{b[0].__name__}-{b[2]}" for b in BAD],
)
def test_bad_hyperparameters_are_refused(factory, kwargs, argument, allowed, value):
    with pytest.raises(ValueError) as info:
        factory(**kwargs)
    message = str(info.value)
    assert f"`{argument}`" in message
    assert allowed in message
    assert value in message, message


def test_traced_hyperparameters_pass_validation():
    params = small_tree()
    grads = jax.tree.map(jnp.cos, params)

    @jax.jit
    def run(b1, wd, decay):
        outs = []
        for opt in (
            lion(1e-3, b1=b1, weight_decay=wd),
            lamb(1e-3, b1=b1, weight_decay=wd),
            adafactor(beta2_decay=decay, weight_decay=wd),
            adopt(b1=b1, clip_exponent=decay + 1.0),
        ):
            outs.append(opt.update(grads, opt.init(params), params)[0])
        return outs

    chex.assert_tree_all_finite(run(0.8, 0.1, -0.8))
