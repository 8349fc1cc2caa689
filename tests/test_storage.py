"""Storage codecs (issue 6) against NumPy references written from the formulas."""

import functools
import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from adamx.storage import (
    Blockwise8,
    Cast,
    Factored,
    FactoredMoment,
    Quantized,
    Storage,
    blockwise8,
    cast,
    dynamic_code,
    factored,
    resolve,
    state_bytes,
)

NAMES = ("float32", "bfloat16", "float16", "bfloat16_sr", "float16_sr", "8bit", "factored")


def spec(x, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(np.shape(x), dtype)


@functools.partial(jax.jit, static_argnums=0)
def enc(policy, x, key=None):
    """``policy.encode``, jitted (eager JAX compiles every operation on its own: slow); a
    stochastic policy without ``key`` gets the seed 7."""
    if key is None and policy.stochastic:
        key = jnp.uint32(7)
    return policy.encode(x, key)


@functools.partial(jax.jit, static_argnums=(0, 2))
def dec(policy, stored, like):
    """``policy.decode``, jitted."""
    return policy.decode(stored, like)


def roundtrip(policy, x, key=None):
    return np.asarray(dec(policy, enc(policy, jnp.asarray(x), key), spec(x)))


def rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------
# The dynamic code tables.


def reference_magnitudes(bits):
    """0, then per decade z (coarsest first) 2**(bits-1-z) evenly spaced values up to 10**-z."""
    parts = [np.zeros(1)]
    for z in range(bits - 1, -1, -1):
        parts.append(np.linspace(10.0 ** -(z + 1), 10.0**-z, 2 ** (bits - 1 - z) + 1)[1:])
    return np.concatenate(parts)


def test_signed_code_table():
    table = dynamic_code(True)
    assert table.shape == (256,) and table.dtype == np.float32
    assert np.all(np.diff(table) >= 0)
    np.testing.assert_array_equal(table, -table[::-1])
    assert 0.0 in table and table.max() == 1.0 and table.min() == -1.0
    assert np.count_nonzero(table) == 254  # -0.0 and 0.0
    np.testing.assert_allclose(table[128:], reference_magnitudes(7), rtol=1e-6)
    assert not table.flags.writeable


def test_unsigned_code_table():
    table = dynamic_code(False)
    assert table.shape == (256,) and table.dtype == np.float32
    assert table[0] == 0.0 and np.all(np.diff(table) > 0) and table.max() == 1.0
    np.testing.assert_allclose(table, reference_magnitudes(8), rtol=1e-6)
    assert table[1] == np.float32(1e-7)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("scale", [1.0, 3.7, 1e-20])
def test_every_code_value_round_trips_exactly(signed, scale):
    table = dynamic_code(signed)
    x = table * np.float32(scale)
    policy = blockwise8(min_size=0, signed=signed)
    stored = enc(policy, jnp.asarray(x))
    np.testing.assert_array_equal(stored.scale, [np.float32(scale)])
    expected = np.arange(256)
    if signed:
        expected[127] = 128  # -0.0 is stored as the code of +0.0
    np.testing.assert_array_equal(stored.codes[0, : x.size], expected)
    np.testing.assert_array_equal(dec(policy, stored, spec(x)), x)


def reference_blockwise(x, block, signed):
    """NumPy brute force in the row layout (blocks of ``min(block, C)`` along the last axis
    ``C``, each row zero-padded): per block absmax, argmin over the table, and the distance
    margin; all but the scales returned flat in ``x``'s row-major order."""
    table = dynamic_code(signed).astype(np.float64)
    c = x.shape[-1]
    b = min(block, c)
    rows = x.reshape(-1, c)
    rows = np.concatenate([rows, np.zeros((rows.shape[0], -c % b), np.float32)], axis=1)
    blocks = rows.reshape(rows.shape[0], -1, b)
    scale = np.abs(blocks).max(axis=-1)
    y = blocks.astype(np.float64) / np.where(scale > 0, scale, 1)[..., None]
    dist = np.abs(y[..., None] - table)
    idx = dist.argmin(axis=-1)
    two = np.sort(np.abs(y[..., None] - np.unique(table)), axis=-1)[..., :2]  # one zero
    margin = two[..., 1] - two[..., 0]
    if not signed:
        idx = np.where(blocks > 0, np.maximum(idx, 1), idx)
    decoded = (table[idx] * scale[..., None]).astype(np.float32)

    def unpad(a):
        return a.reshape(a.shape[0], -1)[:, :c].ravel()

    return scale.reshape(*x.shape[:-1], -1), unpad(decoded), unpad(margin), unpad(y)


@pytest.mark.parametrize("signed", [True, False])
def test_nearest_rounding_matches_brute_force(signed):
    r = rng(1)
    x = (r.standard_normal((6, 700)) * 10.0 ** r.uniform(-3, 3, (6, 1))).astype(np.float32)
    if not signed:
        x = np.square(x)
    x[0, :50] = 0.0
    policy = blockwise8(block_size=128, min_size=0, signed=signed, stochastic_rounding=False)
    stored = enc(policy, jnp.asarray(x))
    scale, decoded, margin, y = reference_blockwise(x, 128, signed)
    np.testing.assert_array_equal(stored.scale, scale.astype(np.float32))
    got = np.asarray(dec(policy, stored, spec(x))).ravel()
    clear = margin > 1e-6 * np.abs(y)  # ties (to float32 rounding of x / scale) aside
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(got[clear], decoded[clear])


@pytest.mark.parametrize("signed", [True, False])
def test_rounding_at_midpoints_and_decade_edges(signed):
    """Every float within 64 ulps of a tie or a decade edge: nearest, exact ties to the larger."""
    table = dynamic_code(signed).astype(np.float64)
    mid = ((table[1:] + table[:-1]) / 2).astype(np.float32)
    powers = np.float32(10.0) ** -np.arange(9, dtype=np.float32)
    points = np.concatenate([mid, table.astype(np.float32), powers, -powers, powers / 2])
    bits = np.abs(points).view(np.uint32)[:, None].astype(np.int64) + np.arange(-64, 65)
    x = np.clip(bits, 0, None).astype(np.uint32).view(np.float32) * np.sign(points)[:, None]
    x = np.unique(np.clip(x, -1 if signed else 0, 1))
    x = np.concatenate([x, np.zeros(-x.size % 255, np.float32)]).reshape(-1, 255)
    x = np.concatenate([x, np.ones((x.shape[0], 1), np.float32)], axis=1)  # scale 1 per block
    stored = enc(blockwise8(min_size=0, signed=signed, stochastic_rounding=False), jnp.asarray(x))
    expected = np.searchsorted(mid, x, side="right")
    if not signed:
        expected = np.where(x > 0, np.maximum(expected, 1), 0)
    np.testing.assert_array_equal(stored.codes.reshape(expected.shape), expected)


@pytest.mark.parametrize("signed", [True, False])
def test_relative_error_per_decade(signed):
    """Within decade z (k = bits-1-z fraction bits) nearest rounding errs by <= 4.5/(2**k+4.5)."""
    bits = 7 if signed else 8
    r = rng(2)
    policy = blockwise8(block_size=4096, min_size=0, signed=signed, stochastic_rounding=False)
    for z in range(bits - 1):
        k = bits - 1 - z
        bound = 4.5 / (2**k + 4.5)
        x = (10.0 ** r.uniform(-(z + 1), -z, 4096)).astype(np.float32)
        if signed:
            x *= r.choice([-1, 1], x.size).astype(np.float32)
        x[0] = 1.0  # fixes the block's scale to 1
        rel = np.abs(roundtrip(policy, x) - x) / np.abs(x)
        assert rel.max() <= bound * (1 + 1e-5), (z, rel.max(), bound)
        assert rel.max() >= 0.8 * bound, (z, rel.max(), bound)  # the bound is close to tight


def test_nonzero_v_never_decodes_to_zero():
    r = rng(3)
    v = (10.0 ** r.uniform(-30, 0, (64, 256))).astype(np.float32)
    v[:, ::7] = 0.0
    v[1, 3] = 1e30  # one huge value: the rest of its block is far below the smallest code
    v[3, 5] = -1.0  # a negative "second moment" (an upstream error) is stored as 0
    v[4] = 10.0 ** r.uniform(-37.9, -37, 256)  # normal, but 1e-7 * scale is subnormal
    v[4, 0] = 1e-31
    got = roundtrip(blockwise8(min_size=0, signed=False), v)
    assert np.all(got[v > 0] > 0)
    assert np.all(got[v <= 0] == 0)
    assert np.all(got >= 0)


@pytest.mark.parametrize("signed", [True, False])
def test_absmax_per_block_exact(signed):
    r = rng(4)
    x = (r.standard_normal((8, 256)) * r.uniform(1e-3, 1e3, (8, 1))).astype(np.float32)
    if not signed:
        x = np.abs(x)
    policy = blockwise8(min_size=0, signed=signed)
    stored = enc(policy, jnp.asarray(x))
    np.testing.assert_array_equal(stored.scale, np.abs(x).max(axis=1, keepdims=True))
    got = np.asarray(dec(policy, stored, spec(x)))
    rows, cols = np.arange(8), np.abs(x).argmax(axis=1)
    np.testing.assert_array_equal(got[rows, cols], x[rows, cols])


@pytest.mark.parametrize("signed", [True, False])
def test_padding(signed):
    x = rng(5).uniform(0.5, 1.0, (3, 1367)).astype(np.float32)  # rows of 5 * 256 + 87
    policy = blockwise8(signed=signed)
    stored = enc(policy, jnp.asarray(x))
    assert stored.codes.shape == (3, 6, 256) and stored.scale.shape == (3, 6)
    zero_code = 128 if signed else 0
    np.testing.assert_array_equal(stored.codes[:, -1, 87:], zero_code)  # each row padded
    assert np.all(stored.codes[:, -1, :87] != zero_code)
    got = dec(policy, stored, spec(x))
    assert got.shape == x.shape
    np.testing.assert_allclose(got, x, rtol=0.04)  # top decade: 6.6% signed, 3.4% unsigned


def test_tiny_leaves_stay_float32():
    policy = blockwise8().for_moment("mu")
    small = jnp.asarray(rng(6).standard_normal((64, 63)), jnp.bfloat16)  # 4032 < 4096
    stored = enc(policy, small)
    assert isinstance(stored, jax.Array) and stored.dtype == jnp.float32
    np.testing.assert_array_equal(stored, small.astype(jnp.float32))
    np.testing.assert_array_equal(dec(policy, stored, spec(small)), small.astype(jnp.float32))
    assert isinstance(enc(policy, jnp.zeros(4096)), Quantized)


def test_blockwise_code_resolved_per_moment():
    assert blockwise8().for_moment("mu").signed is True
    assert blockwise8().for_moment("nu").signed is False
    assert blockwise8(signed=True).for_moment("nu").signed is True
    with pytest.raises(ValueError, match="for_moment"):
        blockwise8().encode(jnp.zeros(5000), None)
    with pytest.raises(ValueError, match="`mu`"):
        blockwise8(signed=False).check("mu")


def test_non_finite_block_decodes_non_finite():
    x = np.ones((2, 256), np.float32)
    x[0, 3], x[1, 9] = np.inf, np.nan
    for moment in ("mu", "nu"):
        got = roundtrip(blockwise8(min_size=0).for_moment(moment), x)
        assert not np.any(np.isfinite(got))


def np_hash(index, seed):
    """The documented per-element hash: lowbias32(lowbias32(index ^ seed) + seed)."""

    def mix(h):
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(0x7FEB352D)
        h = h ^ (h >> np.uint32(15))
        h = h * np.uint32(0x846CA68B)
        return h ^ (h >> np.uint32(16))

    return mix(mix(index ^ np.uint32(seed)) + np.uint32(seed))


def reference_stochastic_codes(x, block, signed, seed):
    """The stochastic 8-bit codes from the docstring's formula, in NumPy: per block ``y = x /
    absmax``, ``t[k] <= y < t[k+1]`` by ``np.searchsorted``, up when ``y - t[k] > u (t[k+1] -
    t[k])`` with ``u = (hash(row * C + col) >> 8) * 2**-24``."""
    table = dynamic_code(signed)
    c = x.shape[-1]
    b = min(block, c)
    rows = x.reshape(-1, c)
    pad = -c % b
    padded = np.concatenate([rows, np.zeros((rows.shape[0], pad), np.float32)], axis=1)
    blocks = padded.reshape(rows.shape[0], -1, b)
    scale = np.abs(blocks).max(axis=-1)
    inv = np.float32(1) / np.where(scale > 0, scale, np.float32(1))[..., None]
    at_max = np.abs(blocks) == scale[..., None]  # exactly +-1 there; x * (1/scale) elsewhere
    y = np.where(at_max, np.sign(blocks), blocks * inv).astype(np.float32)
    count = np.searchsorted(table[1:], y, side="right")
    k = np.minimum(count, 254)
    index = (np.arange(rows.shape[0])[:, None] * c + np.arange(padded.shape[1])).astype(np.uint32)
    u = (np_hash(index, seed) >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)
    u = u.reshape(blocks.shape)
    up = (y - table[k]) > u * (table[k + 1] - table[k])
    codes = np.where(count >= 255, 255, k + up)
    if not signed:
        codes = np.where(blocks > 0, np.maximum(codes, 1), 0)
    return codes.astype(np.uint8), scale


@pytest.mark.parametrize("signed", [True, False])
def test_stochastic_codes_match_the_formula(signed):
    r = rng(21)
    x = (r.standard_normal((5, 700)) * 10.0 ** r.uniform(-3, 3, (5, 1))).astype(np.float32)
    if not signed:
        x = np.square(x)
    x[0, :50] = 0.0
    x[1, 7] = -0.0
    policy = blockwise8(block_size=128, min_size=0, signed=signed)
    stored = enc(policy, jnp.asarray(x), jnp.uint32(12345))
    codes, scale = reference_stochastic_codes(x, 128, signed, 12345)
    np.testing.assert_array_equal(stored.scale, scale)
    np.testing.assert_array_equal(stored.codes, codes)


@pytest.mark.parametrize("signed", [True, False])
def test_stochastic_codes_are_unbiased(signed):
    """Over many seeds the mean decoded value is the value itself (to the sampling error),
    where rounding to nearest is off by up to half a code gap; a table value is kept."""
    table = dynamic_code(signed)
    lo, hi = (table[200], table[201]) if signed else (table[60], table[61])
    y = np.linspace(lo, hi, 255, dtype=np.float32)
    x = np.concatenate([y, [np.float32(1.0)]])[None]  # scale 1
    policy = blockwise8(min_size=0, signed=signed)
    decoded = np.stack([roundtrip(policy, x, jnp.uint32(s))[0, :255] for s in range(400)]).astype(
        np.float64
    )
    assert set(np.unique(decoded)) <= {float(lo), float(hi)}
    gap = float(hi) - float(lo)
    err = np.abs(decoded.mean(axis=0) - y)
    assert err.max() < 0.1 * gap and err.mean() < 0.03 * gap
    assert decoded[:, 0].min() == lo and decoded[:, -1].max() == hi  # table values kept


def test_stochastic_codes_move_a_slow_average():
    """An EMA with b2 = 0.999 stored in 8 bits: rounded to nearest it never moves from its
    code (each step's change is far below half a gap); rounded stochastically it follows
    the float32 average."""
    x = np.full((1, 256), 0.5, np.float32)
    x[0, 0] = 1.0  # the block's absmax, constant
    target = np.float32(0.3)
    nearest = blockwise8(min_size=0, signed=False, stochastic_rounding=False)
    sr = blockwise8(min_size=0, signed=False)

    @jax.jit
    def run(x):
        def body(i, carry):
            a, b, f = carry
            a = nearest.decode(nearest.encode(0.999 * a + 0.001 * target, None), spec(x))
            b = sr.decode(sr.encode(0.999 * b + 0.001 * target, i.astype(jnp.uint32)), spec(x))
            return a.at[0, 0].set(1.0), b.at[0, 0].set(1.0), 0.999 * f + 0.001 * target

        return jax.lax.fori_loop(0, 1000, body, (x, x, x))

    a, b, f = (np.asarray(v)[0, 1:] for v in run(jnp.asarray(x)))
    assert np.all(np.abs(a - 0.5) < 0.01)  # frozen
    assert abs(f.mean() - b.mean()) < 0.01 and abs(f.mean() - 0.5) > 0.07


# ---------------------------------------------------------------------------------------------
# Float dtypes and stochastic rounding.


def neighbours(x, dtype):
    """The two representable values around float32 ``x`` (NumPy, from the bit layouts)."""
    if dtype == "bfloat16":
        bits = x.view(np.uint32)
        lo = (bits & np.uint32(0xFFFF0000)).view(np.float32)  # toward zero
        hi = ((bits & np.uint32(0xFFFF0000)) + np.uint32(0x10000)).view(np.float32)
        lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
        return lo.astype(np.float64), hi.astype(np.float64)
    near = x.astype(np.float16)
    below = np.where(near.astype(np.float32) > x, np.nextafter(near, np.float16(-np.inf)), near)
    above = np.where(near.astype(np.float32) < x, np.nextafter(near, np.float16(np.inf)), near)
    return below.astype(np.float64), above.astype(np.float64)


def sample(policy, x, n, seed=0):
    keys = jax.random.split(jax.random.key(seed), n)
    stored = jax.jit(jax.vmap(policy.encode, in_axes=(None, 0)))(jnp.asarray(x), keys)
    assert stored.dtype == policy.dtype
    return np.asarray(stored.astype(jnp.float32)).astype(np.float64)


SR_INPUTS = {
    "bfloat16": np.array(
        [1.001, -1.001, 3.14159, 1e-3, -2.7e-5, 1e30, -7e-30, 1.5e-38, 65519.0, 255.9], np.float32
    ),
    "float16": np.array(
        [1.001, -1.001, 3.14159, 1e-3, -2.7e-5, 1e-6, -3e-7, 6e-5, 60001.0, 255.97], np.float32
    ),
}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_stochastic_rounding_is_unbiased_between_neighbours(dtype):
    x = SR_INPUTS[dtype]
    lo, hi = neighbours(x, dtype)
    assert np.all(lo < x) and np.all(x < hi)  # none exactly representable
    n = 4000
    got = sample(cast(dtype, stochastic_rounding=True), x, n)
    assert np.all((got == lo) | (got == hi))
    p = (x - lo) / (hi - lo)
    std_err = (hi - lo) * np.sqrt(p * (1 - p) / n)
    np.testing.assert_array_less(np.abs(got.mean(axis=0) - x), 5 * std_err)
    assert np.all((got == lo).any(axis=0) & (got == hi).any(axis=0))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_stochastic_rounding_is_deterministic_given_the_key(dtype):
    policy = cast(dtype, stochastic_rounding=True)
    x = jnp.asarray(rng(7).standard_normal(1000), jnp.float32)
    a = enc(policy, x, jax.random.key(3))
    np.testing.assert_array_equal(
        a.view(np.uint16), enc(policy, x, jax.random.key(3)).view(np.uint16)
    )
    assert np.any(a != enc(policy, x, jax.random.key(4)))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_stochastic_rounding_special_values(dtype):
    exact = np.array([np.inf, -np.inf, 0.0, -0.0, 1.0, -2.5, 0.125, 1024.0], np.float32)
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF, 0x7FFFFFFF], np.uint32)
    x = np.concatenate([exact, nans.view(np.float32)])  # payloads in the low bits too
    got = sample(cast(dtype, stochastic_rounding=True), x, 50)
    np.testing.assert_array_equal(got[:, : exact.size], np.broadcast_to(exact, (50, exact.size)))
    assert np.all(np.signbit(got[:, 3])) and not np.any(np.signbit(got[:, 2]))
    assert np.all(np.isnan(got[:, exact.size :]))


