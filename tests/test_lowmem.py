"""with_storage: any recipe's moments stored through a policy, the algebra unchanged.

References: the wrapped optimizer run as it is, with its state passed through the codecs by
hand between steps (the codecs themselves are checked against NumPy in test_storage.py),
and an independent float64 NumPy Adam with Adafactor's factored second moment.
"""

from __future__ import annotations

import re

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx
from adamx.storage import Blockwise8, blockwise8, resolve

RNG = np.random.default_rng(7)


def _tree(shapes, scale=1.0):
    return {k: jnp.asarray(scale * RNG.standard_normal(s), jnp.float32) for k, s in shapes.items()}


SHAPES = {"w": (128, 160), "e": (80, 96), "b": (160,), "s": ()}


def _grads(params, step):
    """A deterministic gradient sequence with varied magnitudes per leaf."""
    return jax.tree.map(lambda p: jnp.sin(p * (step + 1.0)) * (1.0 + 0.5 * step), params)


def _codec_by_hand(state, policies, key=None):
    """The reference: each moment leaf of an adamx.MomentsState / LionMomentsState passed
    through encode then decode, with the policy objects used directly."""

    def roundtrip(role, tree):
        policy = policies.get(role)
        if policy is None or tree is None:
            return tree
        return jax.tree.map(
            lambda x: policy.decode(policy.encode(x, key), jax.ShapeDtypeStruct(x.shape, x.dtype)),
            tree,
        )

    def fix(s):
        if isinstance(s, adamx.MomentsState):
            return s._replace(mu=roundtrip("mu", s.mu), nu=roundtrip("nu", s.nu))
        if isinstance(s, adamx.LionMomentsState):
            return s._replace(mu=roundtrip("mu", s.mu))
        return s

    return tuple(fix(s) for s in state)


