"""The stored-moments kernel behind ``adamx.step`` for ``with_storage(adam/adamw, ...)``
(adamx/kernels/csrc/adam_storage_cpu.cc, adamx/kernels/_fused_storage.py).

Checked against:

* an independent NumPy evaluation of the documented formulas (decode, the kernel's float32
  Adam arithmetic, encode with ``np.searchsorted`` over the midpoints, bfloat16 rounding
  by bits, the stochastic-rounding hash): params, bfloat16 bits, codes and scales
  bitwise, one step from a state with non-trivial moments;
* the exact nearest code of every midpoint of both codes and its float32 neighbours, run
  through the kernel;
* ``with_storage``'s XLA path, step after step from the same state: the same state tree,
  dtypes and shapes; params within a few ulp; codes equal but for rare off-by-one at a
  midpoint (the two paths round Adam's moments an ulp apart);
* selection: the custom call is in the compiled program where it applies, and not with
  ``fused=False``, ``ADAMX_FUSED=0``, ``track_error=True`` or a policy without a kernel;
  no retrace on a second call.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_fused import compiler, disabled_in_env, xla_step
from test_fused import train_step as kernel_step

import adamx
from adamx import storage as st
from adamx.kernels import _fused, _fused_storage
from adamx.storage import _blockwise8

TARGET = "adamx_adam_storage_step_v1"
FLOAT_TARGET = "adamx_adam_step_v1"


@pytest.fixture(scope="module")
def kernel():
    if compiler() is None:
        pytest.skip("no C++ compiler on PATH")
    if disabled_in_env():
        pytest.skip("ADAMX_FUSED=0 is set in the environment")
    info = adamx.kernel_info()
    assert info.available, info
    return info


def calls(hlo: str, target: str = TARGET) -> int:
    return hlo.count(f'custom_call_target="{target}"')


def tree(shapes, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return {
        k: jnp.asarray(rng.standard_normal(s).astype(np.float32) * np.float32(scale))
        for k, s in shapes.items()
    }


# ------------------------------------------------------------------- NumPy reference

F32 = np.float32
TINY = np.finfo(np.float32).tiny


def np_mix32(h):
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x7FEB352D)
    h = h ^ (h >> np.uint32(15))
    h = h * np.uint32(0x846CA68B)
    return h ^ (h >> np.uint32(16))


def np_rows(shape):
    """(rows, C) of the row-block view of a leaf."""
    c = shape[-1] if shape else 1
    return int(np.prod(shape[:-1], dtype=np.int64)), c


def np_decode(policy, stored, shape):
    if policy is None or isinstance(policy, st.Cast) and policy.dtype == "float32":
        return np.asarray(stored, F32)
    if isinstance(policy, st.Cast):  # bfloat16: the top half of a float32
        bits = np.asarray(stored).view(np.uint16).astype(np.uint32) << np.uint32(16)
        return bits.view(F32).reshape(shape)
    if np.prod(shape) < policy.min_size:
        return np.asarray(stored, F32)
    table = st.dynamic_code(policy.signed)
    codes, scale = np.asarray(stored.codes), np.asarray(stored.scale)
    rows, c = np_rows(shape)
    codes = codes.reshape(rows, -1)
    values = table[codes] * np.repeat(
        scale.reshape(rows, -1), codes.shape[1] // scale.reshape(rows, -1).shape[1], axis=1
    )
    if not policy.signed:
        values = np.where(codes > 0, np.maximum(values, TINY), values)
    return values[:, :c].astype(F32).reshape(shape)


def np_encode(policy, x, seed):
    """What storage.py's encode gives, from the spec (returns numpy arrays)."""
    x = np.asarray(x, F32)
    if policy is None or isinstance(policy, st.Cast) and policy.dtype == "float32":
        return x
    if isinstance(policy, st.Cast):
        bits = x.view(np.uint32)
        if policy.stochastic_rounding:
            index = np.arange(x.size, dtype=np.uint32).reshape(x.shape)
            noise = np_mix32(np_mix32(index ^ np.uint32(seed)) + np.uint32(seed)) >> np.uint32(16)
            top = (bits + noise) >> np.uint32(16)
        else:  # round to nearest even
            top = (
                bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
            ) >> np.uint32(16)
        return top.astype(np.uint16)
    if x.size < policy.min_size:
        return x
    rows, c = np_rows(x.shape)
    b = min(policy.block_size, c)
    nb = -(-c // b)
    padded = np.zeros((rows, nb * b), F32)
    padded[:, :c] = x.reshape(rows, c)
    blocks = padded.reshape(rows, nb, b)
    scale = np.max(np.abs(blocks), axis=-1)
    safe = np.where(scale > 0, scale, F32(1))[..., None]
    at_max = np.abs(blocks) == scale[..., None]  # exactly +-1 there; x * (1/scale) elsewhere
    y = np.where(at_max, np.sign(blocks), blocks * (F32(1) / safe)).astype(F32)
    if policy.stochastic_rounding:  # between the neighbours t[k] <= y < t[k+1], by the hash
        table = st.dynamic_code(policy.signed)
        count = np.searchsorted(table[1:], y, side="right")
        k = np.minimum(count, 254)
        index = (np.arange(rows)[:, None] * c + np.arange(nb * b)).astype(np.uint32)
        h = np_mix32(np_mix32(index ^ np.uint32(seed)) + np.uint32(seed)) >> np.uint32(8)
        u = (h.astype(F32) * F32(2.0**-24)).reshape(blocks.shape)
        up = (y - table[k]) > u * (table[k + 1] - table[k])
        codes = np.where(count >= 255, 255, k + up)
    else:
        codes = np.searchsorted(_blockwise8._midpoints(policy.signed), y, side="right")
    if not policy.signed:
        codes = np.where(blocks > 0, np.maximum(codes, 1), 0)
    shape = x.shape[:-1] if x.ndim else ()
    return codes.astype(np.uint8).reshape(*shape, nb, b), scale.reshape(*shape, nb)


def np_adam(p, g, m, v, s, decay, maximize):
    neg_lr, w1, b2, w2, bc1, er_bc2, sq_bc2, eps, wd = (F32(x) for x in np.asarray(s))
    if maximize:
        g = -g
    if decay == 1:
        g = g + wd * p
    m = m + w1 * (g - m)
    v = b2 * v + (w2 * g) * g
    d = (m / bc1) / (np.sqrt(v + er_bc2) / sq_bc2 + eps)
    if decay == 2:
        d = d + wd * p
    return p + neg_lr * d, m, v


def np_seeds(key, n):
    """The seeds with_storage's encode draws for moment leaves 0..n-1 of an update."""
    sub = jax.random.split(jax.random.wrap_key_data(key))[1]
    return [int(jax.random.bits(jax.random.fold_in(sub, i), (), jnp.uint32)) for i in range(n)]


def reference_step(inner_opt, policies, params, state, grads, flags=None):
    """One step of with_storage(inner_opt) with the kernel's arithmetic, in NumPy."""
    rule = inner_opt.update.adam_rule
    moments = state.inner[rule.moments_at]
    count = moments.count + 1
    lr = rule.learning_rate
    if callable(lr):
        lr = lr(state.inner[rule.lr_at].count)
    s = np.asarray(_fused.scalars(rule, count, lr))
    names = sorted(params)
    n = len(names)
    seeds = np_seeds(state.key, 2 * n) if state.key.size else [0] * (2 * n)
    flags = flags or {k: True for k in names}
    out, mus, nus = {}, {}, {}
    for i, k in enumerate(names):
        shape = params[k].shape
        m = np_decode(policies["mu"], moments.mu[k], shape)
        v = np_decode(policies["nu"], moments.nu[k], shape)
        decay = rule.decay if flags[k] else 0
        with np.errstate(all="ignore"):
            p, m, v = np_adam(
                np.asarray(params[k]), np.asarray(grads[k]), m, v, s, decay, rule.maximize
            )
        out[k] = p
        mus[k] = np_encode(policies["mu"], m, seeds[i])
        nus[k] = np_encode(policies["nu"], v, seeds[n + i])
    return out, mus, nus


def as_numpy(stored):
    if isinstance(stored, st.Quantized):
        return np.asarray(stored.codes), np.asarray(stored.scale)
    x = np.asarray(stored)
    return x.view(np.uint16) if x.dtype == jnp.bfloat16 else x


def assert_bitwise(got, want, what):
    if isinstance(want, tuple):
        assert isinstance(got, tuple), what
        for g, w, part in zip(got, want, ("codes", "scale")):
            assert g.shape == w.shape, (what, part, g.shape, w.shape)
            np.testing.assert_array_equal(g, w, err_msg=f"{what} {part}")
    else:
        assert got.shape == want.shape and got.dtype == want.dtype, (what, got.dtype, want.dtype)
        np.testing.assert_array_equal(got, want, err_msg=what)


def policies_of(mu, nu):
    from adamx.storage._with_storage import _policies

    return _policies(mu, nu)


SHAPES = {
    "a": (24, 300),  # C not a multiple of 256: a padded block per row
    "b": (48, 100),  # C < 256: blocks of C
    "c": (4500,),  # 1-D, padded
    "d": (2, 3, 768),  # 3-D, whole blocks
    "e": (10,),  # under min_size: float32 under an 8-bit policy
}

POLICY_PAIRS = [
    ("bfloat16", "bfloat16"),
    ("bfloat16_sr", "bfloat16_sr"),
    ("8bit", "8bit"),
    ("8bit", "bfloat16"),
    ("bfloat16_sr", "8bit"),
    (None, "8bit"),
    ("float32", "bfloat16_sr"),
]


def warm_state(opt, params, seed=1, steps=2):
    """A state with non-trivial moments (advanced by the kernel: the start of the step
    under test, checked on its own)."""
    state = jax.jit(opt.init)(params)
    step = jax.jit(kernel_step(opt))
    for t in range(steps):
        params, state = step(params, state, tree(SHAPES_OF(params), seed + t, 1e-2))
    return params, state


def SHAPES_OF(params):  # noqa: N802
    return {k: v.shape for k, v in params.items()}


@pytest.mark.parametrize("mu,nu", POLICY_PAIRS)
def test_one_step_bitwise_equals_numpy_reference(kernel, mu, nu):
    inner = adamx.adam(1e-2)
    opt = adamx.with_storage(inner, mu=mu, nu=nu)
    params, state = warm_state(opt, tree(SHAPES, 0))
    grads = tree(SHAPES, 7, 1e-2)
    compiled = jax.jit(kernel_step(opt)).lower(params, state, grads).compile()
    assert calls(compiled.as_text()) == 1
    new_p, new_state = compiled(params, state, grads)
    want_p, want_m, want_v = reference_step(inner, policies_of(mu, nu), params, state, grads)
    moments = new_state.inner[0]
    for k in SHAPES:
        np.testing.assert_array_equal(np.asarray(new_p[k]), want_p[k], err_msg=f"params {k}")
        assert_bitwise(as_numpy(moments.mu[k]), want_m[k], f"mu {k} ({mu})")
        assert_bitwise(as_numpy(moments.nu[k]), want_v[k], f"nu {k} ({nu})")


@pytest.mark.parametrize(
    "make,kw",
    [
        (
            "adamw",
            dict(
                learning_rate=1e-2,
                weight_decay=0.1,
                mask={"a": True, "b": False, "c": True, "d": False, "e": True},
            ),
        ),
        ("adam", dict(learning_rate=optax.linear_schedule(1e-2, 1e-3, 10), maximize=True)),
        ("adam", dict(learning_rate=1e-2, weight_decay=0.05, b1=0.5, eps_root=1e-6)),
    ],
)
def test_adamw_mask_schedule_maximize_bitwise(kernel, make, kw):
    inner = getattr(adamx, make)(**kw)
    opt = adamx.with_storage(inner, mu="8bit", nu="bfloat16_sr")
    params, state = warm_state(opt, tree(SHAPES, 3))
    grads = tree(SHAPES, 8, 1e-2)
    hlo = jax.jit(kernel_step(opt)).lower(params, state, grads).compile().as_text()
    assert calls(hlo) == 1
    new_p, new_state = jax.jit(kernel_step(opt))(params, state, grads)
    flags = kw.get("mask")
    want_p, want_m, want_v = reference_step(
        inner, policies_of("8bit", "bfloat16_sr"), params, state, grads, flags
    )
    moments = new_state.inner[inner.update.adam_rule.moments_at]
    for k in SHAPES:
        np.testing.assert_array_equal(np.asarray(new_p[k]), want_p[k], err_msg=f"params {k}")
        assert_bitwise(as_numpy(moments.mu[k]), want_m[k], f"mu {k}")
        assert_bitwise(as_numpy(moments.nu[k]), want_v[k], f"nu {k}")
    # the schedule's count advanced as on the XLA path
    _, x_state = jax.jit(xla_step(opt))(params, state, grads)
    assert jax.tree.structure(new_state) == jax.tree.structure(x_state)
    for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(x_state)):
        assert a.shape == b.shape and a.dtype == b.dtype
        if a.dtype == jnp.int32 or a.dtype == jnp.uint32:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_every_midpoint_and_its_neighbours_get_the_exact_code(kernel):
    """b1 = 0 and a fresh (zero) mu: the new mu is g exactly; each block's first element is
    1, so y = g: the codes are searchsorted(midpoints, g) for every midpoint, its float32
    neighbours, and the table values, positive and negative."""
    mid = _blockwise8._midpoints(True)
    table = st.dynamic_code(True)
    vals = np.concatenate(
        [mid, np.nextafter(mid, F32(np.inf)), np.nextafter(mid, F32(-np.inf)), table, [F32(-0.0)]]
    ).astype(F32)
    # no subnormals: XLA's threads (the kernel's too) flush them to zero
    vals = vals[(np.abs(vals) <= 1) & ((vals == 0) | (np.abs(vals) >= TINY))]
    per = 255  # one 1.0 then 255 values per block of 256
    n_blocks = -(-vals.size // per)
    g = np.zeros((max(n_blocks, 16), 256), F32)
    g[:, 0] = 1.0
    flat = np.resize(vals, n_blocks * per)
    g[:n_blocks, 1:] = flat.reshape(n_blocks, per)
    inner = adamx.adam(1e-3, b1=0.0)
    opt = adamx.with_storage(inner, mu=st.blockwise8(stochastic_rounding=False))
    params = {"w": jnp.zeros(g.shape, jnp.float32)}
    state = jax.jit(opt.init)(params)
    _, new_state = jax.jit(kernel_step(opt))(params, state, {"w": jnp.asarray(g)})
    codes = np.asarray(new_state.inner[0].mu["w"].codes).reshape(g.shape)
    want = np.searchsorted(mid, g, side="right")
    np.testing.assert_array_equal(codes, want)
    np.testing.assert_array_equal(np.asarray(new_state.inner[0].mu["w"].scale).ravel(), 1.0)


def test_unsigned_code_near_its_midpoints(kernel):
    """v = g * g (b2 = 0, fresh v): g near the square roots of the unsigned midpoints."""
    mid = _blockwise8._midpoints(False).astype(np.float64)
    roots = np.sqrt(mid).astype(F32)
    g = np.concatenate([roots, np.nextafter(roots, F32(1)), np.nextafter(roots, F32(0))])
    rows = np.zeros((max(-(-g.size // 255), 16), 256), F32)
    rows[:, 0] = 1.0
    rows[: -(-g.size // 255), 1:] = np.resize(g, (-(-g.size // 255)) * 255).reshape(-1, 255)
    inner = adamx.adam(1e-3, b2=0.0)
    opt = adamx.with_storage(inner, nu=st.blockwise8(stochastic_rounding=False))
    params = {"w": jnp.zeros(rows.shape, jnp.float32)}
    state = jax.jit(opt.init)(params)
    _, new_state = jax.jit(kernel_step(opt))(params, state, {"w": jnp.asarray(rows)})
    v = rows * rows  # (w2 * g) * g with w2 = 1
    codes = np.asarray(new_state.inner[0].nu["w"].codes).reshape(rows.shape)
    want = np.searchsorted(_blockwise8._midpoints(False), v, side="right")
    want = np.where(v > 0, np.maximum(want, 1), 0)
    np.testing.assert_array_equal(codes, want)


@pytest.mark.parametrize("signed", [True, False])
def test_stochastic_codes_at_table_values_and_neighbours(kernel, signed):
    """b1 = 0 (or b2 = 0) from a fresh state: the new moment is g (or g * g) exactly, with
    each block's first element 1; every code value, its float32 neighbours and points
    between them get the stochastic code of the NumPy reference (floor by searchsorted,
    the hash's uniform), bitwise."""
    table = st.dynamic_code(signed).astype(F32)
    vals = np.concatenate(
        [
            table,
            np.nextafter(table, F32(2)),
            np.nextafter(table, F32(-2)),
            ((table[1:].astype(np.float64) + table[:-1]) / 2).astype(F32),
            (table[1:] * F32(0.7) + table[:-1] * F32(0.3)).astype(F32),
        ]
    )
    vals = vals[(np.abs(vals) <= 1) & ((vals == 0) | (np.abs(vals) >= TINY))]
    if not signed:
        vals = np.sqrt(vals[vals >= 0].astype(np.float64)).astype(F32)  # v = g * g
    per = 255
    n_blocks = -(-vals.size // per)
    g = np.zeros((max(n_blocks, 16), 256), F32)
    g[:, 0] = 1.0
    g[:n_blocks, 1:] = np.resize(vals, n_blocks * per).reshape(n_blocks, per)
    inner = adamx.adam(1e-3, b1=0.0) if signed else adamx.adam(1e-3, b2=0.0)
    policies = {"mu": "8bit"} if signed else {"nu": "8bit"}
    opt = adamx.with_storage(inner, **policies)
    params = {"w": jnp.zeros(g.shape, jnp.float32)}
    state = jax.jit(opt.init)(params)
    _, new_state = jax.jit(kernel_step(opt))(params, state, {"w": jnp.asarray(g)})
    moment = new_state.inner[0].mu["w"] if signed else new_state.inner[0].nu["w"]
    x = g if signed else g * g
    seed = np_seeds(state.key, 2)[0 if signed else 1]
    policy = st.blockwise8().for_moment("mu" if signed else "nu")
    want_codes, want_scale = np_encode(policy, x, seed)
    np.testing.assert_array_equal(np.asarray(moment.codes), want_codes)
    np.testing.assert_array_equal(np.asarray(moment.scale), want_scale)


def test_search_buckets_hold_at_most_one_boundary_and_match_searchsorted():
    """The bucket tables (built and checked in Python) give searchsorted's count for a
    large random sample of [-1, 1], every boundary and its neighbours, for the four
    searches (nearest: the midpoints; floor: the code values but the first); a NumPy model
    of the kernel's search, the kernel itself is checked above."""
    lo, n, buckets, _ = _fused_storage.bucket_tables()
    rng = np.random.default_rng(0)
    searches = [
        _blockwise8._midpoints(True),
        _blockwise8._midpoints(False),
        st.dynamic_code(True)[1:],
        st.dynamic_code(False)[1:],
    ]
    for u, mid in enumerate(searches):
        y = np.concatenate(
            [
                rng.uniform(-1, 1, 200_000).astype(F32),
                (rng.uniform(-1, 1, 100_000) * 10.0 ** rng.uniform(-9, 0, 100_000)).astype(F32),
                mid,
                np.nextafter(mid, F32(2)),
                np.nextafter(mid, F32(-2)),
                [F32(0), F32(-0.0), F32(1), F32(-1)],
            ]
        ).astype(F32)
        yy = (y + F32(0)).astype(F32)
        bits = yy.view(np.uint32)
        idx = np.clip(((bits >> 16) & 0x7FFF).astype(np.int64) - lo, 0, n - 1)
        neg = (bits >> 31).astype(bool)
        e = buckets[u * 2 * n + idx + np.where(neg, n, 0)]
        low, t = bits & 0xFFFF, e >> 16
        code = (e & 0xFF) + (((e & 0x100) != 0) & np.where(neg, low <= t, low >= t))
        np.testing.assert_array_equal(code, np.searchsorted(mid, y, side="right"))


def test_each_step_close_to_the_xla_path(kernel):
    """Several steps, each from the same state on both paths: same tree and dtypes,
    params within a few ulp, codes equal but for rare off-by-one."""
    opt = adamx.with_storage(adamx.adam(1e-2), mu="8bit", nu="8bit")
    params = tree(SHAPES, 11)
    state = jax.jit(opt.init)(params)
    k_step, x_step = jax.jit(kernel_step(opt)), jax.jit(xla_step(opt))
    off = total = 0
    for t in range(4):
        grads = tree(SHAPES, 20 + t, 1e-2)
        kp, ks = k_step(params, state, grads)
        xp, xs = x_step(params, state, grads)
        assert jax.tree.structure(ks) == jax.tree.structure(xs)
        for a, b in zip(jax.tree.leaves(ks), jax.tree.leaves(xs)):
            assert a.shape == b.shape and a.dtype == b.dtype
        for k in SHAPES:
            np.testing.assert_allclose(np.asarray(kp[k]), np.asarray(xp[k]), rtol=2e-6, atol=1e-7)
        for a, b in zip(jax.tree.leaves(ks.inner[0]), jax.tree.leaves(xs.inner[0])):
            if a.dtype == jnp.uint8:
                d = np.abs(np.asarray(a, np.int32) - np.asarray(b, np.int32))
                assert d.max() <= 1
                off, total = off + int((d > 0).sum()), total + d.size
            else:  # float32 moments and scales: an ulp or two of the leaf's scale
                b = np.asarray(b)
                atol = 1e-6 * float(np.max(np.abs(b), initial=0.0))
                np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6, atol=atol)
        params, state = xp, xs
    assert off <= 1e-3 * total, (off, total)


def test_donated_step_is_in_place_and_does_not_retrace(kernel):
    opt = adamx.with_storage(adamx.adam(1e-2), mu="8bit", nu="bfloat16_sr")
    params = tree(SHAPES, 4)
    state = jax.jit(opt.init)(params)
    traces = []

    def step(params, state, grads):
        traces.append(1)
        return adamx.step(opt, grads, state, params)

    jitted = jax.jit(step, donate_argnums=(0, 1))
    grads = tree(SHAPES, 5, 1e-2)
    hlo = jitted.lower(params, state, grads).compile().as_text()
    assert calls(hlo) == 1 and calls(hlo, FLOAT_TARGET) == 0
    entry = hlo.split("ENTRY")[1].splitlines()
    # donated buffers updated in place: no copy of anything larger than a few numbers
    copies = [re.search(r"= \w+\[([\d,]*)\]", line) for line in entry if " copy(" in line]
    assert not [c[1] for c in copies if c and math.prod(int(d) for d in c[1].split(",") if d) > 16]
    params, state = jitted(params, state, grads)
    params, state = jitted(params, state, grads)
    assert len(traces) == 1 and jitted._cache_size() == 1


@pytest.mark.parametrize(
    "build",
    [
        lambda: adamx.with_storage(adamx.adam(1e-2, fused=False), mu="8bit", nu="8bit"),
        lambda: adamx.with_storage(adamx.adam(1e-2), mu="8bit", nu="8bit", track_error=True),
        lambda: adamx.with_storage(adamx.adam(1e-2), mu="float16", nu="8bit"),
        lambda: adamx.with_storage(adamx.adam(1e-2), nu="factored"),
        lambda: adamx.with_storage(adamx.adam(1e-2), mu="8bit", nu=st.blockwise8(block_size=128)),
    ],
    ids=["fused-false", "track-error", "float16", "factored", "two-block-sizes"],
)
def test_xla_path_where_the_kernel_does_not_apply(kernel, build):
    opt = build()
    params = tree(SHAPES, 6)
    state = jax.jit(opt.init)(params)
    grads = tree(SHAPES, 7, 1e-2)
    hlo = jax.jit(kernel_step(opt)).lower(params, state, grads).compile().as_text()
    assert calls(hlo) == 0 and calls(hlo, FLOAT_TARGET) == 0


def test_env_switch_and_fused_true(kernel, monkeypatch):
    opt = adamx.with_storage(adamx.adam(1e-2), mu="8bit", nu="bfloat16")
    params = tree(SHAPES, 6)
    state = jax.jit(opt.init)(params)
    monkeypatch.setenv("ADAMX_FUSED", "0")
    assert calls(jax.jit(kernel_step(opt)).lower(params, state, params).compile().as_text()) == 0
    monkeypatch.delenv("ADAMX_FUSED")
    assert calls(jax.jit(kernel_step(opt)).lower(params, state, params).compile().as_text()) == 1
    strict = adamx.with_storage(adamx.adam(1e-2, fused=True), mu="float16")
    with pytest.raises(ValueError, match="fused=True"):
        adamx.step(strict, params, strict.init(params), params)


def test_a_nan_makes_its_blocks_scale_nan_and_leaves_the_others_alone(kernel):
    """NaN propagates into the scale of its 8-bit block (as jnp.max does), so the block
    decodes to NaN; every other block is bitwise the NumPy reference's."""
    inner = adamx.adam(1e-2)
    opt = adamx.with_storage(inner, mu="8bit", nu="8bit")
    params, state = warm_state(opt, tree(SHAPES, 12))
    grads = tree(SHAPES, 13, 1e-2)
    grads["a"] = grads["a"].at[5, 270].set(jnp.nan)  # row 5, second block
    _, new_state = jax.jit(kernel_step(opt))(params, state, grads)
    _, want_m, want_v = reference_step(inner, policies_of("8bit", "8bit"), params, state, grads)
    for got, want in (
        (new_state.inner[0].mu["a"], want_m["a"]),
        (new_state.inner[0].nu["a"], want_v["a"]),
    ):
        scale = np.asarray(got.scale)
        assert np.isnan(scale[5, 1]) and np.isnan(want[1][5, 1])
        np.testing.assert_array_equal(scale, want[1])  # NaN where NaN
        codes, want_codes = np.array(got.codes), np.array(want[0])
        codes[5, 1], want_codes[5, 1] = 0, 0  # the NaN block's codes are not specified
        np.testing.assert_array_equal(codes, want_codes)


def test_grad_through_the_step_is_the_xla_paths(kernel):
    """Differentiating through adamx.step (meta-learning) uses the XLA path's derivative."""
    opt = adamx.with_storage(adamx.adam(1e-2), mu="bfloat16_sr", nu="8bit")
    params = tree(SHAPES, 30)
    state = jax.jit(opt.init)(params)
    grads = tree(SHAPES, 31, 1e-2)

    def loss(step, scale):
        new_params, _ = step(params, state, jax.tree.map(lambda g: g * scale, grads))
        return sum(jnp.sum(x * x) for x in jax.tree.leaves(new_params))

    got = jax.jit(jax.grad(lambda s: loss(kernel_step(opt), s)))(1.0)
    want = jax.jit(jax.grad(lambda s: loss(xla_step(opt), s)))(1.0)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    assert np.isfinite(float(got)) and float(got) != 0.0


# The same steps in a fresh process, whose kernel is built for another -march.
BUILD_SCRIPT = r"""
import sys
import jax, jax.numpy as jnp, numpy as np
import adamx
from adamx import storage as st

def run():
    rng = np.random.default_rng(0)
    shapes = {"a": (24, 300), "b": (48, 100), "c": (4500,), "d": (2, 3, 768), "e": (10,)}
    tree = lambda scale: {
        k: jnp.asarray(rng.standard_normal(s).astype(np.float32) * np.float32(scale))
        for k, s in shapes.items()
    }
    near = st.blockwise8(stochastic_rounding=False)
    cases = [
        (adamx.adam(1e-2), "8bit", "8bit"),
        (adamx.adamw(1e-2, weight_decay=0.1), near, near),
        (adamx.adam(1e-2), "bfloat16_sr", "8bit"),
        (adamx.adam(1e-2), "8bit", "bfloat16"),
    ]
    out = {}
    for c, (inner, mu, nu) in enumerate(cases):
        opt = adamx.with_storage(inner, mu=mu, nu=nu)
        params = tree(1.0)
        state = jax.jit(opt.init)(params)
        step = jax.jit(lambda p, s, g: adamx.step(opt, g, s, p))
        hlo = step.lower(params, state, params).as_text()
        assert "adamx_adam_storage_step_v1" in hlo, "the kernel is not in the program"
        for t in range(3):
            params, state = step(params, state, tree(10.0 ** -(t + 1)))
        for i, leaf in enumerate(jax.tree.leaves((params, state))):
            out[f"{c}_{i}"] = np.asarray(leaf).reshape(-1).view(np.uint8)
    return out

if __name__ == "__main__":
    info = adamx.kernel_info()
    assert info.available and info.path.startswith(sys.argv[2]), info
    np.savez(sys.argv[1], **run())
"""


@pytest.mark.parametrize("march", ["haswell", "x86-64"])
def test_avx2_and_scalar_builds_are_bitwise_the_native_one(kernel, march, tmp_path):
    """The kernel built with ``ADAMX_MARCH=haswell`` (AVX2, no AVX-512: the scalar code,
    vectorised by the compiler) and ``x86-64`` (SSE2 only) gives the native build's
    params, codes, scales and bfloat16 bits, bitwise, over three steps of 8-bit moments
    rounded stochastically and to nearest (Adam and AdamW)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "steps.py"
    script.write_text(BUILD_SCRIPT)
    root = os.path.dirname(os.path.dirname(adamx.__file__))  # this adamx, not an installed one
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = {
        **os.environ,
        "ADAMX_MARCH": march,
        "ADAMX_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONPATH": path,
    }
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "out.npz"), str(tmp_path / "cache")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    namespace: dict = {}
    exec(compile(BUILD_SCRIPT.split("if __name__")[0], "steps", "exec"), namespace)
    want = namespace["run"]()
    got = np.load(tmp_path / "out.npz")
    assert sorted(got.files) == sorted(want)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=f"{march}: leaf {name}")
