"""Complex parameters: optax's semantics (complex ``m``, real ``v`` of ``|g|**2``), checked
against an independent NumPy reference (``reference_complex.py``) and optax's aliases."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference_complex as ref

import adamx

SHAPES = [(3, 4), (5,)]
STEPS = 20


def complex_leaves(seed, dtype=np.complex128, zero_row=False):
    rng = np.random.default_rng(seed)
    out = []
    for s in SHAPES:
        x = (rng.normal(size=s) + 1j * rng.normal(size=s)).astype(dtype)
        if zero_row and len(s) == 2:
            x[1] = 0  # a row lazy_adam leaves alone
        out.append(x)
    return out


# name: (adamx factory and kwargs, reference class and kwargs). Keywords only, defaults
# elsewhere, so the rows follow the factories' own defaults.
CASES = {
    "adam": (adamx.adam, dict(learning_rate=0.1), ref.Adam, dict(lr=0.1)),
    "adam_l2": (
        adamx.adam,
        dict(learning_rate=0.1, weight_decay=0.1),
        ref.Adam,
        dict(lr=0.1, wd=0.1),
    ),
    "adam_eps_root": (
        adamx.adam,
        dict(learning_rate=0.1, eps_root=1e-3),
        ref.Adam,
        dict(lr=0.1, eps_root=1e-3),
    ),
    "adam_nesterov": (
        adamx.adam,
        dict(learning_rate=0.1, nesterov=True),
        ref.Adam,
        dict(lr=0.1, nesterov=True),
    ),
    "adam_amsgrad": (
        adamx.adam,
        dict(learning_rate=0.1, amsgrad=True),
        ref.Adam,
        dict(lr=0.1, amsgrad=True),
    ),
    "adamw": (
        adamx.adamw,
        dict(learning_rate=0.1, weight_decay=0.1),
        ref.Adam,
        dict(lr=0.1, wd=0.1, decoupled=True),
    ),
    "amsgrad": (adamx.amsgrad, dict(learning_rate=0.1), ref.Adam, dict(lr=0.1, amsgrad=True)),
    "adamax": (adamx.adamax, dict(learning_rate=0.1), ref.Adamax, dict(lr=0.1)),
    "nadam": (adamx.nadam, dict(learning_rate=0.1), ref.NAdam, dict(lr=0.1)),
    "nadamw": (
        adamx.nadamw,
        dict(learning_rate=0.1, weight_decay=0.1),
        ref.NAdam,
        dict(lr=0.1, wd=0.1),
    ),
    "radam": (adamx.radam, dict(learning_rate=0.1), ref.RAdam, dict(lr=0.1)),
    "adabelief": (adamx.adabelief, dict(learning_rate=0.1), ref.AdaBelief, dict(lr=0.1)),
    "yogi": (adamx.yogi, dict(learning_rate=0.1), ref.Yogi, dict(lr=0.1)),
    "lamb": (
        adamx.lamb,
        dict(learning_rate=0.1, weight_decay=0.1),
        ref.Lamb,
        dict(lr=0.1, wd=0.1),
    ),
    "sgd": (adamx.sgd, dict(learning_rate=0.1), ref.SGD, dict(lr=0.1)),
    "sgd_nesterov": (
        adamx.sgd,
        dict(learning_rate=0.1, momentum=0.9, nesterov=True),
        ref.SGD,
        dict(lr=0.1, momentum=0.9, nesterov=True),
    ),
    "rmsprop": (adamx.rmsprop, dict(learning_rate=0.01), ref.RMSprop, dict(lr=0.01)),
    "rmsprop_centered_momentum": (
        adamx.rmsprop,
        dict(learning_rate=0.01, centered=True, momentum=0.9),
        ref.RMSprop,
        dict(lr=0.01, centered=True, momentum=0.9),
    ),
    "adagrad": (adamx.adagrad, dict(learning_rate=0.1), ref.Adagrad, dict(lr=0.1)),
    "adafactor": (
        adamx.adafactor,
        dict(learning_rate=0.1, weight_decay=0.1),
        ref.Adafactor,
        dict(lr=0.1, wd=0.1),
    ),
    "lazy_adam": (adamx.lazy_adam, dict(learning_rate=0.1), ref.LazyAdam, dict(lr=0.1)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_numpy_reference_in_complex128(name, x64):
    factory, kwargs, rule_cls, rule_kwargs = CASES[name]
    opt = factory(**kwargs)
    rule = rule_cls(SHAPES, **rule_kwargs)
    params = complex_leaves(0)
    ref_params = [p.copy() for p in params]
    state = opt.init([jnp.asarray(p) for p in params])
    step = jax.jit(opt.update)
    jparams = [jnp.asarray(p) for p in params]
    for i in range(STEPS):
        grads = complex_leaves(100 + i, zero_row=name == "lazy_adam")
        updates, state = step([jnp.asarray(g) for g in grads], state, jparams)
        jparams = optax.apply_updates(jparams, updates)
        ref_params = rule.step(ref_params, grads)
    for got, want in zip(jparams, ref_params):
        assert got.dtype == jnp.complex128
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-12)


# adamx rows whose reading equals optax's alias for real params (the others differ by
# design for real params too: AMSGrad's max of the raw v, PyTorch's RMSprop/Adagrad/
# Adafactor/Yogi/RAdam defaults; README's table).
OPTAX_EQUAL = {
    "adam": (adamx.adam(0.1), lambda: optax.adam(0.1)),
    "adamw": (adamx.adamw(0.1, weight_decay=0.1), lambda: optax.adamw(0.1, weight_decay=0.1)),
    "adamax": (adamx.adamax(0.1), lambda: optax.adamax(0.1)),
    "adabelief": (
        adamx.adabelief(0.1, eps_root=1e-16),
        lambda: optax.adabelief(0.1),
    ),
    "nadam": (adamx.nadam(0.1, momentum_decay=None), lambda: optax.nadam(0.1)),
    "lamb": (adamx.lamb(0.1, weight_decay=0.1), lambda: optax.lamb(0.1, weight_decay=0.1)),
    "sgd": (adamx.sgd(0.1, momentum=0.9), lambda: optax.sgd(0.1, momentum=0.9)),
}


@pytest.mark.parametrize("name", sorted(OPTAX_EQUAL))
def test_matches_optax_alias_on_complex_params(name, x64):
    ours, make_theirs = OPTAX_EQUAL[name]
    params = [jnp.asarray(p) for p in complex_leaves(0)]
    with jax.numpy_dtype_promotion("standard"):  # optax's code relies on promotion
        theirs = make_theirs()
        p1, s1 = params, ours.init(params)
        p2, s2 = params, theirs.init(params)
        for i in range(STEPS):
            grads = [jnp.asarray(g) for g in complex_leaves(100 + i)]
            u1, s1 = ours.update(grads, s1, p1)
            u2, s2 = theirs.update(grads, s2, p2)
            p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    chex.assert_trees_all_close(p1, p2, rtol=1e-12, atol=1e-13)


STATE_DTYPE_CASES = {  # alias with a first-moment dtype option -> (kwarg, state field)
    "adam": ("mu_dtype", "mu"),
    "adamw": ("mu_dtype", "mu"),
    "sgd": ("accumulator_dtype", "trace"),
}


@pytest.mark.parametrize("name", sorted(STATE_DTYPE_CASES))
@pytest.mark.parametrize("complex_params", [False, True])
def test_state_dtype_of_other_kind_than_params_follows_optax_and_keeps_updates(
    name, complex_params, x64
):
    """optax accepts ``mu_dtype="complex128"`` for real params (the buffer is complex, its
    imaginary part zero); a real dtype for complex params must not drop the imaginary part
    (the buffer becomes complex of that precision). Either way the updates are optax's
    with the buffer in the params' own dtype."""
    kwarg, field = STATE_DTYPE_CASES[name]
    shared = {"momentum": 0.9} if name == "sgd" else {}
    shared |= {"weight_decay": 1e-2} if name == "adamw" else {}
    requested = "float64" if complex_params else "complex128"
    make = lambda lib, **kw: getattr(lib, name)(0.1, **shared, **kw)  # noqa: E731
    ours, theirs = make(adamx, **{kwarg: requested}), make(optax)
    leaf = complex_leaves(0)[0] if complex_params else np.float64([1.5, -2.0, 0.25])
    params = p_theirs = jnp.asarray(leaf)
    s1 = ours.init(params)
    with jax.numpy_dtype_promotion("standard"):  # optax's code relies on promotion
        s2 = theirs.init(params)
    assert optax.tree.get(s1, field).dtype == jnp.complex128
    for i in range(4):
        g = complex_leaves(10 + i)[0] if complex_params else np.float64([1, -3, 2]) * (i + 1)
        u1, s1 = jax.jit(ours.update)(jnp.asarray(g), s1, params)
        with jax.numpy_dtype_promotion("standard"):
            u2, s2 = theirs.update(jnp.asarray(g), s2, p_theirs)
            p_theirs = optax.apply_updates(p_theirs, u2)
        assert u1.dtype == params.dtype
        params = optax.apply_updates(params, u1)
    chex.assert_trees_all_close(params, p_theirs, rtol=1e-12, atol=1e-13)


