"""adamx.inspect: the effective learning rate and the update ratio, against NumPy.

Every reference below reads the state's arrays at a known position (``state[0].nu``, the
AMSGrad maximum at ``state[1].nu_max``, ...) and computes the statistics in float64
NumPy, so it shares no code with the search and arithmetic under test. Another family of
checks needs no state at all: with ``b1 = 0`` the first moment is the gradient, so the rate
an update applied to element ``i`` is ``-u_i / g_i``.
"""

from __future__ import annotations

import doctest
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx
from adamx import Diagnostics, inspect, summarize
from adamx.training import _inspect

PARAM_SHAPES = {"dense": {"kernel": (3, 4), "bias": (4,)}, "scale": (), "empty": (0, 3)}


def make_params(dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s) + 1.0, dtype),
        PARAM_SHAPES,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def make_grads(params, step, zeros=True, shrink=False):
    """Random gradients; some elements exactly 0 (``zeros``); shrinking with the step
    (``shrink``, so that AMSGrad's maximum and the plain ``v`` part ways)."""
    rng = np.random.default_rng(100 + step)
    scale = 2.0**-step if shrink else 1.0

    def leaf(p):
        g = rng.normal(size=p.shape) * scale
        if zeros and g.size:
            g.flat[0] = 0.0
        return jnp.asarray(g, p.dtype)

    return jax.tree.map(leaf, params)


def train(opt, params, steps, **grad_kwargs):
    """``[(params, grads, updates, state)]`` after each of ``steps`` updates."""
    state = opt.init(params)
    out = []
    for step in range(steps):
        grads = make_grads(params, step, **grad_kwargs)
        updates, state = opt.update(grads, state, params)
        out.append((params, grads, updates, state))
        params = optax.apply_updates(params, updates)
    return out


def reference_rates(v, t, lr, b2, eps, eps_root=0.0):
    """``(min, median, max)`` of ``lr / (sqrt(v / (1 - b2**t) + eps_root) + eps)`` in
    float64 NumPy; NaN for an empty leaf."""
    v = np.asarray(v, np.float64)
    if v.size == 0:
        return (np.nan,) * 3
    rate = lr / (np.sqrt(v / (1.0 - b2 ** int(t)) + eps_root) + eps)
    return np.min(rate), np.median(rate), np.max(rate)


def reference_ratio(u, p):
    u, p = np.asarray(u, np.float64), np.asarray(p, np.float64)
    with np.errstate(invalid="ignore"):
        return np.linalg.norm(u.ravel()) / np.linalg.norm(p.ravel())


def assert_matches(diag, nu, count, params=None, updates=None, rtol=2e-6, **hyper):
    """Every leaf of ``diag`` against the NumPy reading of ``nu`` (a tree of arrays)."""
    paths = jax.tree_util.tree_flatten_with_path(nu)[0]
    for path, v in paths:
        got = [np.asarray(_at(getattr(diag, f), path)) for f in ("lr_min", "lr_median", "lr_max")]
        want = reference_rates(v, count, **hyper)
        np.testing.assert_allclose(got, want, rtol=rtol, err_msg=jax.tree_util.keystr(path))
        assert int(_at(diag.count, path)) == int(count)
    if updates is not None:
        for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
            want = reference_ratio(_at(updates, path), p)
            got = np.asarray(_at(diag.update_ratio, path))
            np.testing.assert_allclose(got, want, rtol=rtol, err_msg=jax.tree_util.keystr(path))


def _at(tree, path):
    for key in path:
        tree = tree[key.key if hasattr(key, "key") else key.idx]
    return tree


class Case(NamedTuple):
    opt: optax.GradientTransformation
    nu: object  # state -> the tree of v the read-out divides by
    hyper: dict  # the optimizer's learning_rate, b2, eps, eps_root