def test_stochastic_rounding_overflow_bfloat16():
    top = float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
    halfway = np.array([0x7F7F8000], np.uint32).view(np.float32)  # between max and 2**128
    x = np.concatenate([halfway, -halfway, [np.finfo(np.float32).max]]).astype(np.float32)
    got = sample(cast("bfloat16", stochastic_rounding=True), x, 2000)
    assert np.all(np.isin(np.abs(got), [top, np.inf]))
    assert abs(np.isinf(got[:, 0]).mean() - 0.5) < 0.05
    assert abs(np.isinf(got[:, 1]).mean() - 0.5) < 0.05 and np.all(got[:, 1] < 0)
    assert np.isinf(got[:, 2]).mean() > 0.99


def test_stochastic_rounding_overflow_float16():
    x = np.array([65520.0, -65520.0, 65504.0, 70000.0, -70000.0, 3e38], np.float32)
    got = sample(cast("float16", stochastic_rounding=True), x, 2000)
    assert np.all(np.isin(np.abs(got[:, :2]), [65504.0, np.inf]))
    assert abs(np.isinf(got[:, 0]).mean() - 0.5) < 0.05  # inf stands for 2**16
    assert abs(np.isinf(got[:, 1]).mean() - 0.5) < 0.05 and np.all(got[:, 1] < 0)
    assert np.all(got[:, 2] == 65504.0)
    np.testing.assert_array_equal(got[:, 3:], np.broadcast_to([np.inf, -np.inf, np.inf], (2000, 3)))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_round_to_nearest_cast(dtype):
    x = rng(8).standard_normal(512).astype(np.float32)
    reference = x.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16)
    stored = enc(cast(dtype), jnp.asarray(x))
    assert stored.dtype == dtype
    np.testing.assert_array_equal(
        np.asarray(stored).astype(np.float32), reference.astype(np.float32)
    )


