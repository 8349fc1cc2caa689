"""Issue 16's third batch: rprop and asgd against torch.optim in float64 (when torch is
installed); rprop's optax reading, sm3, madgrad and acprop against optax 0.2.8 step for
step; rprop, asgd, sm3 and madgrad also against independent NumPy float64 references
(tests/reference_fam3.py, which test_robustness uses for all five), which run without
torch.

Every trajectory is 64 updates with a fixed gradient sequence (independent of the params,
so the runs differ only in the optimizers' arithmetic) whose signs persist most of the time
and flip about one step in four, on a matrix, a vector and a scalar; one jitted
``lax.scan`` per adamx run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference_fam3 as ref

import adamx

STEPS = 64
SHAPES = {"b": (4,), "s": (), "w": (5, 4)}  # sorted: the leaf order


def problem(seed=0, complex_leaf=False, without=()):
    rng = np.random.default_rng(seed)
    params = {n: rng.normal(size=s) for n, s in SHAPES.items()}
    sign = {n: rng.choice([-1.0, 1.0], size=s) for n, s in SHAPES.items()}

    def draw(n, s):  # persistent sign, flipped a quarter of the time, sizes 1e-2 .. 30
        return sign[n] * rng.uniform(-1.0, 3.0, size=s) * 10.0 ** rng.integers(-2, 2)

    grads = [{n: draw(n, s) for n, s in SHAPES.items()} for _ in range(STEPS)]
    if complex_leaf:
        params["z"] = rng.normal(size=3) + 1j * rng.normal(size=3)
        for g in grads:
            g["z"] = rng.uniform(-1.0, 3.0, size=3) + 1j * rng.uniform(-3.0, 1.0, size=3)
    for name in without:
        del params[name]
        for g in grads:
            del g[name]
    return params, grads


def run_adamx(opt, dtype=jnp.float64, complex_leaf=False, read=None, without=()):
    """Params after every update (and ``read(state)`` after every update), NumPy float64."""
    params, grads = problem(complex_leaf=complex_leaf, without=without)
    cast = lambda x: jnp.asarray(x, jnp.complex128 if np.iscomplexobj(x) else dtype)  # noqa: E731
    p = {n: cast(v) for n, v in params.items()}
    gs = {n: jnp.stack([cast(g[n]) for g in grads]) for n in p}

    def body(carry, g):
        p, s = carry
        u, s = opt.update(g, s, p)
        p = optax.apply_updates(p, u)
        return (p, s), (p, read(s) if read else p)

    _, (ps, extra) = jax.jit(lambda c, xs: jax.lax.scan(body, c, xs))((p, opt.init(p)), gs)
    unstack = lambda t: [{n: np.asarray(t[n][k]) for n in t} for k in range(STEPS)]  # noqa: E731
    return unstack(ps), unstack(extra)


def run_reference(rule, **kw):
    params, grads = problem()
    names = sorted(params)
    opt = rule([params[n].shape for n in names], **kw)
    p, out = [params[n] for n in names], []
    for g in grads:
        p = opt.step(p, [g[n] for n in names])
        out.append(dict(zip(names, p)))
    return out, opt


def run_torch(cls, complex_leaf=False, **kw):
    torch = pytest.importorskip("torch")
    params, grads = problem(complex_leaf=complex_leaf)
    tp = {n: torch.tensor(v, requires_grad=True) for n, v in params.items()}
    opt = cls(list(tp.values()), **kw)
    out, ax = [], []
    for g in grads:
        for n, p in tp.items():
            p.grad = torch.tensor(g[n])
        opt.step()
        out.append({n: p.detach().numpy().copy() for n, p in tp.items()})
        if cls is torch.optim.ASGD:
            ax.append({n: opt.state[p]["ax"].numpy().copy() for n, p in tp.items()})
    return out, ax


def assert_trajectories(got, want, rtol, atol=0.0):
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        for n in w:
            np.testing.assert_allclose(g[n], w[n], rtol=rtol, atol=atol, err_msg=f"{n} @ {k + 1}")


@pytest.fixture
def torch64():
    torch = pytest.importorskip("torch")
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield torch
    torch.set_default_dtype(old)


# ----------------------------------------------------------------------------- rprop
RPROP = {
    "defaults": ({}, {}),
    "all": (
        dict(learning_rate=0.05, eta_minus=0.3, eta_plus=1.5, min_step_size=1e-3,
             max_step_size=0.2, maximize=True),
        dict(lr=0.05, etas=(0.3, 1.5), step_sizes=(1e-3, 0.2), maximize=True),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(RPROP))
def test_rprop_matches_torch_float64(case, x64, torch64):
    ours, theirs = RPROP[case]
    complex_leaf = case == "all"  # torch takes a complex leaf as two real ones
    want, _ = run_torch(torch64.optim.Rprop, complex_leaf=complex_leaf, **theirs)
    got, _ = run_adamx(adamx.rprop(**ours), complex_leaf=complex_leaf)
    assert_trajectories(got, want, rtol=1e-13)


def test_rprop_matches_numpy_reference_float64(x64):
    case = "all"
    kw = RPROP[case][0]
    got, sizes = run_adamx(adamx.rprop(**kw), read=lambda s: s[-2].step_size)
    want, _ = run_reference(
        ref.Rprop, **{("lr" if k == "learning_rate" else k): v for k, v in kw.items()}
    )
    assert_trajectories(got, want, rtol=1e-13)
    # the gradients flip sign about one step in four; both clips are reached
    w = np.stack([g["w"] for g in problem()[1]])
    assert 0.1 < np.mean(w[1:] * w[:-1] < 0) < 0.4
    every = np.stack([s["w"] for s in sizes])
    assert np.any(every == 0.2) and np.any(every == 1e-3)


def test_rprop_optax_reading_equals_optax_rprop_float32():
    # learning_rate above max_step_size: optax leaves a size unclipped where g * prev = 0
    kw = dict(learning_rate=0.3, eta_minus=0.3, eta_plus=1.5, min_step_size=1e-3,
              max_step_size=0.2)  # fmt: skip
    with jax.numpy_dtype_promotion("standard"):
        want, _ = run_adamx(optax.rprop(**kw), jnp.float32)
    got, _ = run_adamx(adamx.rprop(**kw, reading="optax"), jnp.float32)
    assert_trajectories(got, want, rtol=0.0)  # the same float32 operations: bitwise


# ----------------------------------------------------------------------------- asgd
ASGD = {
    "defaults": ({}, {}),
    "all": (
        dict(learning_rate=0.05, lambd=0.1, alpha=0.6, t0=10.0, weight_decay=0.05, maximize=True),
        dict(lr=0.05, lambd=0.1, alpha=0.6, t0=10.0, weight_decay=0.05, maximize=True),
    ),
}


def ax_of(state):
    return adamx.asgd_eval_params(state)


@pytest.mark.parametrize("case", sorted(ASGD))
def test_asgd_and_its_average_match_torch_float64(case, x64, torch64):
    ours, theirs = ASGD[case]
    complex_leaf = case == "all"
    want, want_ax = run_torch(torch64.optim.ASGD, complex_leaf=complex_leaf, **theirs)
    got, got_ax = run_adamx(adamx.asgd(**ours), complex_leaf=complex_leaf, read=ax_of)
    assert_trajectories(got, want, rtol=1e-12)
    assert_trajectories(got_ax, want_ax, rtol=1e-12)


def test_asgd_matches_numpy_reference_with_a_schedule_float64(x64):
    def lr(k):
        return 0.05 * 0.97**k

    kw = dict(lambd=0.1, alpha=0.6, t0=10.0, weight_decay=0.05, maximize=True)
    got, got_ax = run_adamx(
        adamx.asgd(lambda c: 0.05 * 0.97 ** c.astype(jnp.float64), **kw), read=ax_of
    )
    want, opt = run_reference(ref.ASGD, lr=lr, wd=kw.pop("weight_decay"), **kw)
    assert_trajectories(got, want, rtol=1e-12)
    for n, a in zip(sorted(SHAPES), opt.ax):
        np.testing.assert_allclose(got_ax[-1][n], a, rtol=1e-12)
    # the average is not the params once averaging has begun
    assert not np.allclose(got_ax[-1]["w"], got[-1]["w"])


def test_asgd_eval_params_through_wrappers_and_before_any_update():
    params = {"w": jnp.asarray([1.0, 2.0])}
    opt = optax.MultiSteps(optax.inject_hyperparams(adamx.asgd)(learning_rate=0.1), 2)
    state = opt.init(params)
    np.testing.assert_array_equal(adamx.asgd_eval_params(state)["w"], params["w"])
    with pytest.raises(ValueError, match="found 0 AverageState"):
        adamx.asgd_eval_params(adamx.sgd(0.1).init(params))


# ----------------------------------------------------------------------------- sm3
def test_sm3_equals_optax_sm3_float32():
    """optax.sm3 fails on 0-d leaves (its accumulator list is empty): no scalar here."""
    with jax.numpy_dtype_promotion("standard"):
        want, _ = run_adamx(optax.sm3(0.05, 0.8), jnp.float32, without=("s",))
    got, _ = run_adamx(adamx.sm3(0.05, 0.8), jnp.float32, without=("s",))
    # the momentum's EMA is m + (1 - b1) (d - m) here, (1 - b1) d + b1 m in optax
    assert_trajectories(got, want, rtol=2e-6, atol=1e-7)


def test_sm3_matches_numpy_reference_float64(x64):
    """b2 < 1 (an average; optax.sm3 has no b2) and a 0-d leaf, which optax.sm3 lacks."""
    kw = dict(momentum=0.8, b2=0.99, eps=1e-8)
    got, _ = run_adamx(adamx.sm3(0.05, **kw))
    want, _ = run_reference(ref.SM3, lr=0.05, **kw)
    assert_trajectories(got, want, rtol=1e-12, atol=1e-15)


def test_sm3_state_is_one_number_per_row_and_column():
    params = {"w": jnp.zeros((300, 200)), "b": jnp.zeros(200)}
    acc = adamx.sm3().init(params)[0].acc
    assert [a.shape for a in acc["w"]] == [(300, 1), (1, 200)]  # AdaGrad keeps 300 * 200
    assert [a.shape for a in acc["b"]] == [(200,)]


# ----------------------------------------------------------------------------- madgrad
def test_madgrad_equals_optax_madgrad_float32():
    kw = dict(learning_rate=0.05, momentum=0.5, weight_decay=0.1, eps=1e-4)
    with jax.numpy_dtype_promotion("standard"):
        want, _ = run_adamx(optax.contrib.madgrad(**kw), jnp.float32)
    got, _ = run_adamx(adamx.madgrad(**kw), jnp.float32)
    # optax forms the update as x_new - p, which cancels to p's rounding; both are within
    # 3e-7 of the float64 reference relative to the largest |p|
    assert_trajectories(got, want, rtol=1e-5, atol=2e-6)


def test_madgrad_matches_numpy_reference_with_a_schedule_float64(x64):
    """optax computes sqrt(k + 1) in float32 even under x64 (the count is int32): 1e-8
    from the float64 rule, so the float64 check is against the NumPy reference."""
    got, _ = run_adamx(adamx.madgrad(lambda c: 0.05 * 0.97 ** c.astype(jnp.float64)))
    want, _ = run_reference(ref.Madgrad, lr=lambda k: 0.05 * 0.97**k)
    assert_trajectories(got, want, rtol=1e-11, atol=1e-13)


# ----------------------------------------------------------------------------- acprop
ACPROP_ALL = dict(learning_rate=0.01, b1=0.8, b2=0.99, eps=1e-8, eps_root=1e-10,
                  weight_decay=0.1)  # fmt: skip
MASK = {"b": False, "s": True, "w": True}


@pytest.mark.parametrize("dtype, rtol", [(jnp.float32, 2e-5), (jnp.float64, 1e-12)])
def test_acprop_equals_optax_acprop(dtype, rtol, request):
    """float32: s is corrected inside the root here, sqrt(s) / sqrt(1 - b2**t), where optax
    divides first; the moving averages are lerps. float64: the same rule to 1e-12, with a
    schedule."""
    kw = dict(ACPROP_ALL, mask=MASK)
    if dtype == jnp.float64:
        request.getfixturevalue("x64")
        kw["learning_rate"] = lambda c: 0.01 * 0.97 ** jnp.asarray(c, jnp.float64)
    with jax.numpy_dtype_promotion("standard"):
        want, _ = run_adamx(optax.contrib.acprop(**kw), dtype)
    got, _ = run_adamx(adamx.acprop(**kw), dtype)
    assert_trajectories(got, want, rtol=rtol, atol=rtol)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "factory, kw, match",
    [
        (adamx.rprop, dict(learning_rate=lambda c: 0.1), "initial step size"),
        (adamx.rprop, dict(eta_minus=1.0), r"`eta_minus` must lie in \(0.0, 1.0\)"),
        (adamx.rprop, dict(eta_plus=1.0), r"`eta_plus` must lie in \(1.0, inf\)"),
        (adamx.rprop, dict(min_step_size=1.0, max_step_size=0.5), "must not exceed"),
        (adamx.rprop, dict(reading="keras"), "`reading` must be one of"),
        (adamx.asgd, dict(lambd=-1.0), r"`lambd` must lie in \[0.0, inf\)"),
        (adamx.asgd, dict(t0="10"), "`t0` must be a number"),
        (adamx.acprop, dict(eps_root=-1.0), r"`eps_root` must lie in \[0.0, inf\)"),
        (adamx.madgrad, dict(momentum=1.0), r"`momentum` must lie in \[0.0, 1.0\)"),
        (adamx.sm3, dict(b2=1.5), r"`b2` must lie in \[0.0, 1.0\]"),
        (adamx.sm3, dict(momentum=1.0), r"`momentum` must lie in \[0.0, 1.0\)"),
    ],
)
def test_construction_errors_name_the_argument(factory, kw, match):
    with pytest.raises(ValueError, match=match):
        factory(**kw)