CASES = {
    "adam": Case(adamx.adam(0.05), lambda s: s[0].nu, dict(lr=0.05, b2=0.999, eps=1e-8)),
    "adam_eps_root": Case(
        adamx.adam(0.05, b2=0.99, eps_root=1e-6),
        lambda s: s[0].nu,
        dict(lr=0.05, b2=0.99, eps=1e-8, eps_root=1e-6),
    ),
    "adamw": Case(
        adamx.adamw(0.05, b2=0.99, weight_decay=0.1),
        lambda s: s[0].nu,
        dict(lr=0.05, b2=0.99, eps=1e-8),
    ),
    "amsgrad": Case(
        adamx.amsgrad(0.05, b2=0.9), lambda s: s[1].nu_max, dict(lr=0.05, b2=0.9, eps=1e-8)
    ),
    "nadam": Case(
        adamx.nadam(0.02, b2=0.95, eps=1e-6), lambda s: s[0].nu, dict(lr=0.02, b2=0.95, eps=1e-6)
    ),
    "yogi": Case(adamx.yogi(0.05), lambda s: s[0].nu, dict(lr=0.05, b2=0.999, eps=1e-3)),
    "clip_then_adam": Case(
        optax.chain(optax.clip_by_global_norm(0.5), adamx.adam(0.05, b2=0.99)),
        lambda s: s[1][0].nu,
        dict(lr=0.05, b2=0.99, eps=1e-8),
    ),
}