def test_float32_is_the_identity():
    x = np.array([1.0 + 2**-23, -0.0, np.inf, np.nan, 1e-30], np.float32)
    stored = resolve("float32").encode(jnp.asarray(x), None)
    np.testing.assert_array_equal(np.asarray(stored).view(np.uint32), x.view(np.uint32))


def test_stochastic_rounding_needs_a_key():
    with pytest.raises(ValueError, match="`key`"):
        resolve("bfloat16_sr").encode(jnp.ones(3), None)
    with pytest.raises(ValueError, match="uint32 scalar seed"):
        resolve("bfloat16_sr").encode(jnp.ones(3), jnp.zeros(2, jnp.uint32))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_uint32_seed_rounds_as_the_key_it_is_drawn_from(dtype):
    """``with_storage`` passes each leaf the seed ``bits(key)`` drawn beforehand."""
    policy = cast(dtype, stochastic_rounding=True)
    x = jnp.asarray(rng(8).standard_normal(1000), jnp.float32)
    key = jax.random.key(5)
    seed = jax.random.bits(key, (), jnp.uint32)
    by_key, by_seed = enc(policy, x, key), enc(policy, x, seed)
    np.testing.assert_array_equal(by_key.view(np.uint16), by_seed.view(np.uint16))
    assert np.any(by_seed != enc(policy, x, seed + jnp.uint32(1)))