REAL_ONLY = (
    "lion", "adadelta", "adopt", "sign_sgd", "signum", "soap", "prodigy", "dadapt_adamw",
    "galore", "sm3", "madgrad",
)  # fmt: skip
COMPLEX_ALIASES = [n for n in adamx.OPTIMIZERS if n not in REAL_ONLY]


@pytest.mark.parametrize("name", COMPLEX_ALIASES)
def test_complex64_state_dtypes_and_updates(name):
    opt = getattr(adamx, name)()
    params = {"w": jnp.asarray(complex_leaves(0, np.complex64)[0])}
    grads = {"w": jnp.asarray(complex_leaves(1, np.complex64)[0])}
    state = opt.init(params)
    updates, new_state = jax.jit(opt.update)(grads, state, params)
    assert updates["w"].dtype == jnp.complex64
    chex.assert_tree_all_finite(updates)
    assert np.any(np.asarray(updates["w"].imag) != 0)
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
    for field in ("mu", "trace"):  # first moments: complex
        for x in jax.tree.leaves(optax.tree.get_all_with_path(state, field)):
            if hasattr(x, "dtype") and x.ndim:
                assert x.dtype == jnp.complex64
    for field in ("nu", "nu_max", "row", "col", "full"):  # second moments: real
        for _, x in optax.tree.get_all_with_path(state, field):
            for leaf in jax.tree.leaves(x):
                assert leaf.dtype == jnp.float32, (field, leaf.dtype)


