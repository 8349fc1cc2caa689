"""Flat moments: ``with_storage(adam/adamw, mu="flat", nu="flat")`` (adamx/storage/_flat.py)
and its kernel behind ``adamx.step`` (adamx/kernels/_fused_flat.py, ``AdamxAdamFlatStep``).

* the flat kernel gives, bit for bit, the params and moments of unwrapped ``adamx.adam``'s
  kernel (itself tested bitwise against NumPy in test_fused.py), over many tiny leaves of
  mixed shapes (scalars, empty leaves, 3-D), more than one call's ``GROUP``, with AdamW's
  mask, a schedule, ``maximize`` and L2 decay; and the flat XLA path within float32 rounding;
* the state is the XLA path's (the two interchange), passes 4 moment arrays, does not
  retrace, is updated in place;
* checkpoints (``restore_state``), ``inspect`` per leaf, the fallbacks and refusals.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_fused import (
    assert_trees_close,
    assert_trees_equal,
    compiler,
    disabled_in_env,
    train_step,
    xla_step,
)

import adamx
from adamx import storage as st
from adamx.kernels import _fused

FLAT = "adamx_adam_flat_step_v1"
# More leaves than one call's GROUP, every kind of shape: scalar, empty, one element, 3-D.
SHAPES = [(3,), (), (0,), (2, 5), (17,), (1,), (4, 0, 2), (3, 3, 3), (70,), (1, 1)] * 3


@pytest.fixture(scope="module")
def kernel():
    if compiler() is None:
        pytest.skip("no C++ compiler on PATH")
    if disabled_in_env():
        pytest.skip("ADAMX_FUSED=0 is set in the environment")
    info = adamx.kernel_info()
    assert info.available, info
    return info


def tree(seed: int, scale: float = 1.0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        f"l{i:02d}": jnp.asarray(rng.standard_normal(s) * scale, jnp.float32)
        for i, s in enumerate(SHAPES)
    }


def flat_of(inner):
    return adamx.with_storage(inner, mu="flat", nu="flat")


def run(opt, steps: int = 3, step=train_step):
    params = tree(0)
    state = opt.init(params)
    fn = jax.jit(step(opt))
    for k in range(steps):
        params, state = fn(params, state, tree(10 + k, 0.1))
    return params, state


def flat_calls(hlo: str) -> int:
    return hlo.count(f'custom_call_target="{FLAT}"')


def moments(state):
    inner = state.inner if isinstance(state, st.StorageState) else state
    found = [s for s in inner if isinstance(s, adamx.MomentsState)]
    mu, nu = found[0].mu, found[0].nu
    as_tree = lambda x: x.tree() if isinstance(x, st.FlatMoments) else x  # noqa: E731
    return as_tree(mu), as_tree(nu)


MASK = {f"l{i:02d}": i % 3 != 0 for i in range(len(SHAPES))}
CASES = [
    ("adam", dict(learning_rate=0.1)),
    ("adamw", dict(learning_rate=0.05, weight_decay=0.1, mask=MASK)),
    ("adam", dict(learning_rate=optax.linear_schedule(1e-2, 1e-3, 5), maximize=True)),
    ("adam", dict(learning_rate=1e-2, weight_decay=0.05, b1=0.5, eps_root=1e-6)),
]


@pytest.mark.parametrize(("make", "kw"), CASES)
def test_flat_kernel_bitwise_equals_float32_kernel(kernel, make, kw):
    inner = getattr(adamx, make)(**kw)
    opt = flat_of(inner)
    params, state = jax.tree.map(jnp.asarray, tree(0)), opt.init(tree(0))
    hlo = jax.jit(train_step(opt)).lower(params, state, tree(10)).compile().as_text()
    live = sum(1 for s in SHAPES if math.prod(s))
    assert flat_calls(hlo) == math.ceil(live / _fused.GROUP)
    assert 'custom_call_target="adamx_adam_step_v1"' not in hlo
    got_p, got_state = run(opt)
    want_p, want_state = run(inner)
    assert_trees_equal(got_p, want_p)
    for got, want in zip(moments(got_state), moments(want_state)):
        assert_trees_equal(got, want)
    # the flat XLA path: the same arithmetic through XLA, equal up to float32 rounding
    xla_p, xla_state = run(flat_of(getattr(adamx, make)(**kw, fused=False)))
    assert_trees_close(got_p, xla_p)
    for got, want in zip(moments(got_state), moments(xla_state)):
        assert_trees_close(got, want)


def test_flat_state_is_the_xla_paths_and_paths_interchange(kernel):
    opt, slow = flat_of(adamx.adam(0.1)), flat_of(adamx.adam(0.1, fused=False))
    params = tree(0)
    state = opt.init(params)
    p1, s1 = jax.jit(train_step(opt))(params, state, tree(10, 0.1))
    p2, s2 = jax.jit(xla_step(slow))(params, state, tree(10, 0.1))
    assert jax.tree.structure(s1) == jax.tree.structure(s2)
    assert [jnp.shape(x) for x in jax.tree.leaves(s1)] == [
        jnp.shape(x) for x in jax.tree.leaves(s2)
    ]
    # each path continues from the other's state
    p3, s3 = jax.jit(xla_step(slow))(p1, s1, tree(11, 0.1))
    p4, s4 = jax.jit(train_step(opt))(p2, s2, tree(11, 0.1))
    assert_trees_close(p3, p4)
    assert_trees_close(moments(s3), moments(s4))


def test_flat_state_passes_four_moment_arrays_and_does_not_retrace(kernel):
    opt = flat_of(adamx.adam(0.1))
    params = tree(0)
    state = opt.init(params)
    # count, mu, nu (one float32 buffer each) and the empty rounding key
    assert len(jax.tree.leaves(state)) == 4
    assert state.inner[0].mu.buffers["float32"].shape == (sum(math.prod(s) for s in SHAPES),)
    traces = []

    def step(params, state, grads):
        traces.append(1)
        return adamx.step(opt, grads, state, params)

    fn = jax.jit(step, donate_argnums=(0, 1))
    for k in range(3):
        params, state = fn(params, state, tree(10 + k, 0.1))
    assert len(traces) == 1


def test_flat_step_is_in_place(kernel):
    opt = flat_of(adamx.adam(0.1))
    params = tree(0)
    state = opt.init(params)
    compiled = jax.jit(train_step(opt), donate_argnums=(0, 1)).lower(params, state, tree(1))
    analysis = compiled.compile().memory_analysis()
    n = sum(math.prod(s) for s in SHAPES)
    assert analysis.alias_size_in_bytes >= 3 * 4 * n  # p, m and v written where they were
    assert analysis.temp_size_in_bytes < 4 * n


def test_flat_checkpoint_restores_and_inspect_reads_each_leaf(kernel):
    opt, plain = flat_of(adamx.adam(0.1)), adamx.adam(0.1)
    params, state = run(opt)
    _, plain_state = run(plain)
    like = jax.eval_shape(opt.init, tree(0))
    raw = {
        "inner": [
            {
                "count": state.inner[0].count,
                "mu": dict(state.inner[0].mu.buffers),
                "nu": {"float32": np.asarray(state.inner[0].nu.buffers["float32"])},
            },
            None,
            None,
            None,
        ],
        "key": state.key,
        "error": {},
    }
    restored = adamx.restore_state(raw, like)
    assert_trees_equal(restored, state)
    wrong = dict(
        raw, inner=[dict(raw["inner"][0], mu={"float32": np.zeros(3, np.float32)})] + [None] * 3
    )
    with pytest.raises(ValueError, match=r"state\.inner\[0\]\.mu\['float32'\] has shape"):
        adamx.restore_state(wrong, like)
    got = adamx.inspect(state, params, learning_rate=0.1)
    want = adamx.inspect(plain_state, params, learning_rate=0.1)
    assert_trees_equal(got, want)
    assert_trees_equal(adamx.inspect(state, learning_rate=0.1), want._replace(update_ratio=None))


def test_half_flat_takes_the_xla_path_and_fused_true_refuses(kernel):
    opt = adamx.with_storage(adamx.adam(0.1), mu="flat")
    params = tree(0)
    state = opt.init(params)
    hlo = jax.jit(train_step(opt)).lower(params, state, tree(1)).compile().as_text()
    assert "adamx_adam" not in hlo
    with pytest.raises(ValueError, match='mu="flat" and nu="flat" only'):
        forced = adamx.with_storage(adamx.adam(0.1, fused=True), mu="flat", nu="bfloat16")
        jax.jit(train_step(forced))(params, forced.init(params), tree(1))


def test_flat_mixed_dtypes_keep_one_buffer_each_and_take_the_xla_path(kernel):
    opt = flat_of(adamx.adam(0.1))
    params = {"a": jnp.ones(3, jnp.float32), "b": jnp.ones(5, jnp.bfloat16), "c": jnp.ones(2)}
    state = opt.init(params)
    assert {k: v.shape for k, v in state.inner[0].mu.buffers.items()} == {
        "bfloat16": (5,),
        "float32": (5,),
    }
    grads = jax.tree.map(lambda x: x * 0.5, params)
    got_p, got_s = jax.jit(train_step(opt))(params, state, grads)
    want_p, want_s = jax.jit(xla_step(adamx.adam(0.1, fused=False)))(
        params, adamx.adam(0.1).init(params), grads
    )
    assert_trees_equal(got_p, want_p)
    assert_trees_equal(moments(got_s), moments(want_s))


def test_grad_through_flat_step_matches_xla_path(kernel):
    opt, slow = flat_of(adamx.adam(0.1)), flat_of(adamx.adam(0.1, fused=False))
    params = tree(0)
    state = opt.init(params)
    grads = tree(10, 0.1)

    def loss(step):
        def f(p):
            new_p, _ = step(p, state, grads)
            return sum(jnp.sum(x * x) for x in jax.tree.leaves(new_p))

        return jax.jit(jax.grad(f))(params)  # as in training (eager: 234 compiles)

    assert_trees_close(loss(train_step(opt)), loss(xla_step(slow)))


def test_flat_policy_by_name_and_repr():
    assert st.resolve("flat") == st.flat()
    assert st.flat().name == "flat"
    x = st.FlatMoments.of({"w": jnp.zeros((2, 3)), "b": jnp.zeros(())})
    assert repr(x).startswith("FlatMoments(2 leaves")
    assert x.offsets() == (0, 1)


def test_flat_complex_moments_are_kept_as_they_are(kernel):
    opt = flat_of(adamx.adam(0.1))
    params = {"c": jnp.ones(3, jnp.complex64) * (1 + 2j), "r": jnp.ones(2)}
    state = opt.init(params)
    assert sorted(state.inner[0].mu.buffers) == ["complex64", "float32"]
    assert sorted(state.inner[0].nu.buffers) == ["float32"]  # |g|**2 is real
    grads = jax.tree.map(lambda x: x * 0.5, params)
    got_p, got_s = adamx.step(opt, grads, state, params)
    want_p, want_s = adamx.step(adamx.adam(0.1), grads, adamx.adam(0.1).init(params), params)
    assert_trees_equal(got_p, want_p)
    assert_trees_equal(moments(got_s), moments(want_s))


def test_vmap_runs_the_flat_kernel_per_example(kernel):
    opt = flat_of(adamx.adam(0.1))
    params = {"a": jnp.arange(8.0).reshape(4, 2), "b": jnp.ones((4, 3))}
    grads = jax.tree.map(lambda x: x * 0.1 + 0.01, params)
    state = jax.vmap(opt.init)(params)
    step = jax.vmap(lambda p, s, g: adamx.step(opt, g, s, p))
    hlo = jax.jit(step).lower(params, state, grads).compile().as_text()
    assert FLAT in hlo
    got_p, _ = jax.jit(step)(params, state, grads)
    for i in range(4):
        p, g, got = (jax.tree.map(lambda x, i=i: x[i], t) for t in (params, grads, got_p))
        want_p, _ = adamx.step(adamx.adam(0.1), g, adamx.adam(0.1).init(p), p)
        assert_trees_equal(got, want_p)


@pytest.mark.parametrize(
    ("case", "shapes"),
    [("adam", "awkward"), ("adam-l2-maximize", "tiny-many"), ("adamw-mask", "awkward")],
)
def test_flat_kernel_equals_xla_bitwise_on_awkward_shapes(kernel, case, shapes):
    """Against test_kernel_shapes.py's XLA evaluation of the kernel's documented arithmetic
    (operation by operation), from the same flat state, over its awkward shapes (0-d,
    empty, odd lengths, > 2**17 elements: the threaded path) and many tiny leaves."""
    import test_kernel_shapes as ks  # noqa: PLC0415 - its helpers, for this test only

    shapes = ks.SHAPE_SETS[shapes]
    name, kw, decay = ks.FLOAT_CASES[case]
    n = len(shapes)
    mask = [i % 3 != 1 for i in range(n)] if name == "adamw" else None
    inner = getattr(adamx, name)(**kw, **({"mask": mask} if mask is not None else {}))
    opt = flat_of(inner)
    p, g, m, v = ks.random_leaves(shapes, 7)
    state = opt.init(p)
    moments = adamx.MomentsState(
        count=jnp.asarray(6, jnp.int32), mu=st.FlatMoments.of(m), nu=st.FlatMoments.of(v)
    )
    at = inner.update.adam_rule.moments_at
    state = state._replace(inner=(*state.inner[:at], moments, *state.inner[at + 1 :]))
    s = ks.scalars_for(opt, state, inner.update.adam_rule)
    decays = [decay if f else 0 for f in (mask or [True] * n)]
    want = ks.xla_adam_leaves(
        *(list(map(jnp.asarray, x)) for x in (p, g, m, v)), s, decays, kw.get("maximize", False)
    )
    step = jax.jit(train_step(opt))
    assert flat_calls(step.lower(p, state, g).compile().as_text()) == math.ceil(
        sum(1 for x in shapes if math.prod(x)) / _fused.GROUP
    )
    new_p, new_state = step(p, state, g)
    got_m, got_v = moments_of_flat(new_state.inner[at])
    for what, got, w in (("p", new_p, want[0]), ("m", got_m, want[1]), ("v", got_v, want[2])):
        for i, (a, b) in enumerate(zip(got, w)):
            np.testing.assert_array_equal(
                np.asarray(a), np.asarray(b), err_msg=f"{case}: {what}[{i}] of {shapes[i]}"
            )


def moments_of_flat(found):
    assert int(found.count) == 7
    return found.mu.tree(), found.nu.tree()


def test_flax_serialization_once_told_about_flat_moments(kernel):
    fs = pytest.importorskip("flax.serialization")
    fs.register_serialization_state(
        st.FlatMoments, st.FlatMoments.state_dict, st.FlatMoments.from_state_dict
    )
    opt = flat_of(adamx.adam(0.1))
    params, state = run(opt, steps=1)
    data = fs.to_bytes(state)
    assert_trees_equal(adamx.restore_state(fs.msgpack_restore(data), opt.init(tree(0))), state)
    assert_trees_equal(fs.from_bytes(opt.init(tree(0)), data), state)
