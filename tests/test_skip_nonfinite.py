"""skip_nonfinite: a run with NaN/Inf gradients injected is bitwise the run without them.

Two references for each run with faults, both fed only the good gradients:

* the same jitted train step, wrapper included, as users run it: params and inner state
  must be bitwise equal;
* independent of the code under test, the bare optimizer's own jitted ``update``. Here the
  wrapper runs op by op around that very compiled ``update`` (XLA contracts ``a * b + c``
  into a fused multiply-add, so two different jitted programs may round differently in the
  last bit; this way the inner arithmetic is one program in both runs and the wrapper's own
  selects are checked bit for bit): params, every update and every leaf of the inner state
  must be bitwise equal.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_contract import messy_tree

import adamx
from adamx import SkipNonfiniteState, skip_nonfinite

INT32_MAX = int(np.iinfo(np.int32).max)
BAD_VALUES = (np.nan, np.inf, -np.inf)

# Optimizers wrapped in the fault-injection runs: name -> a function building a fresh one.
CASES = {
    "adam": lambda: adamx.adam(1e-2),
    "adamw": lambda: adamx.adamw(1e-2, weight_decay=1e-2),
    "sgd_momentum": lambda: adamx.sgd(1e-2, momentum=0.9, nesterov=True),
    "lion": lambda: adamx.lion(3e-3, weight_decay=1e-2),
    "adafactor": lambda: adamx.adafactor(1e-2, weight_decay=1e-2),
    "nadam": lambda: adamx.nadam(1e-2),
    "amsgrad": lambda: adamx.amsgrad(1e-2),
    "adopt": lambda: adamx.adopt(1e-2),
    "rmsprop_centered": lambda: adamx.rmsprop(1e-2, momentum=0.9, centered=True),
    "clip_then_adam": lambda: optax.chain(optax.clip_by_global_norm(1.0), adamx.adam(1e-3)),
    "inject_hyperparams_schedule": lambda: optax.inject_hyperparams(adamx.adam)(
        learning_rate=lambda count: 1e-2 / (1.0 + 0.1 * count.astype(jnp.float32)), b1=0.875
    ),
    "multisteps_inside": lambda: optax.MultiSteps(adamx.adam(1e-2), every_k_schedule=3),
    "optax_adam": lambda: optax.adam(1e-2),
}
OPTAX_INTERNALS = {"multisteps_inside", "optax_adam"}


def random_grads(rng: np.random.Generator, params):
    return jax.tree.map(
        lambda p: jnp.asarray(rng.standard_normal(p.shape).astype(np.float32)).astype(p.dtype),
        params,
    )


def poison(rng: np.random.Generator, grads, value):
    """``grads`` with one random element of one random non-empty leaf set to ``value``."""
    leaves, treedef = jax.tree.flatten(grads)
    index = rng.choice([i for i, x in enumerate(leaves) if x.size])
    leaf = np.array(leaves[index])
    leaf.reshape(-1)[rng.integers(leaf.size)] = value
    leaves[index] = jnp.asarray(leaf)
    return jax.tree.unflatten(treedef, leaves)


def bad_schedule(rng: np.random.Generator, steps: int) -> list[bool]:
    """Which of ``steps`` steps are bad: ``steps // 6`` runs of 1 to 3 bad steps at random
    places (some overlap), and the first step."""
    bad = [False] * steps
    for start in rng.choice(steps, size=steps // 6, replace=False):
        for i in range(start, min(steps, start + rng.integers(1, 4))):
            bad[i] = True
    bad[0] = True  # a bad very first step, before the inner state was ever updated
    return bad


@functools.cache
def jitted_step(opt):
    """The jitted train step users write; one per optimizer object, so repeated runs reuse
    the compiled program."""

    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, updates

    return jax.jit(step)


def compiled_update(opt):
    """``opt`` with its ``update`` compiled on its own."""
    return optax.GradientTransformation(opt.init, jax.jit(opt.update))


_apply = jax.jit(optax.apply_updates)


def separate_step(opt):
    """A train step that calls ``opt.update`` and the compiled ``apply_updates`` apart."""

    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return _apply(params, updates), state, updates

    return step


def run(opt, params, grads_sequence, step=None):
    step = step or jitted_step(opt)
    state = opt.init(params)
    updates = []
    for grads in grads_sequence:
        params, state, u = step(params, state, grads)
        updates.append(u)
    return params, state, updates


def assert_trees_bitwise_equal(actual, expected):
    """Same structure, and every leaf the same dtype, shape and bits (NaN equals NaN)."""
    chex.assert_trees_all_equal_structs(actual, expected)
    leaves = jax.tree_util.tree_flatten_with_path(actual)[0]
    for (path, a), e in zip(leaves, jax.tree.leaves(expected)):
        where = jax.tree_util.keystr(path)
        assert jnp.result_type(a) == jnp.result_type(e), where
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e), err_msg=where, strict=True)


def injected_run(name: str, params, seed: int, steps: int = 60):
    """The fault schedule, the grads with and without the faults."""
    rng = np.random.default_rng(seed)
    bad = bad_schedule(rng, steps)
    sequence, clean = [], []
    for is_bad in bad:
        grads = random_grads(rng, params)
        if is_bad:
            grads = poison(rng, grads, BAD_VALUES[rng.integers(3)])
        else:
            clean.append(grads)
        sequence.append(grads)
    return bad, sequence, clean


def promotion(name: str):
    """optax's own transforms mix int32 and float32 and need standard promotion."""
    return jax.numpy_dtype_promotion("standard" if name in OPTAX_INTERNALS else "strict")