def _run(opt, params, steps):
    state = opt.init(params)
    update = jax.jit(opt.update)
    for t in range(steps):
        updates, state = update(_grads(params, t), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


@pytest.mark.parametrize(
    "mu, nu",
    [("float32", "float32"), ("bfloat16", "bfloat16"), ("8bit", "8bit"), (None, "float16")],
)
def test_deterministic_policies_equal_the_recipe_with_its_state_rounded_by_hand(mu, nu):
    # "8bit": rounded to nearest (the default rounds stochastically)
    mu, nu = (blockwise8(stochastic_rounding=False) if s == "8bit" else s for s in (mu, nu))
    params0 = _tree({"w": (64, 96), "b": (96,)})
    opt = adamx.adam(1e-2)
    policies = {
        role: None if spec is None else resolve(spec).for_moment(role)
        for role, spec in (("mu", mu), ("nu", nu))
    }
    wrapped = adamx.with_storage(opt, mu=policies["mu"], nu=policies["nu"])

    params, ref_params = params0, params0
    state, ref_state = wrapped.init(params0), _codec_by_hand(opt.init(params0), policies)
    step, ref_step = jax.jit(wrapped.update), jax.jit(opt.update)
    for t in range(8):
        u, state = step(_grads(params, t), state, params)
        params = optax.apply_updates(params, u)
        ru, ref_state = ref_step(_grads(ref_params, t), ref_state, ref_params)
        ref_state = _codec_by_hand(ref_state, policies)
        ref_params = optax.apply_updates(ref_params, ru)
    # XLA fuses the wrapped step (decode, update, encode) differently from the reference's
    # separate programs, which moves float32 results by an ulp or two, and an ulp can flip a
    # rounding of the stored state: hence a tolerance of a few float32 ulp, not equality.
    # An 8-bit code that flips moves its element by a code step (measured: 1 element of
    # 6,144 by 3e-5, depending on which programs ran earlier in the process), so there a
    # few elements in a thousand may sit within 1e-3 instead.
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
        a, b = np.asarray(a), np.asarray(b)
        if any(isinstance(s, Blockwise8) for s in (mu, nu)):
            off = ~np.isclose(a, b, rtol=5e-6, atol=1e-8)
            assert off.mean() <= 2e-3, f"{off.sum()} of {off.size} elements differ"
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)
        else:
            np.testing.assert_allclose(a, b, rtol=5e-6, atol=1e-8)
    if mu == "float32":  # float32 storage is the recipe itself
        plain, _ = _run(opt, params0, 8)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(plain)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _numpy_adam_factored(params, steps, lr, b1=0.9, b2=0.999, eps=1e-8, min_dim=128):
    """Adam over a factored history of the second moment, float64.

    For each large matrix only Adafactor's row and column moving averages of ``g**2`` are
    kept (``R = b2 R + (1-b2) mean_rows(g**2)``, likewise ``C``); a step uses
    ``v = b2 * R C^T / mean(R) + (1 - b2) * g**2``: the stored history, rebuilt, plus the
    current gradient at full rank. Other leaves keep the full ``v``."""
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    state = {}
    for k, p in params.items():
        if p.ndim >= 2 and min(p.shape[-2:]) >= min_dim:
            state[k] = (np.zeros(p.shape[:-1]), np.zeros(p.shape[:-2] + p.shape[-1:]))
        else:
            state[k] = np.zeros_like(p)
    for t in range(1, steps + 1):
        grads = {
            k: np.asarray(_grads({k: jnp.asarray(v, jnp.float32)}, t - 1)[k], np.float64)
            for k, v in params.items()
        }
        for k, g in grads.items():
            m[k] = b1 * m[k] + (1 - b1) * g
            if isinstance(state[k], tuple):
                row, col = state[k]
                mean = np.mean(row, axis=-1)[..., None, None]
                history = row[..., :, None] * col[..., None, :] / np.where(mean > 0, mean, 1.0)
                v = b2 * history + (1 - b2) * g * g
                row = b2 * row + (1 - b2) * np.mean(g * g, axis=-1)
                col = b2 * col + (1 - b2) * np.mean(g * g, axis=-2)
                state[k] = (row, col)
            else:
                state[k] = b2 * state[k] + (1 - b2) * g * g
                v = state[k]
            m_hat = m[k] / (1 - b1**t)
            v_hat = v / (1 - b2**t)
            params[k] = params[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return params


def test_factored_second_moment_is_adafactors_moving_average_inside_adam():
    params0 = _tree({"w": (128, 160), "b": (160,), "small": (16, 200)})
    opt = adamx.with_storage(adamx.adam(1e-2), nu="factored")
    state = opt.init(params0)
    inner = state.inner[0].nu
    assert isinstance(inner["w"], adamx.storage.FactoredMoment)
    assert not isinstance(inner["small"], adamx.storage.FactoredMoment)  # 16 < min_dim
    params = params0
    step = jax.jit(opt.update)
    for t in range(20):
        u, state = step(_grads(params, t), state, params)
        params = optax.apply_updates(params, u)
    # the reference runs its own float64 trajectory from the same start
    ref = _numpy_adam_factored({k: np.asarray(v) for k, v in params0.items()}, 20, 1e-2)
    for k in params:
        np.testing.assert_allclose(np.asarray(params[k]), ref[k], rtol=2e-5, atol=2e-6)


def test_bytes_per_param_of_each_policy_on_a_model_of_over_a_million_params():
    params = {
        "w1": jnp.zeros((1024, 768)),
        "w2": jnp.zeros((768, 512)),
        "b1": jnp.zeros(768),
        "b2": jnp.zeros(512),
    }
    n = sum(x.size for x in jax.tree.leaves(params))
    assert n > 1_000_000

    def bpp(**policy):
        opt = adamx.with_storage(adamx.adam(1e-3), **policy) if policy else adamx.adam(1e-3)
        state = jax.jit(opt.init)(params)  # eager, each encode operation compiles on its own
        measured = adamx.state_bytes_per_param(state, params)
        by_hand = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)) / n
        assert measured == pytest.approx(by_hand)
        return measured

    assert bpp() == pytest.approx(8.0, abs=0.01)
    assert bpp(mu="float32", nu="float32") == pytest.approx(8.0, abs=0.01)
    assert bpp(mu="bfloat16", nu="bfloat16") == pytest.approx(4.0, abs=0.01)
    assert bpp(mu="bfloat16_sr", nu="bfloat16_sr") == pytest.approx(4.0, abs=0.01)
    eight = bpp(mu="8bit", nu="8bit")
    assert 2.0 < eight <= 2.1  # 1 + 1 bytes of codes, 4/256 of scales per moment
    assert bpp(nu="factored") == pytest.approx(4.0, abs=0.02)
    assert bpp(mu="8bit", nu="factored") <= 1.05