# ---------------------------------------------------------------------------------------------
# Factored second moment.


@pytest.mark.parametrize("shape", [(6, 5), (3, 8, 4)])
def test_factored_keeps_adafactor_ema(shape):
    """Decode, Adam's v update, encode: the factors follow Adafactor's moving averages."""
    r, b2 = rng(9), 0.9
    v0 = r.uniform(0.1, 2.0, shape).astype(np.float32)
    g = r.standard_normal(shape).astype(np.float32)
    policy = factored(min_dim=4)
    stored = enc(policy, jnp.asarray(v0))
    v_new = b2 * dec(policy, stored, spec(v0)) + (1 - b2) * jnp.square(jnp.asarray(g))
    new = enc(policy, v_new)
    v0, g2 = v0.astype(np.float64), np.square(g.astype(np.float64))
    np.testing.assert_allclose(new.row, b2 * v0.mean(-1) + (1 - b2) * g2.mean(-1), rtol=1e-5)
    np.testing.assert_allclose(new.col, b2 * v0.mean(-2) + (1 - b2) * g2.mean(-2), rtol=1e-5)


def test_factored_decode():
    r = rng(10)
    a, b = r.uniform(0.1, 3, (2, 200)), r.uniform(1e-3, 1, (2, 130))
    outer = (a[:, :, None] * b[:, None, :]).astype(np.float32)
    np.testing.assert_allclose(roundtrip(factored(), outer), outer, rtol=1e-5)
    v = r.uniform(0, 1, (150, 128)).astype(np.float64)
    row, col = v.mean(1), v.mean(0)
    expected = np.outer(row, col) / row.mean()
    np.testing.assert_allclose(roundtrip(factored(), v.astype(np.float32)), expected, rtol=1e-5)
    zeros = roundtrip(factored(), np.zeros((128, 128), np.float32))
    np.testing.assert_array_equal(zeros, 0.0)