def trailing_run(bad: list[bool]) -> int:
    n = 0
    for b in reversed(bad):
        if not b:
            break
        n += 1
    return n


def check_injected_run(name, params, seed, steps):
    bad, sequence, clean = injected_run(name, params, seed, steps)
    assert steps // 6 <= sum(bad) <= steps // 2 and trailing_run(bad) < steps
    wrapped = skip_nonfinite(CASES[name]())
    with promotion(name):
        # as users run it: one jitted step, fed the faults or not
        p_faulty, s_faulty, _ = run(wrapped, params, sequence)
        p_clean, s_clean, _ = run(wrapped, params, clean)
        # the independent reference: the bare optimizer's compiled update
        bare = compiled_update(CASES[name]())
        p_bare, s_bare, u_bare = run(bare, params, clean, separate_step(bare))
        around = skip_nonfinite(bare)
        p_eager, s_eager, u_eager = run(around, params, sequence, separate_step(around))
    assert isinstance(s_faulty, SkipNonfiniteState)
    assert_trees_bitwise_equal(p_faulty, p_clean)
    assert_trees_bitwise_equal(s_faulty.inner_state, s_clean.inner_state)
    assert_trees_bitwise_equal(p_eager, p_bare)
    assert_trees_bitwise_equal(s_eager.inner_state, s_bare)
    for state in (s_faulty, s_eager):
        for counter in (state.total_skipped, state.consecutive_skipped):
            assert counter.dtype == jnp.int32 and counter.shape == ()
        assert int(state.total_skipped) == sum(bad)
        assert int(state.consecutive_skipped) == trailing_run(bad)
    assert int(s_clean.total_skipped) == 0
    # a bad step's update is zeros shaped and typed like a real one; a good one is the bare
    good = iter(u_bare)
    for is_bad, u in zip(bad, u_eager):
        expected = jax.tree.map(jnp.zeros_like, u_bare[0]) if is_bad else next(good)
        assert_trees_bitwise_equal(u, expected)
    return u_eager


@pytest.mark.parametrize("name", sorted(CASES))
def test_injected_faults_equal_the_run_without_those_steps(name):
    check_injected_run(name, messy_tree(), seed=sorted(CASES).index(name), steps=60)


@pytest.mark.parametrize("name", ["adam", "sgd_momentum", "adafactor"])
def test_injected_faults_with_bfloat16_params(name):
    params = messy_tree(jnp.bfloat16)
    for u in check_injected_run(name, params, seed=100 + len(name), steps=30):
        chex.assert_trees_all_equal_shapes_and_dtypes(u, params)


