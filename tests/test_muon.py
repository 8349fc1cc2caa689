"""Muon against torch.optim.Muon (float64 over 64 steps, with torch's Newton-Schulz in float64;
and torch's own bfloat16 iteration against adamx's default), against torch.optim.Muon plus
torch.optim.AdamW for the leaves that are not matrices, against optax.contrib.muon
(``reading="optax"``, float64 and float32), and against the NumPy reference of
tests/reference_mixtures.py for what no anchor has (a custom ``muon_mask``).

The torch tests skip without torch (``pip install -e ".[test,torch]"``).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
import reference_mixtures as ref

import adamx

STEPS = 64
SHAPES = {"a": (5, 4), "b": (3, 6), "c": (4, 4), "s": (), "v": (4,)}  # sorted: leaf order
MATRICES = [k for k, s in SHAPES.items() if len(s) == 2]


def problem(seed=0, only=None):
    rng = np.random.default_rng(seed)
    names = only or sorted(SHAPES)
    params = {k: rng.normal(size=SHAPES[k]) for k in names}
    consts = {k: (rng.uniform(0.5, 2.0, SHAPES[k]), rng.normal(size=SHAPES[k])) for k in names}
    noise = [{k: rng.uniform(-1.0, 3.0, SHAPES[k]) for k in names} for _ in range(STEPS)]
    return params, consts, noise


def np_grad(consts, params, noise):
    """A quadratic + sine loss, gradient times noise that flips its sign now and then."""
    return {k: noise[k] * (a * (params[k] - c) + 0.3 * np.cos(3 * params[k]))
            for k, (a, c) in consts.items()}  # fmt: skip


def run_jax(opt, prob, dtype=None):
    params, consts, noise = prob

    @jax.jit
    def step(p, s, g):
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    p = {k: jnp.asarray(v, dtype) for k, v in params.items()}
    s, out = opt.init(p), []
    for k in range(STEPS):
        g = np_grad(consts, {n: np.asarray(v, np.float64) for n, v in p.items()}, noise[k])
        p, s = step(p, s, {n: jnp.asarray(v, p[n].dtype) for n, v in g.items()})
        out.append({n: np.asarray(v, np.float64) for n, v in p.items()})
    return out


def run_torch(make_optimizers, prob, *, float64_iteration=True, monkeypatch=None):
    """torch's Muon (and whatever else ``make_optimizers`` builds) on float64 params. With
    ``float64_iteration`` its Newton-Schulz runs in float64: ``Tensor.bfloat16`` is made a
    copy while it steps (torch's own code, run in the params' dtype)."""
    import torch

    if float64_iteration:
        monkeypatch.setattr(torch.Tensor, "bfloat16", lambda self: self.clone())
    params, consts, noise = prob
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    optimizers = make_optimizers(tp)
    out = []
    for k in range(STEPS):
        g = np_grad(consts, {n: v.detach().numpy() for n, v in tp.items()}, noise[k])
        for n in tp:
            tp[n].grad = torch.tensor(g[n])
        for o in optimizers:
            o.step()
        out.append({n: v.detach().numpy().copy() for n, v in tp.items()})
    return out


def assert_close(got, want, rtol=1e-10, atol=1e-13):
    assert len(got) == len(want) == STEPS
    for k, (g, w) in enumerate(zip(got, want)):
        for n in w:
            np.testing.assert_allclose(
                g[n], w[n], rtol=rtol, atol=atol, err_msg=f"leaf {n!r} after step {k + 1}"
            )


# ----------------------------------------------------------------------------- torch
TORCH_CASES = [
    ("defaults", {}, {}),
    (
        "no-nesterov-match-rms",
        dict(nesterov=False, adjust_lr_fn="match_rms_adamw", weight_decay=0.3),
        dict(nesterov=False, adjust_lr_fn="match_rms_adamw", weight_decay=0.3),
    ),
    (
        "coefficients-steps-eps",
        dict(ns_coeffs=(2.0, -1.5, 0.5), ns_steps=3, eps=1e-3, beta=0.8, weight_decay=None),
        dict(ns_coefficients=(2.0, -1.5, 0.5), ns_steps=3, eps=1e-3, momentum=0.8,
             weight_decay=0.0),
    ),
]  # fmt: skip


@pytest.mark.parametrize("name, ours, theirs", TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
def test_equals_torch_muon_in_float64(x64, monkeypatch, name, ours, theirs):
    torch = pytest.importorskip("torch")
    prob = problem(only=MATRICES)
    want = run_torch(
        lambda tp: [torch.optim.Muon(list(tp.values()), lr=0.02, **theirs)],
        prob,
        monkeypatch=monkeypatch,
    )
    got = run_jax(adamx.muon(0.02, ns_dtype=jnp.float64, **ours), prob)
    assert_close(got, want)


def test_default_bfloat16_iteration_equals_torchs(x64):
    """torch runs Newton-Schulz in bfloat16; adamx's default does the same, rounding where
    torch rounds (each product accumulated in float32, rounded once to bfloat16)."""
    torch = pytest.importorskip("torch")
    prob = problem(only=MATRICES)
    want = run_torch(
        lambda tp: [torch.optim.Muon(list(tp.values()), lr=0.02)],
        prob,
        float64_iteration=False,
    )
    got = run_jax(adamx.muon(0.02), prob)
    assert_close(got, want, rtol=1e-10, atol=1e-12)
    # and the bfloat16 iteration is not the float64 one: the option matters
    x = jnp.asarray(prob[0]["a"])
    blocks = (adamx.orthogonalize(ns_dtype=d) for d in ("bfloat16", None))
    bf16, f64 = (jax.jit(b.update)(x, optax.EmptyState())[0] for b in blocks)
    assert float(jnp.max(jnp.abs(bf16 - f64))) > 1e-4


def test_equals_torch_muon_plus_adamw_for_the_other_leaves(x64, monkeypatch):
    torch = pytest.importorskip("torch")
    prob = problem()

    def optimizers(tp):
        matrices = [tp[k] for k in MATRICES]
        others = [tp[k] for k in sorted(tp) if k not in MATRICES]
        return [
            torch.optim.Muon(matrices, lr=0.02, weight_decay=0.1),
            torch.optim.AdamW(others, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05),
        ]

    want = run_torch(optimizers, prob, monkeypatch=monkeypatch)
    opt = adamx.muon(
        0.02, ns_dtype=jnp.float64, adam_learning_rate=0.01, adam_b1=0.8, adam_b2=0.99,
        adam_eps=1e-6, adam_weight_decay=0.05,
    )  # fmt: skip
    assert_close(run_jax(opt, prob), want)


# ----------------------------------------------------------------------------- optax
OPTAX_CASES = [
    ("defaults", dict(weight_decay=None), {}),
    (
        "options",
        dict(weight_decay=0.1, nesterov=False, consistent_rms=0.2, adam_b1=0.8, adam_b2=0.99,
             adam_eps_root=1e-6, adam_weight_decay=0.05, adam_learning_rate=0.01, eps=1e-5,
             ns_steps=4),
        dict(weight_decay=0.1, nesterov=False, consistent_rms=0.2, adam_b1=0.8, adam_b2=0.99,
             adam_eps_root=1e-6, adam_weight_decay=0.05, adam_learning_rate=0.01, eps=1e-5,
             ns_steps=4),
    ),
    ("adaptive", dict(weight_decay=None, adaptive=True), dict(adaptive=True)),
    (
        "coefficient-rows",
        dict(weight_decay=None, ns_coeffs=((4.0848, -6.8946, 2.927), (3.9505, -6.3029, 2.6377),
                                           (3.7418, -5.5913, 2.3037))),
        dict(ns_coeffs=((4.0848, -6.8946, 2.927), (3.9505, -6.3029, 2.6377),
                        (3.7418, -5.5913, 2.3037)), ns_steps=3),
    ),
]  # fmt: skip


def _optax_pair(ours, theirs):
    return adamx.muon(0.02, reading="optax", **ours), optax.contrib.muon(0.02, **theirs)


@pytest.mark.parametrize("name, ours, theirs", OPTAX_CASES, ids=[c[0] for c in OPTAX_CASES])
def test_optax_reading_equals_optax_contrib_muon(x64, name, ours, theirs):
    mine, theirs_ = _optax_pair(ours, theirs)
    got = run_jax(mine, problem())
    with jax.numpy_dtype_promotion("standard"):
        want = run_jax(theirs_, problem())
    assert_close(got, want)


def test_optax_reading_equals_optax_contrib_muon_in_float32():
    _, ours, theirs = OPTAX_CASES[1]
    mine, theirs_ = _optax_pair(ours, theirs)
    got = run_jax(mine, problem(), jnp.float32)
    with jax.numpy_dtype_promotion("standard"):
        want = run_jax(theirs_, problem(), jnp.float32)
    # float32 rounding (the norm is formed with a rescaling here): at most 5.5e-6 measured
    assert_close(got, want, rtol=1e-5, atol=2e-5)


# ------------------------------------------------- optax's options: preconditioning, ...
DIMS = optax.contrib.MuonDimensionNumbers
FEW_STEPS = 3
OPTAX_OPTION_CASES = [
    # name, params' shapes (and dtype), the options both take
    (  # complex leaves: X X^H, the conjugate gradient, <d, O> = sum(conj(d) O)
        "complex-spectral-adaptive",
        {"a": (5, 4), "v": (4,), "dtype": jnp.complex64},
        dict(preconditioning="spectral", adaptive=True, nesterov=False),
    ),
    ("aol-dion", {"a": (4, 6), "v": (4,)}, dict(preconditioning="aol", ns_coeffs="dion")),
    (  # a 4-D leaf as a batch of (3, 4 * 2) matrices; a matrix left to AdamW by None
        "schatten-dimension-numbers",
        {"k": (2, 3, 3, 4), "m": (3, 3)},
        dict(
            preconditioning="schatten",
            consistent_rms=0.2,
            muon_weight_dimension_numbers=lambda p: {"k": DIMS(1, (0, 3)), "m": None},
        ),
    ),
]  # fmt: skip


def run_few(opt, shapes):
    """``FEW_STEPS`` steps on a weighted quadratic (the conjugate gradient for complex
    leaves, optax's convention), under one jit; the params after each step."""
    shapes = dict(shapes)
    dtype = shapes.pop("dtype", jnp.float32)
    rng = np.random.default_rng(1)

    def draw(shape):
        x = rng.normal(size=shape)
        return x + 1j * rng.normal(size=shape) if jnp.issubdtype(dtype, jnp.complexfloating) else x

    params = {k: jnp.asarray(draw(s), dtype) for k, s in shapes.items()}
    target = {k: jnp.asarray(draw(s), dtype) for k, s in shapes.items()}
    weight = {k: jnp.asarray(rng.uniform(0.5, 2.0, s), jnp.float32) for k, s in shapes.items()}

    def loss(p):
        terms = [jnp.sum(weight[k] * jnp.square(jnp.abs(p[k] - target[k]))) for k in p]
        return sum(terms[1:], terms[0])

    def step(carry, _):
        p, s = carry
        g = jax.tree.map(jnp.conj, jax.grad(loss)(p))
        u, s = opt.update(g, s, p)
        p = optax.apply_updates(p, u)
        return (p, s), p

    return jax.jit(lambda p: jax.lax.scan(step, (p, opt.init(p)), length=FEW_STEPS)[1])(params)


@pytest.mark.parametrize(
    "name, shapes, options", OPTAX_OPTION_CASES, ids=[c[0] for c in OPTAX_OPTION_CASES]
)
def test_optax_options_equal_optax_contrib_muon_in_float32(name, shapes, options):
    got = run_few(adamx.muon(0.02, reading="optax", weight_decay=0.05, **options), shapes)
    with jax.numpy_dtype_promotion("standard"):
        want = run_few(optax.contrib.muon(0.02, weight_decay=0.05, **options), shapes)
    # float32 rounding: the norm (rescaled here), and aol/schatten's gram formed anew here
    # where optax rescales its own
    chex.assert_trees_all_close(got, want, rtol=2e-5, atol=2e-5)


# ----------------------------------------------------------------------------- reference
def test_custom_mask_follows_the_numpy_reference(x64):
    """A matrix left to AdamW by ``muon_mask``: no anchor has this split."""
    prob = problem()
    mask = {"a": True, "b": False, "c": True, "s": False, "v": False}
    opt = adamx.muon(0.02, ns_dtype=jnp.float64, muon_mask=mask, adam_weight_decay=0.05)
    names = sorted(SHAPES)
    reference = ref.Muon(
        [SHAPES[n] for n in names],
        lr=0.02,
        adam_weight_decay=0.05,
        matrices=[mask[n] for n in names],
    )
    params, consts, noise = prob
    p, want = dict(params), []
    for k in range(STEPS):
        g = np_grad(consts, p, noise[k])
        p = dict(zip(names, reference.step([p[n] for n in names], [g[n] for n in names])))
        want.append(p)
    assert_close(run_jax(opt, prob), want)


def test_orthogonalize_gives_singular_values_near_one_and_keeps_zeros():
    x = jax.random.normal(jax.random.key(0), (16, 8))
    block = adamx.orthogonalize(ns_dtype=jnp.float32)
    o = jax.jit(block.update)({"x": x, "z": jnp.zeros((3, 2))}, optax.EmptyState())[0]
    np.testing.assert_array_equal(np.asarray(o["z"]), 0.0)
    # o = U f(S) V^T: the singular vectors of x, singular values pushed into about [0.7, 1.2]
    u, _, vt = np.linalg.svd(np.asarray(x), full_matrices=False)
    core = u.T @ np.asarray(o["x"]) @ vt.T
    np.testing.assert_allclose(core - np.diag(np.diag(core)), 0.0, atol=2e-5)
    assert np.all((np.diag(core) > 0.6) & (np.diag(core) < 1.25)), np.diag(core)


def test_huge_gradients_are_normalised_not_overflowed():
    x = jnp.full((3, 4), 1e20, jnp.float32).at[0, 0].set(-1e20)
    o = adamx.orthogonalize(ns_dtype=jnp.float32).update(x, None)[0]
    assert np.all(np.isfinite(np.asarray(o))) and float(jnp.max(jnp.abs(o))) > 0.1


@pytest.mark.parametrize(
    "build, arg, allowed",
    [
        (lambda: adamx.muon(reading="keras"), "reading", "one of"),
        (lambda: adamx.muon(adjust_lr_fn="rms"), "adjust_lr_fn", "one of"),
        (lambda: adamx.muon(ns_coeffs=(1.0, 2.0)), "ns_coeffs", "three numbers"),
        (lambda: adamx.muon(ns_steps=-1), "ns_steps", "int >= 0"),
        (lambda: adamx.muon(ns_steps=2.5), "ns_steps", "int >= 0"),
        (lambda: adamx.muon(beta=1.0), "beta", r"\[0.0, 1.0\)"),
        (lambda: adamx.muon(eps=-1.0), "eps", r"\[0.0, inf\)"),
        (lambda: adamx.muon(ns_dtype="int8"), "ns_dtype", "floating-point"),
        (lambda: adamx.muon(consistent_rms=-0.2), "consistent_rms", r"\[0.0, inf\)"),
        (lambda: adamx.muon(adam_b2=1.0), "b2", r"\[0.0, 1.0\)"),
        (lambda: adamx.muon(preconditioning="qr"), "preconditioning", "one of"),
        (lambda: adamx.muon(ns_coeffs="muon"), "ns_coeffs", "presets"),
        (lambda: adamx.muon(muon_weight_dimension_numbers={"w": 2}), "muon_weight_dim.*", "hold"),
        (
            lambda: adamx.muon(muon_mask={"w": True}, muon_weight_dimension_numbers=DIMS()),
            "muon_mask",
            "give one",
        ),
    ],
)
def test_bad_hyperparameters_raise_at_construction(build, arg, allowed):
    with pytest.raises(ValueError, match=rf"`{arg}`.*{allowed}"):
        build()


def test_a_mask_that_marks_a_non_matrix_names_it():
    opt = adamx.muon(muon_mask=lambda p: jax.tree.map(lambda _: True, p))
    with pytest.raises(ValueError, match=r"`muon_mask` marks params\['v'\] \(shape \(4,\)\)"):
        opt.init({"w": jnp.ones((2, 2)), "v": jnp.ones(4)})
    opt = adamx.muon(muon_weight_dimension_numbers={"w": DIMS(0, 2), "v": None})
    with pytest.raises(ValueError, match=r"params\['w'\] has shape \(2, 2\)"):
        opt.init({"w": jnp.ones((2, 2)), "v": jnp.ones(4)})