@pytest.mark.parametrize("shape", [(), (0,), (300,), (127, 300), (300, 127), (4, 127, 128)])
def test_factored_leaves_kept_float32(shape):
    x = jnp.asarray(rng(11).uniform(0, 1, shape), jnp.bfloat16)
    stored = factored().encode(x, None)
    assert isinstance(stored, jax.Array) and stored.dtype == jnp.float32
    np.testing.assert_array_equal(stored, x.astype(jnp.float32))


@pytest.mark.parametrize("shape", [(128, 128), (2, 128, 200)])
def test_factored_shapes(shape):
    stored = enc(factored(), jnp.ones(shape))
    assert isinstance(stored, FactoredMoment)
    assert stored.row.shape == shape[:-1] and stored.col.shape == shape[:-2] + shape[-1:]
    assert stored.row.dtype == stored.col.dtype == jnp.float32


# ---------------------------------------------------------------------------------------------
# Names and bad input.


def test_names_parse():
    for name in NAMES:
        policy = resolve(name)
        assert isinstance(policy, Storage) and policy.name == name
        assert resolve(policy) is policy and hash(policy) == hash(resolve(name))
    assert resolve(None) is None
    assert resolve("bfloat16_sr").stochastic and resolve("8bit").stochastic
    assert not blockwise8(stochastic_rounding=False).stochastic
    assert resolve("8bit") == Blockwise8(256, 4096, None, True)
    assert resolve("factored") == Factored(128)
    assert resolve("float16") == Cast("float16", False)