def test_stochastic_rounding_is_deterministic_per_seed_and_its_key_advances():
    params = _tree({"w": (64, 64)})
    grads = _grads(params, 0)

    def run(seed):
        opt = adamx.with_storage(adamx.adam(1e-3), mu="bfloat16_sr", nu="bfloat16_sr", seed=seed)
        state = opt.init(params)
        keys = [np.asarray(state.key)]
        step = jax.jit(opt.update)
        for _ in range(3):
            _, state = step(grads, state, params)
            keys.append(np.asarray(state.key))
        return state, keys

    a, keys = run(0)
    b, _ = run(0)
    c, _ = run(1)
    assert len({k.tobytes() for k in keys}) == len(keys)  # a new key every step
    mu = lambda s: np.asarray(s.inner[0].mu["w"].astype(jnp.float32))  # noqa: E731
    np.testing.assert_array_equal(mu(a), mu(b))
    assert not np.array_equal(mu(a), mu(c))
    assert a.inner[0].mu["w"].dtype == jnp.bfloat16


def test_no_retrace_and_dtypes_kept_under_jit():
    params = _tree({"w": (64, 80), "b": (80,)})
    opt = adamx.with_storage(adamx.adam(1e-3), mu="8bit", nu="bfloat16_sr")
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(1)
        updates, state = opt.update(_grads(params, 0), state, params)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    types = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    for _ in range(3):
        params, state = step(params, state)
    assert len(traces) == 1
    assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == types
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


@pytest.mark.parametrize(
    "make, policy",
    [
        (lambda: adamx.amsgrad(1e-2), dict(mu="8bit", nu="bfloat16")),
        (lambda: adamx.lion(1e-3), dict(mu="bfloat16_sr")),
        (lambda: adamx.sgd(1e-2, momentum=0.9), dict(mu="bfloat16")),
        (lambda: optax.chain(optax.clip_by_global_norm(1.0), adamx.adamw(1e-2)), dict(nu="8bit")),
        (lambda: optax.inject_hyperparams(adamx.adam)(learning_rate=1e-2), dict(mu="8bit")),
        (lambda: adamx.skip_nonfinite(adamx.adam(1e-2)), dict(nu="factored")),
    ],
)
def test_wraps_relatives_chains_and_wrappers(make, policy):
    params = _tree({"w": (128, 128), "b": (128,)})
    opt = adamx.with_storage(make(), **policy, track_error=True)
    plain = make()
    p, s = params, opt.init(params)
    q, r = params, plain.init(params)
    for t in range(5):
        u, s = jax.jit(opt.update)(_grads(p, t), s, p)
        p = optax.apply_updates(p, u)
        v, r = jax.jit(plain.update)(_grads(q, t), r, q)
        q = optax.apply_updates(q, v)
    err = adamx.storage_error(s)
    assert set(err) == set(policy)
    for role, e in err.items():  # factoring is a low-rank estimate, not a rounding
        bound = 0.5 if policy[role] == "factored" else 0.05
        assert 0 <= float(e.relative_rms) < bound, (role, e)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q)):
        assert np.all(np.isfinite(np.asarray(a)))
        if "factored" not in policy.values():  # a rounding stays close to the float32 run;
            # factoring changes the algorithm (checked against its own reference above)
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=0.02)


def test_adamx_step_through_storage_matches_update_and_apply():
    params = _tree({"w": (64, 64)})
    opt = adamx.with_storage(adamx.adam(1e-2), mu="8bit", nu="8bit")
    s1 = s2 = opt.init(params)
    p1 = p2 = params
    step = jax.jit(lambda p, s, g: adamx.step(opt, g, s, p))
    for t in range(3):
        p1, s1 = step(p1, s1, _grads(p1, t))
        u, s2 = opt.update(_grads(p2, t), s2, p2)
        p2 = optax.apply_updates(p2, u)
    # one jitted program against op-by-op dispatch: XLA's fusion moves the last ulp
    np.testing.assert_allclose(np.asarray(p1["w"]), np.asarray(p2["w"]), rtol=1e-6, atol=2e-7)