def kwargs_of(hyper):
    return dict(
        learning_rate=hyper["lr"],
        b2=hyper["b2"],
        eps=hyper["eps"],
        eps_root=hyper.get("eps_root", 0.0),
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_rates_and_ratio_match_numpy(name):
    case = CASES[name]
    params = make_params()
    for step, (p, _, updates, state) in enumerate(train(case.opt, params, 4, shrink=True)):
        diag = inspect(state, p, updates, **kwargs_of(case.hyper))
        assert_matches(diag, case.nu(state), step + 1, p, updates, **case.hyper)
        assert jax.tree.structure(diag.lr_median) == jax.tree.structure(p)
        for leaf in jax.tree.leaves(diag.lr_min):
            assert leaf.shape == () and leaf.dtype == jnp.float32
    # the empty leaf reports NaN, the others numbers
    assert np.isnan(diag.lr_median["empty"]) and np.isnan(diag.update_ratio["empty"])
    assert np.isfinite(diag.lr_median["dense"]["kernel"])


def test_amsgrad_reports_the_maximum_not_the_plain_second_moment():
    case = CASES["amsgrad"]
    _, _, _, state = train(case.opt, make_params(), 4, shrink=True)[-1]
    diag = inspect(state, **kwargs_of(case.hyper))
    plain = reference_rates(state[0].nu["dense"]["kernel"], 4, **case.hyper)
    kept = reference_rates(state[1].nu_max["dense"]["kernel"], 4, **case.hyper)
    assert not np.allclose(plain, kept, rtol=1e-2)  # the two readings differ here
    got = [float(getattr(diag, f)["dense"]["kernel"]) for f in ("lr_min", "lr_median", "lr_max")]
    np.testing.assert_allclose(got, kept, rtol=2e-6)


def schedule(count):
    return 0.1 / (1.0 + count.astype(jnp.float32))


@pytest.mark.parametrize(
    "factory",
    [
        lambda lr: adamx.adam(lr, b1=0.0, b2=0.9),
        lambda lr: adamx.amsgrad(lr, b1=0.0, b2=0.9),
        lambda lr: adamx.nadam(lr, b1=0.0, b2=0.9),
        lambda lr: adamx.adam(lr, b1=0.0, b2=0.9, nesterov=True),
    ],
    ids=["adam", "amsgrad", "nadam", "adam_nesterov"],
)
def test_rates_are_the_ones_the_update_applied(factory):
    """With ``b1 = 0`` an update is ``-rate * g`` elementwise, so the rates the optimizer
    used are ``-u / g``; a schedule must be read where the update read it."""
    params = {"w": jnp.asarray(np.linspace(-1.0, 1.0, 7), jnp.float32)}
    for p, grads, updates, state in train(factory(schedule), params, 5, zeros=False, shrink=True):
        applied = -np.asarray(updates["w"], np.float64) / np.asarray(grads["w"], np.float64)
        diag = inspect(state, p, updates, learning_rate=schedule, b2=0.9)
        got = [float(getattr(diag, f)["w"]) for f in ("lr_min", "lr_median", "lr_max")]
        want = [applied.min(), np.median(applied), applied.max()]
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_hyperparameters_are_read_from_inject_hyperparams():
    opt = optax.inject_hyperparams(adamx.adam)(learning_rate=schedule, b2=0.99, eps=1e-4)
    params = make_params()
    for step, (p, _, updates, state) in enumerate(train(opt, params, 3)):
        # the keywords are wrong on purpose: the state's values must win
        diag = inspect(state, p, updates, learning_rate=123.0, b2=0.5, eps=1.0)
        lr = 0.1 / (1.0 + step)  # the schedule at the updates before this one
        hyper = dict(lr=lr, b2=float(np.float32(0.99)), eps=float(np.float32(1e-4)))
        assert_matches(diag, state.inner_state[0].nu, step + 1, p, updates, rtol=1e-5, **hyper)


def test_injected_values_are_scoped_to_their_part():
    """Two parts of a multi_transform: one injected, one given by keyword."""
    params = make_params()
    labels = {"dense": "fast", "scale": "slow", "empty": "slow"}
    opt = optax.multi_transform(
        {
            "fast": optax.inject_hyperparams(adamx.adam)(learning_rate=0.2, b2=0.9),
            "slow": adamx.adam(0.01, b2=0.99),
        },
        labels,
    )
    p, _, updates, state = train(opt, params, 3)[-1]
    diag = inspect(state, p, updates, learning_rate=0.01, b2=0.99)
    fast = state.inner_states["fast"].inner_state.inner_state[0].nu  # weight_decay=None: no block
    slow = state.inner_states["slow"].inner_state[0].nu
    assert_matches(diag, {"dense": fast["dense"]}, 3, lr=0.2, b2=float(np.float32(0.9)), eps=1e-8)
    assert_matches(diag, {"scale": slow["scale"]}, 3, lr=0.01, b2=0.99, eps=1e-8)
    # without params the parts are merged into one tree like the params
    merged = inspect(state, learning_rate=0.01, b2=0.99)
    assert jax.tree.structure(merged.lr_max) == jax.tree.structure(params)
    np.testing.assert_array_equal(merged.lr_max["scale"], diag.lr_max["scale"])


def test_masked_leaves_report_count_minus_one_and_nan():
    params = make_params()
    mask = {"dense": {"kernel": True, "bias": False}, "scale": False, "empty": True}
    opt = optax.masked(adamx.adam(0.05), mask)
    p, _, updates, state = train(opt, params, 2)[-1]
    diag = inspect(state, p, updates, learning_rate=0.05)
    assert int(diag.count["dense"]["kernel"]) == 2
    assert int(diag.count["dense"]["bias"]) == -1 and int(diag.count["scale"]) == -1
    assert np.isnan(diag.lr_min["dense"]["bias"]) and np.isnan(diag.lr_max["scale"])
    kernel = {"dense": {"kernel": state.inner_state[0].nu["dense"]["kernel"]}}
    assert_matches(diag, kernel, 2, p, updates, lr=0.05, b2=0.999, eps=1e-8)
    # without params: the moments' own tree, masked leaves left out
    alone = inspect(state, learning_rate=0.05)
    assert set(alone.count["dense"]) == {"kernel", "bias"}
    assert isinstance(alone.count["dense"]["bias"], optax.MaskedNode)


class WrapperState(NamedTuple):
    """A wrapper that keeps the inner state and counters, like ``skip_nonfinite``'s."""

    inner: object
    skipped: jax.Array


WRAPPERS = {
    "multi_steps": (
        lambda opt: optax.MultiSteps(opt, every_k_schedule=2).gradient_transformation(),
        lambda s: s.inner_opt_state[0].nu,
        lambda steps: steps // 2,
    ),
    "apply_if_finite": (
        lambda opt: optax.apply_if_finite(opt, max_consecutive_errors=3),
        lambda s: s.inner_state[0].nu,
        lambda steps: steps,
    ),
    "custom_wrapper": (
        lambda opt: optax.GradientTransformation(
            lambda p: WrapperState(opt.init(p), jnp.zeros([], jnp.int32)),
            lambda g, s, p=None: (lambda u, n: (u, WrapperState(n, s.skipped)))(
                *opt.update(g, s.inner, p)
            ),
        ),
        lambda s: s.inner[0].nu,
        lambda steps: steps,
    ),
}


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_moments_are_found_inside_wrappers(name):
    wrap, nu, count = WRAPPERS[name]
    opt = optax.chain(optax.clip(1.0), wrap(adamx.adam(0.05, b2=0.99)))
    with jax.numpy_dtype_promotion("standard"):  # optax.MultiSteps divides f32 by int32
        p, _, _, state = train(opt, make_params(), 4)[-1]
    diag = inspect(state, p, learning_rate=0.05, b2=0.99)
    assert_matches(diag, nu(state[1]), count(4), lr=0.05, b2=0.99, eps=1e-8)
    assert diag.update_ratio is None


def test_skip_nonfinite_state_is_searched():
    """A skipped (NaN) step leaves the moments, hence the count and the rates, as they were."""
    skip = getattr(adamx, "skip_nonfinite", None)
    if skip is None:  # until the lead exports it
        skip = pytest.importorskip("adamx.training._faults").skip_nonfinite
    opt = skip(optax.chain(optax.clip(1.0), adamx.adam(0.05)))
    params = make_params()
    state = opt.init(params)
    for step in range(4):
        grads = make_grads(params, step)
        if step == 2:
            grads = jax.tree.map(lambda g: jnp.full_like(g, jnp.nan), grads)
        _, state = opt.update(grads, state, params)
        diag = inspect(state, params, learning_rate=0.05)
        assert int(diag.count["scale"]) == [1, 2, 2, 3][step]  # step 2 was skipped
    nu = state.inner_state[1][0].nu
    assert_matches(diag, nu, 3, lr=0.05, b2=0.999, eps=1e-8)


def test_jitted_inspect_is_traced_once_and_equals_eager():
    opt = adamx.adam(schedule)
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(1)
        updates, state = opt.update(grads, state, params)
        return (
            optax.apply_updates(params, updates),
            state,
            inspect(state, params, updates, learning_rate=schedule),
        )

    params = make_params()
    state = opt.init(params)
    eager_state = state
    for i in range(6):
        grads = make_grads(params, i)
        _, eager_state = opt.update(grads, eager_state, params)
        eager_updates = opt.update(grads, state, params)[0]
        eager = inspect(eager_state, params, eager_updates, learning_rate=schedule)
        params, state, diag = step(params, state, grads)
        np.testing.assert_allclose(
            jax.tree.leaves(diag), jax.tree.leaves(eager), rtol=1e-6, equal_nan=True
        )
    assert len(traces) == 1


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_params(dtype):
    params = make_params(dtype)
    opt = adamx.adam(0.05)
    for step, (p, _, updates, state) in enumerate(train(opt, params, 3)):
        diag = inspect(state, p, updates, learning_rate=0.05)
        for leaf in jax.tree.leaves(diag[1:]):
            assert leaf.dtype == jnp.float32
        nu = jax.tree.map(lambda v: np.asarray(v.astype(jnp.float32)), state[0].nu)
        p32 = jax.tree.map(lambda x: x.astype(jnp.float32), p)
        u32 = jax.tree.map(lambda x: x.astype(jnp.float32), updates)
        assert_matches(diag, nu, step + 1, p32, u32, lr=0.05, b2=0.999, eps=1e-8)


@pytest.mark.parametrize("opt", [adamx.adam(), adamx.yogi()], ids=["adam", "yogi"])
def test_before_the_first_update_rates_are_nan(opt):
    # yogi's v starts above 0, so v / (1 - b2**0) is inf there, not 0/0
    params = make_params()
    diag = inspect(opt.init(params), params)
    assert all(int(c) == 0 for c in jax.tree.leaves(diag.count))
    assert all(np.isnan(x) for x in jax.tree.leaves(diag[1:4]))


@pytest.mark.parametrize(
    "opt",
    [adamx.sgd(0.1, momentum=0.9), adamx.lion(), adamx.adopt(), optax.adam(1e-3)],
    ids=["sgd", "lion", "adopt", "optax_adam"],
)
def test_states_without_second_moment_are_refused(opt):
    with pytest.raises(ValueError, match=r"no second moment.*adam, adamw, amsgrad"):
        inspect(opt.init(make_params()))


def test_mismatched_inputs_are_named():
    params = make_params()
    state = adamx.adam().init(params)
    wrong = {**params, "dense": {**params["dense"], "kernel": jnp.zeros((4, 3))}}
    with pytest.raises(ValueError, match=r"params\['dense'\]\['kernel'\] has shape \(4, 3\)"):
        inspect(state, wrong)
    with pytest.raises(ValueError, match=r"second moment at \['scale'\]"):
        inspect(state, {k: v for k, v in params.items() if k != "scale"})
    with pytest.raises(ValueError, match="pass `params` along with `updates`"):
        inspect(state, updates=params)
    with pytest.raises(ValueError, match=r"updates\['dense'\]\['bias'\] has shape"):
        inspect(state, params, {**params, "dense": {**params["dense"], "bias": jnp.zeros(5)}})
    twice = optax.chain(adamx.adam(), adamx.adam())
    with pytest.raises(ValueError, match="Two second moments"):
        inspect(twice.init(params))
    with pytest.raises(ValueError, match="`b2` must lie in"):
        inspect(state, b2=1.0)


def test_summarize_prints_one_row_per_leaf():
    params = make_params()
    mask = {"dense": {"kernel": True, "bias": True}, "scale": False, "empty": True}
    opt = optax.masked(adamx.adam(0.05), mask)
    p, _, updates, state = train(opt, params, 2)[-1]
    diag = inspect(state, p, updates, learning_rate=0.05)
    lines = summarize(diag).splitlines()
    assert lines[0].split() == "leaf count lr min lr median lr max |u|/|p|".split()
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert set(rows) == {"['dense']['bias']", "['dense']['kernel']", "['empty']", "['scale']"}
    kernel = rows["['dense']['kernel']"]
    assert kernel[0] == "2"
    want = [diag.lr_min, diag.lr_median, diag.lr_max, diag.update_ratio]
    np.testing.assert_allclose(
        [float(x) for x in kernel[1:]],
        [float(t["dense"]["kernel"]) for t in want],
        rtol=5e-3,
    )
    assert rows["['scale']"][:2] == ["-", "nan"]
    assert rows["['empty']"][1:] == ["nan"] * 4
    no_updates = summarize(inspect(state, p, learning_rate=0.05)).splitlines()
    assert all(line.split()[-1] == "-" for line in no_updates[1:])


def test_result_is_a_pytree_of_arrays():
    params = make_params()
    p, _, updates, state = train(adamx.adam(0.05), params, 1)[-1]
    diag = inspect(state, p, updates, learning_rate=0.05)
    assert isinstance(diag, Diagnostics)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(diag))
    assert len(jax.tree.leaves(diag)) == 5 * len(jax.tree.leaves(params))


@pytest.mark.parametrize("function", [inspect, summarize])
def test_docstring_examples(function, monkeypatch):
    # until the lead exports them, the examples' `adamx.inspect` is this module's
    monkeypatch.setattr(adamx, "inspect", _inspect.inspect, raising=False)
    monkeypatch.setattr(adamx, "summarize", _inspect.summarize, raising=False)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = doctest.DocTestFinder().find(function)
    assert tests and tests[0].examples
    for t in tests:
        runner.run(t)
    assert runner.failures == 0