@pytest.mark.parametrize("bad", ["int8", "fp32", "", "8-bit", 3, jnp.float32])
def test_unknown_policy_lists_the_names(bad):
    with pytest.raises(ValueError) as info:
        resolve(bad)
    for name in NAMES:
        assert repr(name) in str(info.value)


@pytest.mark.parametrize("block_size", [0, 3, -8, "256", 2.0, True, 384])
def test_block_size_must_be_a_positive_power_of_two(block_size):
    with pytest.raises(ValueError, match="`block_size`") as info:
        blockwise8(block_size=block_size)
    assert repr(block_size) in str(info.value)


@pytest.mark.parametrize("block_size", [1, 2, 64, 2048, np.int64(512)])
def test_block_size_powers_of_two_accepted(block_size):
    assert blockwise8(block_size=block_size).block_size == block_size


@pytest.mark.parametrize(
    "build, argument",
    [
        (lambda: blockwise8(min_size=-1), "`min_size`"),
        (lambda: blockwise8(signed="yes"), "`signed`"),
        (lambda: factored(min_dim=0), "`min_dim`"),
        (lambda: cast("int8"), "`dtype`"),
        (lambda: cast("nonsense"), "`dtype`"),
        (lambda: cast("float32", stochastic_rounding=True), "`stochastic_rounding`"),
        (lambda: cast("bfloat16", stochastic_rounding=1), "`stochastic_rounding`"),
    ],
)
def test_bad_configuration(build, argument):
    with pytest.raises(ValueError, match=argument):
        build()