@pytest.mark.parametrize("name", REAL_ONLY)
def test_real_only_recipes_refuse_complex_params_with_the_reason(name):
    with pytest.raises(ValueError, match=r"params\['w'\] has dtype complex64 \(complex\)"):
        getattr(adamx, name)().init({"w": jnp.ones(2, jnp.complex64)})


def test_storage_of_complex_params_nu_stored_mu_refused():
    params = {"w": jnp.asarray(complex_leaves(0, np.complex64)[0])}
    grads = {"w": jnp.asarray(complex_leaves(1, np.complex64)[0])}
    opt = adamx.with_storage(adamx.adam(0.1), nu="bfloat16")
    state = opt.init(params)
    updates, _ = opt.update(grads, state, params)
    assert updates["w"].dtype == jnp.complex64
    with pytest.raises(ValueError, match=r"with_storage\(mu='bfloat16'\).*params\['w'\]"):
        adamx.with_storage(adamx.adam(0.1), mu="bfloat16").init(params)
    assert adamx.state_bytes_per_param(state, params) > 0


def test_step_falls_back_to_xla_for_complex_params():
    opt = adamx.adam(0.1)  # fused=None: the kernel takes float32 only
    params = {"w": jnp.asarray(complex_leaves(0, np.complex64)[0])}
    grads = {"w": jnp.asarray(complex_leaves(1, np.complex64)[0])}
    state = opt.init(params)
    new_params, _ = adamx.step(opt, grads, state, params)
    updates, _ = opt.update(grads, state, params)
    chex.assert_trees_all_close(new_params, optax.apply_updates(params, updates))
    with pytest.raises(ValueError, match="float32"):
        adamx.step(adamx.adam(0.1, fused=True), grads, state, params)


def test_skip_nonfinite_skips_a_complex_nan():
    opt = adamx.skip_nonfinite(adamx.adam(0.1))
    params = {"w": jnp.ones(3, jnp.complex64)}
    state = opt.init(params)
    bad = {"w": jnp.asarray(np.array([1, np.nan * 1j, 2], np.complex64))}
    updates, new_state = opt.update(bad, state, params)
    assert not np.any(np.asarray(updates["w"]))
    assert int(new_state.total_skipped) == 1
