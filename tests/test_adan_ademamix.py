"""Adan, AdEMAMix and Simplified AdEMAMix against optax (``optax.adan``,
``optax.contrib.ademamix`` / ``simplified_ademamix``: the same rules, compared step for step
over 100 steps in float64 and float32) and against NumPy float64 references from the papers'
formulas (tests/reference_mixtures.py) for what optax does not have (AdEMAMix's warm-up).

The problem and the runners are test_other_family's: a quadratic + sine loss on a tree with
a matrix, a 3-D block, a vector starting at zero and a scalar, gradients made in NumPy from
the current params, so the runs differ only in the optimizers' arithmetic.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
import reference_mixtures as ref
from test_other_family import assert_close, decay_mask, make_problem, run_jax, run_ref

import adamx


def _b3_schedule(k):
    return 0.999 - 0.1 / (
        1.0 + jnp.asarray(k, jnp.float64 if jax.config.x64_enabled else jnp.float32)
    )


def _alpha_schedule(k):
    k = jnp.asarray(k, jnp.float64 if jax.config.x64_enabled else jnp.float32)
    return 3.0 * jnp.minimum(k / 20.0, 1.0)


OPTAX_EQUIVALENT = [
    ("adan", lambda: adamx.adan(1e-2), lambda: optax.adan(1e-2)),
    (
        "adan-options",
        lambda: adamx.adan(2e-2, 0.9, 0.8, 0.95, 1e-3, 1e-6, weight_decay=0.3, mask=decay_mask),
        lambda: optax.adan(2e-2, 0.9, 0.8, 0.95, 1e-3, 1e-6, weight_decay=0.3, mask=decay_mask),
    ),
    ("ademamix", lambda: adamx.ademamix(1e-2), lambda: optax.contrib.ademamix(1e-2)),
    (
        "ademamix-schedules",
        lambda: adamx.ademamix(
            1e-2, 0.8, 0.99, _b3_schedule, _alpha_schedule, 1e-3, 1e-6, weight_decay=0.2,
            mask=decay_mask,
        ),
        lambda: optax.contrib.ademamix(
            1e-2, 0.8, 0.99, _b3_schedule, _alpha_schedule, 1e-3, 1e-6, weight_decay=0.2,
            mask=decay_mask,
        ),
    ),
    (
        "simplified_ademamix",
        lambda: adamx.simplified_ademamix(1e-3),
        lambda: optax.contrib.simplified_ademamix(1e-3),
    ),
    (
        "simplified_ademamix-options",
        lambda: adamx.simplified_ademamix(
            1e-3, 0.9, 0.99, _alpha_schedule, 1e-3, 1e-6, weight_decay=0.2, mask=decay_mask
        ),
        lambda: optax.contrib.simplified_ademamix(
            1e-3, 0.9, 0.99, _alpha_schedule, 1e-3, 1e-6, weight_decay=0.2, mask=decay_mask
        ),
    ),
]  # fmt: skip
IDS = [c[0] for c in OPTAX_EQUIVALENT]


@pytest.mark.parametrize("name, ours, theirs", OPTAX_EQUIVALENT, ids=IDS)
def test_equals_optax_float64(x64, name, ours, theirs):
    problem = make_problem()
    got = run_jax(ours(), problem)
    with jax.numpy_dtype_promotion("standard"):  # optax mixes int32 counts and floats
        want = run_jax(theirs(), problem)
    assert_close(got, want)  # rtol 1e-10 at every step


@pytest.mark.parametrize("name, ours, theirs", OPTAX_EQUIVALENT, ids=IDS)
def test_equals_optax_float32(name, ours, theirs):
    problem = make_problem()
    got = run_jax(ours(), problem)
    with jax.numpy_dtype_promotion("standard"):
        want = run_jax(theirs(), problem)
    assert got[0]["w"].dtype == np.float32
    assert_close(got, want, rtol=RTOL32, atol=ATOL32)


# float32 rounding only: the bias corrections are formed differently (expm1 / log1p here,
# b**t in optax) and the averages in lerp form. Measured over the 100 steps (params of size
# 0.1-3): at most 5.0e-6 (ademamix, 40 ulps of 1.0), 1.1e-6 or less for the others; in
# float64 at most 1.4e-15.
RTOL32, ATOL32 = 1e-5, 1e-5

REFERENCES = [
    ("adan", lambda: adamx.adan(1e-2), ref.Adan, dict(lr=1e-2)),
    (
        "adan-wd",
        lambda: adamx.adan(2e-2, 0.9, 0.8, 0.95, 1e-3, 0.0, weight_decay=0.3),
        ref.Adan,
        dict(lr=2e-2, b1=0.9, b2=0.8, b3=0.95, eps=1e-3, eps_root=0.0, wd=0.3),
    ),
    (
        "adan-proximal-schedule",
        lambda: adamx.adan(_lr_schedule, eps_root=0.0, weight_decay=0.5, proximal=True),
        ref.Adan,
        dict(eps_root=0.0, wd=0.5, proximal=True),
    ),
    ("ademamix", lambda: adamx.ademamix(1e-2), ref.AdEMAMix, dict(lr=1e-2)),
    (
        "ademamix-warmup",
        lambda: adamx.ademamix(1e-2, 0.8, 0.99, 0.999, 4.0, weight_decay=0.1, warmup=60),
        ref.AdEMAMix,
        dict(lr=1e-2, b1=0.8, b2=0.99, b3=0.999, alpha=4.0, wd=0.1, warmup=60),
    ),
    (
        "simplified_ademamix",
        lambda: adamx.simplified_ademamix(1e-3, alpha=2.0, weight_decay=0.1),
        ref.SimplifiedAdEMAMix,
        dict(lr=1e-3, alpha=2.0, wd=0.1),
    ),
]


@pytest.mark.parametrize(
    "name, ours, ref_cls, ref_kwargs", REFERENCES, ids=[c[0] for c in REFERENCES]
)
def test_matches_numpy_reference(x64, name, ours, ref_cls, ref_kwargs):
    problem = make_problem()
    lr = _lr_reference if "lr" not in ref_kwargs else None
    want = run_ref(ref_cls, dict(ref_kwargs, lr=None) if lr else ref_kwargs, problem, lr=lr)
    assert_close(run_jax(ours(), problem), want)


def _lr_schedule(k):
    return 0.05 / (1.0 + 0.05 * jnp.asarray(k, jnp.float64))


def _lr_reference(k):
    return 0.05 / (1.0 + 0.05 * k)


def test_proximal_decay_differs_from_the_decoupled_one():
    problem = make_problem()
    prox = run_jax(adamx.adan(0.05, weight_decay=0.5, proximal=True), problem)
    plain = run_jax(adamx.adan(0.05, weight_decay=0.5), problem)
    assert not np.allclose(prox[5]["w"], plain[5]["w"], rtol=1e-4)


def test_warmup_schedules_are_the_papers():
    alpha_at, b3_at = adamx.ademamix_schedules(5.0, 0.9999, 0.9, 100)
    for k in (0, 9, 49, 98, 99, 150):
        t = k + 1
        assert float(alpha_at(k)) == pytest.approx(ref.ademamix_alpha(t, 5.0, 100), rel=1e-6)
        assert float(b3_at(k)) == pytest.approx(ref.ademamix_beta3(t, 0.9999, 0.9, 100), rel=1e-6)
    assert float(b3_at(99)) == pytest.approx(0.9999, rel=1e-7)  # reaches b3 at t = T


def test_warmup_changes_the_trajectory():
    """The warm-up is not a no-op: it must differ from the constant alpha / b3 run."""
    problem = make_problem()
    plain = run_jax(adamx.ademamix(1e-2, b3=0.999), problem)
    warm = run_jax(adamx.ademamix(1e-2, b3=0.999, warmup=60), problem)
    assert not np.allclose(plain[10]["w"], warm[10]["w"], rtol=1e-3)


def test_adan_first_step_is_a_sign_step_and_uses_gradient_differences():
    opt = adamx.adan(0.1, eps=0.0, eps_root=0.0)
    params = {"w": jnp.zeros(2)}
    state = opt.init(params)
    u, state = opt.update({"w": jnp.asarray([2.0, -0.5])}, state, params)
    np.testing.assert_allclose(np.asarray(u["w"]), [-0.1, 0.1], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(state[0].prev_grad["w"]), [2.0, -0.5])
    # same gradient again: d = 0, the delta average stays 0
    _, state = opt.update({"w": jnp.asarray([2.0, -0.5])}, state, params)
    np.testing.assert_array_equal(np.asarray(state[0].delta["w"]), [0.0, 0.0])


@pytest.mark.parametrize(
    "build, arg, allowed",
    [
        (lambda: adamx.adan(b3=1.0), "b3", r"\[0.0, 1.0\)"),
        (lambda: adamx.adan(eps_root=-1.0), "eps_root", r"\[0.0, inf\)"),
        (lambda: adamx.adan(weight_decay="0.1"), "weight_decay", "number"),
        (lambda: adamx.ademamix(alpha=-1.0), "alpha", r"\[0.0, inf\)"),
        (lambda: adamx.ademamix(b3=1.5), "b3", r"\[0.0, 1.0\)"),
        (lambda: adamx.ademamix(warmup=0), "warmup", r"\[1.0, inf\)"),
        (lambda: adamx.ademamix(b3=_b3_schedule, warmup=10), "b3", "a number when `warmup`"),
        (lambda: adamx.simplified_ademamix(b1=1.0), "b1", r"\[0.0, 1.0\)"),
        (lambda: adamx.simplified_ademamix(alpha="1"), "alpha", "number"),
    ],
)
def test_bad_hyperparameters_raise_at_construction(build, arg, allowed):
    with pytest.raises(ValueError, match=rf"`{arg}`.*{allowed}"):
        build()