def test_factored_is_for_nu_only():
    with pytest.raises(ValueError, match="`nu` only"):
        factored().check("mu")
    with pytest.raises(ValueError, match="`nu` only"):
        resolve("factored").for_moment("mu")
    assert factored().for_moment("nu") == factored()


@pytest.mark.parametrize("name", NAMES)
def test_unknown_moment(name):
    with pytest.raises(ValueError, match="`moment`"):
        resolve(name).check("v")


# ---------------------------------------------------------------------------------------------
# Jit, dtypes, edge shapes.

POLICIES = {
    "bfloat16": (cast("bfloat16"), "mu"),
    "float16_sr": (cast("float16", stochastic_rounding=True), "mu"),
    "bfloat16_sr": (cast("bfloat16", stochastic_rounding=True), "nu"),
    "8bit_mu": (blockwise8(min_size=1024), "mu"),
    "8bit_nu": (blockwise8(min_size=1024), "nu"),
    "factored": (factored(min_dim=16), "nu"),
}
STORED_DTYPES = {
    "bfloat16": jnp.bfloat16,
    "float16_sr": jnp.float16,
    "bfloat16_sr": jnp.bfloat16,
    "8bit_mu": (jnp.uint8, jnp.float32),
    "8bit_nu": (jnp.uint8, jnp.float32),
    "factored": (jnp.float32, jnp.float32),
}