def test_inside_multisteps_a_bad_window_is_skipped_as_one_step():
    # MultiSteps(skip_nonfinite(adam), 3): a bad micro-batch makes its window's mean
    # non-finite, and the window is skipped as one step. The bad window comes last: optax
    # 0.2.8 resets its accumulator by multiplying it by 0, so NaN stays in it (see the
    # docstring's notes: put skip_nonfinite outside MultiSteps).
    k, windows = 3, 6
    params = messy_tree()
    rng = np.random.default_rng(7)
    sequence = [random_grads(rng, params) for _ in range(k * windows)]
    sequence[-2] = poison(rng, sequence[-2], np.inf)
    wrapped = optax.MultiSteps(skip_nonfinite(adamx.adam(1e-2)), every_k_schedule=k)
    bare = optax.MultiSteps(adamx.adam(1e-2), every_k_schedule=k)
    with jax.numpy_dtype_promotion("standard"):  # optax.MultiSteps divides f32 by int32
        p_faulty, s_faulty, updates = run(wrapped, params, sequence)
        p_clean, s_clean, _ = run(wrapped, params, sequence[:-k])
        p_bare, s_bare, _ = run(bare, params, sequence[:-k])
    inner = s_faulty.inner_opt_state
    assert_trees_bitwise_equal(p_faulty, p_clean)
    assert_trees_bitwise_equal(inner.inner_state, s_clean.inner_opt_state.inner_state)
    for u in updates[-k:]:
        assert_trees_bitwise_equal(u, jax.tree.map(jnp.zeros_like, params))
    assert int(inner.total_skipped) == int(inner.consecutive_skipped) == 1
    # the bare MultiSteps is another compiled program: equal up to XLA's contractions
    chex.assert_trees_all_close(p_faulty, p_bare, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(inner.inner_state, s_bare.inner_opt_state, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_more_than_max_consecutive_bad_steps_give_nan_until_a_good_one(k):
    # the inner update is compiled on its own, so the bare one is its bitwise reference
    inner = compiled_update(adamx.adam(1e-2))
    opt = skip_nonfinite(inner, max_consecutive=k - 1)
    step, reference_step = separate_step(opt), separate_step(inner)
    params = {"w": jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32), "b": jnp.ones((), jnp.bfloat16)}

    def good(i):
        return {
            "w": jnp.cos(jnp.arange(6, dtype=jnp.float32) + i) * (i + 1.0),
            "b": jnp.asarray(0.5 - i, jnp.bfloat16),
        }

    bad = {"w": good(0)["w"].at[2].set(jnp.inf), "b": jnp.asarray(jnp.nan, jnp.bfloat16)}
    state, ref_state = opt.init(params), inner.init(params)
    p, ref_p = params, params

    def good_step(i):
        nonlocal p, state, ref_p, ref_state
        p, state, u = step(p, state, good(i))
        ref_p, ref_state, ref_u = reference_step(ref_p, ref_state, good(i))
        assert_trees_bitwise_equal(u, ref_u)
        assert_trees_bitwise_equal(state.inner_state, ref_state)
        assert int(state.consecutive_skipped) == 0

    def bad_steps(count, first):
        nonlocal p, state
        kept = state.inner_state
        for n in range(first, first + count):
            p_before = p
            p, state, u = step(p, state, bad)
            assert int(state.consecutive_skipped) == n
            assert_trees_bitwise_equal(state.inner_state, kept)
            chex.assert_trees_all_equal_shapes_and_dtypes(u, params)
            for leaf in jax.tree.leaves(u):
                leaf = np.asarray(leaf, np.float32)
                if n < k:  # skipped silently
                    np.testing.assert_array_equal(leaf, np.zeros_like(leaf))
                else:  # the k-th bad step in a row and every later one
                    assert np.all(np.isnan(leaf)), f"bad step {n} of a run: {leaf}"
            if n < k:
                assert_trees_bitwise_equal(p, p_before)

    good_step(0)
    good_step(1)
    bad_steps(k + 2, first=1)
    assert np.all(np.isnan(np.asarray(p["w"]))), "NaN updates must reach the params"
    # a good step resets the run: the moments were kept, the update is the bare one again
    p = ref_p
    good_step(2)
    assert int(state.total_skipped) == k + 2
    bad_steps(k, first=1)  # k - 1 skipped silently again, then NaN
    good_step(3)
    assert int(state.total_skipped) == 2 * k + 2


def test_no_limit_skips_forever_and_max_zero_skips_nothing_silently():
    params = {"w": jnp.ones(3)}
    bad = {"w": jnp.array([0.0, jnp.nan, 1.0])}
    unlimited = skip_nonfinite(adamx.adam(1e-2))
    step = jitted_step(unlimited)
    p, state = params, unlimited.init(params)
    for _ in range(50):
        p, state, u = step(p, state, bad)
        np.testing.assert_array_equal(np.asarray(u["w"]), np.zeros(3, np.float32))
    assert int(state.consecutive_skipped) == int(state.total_skipped) == 50
    strict = skip_nonfinite(adamx.adam(1e-2), max_consecutive=0)
    u, state = strict.update(bad, strict.init(params), params)
    assert np.all(np.isnan(np.asarray(u["w"])))
    assert int(state.inner_state[0].count) == 0


def test_counters_saturate_at_int32_max():
    params = {"w": jnp.ones(2)}
    bad = {"w": jnp.array([jnp.inf, 0.0])}
    for limit, expect_nan in ((None, False), (INT32_MAX, False), (INT32_MAX - 1, True)):
        opt = skip_nonfinite(adamx.sgd(0.1), max_consecutive=limit)
        state = opt.init(params)._replace(
            total_skipped=jnp.asarray(INT32_MAX, jnp.int32),
            consecutive_skipped=jnp.asarray(INT32_MAX - 1, jnp.int32),
        )
        for _ in range(2):
            u, state = jax.jit(opt.update)(bad, state, params)
            assert int(state.total_skipped) == INT32_MAX
            assert int(state.consecutive_skipped) == INT32_MAX
            assert bool(np.all(np.isnan(np.asarray(u["w"])))) == expect_nan, limit


def counted_step(opt, traces):
    def step(params, state, grads):
        traces.append(1)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, updates

    return jax.jit(step)


def test_one_trace_for_good_and_bad_steps_and_stable_state():
    opt = skip_nonfinite(
        optax.chain(optax.clip_by_global_norm(1.0), adamx.adamw(1e-2)), max_consecutive=3
    )
    params = messy_tree()
    traces = []
    step = counted_step(opt, traces)
    state0 = opt.init(params)
    state = state0
    rng = np.random.default_rng(3)
    for value in (None, np.nan, None, np.inf, -np.inf, np.nan, np.nan, None):
        grads = random_grads(rng, params)
        if value is not None:
            grads = poison(rng, grads, value)
        params, state, _ = step(params, state, grads)
        chex.assert_trees_all_equal_shapes_and_dtypes(state, state0)
    assert len(traces) == 1
    assert int(state.total_skipped) == 5 and int(state.consecutive_skipped) == 0


def test_vmap_skips_lane_by_lane():
    opt = skip_nonfinite(adamx.adam(1e-2))
    params = {"w": jnp.ones((3, 4))}
    grads = {"w": jnp.ones((3, 4)).at[1, 2].set(jnp.nan)}
    states = jax.vmap(opt.init)(params)
    updates, states = jax.vmap(opt.update)(grads, states, params)
    np.testing.assert_array_equal(np.asarray(states.total_skipped), [0, 1, 0])
    np.testing.assert_array_equal(np.asarray(states.inner_state[0].count), [1, 0, 1])
    np.testing.assert_array_equal(np.asarray(updates["w"][1]), np.zeros(4, np.float32))
    assert np.all(np.asarray(updates["w"][0]) < 0)


def test_bad_step_computes_nothing_non_finite():
    # the inner update never sees the bad gradient: jax_debug_nans stays quiet
    opt = skip_nonfinite(adamx.adam(1e-2))
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    bad = {"w": jnp.array([1.0, jnp.nan, -jnp.inf])}
    with jax.debug_nans(True):
        u, state = opt.update(bad, state, params)
    assert int(state.total_skipped) == 1
    np.testing.assert_array_equal(np.asarray(u["w"]), np.zeros(3, np.float32))


def test_an_inner_update_that_breaks_cannot_poison_the_kept_state():
    # an inner rule whose state is 1 / g: fed zeros on a skipped step it computes inf, and
    # the select must still keep the old state's bits
    def init(params):
        return {"r": jax.tree.map(jnp.ones_like, params)}

    def update(updates, state, params=None):
        del params
        return updates, {"r": jax.tree.map(lambda g: 1.0 / g, updates)}

    opt = skip_nonfinite(optax.GradientTransformation(init, update))
    params = {"w": jnp.ones(2)}
    _, state = opt.update({"w": jnp.array([2.0, 4.0])}, opt.init(params), params)
    u, state = jax.jit(opt.update)({"w": jnp.array([jnp.nan, 4.0])}, state, params)
    np.testing.assert_array_equal(np.asarray(state.inner_state["r"]["w"]), [0.5, 0.25])
    np.testing.assert_array_equal(np.asarray(u["w"]), [0.0, 0.0])


def test_extra_args_reach_the_inner_transformation():
    # reduce_on_plateau reads the loss from `update(..., value=loss)`
    opt = skip_nonfinite(optax.chain(adamx.adam(1e-2), optax.contrib.reduce_on_plateau()))
    params = {"w": jnp.ones(2)}
    state = opt.init(params)
    with jax.numpy_dtype_promotion("standard"):  # optax's plateau multiplies int32 by f32
        _, state = opt.update({"w": jnp.ones(2)}, state, params, value=jnp.asarray(3.0))
        plateau = state.inner_state[1]
        assert float(plateau.best_value) == 3.0
        bad = {"w": jnp.array([jnp.nan, 1.0])}
        _, state = opt.update(bad, state, params, value=jnp.asarray(1.0))
        assert_trees_bitwise_equal(state.inner_state[1], plateau)
        _, state = opt.update({"w": jnp.ones(2)}, state, params, value=jnp.asarray(2.0))
    assert float(state.inner_state[1].best_value) == 2.0


def test_integer_and_empty_leaves_pass_through():
    # integer leaves cannot be non-finite; empty leaves are finite
    opt = skip_nonfinite(optax.identity(), max_consecutive=0)
    params = {"w": jnp.ones(2), "n": jnp.arange(3), "empty": jnp.zeros((0,))}
    good = {"w": jnp.ones(2), "n": jnp.arange(3), "empty": jnp.zeros((0,))}
    u, state = opt.update(good, opt.init(params), params)
    assert_trees_bitwise_equal(u, good)
    assert int(state.total_skipped) == 0
    u, state = opt.update({**good, "w": jnp.array([-jnp.inf, 0.0])}, state, params)
    assert int(state.total_skipped) == 1
    np.testing.assert_array_equal(np.asarray(u["n"]), np.zeros(3, np.int32), strict=True)
    assert np.all(np.isnan(np.asarray(u["w"]))) and u["empty"].shape == (0,)


BAD_MAX_CONSECUTIVE = [-1, 1.5, 2.0, True, "3", 2**31, jnp.asarray(2.5)]


@pytest.mark.parametrize("value", BAD_MAX_CONSECUTIVE, ids=repr)
def test_invalid_max_consecutive_names_argument_value_and_range(value):
    with pytest.raises(ValueError) as info:
        skip_nonfinite(adamx.adam(), max_consecutive=value)
    message = str(info.value)
    assert "`max_consecutive`" in message
    assert f"max_consecutive={value!r}" in message
    assert f"[0, {INT32_MAX}]" in message and "None" in message


@pytest.mark.parametrize("value", [None, 0, 5, np.int64(3), INT32_MAX])
def test_valid_max_consecutive(value):
    skip_nonfinite(adamx.adam(), max_consecutive=value)


def test_an_uncalled_factory_is_rejected_with_a_hint():
    with pytest.raises(TypeError, match=r"call it first, e.g. skip_nonfinite\(adam\(1e-3\)\)"):
        skip_nonfinite(adamx.adam)
    with pytest.raises(TypeError, match="optax.GradientTransformation"):
        skip_nonfinite(3)


def test_an_inner_state_that_changes_dtype_is_named():
    def init(params):
        del params
        return {"count": jnp.zeros([], jnp.int32)}

    def update(updates, state, params=None):
        del params
        return updates, {"count": state["count"].astype(jnp.float32)}

    opt = skip_nonfinite(optax.GradientTransformation(init, update))
    with pytest.raises(ValueError, match=r"inner_state\['count'\] is int32\[\] before"):
        opt.update({"w": jnp.ones(2)}, opt.init({"w": jnp.ones(2)}))


def test_docstring_example(monkeypatch):
    import doctest

    import adamx.training._faults

    monkeypatch.setattr(adamx, "skip_nonfinite", skip_nonfinite, raising=False)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(adamx.training._faults)
    assert sum(len(t.examples) for t in tests) >= 10
    for t in tests:
        runner.run(t)
    assert runner.failures == 0
