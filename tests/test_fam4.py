"""Issue 16's fourth batch against optax.contrib 0.2.8 step for step: prodigy and
dadapt_adamw (the distance estimate D and the params along 60 steps, every option), sophia
(through its extra arguments) and galore (projected Adam, refreshed projectors).

The gradient of a quadratic + cosine loss is computed inside one ``lax.scan`` from the
current params, the same function for both optimizers, so the runs differ only in the
optimizers' arithmetic. In float64 the two agree to 1e-10 (the rule is the same); in float32
only the first steps are compared: D is the maximum of a ratio of sums with cancellation,
so a last-bit difference (optax forms the bias corrections in float32 as ``1 - b**t``,
adamx as ``-expm1(t log1p(-(1 - b)))``) moves a later estimate, and every later step with
it (both float32 runs are ~50% away from the float64 trajectory after 60 steps of this
problem, and about as far from each other).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
import reference_fam4 as ref

import adamx

SHAPES = {"b": (4,), "s": (), "w": (5, 4)}


def problem(dtype):
    rng = np.random.default_rng(0)
    params = {n: jnp.asarray(rng.normal(size=s), dtype) for n, s in SHAPES.items()}
    params["b"] = jnp.zeros(4, dtype)
    target = {n: jnp.asarray(2 * rng.normal(size=s), dtype) for n, s in SHAPES.items()}
    return params, target


def run(opt, dtype, steps):
    """Params and D after every step, from one jitted scan."""
    params, target = problem(dtype)

    def body(carry, _):
        p, s = carry
        g = jax.tree.map(lambda x, c: (x - c) * (1 + 0.3 * jnp.cos(3 * x)), p, target)
        u, s = opt.update(g, s, p)
        p = optax.apply_updates(p, u)
        return (p, s), (p, optax.tree_utils.tree_get(s, "estim_lr"))

    carry = (params, opt.init(params))
    return jax.jit(lambda c: jax.lax.scan(body, c, None, length=steps)[1])(carry)


def theirs_run(make, dtype, steps):
    with jax.numpy_dtype_promotion("standard"):
        return run(make(), dtype, steps)


def decay(k):  # a step schedule: its values are exact in every dtype
    return jnp.where(jnp.asarray(k) < 20, 1.0, 0.25)


ALL_PRODIGY = dict(betas=(0.8, 0.99), beta3=0.9, eps=1e-6, estim_lr0=1e-5, estim_lr_coef=0.5)
ALL_DADAPT = dict(betas=(0.8, 0.99), eps=1e-6, estim_lr0=1e-5)
# (id, call of a module (adamx or optax.contrib), the NumPy reference)
CASES = [
    ("prodigy", lambda m: m.prodigy(), lambda s: ref.Prodigy(s)),
    (
        "prodigy-all",
        lambda m: m.prodigy(decay, **ALL_PRODIGY, weight_decay=0.1, safeguard_warmup=True),
        lambda s: ref.Prodigy(s, decay, **ALL_PRODIGY, wd=0.1, safeguard_warmup=True),
    ),
    (  # a constant rate here, the schedule in prodigy-all: the same code reads both
        "dadapt_adamw-all",
        lambda m: m.dadapt_adamw(0.5, **ALL_DADAPT, weight_decay=0.1),
        lambda s: ref.DAdaptAdamW(s, 0.5, **ALL_DADAPT, wd=0.1),
    ),
]
IDS = [c[0] for c in CASES]


def assert_runs_close(ours, theirs, rtol):
    (p1, d1), (p2, d2) = ours, theirs
    np.testing.assert_allclose(np.asarray(d1), np.asarray(d2), rtol=rtol)
    for name in SHAPES:
        a, b = np.asarray(p1[name], np.float64), np.asarray(p2[name], np.float64)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.max(np.abs(b)), err_msg=name)


def reference_run(make_ref, steps):
    """The NumPy float64 reference on the same problem (the gradient in NumPy)."""
    params, target = problem(jnp.float64)
    names = sorted(SHAPES)
    x = [np.asarray(params[n]) for n in names]
    c = [np.asarray(target[n]) for n in names]
    opt = make_ref([p.shape for p in x])
    out, ds = {n: [] for n in names}, []
    for _ in range(steps):
        g = [(p - t) * (1 + 0.3 * np.cos(3 * p)) for p, t in zip(x, c)]
        x = opt.step(x, g)
        for n, p in zip(names, x):
            out[n].append(p)
        ds.append(opt.d)
    return {n: np.stack(v) for n, v in out.items()}, np.asarray(ds)


@pytest.mark.parametrize(("case", "make", "make_ref"), CASES, ids=IDS)
def test_float64_trajectory_matches_optax_and_the_reference(case, make, make_ref, x64):
    ours = run(make(adamx), jnp.float64, 60)
    assert_runs_close(ours, theirs_run(lambda: make(optax.contrib), jnp.float64, 60), 1e-10)
    assert_runs_close(ours, reference_run(make_ref, 60), 1e-10)
    assert float(ours[1][-1]) > 3 * float(ours[1][0])  # D grows: the estimate is tested


@pytest.mark.parametrize("name", ["prodigy", "dadapt_adamw"])
def test_distance_estimate_reads_d_through_wrappers_and_stays_at_zero_gradients(name):
    opt = optax.inject_hyperparams(getattr(adamx, name))(learning_rate=1.0)
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    assert float(adamx.distance_estimate(state)) == np.float32(1e-6)
    u, state = jax.jit(opt.update)({"w": jnp.zeros(3)}, state, params)  # optax's: 0/0 = NaN
    assert float(adamx.distance_estimate(state)) == np.float32(1e-6)
    np.testing.assert_array_equal(np.asarray(u["w"]), 0.0)
    with pytest.raises(ValueError, match="distance_estimate"):
        adamx.distance_estimate(adamx.adam().init(params))


BAD = [
    (lambda: adamx.prodigy(betas=0.9), "betas", "0.9"),
    (lambda: adamx.prodigy(betas=(0.9, 1.0)), "betas[1]", "1.0"),
    (lambda: adamx.prodigy(beta3=-0.1), "beta3", "-0.1"),
    (lambda: adamx.prodigy(estim_lr0=0.0), "estim_lr0", "> 0"),
    (lambda: adamx.prodigy(estim_lr_coef=-1.0), "estim_lr_coef", "-1.0"),
    (lambda: adamx.prodigy(safeguard_warmup=1), "safeguard_warmup", "1"),
    (lambda: adamx.dadapt_adamw(eps=-1.0), "eps", "-1.0"),
    (lambda: adamx.dadapt_adamw(weight_decay=-0.1), "weight_decay", "-0.1"),
    (lambda: adamx.dadapt_adamw("1.0"), "learning_rate", "'1.0'"),
]


@pytest.mark.parametrize(("make", "arg", "shown"), BAD, ids=[f"{a}-{i}" for i, (_, a, _) in
                                                             enumerate(BAD)])  # fmt: skip
def test_bad_values_raise_at_construction_naming_the_argument(make, arg, shown):
    with pytest.raises(ValueError) as info:
        make()
    assert f"`{arg}`" in str(info.value)
    assert shown in str(info.value)


# ----------------------------------------------------------------------------- sophia
# A quadratic whose Hessian is diagonal (2a) plus a small sine: Hutchinson's z * (H z) is
# then the exact diagonal for every Rademacher z, so the estimate is deterministic and both
# libraries' runs differ only in their arithmetic (they also draw the same z for one key).
def sophia_problem(dtype):
    rng = np.random.default_rng(1)
    a = {n: jnp.asarray(rng.uniform(0.5, 2.0, size=s), dtype) for n, s in SHAPES.items()}
    c = {n: jnp.asarray(rng.normal(size=s), dtype) for n, s in SHAPES.items()}
    return a, c


def sophia_run(opt, dtype, steps, promotion="strict"):
    a, c = sophia_problem(dtype)

    def loss(p):
        return sum(jnp.sum(a[k] * (p[k] - c[k]) ** 2 + 0.1 * jnp.sin(p[k])) for k in p)

    def body(carry, _):
        p, s = carry
        u, s = opt.update(jax.grad(loss)(p), s, p, obj_fn=loss)
        p = optax.apply_updates(p, u)
        return (p, s), p

    with jax.numpy_dtype_promotion(promotion):
        carry = (jax.tree.map(jnp.zeros_like, a), opt.init(jax.tree.map(jnp.zeros_like, a)))
        return jax.jit(lambda c: jax.lax.scan(body, c, None, length=steps)[1])(carry)


SOPHIA_ALL = dict(b1=0.9, b2=0.95, eps=1e-6, weight_decay=0.01, gamma=0.5, clip_threshold=0.5,
                  update_interval=3)  # fmt: skip


def test_sophia_trajectory_matches_optax(x64):
    """float64 at the defaults, the Hessian estimated from obj_fn (the options are checked
    against the NumPy reference below). Clipped, sign-like steps: an element whose m is near
    0 at the optimum is a rounding away from the other sign of a tiny step, hence the atol."""
    ours = sophia_run(adamx.sophia(0.05), "float64", 40)
    theirs = sophia_run(optax.contrib.sophia(0.05), "float64", 40, "standard")
    for name in SHAPES:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-10, atol=1e-10)


class GivenDiagonal(optax.GradientTransformation):
    """A Hessian-diagonal estimator that returns what the caller passes as ``diag=``."""

    def __new__(cls):
        def update(updates, state, params=None, *, diag, **extra):
            return diag, state

        return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)


def test_sophia_hands_extra_arguments_to_its_estimator_and_follows_the_reference():
    """Any estimator and its own keyword arguments, through the guard, the chain and
    lax.cond; against the NumPy reference, every option, 12 steps (4 refreshes)."""
    kw = dict(SOPHIA_ALL, eps=1e-3)
    opt = optax.chain(
        optax.identity(), adamx.sophia(0.05, **kw, hessian_diagonal_fn=GivenDiagonal())
    )
    rng = np.random.default_rng(2)
    names = sorted(SHAPES)
    params = {n: jnp.asarray(rng.normal(size=SHAPES[n])) for n in names}
    rename = {"weight_decay": "wd"}
    reference = ref.Sophia(
        [SHAPES[n] for n in names], 0.05, **{rename.get(k, k): v for k, v in kw.items()}
    )
    step = jax.jit(opt.update)
    state, x = opt.init(params), [np.asarray(params[n], np.float64) for n in names]
    for _ in range(12):
        g = {n: jnp.asarray(rng.normal(size=SHAPES[n])) for n in names}
        e = {n: jnp.asarray(rng.uniform(0.1, 4.0, size=SHAPES[n])) for n in names}
        u, state = step(g, state, params, diag=e)
        params = optax.apply_updates(params, u)
        x = reference.step(x, [np.asarray(g[n], np.float64) for n in names],
                           [np.asarray(e[n], np.float64) for n in names])  # fmt: skip
        for n, want in zip(names, x):
            np.testing.assert_allclose(
                np.asarray(params[n], np.float64), want, rtol=2e-6, atol=1e-6
            )


def test_sophia_says_what_update_needs():
    opt = adamx.sophia(0.1)
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="obj_fn=lambda p: loss"):
        opt.update({"w": jnp.ones(2)}, opt.init(params), params)
    for make, arg in [
        (lambda: adamx.sophia(0.1, update_interval=0), "update_interval"),
        (lambda: adamx.sophia(0.1, update_interval=2.5), "update_interval"),
        (lambda: adamx.sophia(0.1, gamma=-1.0), "gamma"),
        (lambda: adamx.sophia(0.1, clip_threshold=-1.0), "clip_threshold"),
        (lambda: adamx.sophia(0.1, b2=1.0), "b2"),
    ]:
        with pytest.raises(ValueError, match=f"`{arg}`"):
            make()


# ----------------------------------------------------------------------------- galore
GALORE_SHAPES = {"b": (4,), "v": (3, 7), "w": (8, 5)}  # a tall and a wide matrix: P left, right
GALORE_ALL = dict(rank=2, update_proj_gap=7, scale=0.5, weight_decay=0.1)


def galore_run(opt, dtype, steps, promotion="strict"):
    rng = np.random.default_rng(3)
    p0 = {n: jnp.asarray(rng.normal(size=s), dtype) for n, s in GALORE_SHAPES.items()}
    target = {n: jnp.asarray(rng.normal(size=s), dtype) for n, s in GALORE_SHAPES.items()}

    def body(carry, _):
        p, s = carry
        g = jax.tree.map(lambda x, c: (x - c) * (1 + 0.3 * jnp.cos(3 * x)), p, target)
        u, s = opt.update(g, s, p)
        p = optax.apply_updates(p, u)
        return (p, s), p

    with jax.numpy_dtype_promotion(promotion):
        run = jax.jit(lambda c: jax.lax.scan(body, c, None, length=steps)[1])
        return run((p0, opt.init(p0))), p0, target


def test_galore_matches_optax_and_the_reference():
    """float32, 30 steps, projectors refreshed at steps 1, 8, 15, 22, 29: optax's rule to
    Adam's bias-correction rounding (optax forms 1 - b**t in float32); and the NumPy float64
    reference to float32's rounding, over the 7 steps of the first projector only: at a
    refresh the moments stay in the old basis, so a singular vector whose sign NumPy's SVD
    picks otherwise than XLA's float32 one changes the later run (both are the rule). In
    float64 the reference agrees to 1e-9 over all 30 steps (adamx decomposes float64
    gradients in float64; optax rounds them to float32 first)."""
    ours, p0, target = galore_run(adamx.galore(0.05, **GALORE_ALL), "float32", 30)
    theirs, _, _ = galore_run(optax.contrib.galore(0.05, **GALORE_ALL), "float32", 30, "standard")
    for name in GALORE_SHAPES:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=2e-5, atol=2e-5)
    names = sorted(GALORE_SHAPES)
    kw = {("wd" if k == "weight_decay" else k): v for k, v in GALORE_ALL.items()}
    reference = ref.GaLore([GALORE_SHAPES[n] for n in names], 0.05, **kw)
    x = [np.asarray(p0[n], np.float64) for n in names]
    c = [np.asarray(target[n], np.float64) for n in names]
    for k in range(7):
        x = reference.step(x, [(p - t) * (1 + 0.3 * np.cos(3 * p)) for p, t in zip(x, c)])
        for n, want in zip(names, x):
            np.testing.assert_allclose(ours[n][k], want, rtol=1e-4, atol=1e-4, err_msg=f"{n} {k}")


def test_galore_keeps_low_rank_state_and_refuses_what_it_lacks():
    params = {"w": jnp.ones((64, 16)), "b": jnp.ones(16)}
    state = adamx.galore(rank=4).init(params)
    shapes = {jnp.shape(x) for x in jax.tree.leaves(state)}
    assert (64, 4) in shapes and (4, 16) in shapes and (64, 16) not in shapes
    for make, arg in [
        (lambda: adamx.galore(rank=0), "rank"),
        (lambda: adamx.galore(update_proj_gap=2.5), "update_proj_gap"),
        (lambda: adamx.galore(weight_dimension_numbers={"w": 3}), "weight_dimension_numbers"),
        (lambda: adamx.galore(weight_dimension_numbers=GDN(0, "a")),
         "weight_dimension_numbers.output_axis"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=f"`{arg}`"):
            make()


GDN = optax.contrib.GaLoreDimensionNumbers


def test_galore_reads_higher_rank_leaves_with_dimension_numbers_as_optax():
    """float32, 4 steps, projectors refreshed at steps 1 and 3: a (6, 3, 4) leaf read as the
    wide (4, 18) matrix (output axes (0, 1) after reduction axis 2: a transpose), a 2-D
    leaf as its transpose (the spec (1, 0)) and a vector left whole, given as a function
    of the params, against optax.contrib.galore (its bias correction's float32 rounding);
    the default Adam's state has optax's ``mu`` and ``nu`` fields, shaped as optax's."""
    rng = np.random.default_rng(5)
    shapes = {"a": (6, 3, 4), "m": (5, 7), "b": (3,)}
    p0 = {n: jnp.asarray(rng.normal(size=s), jnp.float32) for n, s in shapes.items()}
    dims = lambda _: {"a": GDN(2, (0, 1)), "m": GDN(1, 0), "b": None}  # noqa: E731

    def run(opt):
        def body(carry, _):
            p, s = carry
            u, s = opt.update(jax.tree.map(lambda x: jnp.sin(3 * x) + x, p), s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.jit(lambda c: jax.lax.scan(body, c, None, length=4)[0])((p0, opt.init(p0)))

    kw = dict(rank=2, update_proj_gap=2, weight_dimension_numbers=dims)
    ours, s_ours = run(adamx.galore(0.1, **kw))
    with jax.numpy_dtype_promotion("standard"):  # optax mixes dtypes
        theirs, s_theirs = run(optax.contrib.galore(0.1, **kw))
    for n in shapes:
        np.testing.assert_allclose(ours[n], theirs[n], rtol=2e-5, atol=2e-5, err_msg=n)
    mine, optaxs = s_ours[0].base_optimizer_state, s_theirs[0].base_optimizer_state
    shape = lambda t: jax.tree.map(jnp.shape, t)  # noqa: E731
    assert shape((mine.mu, mine.nu)) == shape((optaxs.mu, optaxs.nu))
    with pytest.raises(ValueError, match="leave axes"):  # every axis named, as optax's
        adamx.galore(weight_dimension_numbers=GDN(0, 1)).init({"a": p0["a"]})