def test_quantized_state_round_trips_exactly_through_a_checkpoint():
    params = _tree({"w": (128, 160), "b": (160,)})
    opt = adamx.with_storage(adamx.adam(1e-2), mu="8bit", nu="factored", track_error=True)
    state = opt.init(params)
    update = jax.jit(opt.update)  # one program (eager: ~90 compiles of single operations)
    for t in range(3):
        _, state = update(_grads(params, t), state, params)
    raw = flax.serialization.msgpack_restore(flax.serialization.to_bytes(state))
    restored = adamx.restore_state(raw, opt.init(params))
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    u1, _ = update(_grads(params, 3), restored, params)
    u2, _ = update(_grads(params, 3), state, params)
    np.testing.assert_array_equal(np.asarray(u1["w"]), np.asarray(u2["w"]))


def test_storage_error_reports_what_encoding_lost():
    params = {"w": jnp.asarray(RNG.standard_normal((64, 128)), jnp.float32)}
    for spec, low, high in [("float32", 0.0, 0.0), ("bfloat16", 1e-4, 5e-3), ("8bit", 1e-3, 0.03)]:
        opt = adamx.with_storage(adamx.adam(1e-2), mu=spec, track_error=True)
        _, state = jax.jit(opt.update)(params, opt.init(params), params)
        err = adamx.storage_error(state)["mu"]
        # the first m is (1 - b1) * g, in float32 as the step computes it
        m = (np.float32(1.0 - 0.9) * np.asarray(params["w"])).astype(np.float64)
        stored = np.asarray(
            resolve(spec)
            .for_moment("mu")
            .decode(state.inner[0].mu["w"], jax.ShapeDtypeStruct(m.shape, jnp.float32)),
            np.float64,
        )
        rel = np.sqrt(np.sum((stored - m) ** 2) / np.sum(m**2))
        assert float(err.relative_rms) == pytest.approx(rel, rel=1e-3, abs=1e-7)
        assert low <= rel <= high
    opt = adamx.with_storage(adamx.adam(), mu="8bit")
    assert adamx.storage_error(opt.init(params)) == {}
    with pytest.raises(ValueError, match="no with_storage state"):
        adamx.storage_error(adamx.adam().init(params))


@pytest.mark.parametrize(
    "make, kwargs, match",
    [
        (lambda: adamx.adam(), dict(mu="int4"), "int4"),
        (lambda: adamx.adam(), dict(mu="factored"), "factored"),
        (lambda: adamx.lion(), dict(nu="8bit"), "no second moment"),
        (lambda: adamx.sgd(0.1), dict(mu="bfloat16"), "no first moment"),
        (lambda: adamx.adam(), dict(mu=3), "3"),
    ],
)
def test_bad_policies_fail_at_construction(make, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        adamx.with_storage(make(), **kwargs)


@pytest.mark.parametrize("block_size", [0, 3, -8, 100])
def test_block_size_must_be_a_positive_power_of_two(block_size):
    with pytest.raises(ValueError, match="block_size"):
        adamx.with_storage(adamx.adam(), mu=adamx.storage.blockwise8(block_size=block_size))


def test_jit_init_encodes_at_run_time_not_compile_time():
    """The zero moments of a fresh state are constants: without a barrier XLA folds the 8-bit
    encode into the compiled program, evaluating it at compile time (14 s for 7M params,
    measured). The compiled init must still reduce each block (its absmax) at run time."""
    opt = adamx.with_storage(adamx.adam(1e-3), mu="8bit", nu="8bit")
    params = {"w": jnp.ones((64, 1024))}
    hlo = jax.jit(opt.init).lower(params).compile().as_text()
    assert re.search(r" reduce\(", hlo), "the encode was constant-folded"
    state = jax.jit(opt.init)(params)
    eager = opt.init(params)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(eager)):
        np.testing.assert_array_equal(a, b)