@pytest.mark.parametrize("name", POLICIES)
def test_jit_without_retrace(name):
    policy, moment = POLICIES[name]
    policy = policy.for_moment(moment)
    shape, traces = (40, 64), []

    def roundtrip_once(x, key):
        traces.append(None)
        stored = policy.encode(x, key)
        return stored, policy.decode(stored, spec(x))

    step = jax.jit(roundtrip_once)
    r = rng(12)
    for i in range(3):
        x = jnp.asarray(np.abs(r.standard_normal(shape)), jnp.float32)
        key = jax.random.key(i)
        stored, decoded = step(x, key)
        eager = policy.decode(policy.encode(x, key), spec(x))
        np.testing.assert_array_equal(decoded, eager)
        assert decoded.dtype == jnp.float32 and decoded.shape == shape
        dtypes = tuple(leaf.dtype for leaf in jax.tree.leaves(stored))
        expected = STORED_DTYPES[name]
        assert dtypes == (expected if isinstance(expected, tuple) else (expected,))
    assert len(traces) == 1


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("shape", [(), (0,), (0, 7), (3, 0), (17, 0, 20)])
def test_zero_dim_and_empty_leaves(name, shape):
    policy, moment = POLICIES[name]
    for p in (policy.for_moment(moment), blockwise8(min_size=0).for_moment(moment)):
        x = jnp.full(shape, 0.75, jnp.float32)
        got = dec(p, enc(p, x, jax.random.key(0)), spec(x))
        assert got.shape == shape and got.dtype == jnp.float32
        np.testing.assert_array_equal(got, x)


def test_decode_to_the_dtype_of_like():
    x = jnp.asarray(rng(13).standard_normal((64, 64)), jnp.float32)
    for policy in (cast("float16"), blockwise8().for_moment("mu"), factored(min_dim=8)):
        stored = enc(policy, jnp.abs(x))
        assert dec(policy, stored, spec(x, jnp.bfloat16)).dtype == jnp.bfloat16


# ---------------------------------------------------------------------------------------------
# Memory.


def test_state_bytes():
    tree = {
        "count": jnp.zeros((), jnp.int32),
        "m": jnp.zeros((10, 3), jnp.bfloat16),
        "q": Quantized(jnp.zeros((4, 256), jnp.uint8), jnp.zeros(4, jnp.float32)),
        "key": jax.random.key(0),
        "shape_only": jax.ShapeDtypeStruct((5,), jnp.float32),
        "none": None,
        "python": 3.0,
    }
    assert state_bytes(tree) == 4 + 60 + 1024 + 16 + 8 + 20
    assert state_bytes({}) == 0


def test_bytes_per_parameter():
    x = jax.ShapeDtypeStruct((1024, 1024), jnp.float32)
    per_param = {}
    for name in NAMES:
        policy = resolve(name).for_moment("nu")
        per_param[name] = state_bytes(jax.eval_shape(policy.encode, x, jax.random.key(0))) / x.size
    real = enc(blockwise8().for_moment("mu"), jnp.ones((512, 512)))
    assert state_bytes(real) == 512 * 512 * (1 + 4 / 256)
    assert per_param["float32"] == 4 and per_param["bfloat16_sr"] == 2
    assert per_param["8bit"] == 1 + 4 / 256
    assert per_param["factored"] == 2 * 1024 * 4 / x.size
    assert math.isclose(state_bytes(jnp.ones(10)), 40)
