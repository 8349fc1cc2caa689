"""Float-dtype storage, with optional stochastic rounding."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from adamx.storage._policy import _Policy

_SR_DTYPES = ("bfloat16", "float16")
# Distance from float16's largest finite value (65504) to 2**16, the value inf stands for.
_FLOAT16_TOP_ULP = 32.0


@dataclasses.dataclass(frozen=True)
class Cast(_Policy):
    """A float-dtype storage policy; built by :func:`cast`, whose arguments are its fields."""

    dtype: str = "float32"
    stochastic_rounding: bool = False

    def __post_init__(self):
        try:
            dtype = jnp.dtype(self.dtype)
        except TypeError:
            dtype = None
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"`dtype` must be a floating-point dtype, got {self.dtype!r}.")
        if not isinstance(self.stochastic_rounding, bool):
            raise ValueError(
                f"`stochastic_rounding` must be True or False, got {self.stochastic_rounding!r}."
            )
        if self.stochastic_rounding and dtype.name not in _SR_DTYPES:
            raise ValueError(
                f"`stochastic_rounding` needs a dtype narrower than float32, one of "
                f"{_SR_DTYPES}; got dtype {dtype.name!r}."
            )
        object.__setattr__(self, "dtype", dtype.name)

    @property
    def name(self) -> str:
        return self.dtype + ("_sr" if self.stochastic_rounding else "")

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        """Whether :meth:`encode` needs a key: ``stochastic_rounding``."""
        return self.stochastic_rounding

    def encode(self, x: jax.Array, key: jax.Array | None) -> jax.Array:
        """``x`` in ``dtype``, rounded to nearest or stochastically; then ``key`` is a
        PRNG key or a ``uint32`` scalar seed (the one ``jax.random.bits(key, (), uint32)``
        would draw; :func:`adamx.with_storage` draws all its leaves' seeds at once)."""
        if not self.stochastic_rounding:
            del key
            return x.astype(self.dtype)
        if key is None:
            raise ValueError(
                f"storage {self.name!r} rounds stochastically and needs a PRNG `key`, got None."
            )
        x = x.astype(jnp.float32)
        if self.dtype == "bfloat16":
            return _round_bfloat16(x, key)
        return _round_float16(x, key)

    def decode(self, stored: jax.Array, like: jax.ShapeDtypeStruct) -> jax.Array:
        """The stored leaf converted (exactly, for float32) to ``like.dtype``."""
        return stored.astype(like.dtype).reshape(like.shape)


def _mix32(h: jax.Array) -> jax.Array:
    """A 32-bit integer hash with full avalanche (the "lowbias32" constants of C. Wellons'
    hash-prospector): every output bit depends on every input bit."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x7FEB352D)
    h = h ^ (h >> 15)
    h = h * jnp.uint32(0x846CA68B)
    return h ^ (h >> 16)


def _seed(key: jax.Array) -> jax.Array:
    """The 32-bit seed of ``key``: drawn from a PRNG key, or ``key`` itself when it is
    already a ``uint32`` scalar (``with_storage`` draws the seeds of all leaves at once)."""
    key = jnp.asarray(key)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.bits(key, (), jnp.uint32)
    if key.dtype == jnp.uint32 and key.shape == ():
        return key
    raise ValueError(
        "stochastic rounding needs a PRNG key (jax.random.key) or a uint32 scalar seed, got "
        f"an array of dtype {key.dtype} and shape {key.shape}."
    )


def _random_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform 32-bit words, one per element: a counter (the element's index) hashed with
    a 32-bit seed drawn from ``key``.

    Rounding noise needs uniform, independent-looking bits, not a cryptographic stream:
    this costs a few integer operations that XLA fuses into the rounding loop, where
    ``jax.random.bits`` (threefry) takes about 10 ns per element on a CPU core, more than
    the rest of an optimizer step. Deterministic given ``key``.
    """
    seed = _seed(key)
    index = lax.iota(jnp.uint32, max(math.prod(shape), 1))[: math.prod(shape)].reshape(shape)
    return _mix32(_mix32(index ^ seed) + seed)


def _round_bfloat16(x: jax.Array, key: jax.Array) -> jax.Array:
    """Stochastic rounding of float32 ``x`` to bfloat16 by its bit pattern.

    bfloat16 is the top half of float32, and a float32 magnitude's bit pattern grows
    monotonically and (within a binade) linearly with the value. Adding 16 uniform random
    bits to the low half and truncating therefore rounds the magnitude up with probability
    ``(|x| - lo) / (hi - lo)``; carries cross binades and reach inf above the largest
    bfloat16 (as if inf were ``2**128``), inf and signed zeros are unchanged, NaN stays NaN.
    """
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    noise = _random_bits(key, x.shape) >> 16
    top = ((bits + noise) >> 16).astype(jnp.uint16)
    rounded = lax.bitcast_convert_type(top, jnp.bfloat16)
    return jnp.where(jnp.isnan(x), x.astype(jnp.bfloat16), rounded)


def _round_float16(x: jax.Array, key: jax.Array) -> jax.Array:
    """Stochastic rounding of float32 ``x`` to float16 between its two neighbours.

    With ``lo <= |x| <= hi`` the neighbouring float16 magnitudes, ``hi`` is taken with
    probability ``(|x| - lo) / (hi - lo)`` (exact in float32: both are float16 values, close
    to ``|x|``). Above the largest float16 (65504) inf stands for ``2**16``, as in the
    bfloat16 bit trick; the sign is put back last, so ``-0.0`` stays ``-0.0``.
    """
    a = jnp.abs(x)
    near = a.astype(jnp.float16)
    above = near.astype(jnp.float32) > a
    zero, inf = jnp.zeros_like(near), jnp.full_like(near, jnp.inf)
    lo = jnp.where(above, jnp.nextafter(near, zero), near)
    hi = jnp.where(above, near, jnp.nextafter(near, inf))
    lo32 = lo.astype(jnp.float32)
    gap = jnp.where(jnp.isinf(hi), _FLOAT16_TOP_ULP, hi.astype(jnp.float32) - lo32)
    p = (a - lo32) / gap  # NaN for inf and NaN: then lo, which is inf or NaN, is kept
    uniform = (_random_bits(key, x.shape) >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)
    mag = jnp.where(uniform < p, hi, lo)
    return jnp.where(jnp.signbit(x), -mag, mag)


def cast(dtype: Any = "float32", stochastic_rounding: bool = False) -> Cast:
    """Store a moment in a float dtype, rounded to nearest or stochastically.

    Without stochastic rounding the leaf is stored as ``x.astype(dtype)`` (``float32`` is the
    identity for float32 state). With it, each element is rounded to one of its two
    neighbouring ``dtype`` values ``lo <= x <= hi`` at random::

        P(hi) = (x - lo) / (hi - lo),   so   E[decode(encode(x, key))] = x

    given a fresh ``key`` per call (same key, same result). A bfloat16 EMA such as
    ``nu = b2 * nu + (1 - b2) * g**2`` with ``b2 = 0.999`` stalls under round-to-nearest
    (the increment is below half an ulp and always rounds away); stochastic rounding keeps
    it right on average. Special values: NaN stays NaN, ``+-inf`` and ``-0.0`` are kept, and
    finite values above the largest finite ``dtype`` value round to inf with probability
    ``(|x| - max) / ulp`` (inf standing for the next power of two). Subnormal float32 inputs
    may be flushed to zero by XLA.

    Args:
      dtype: a floating dtype or its name; default ``"float32"``.
      stochastic_rounding: round stochastically (``bfloat16`` and ``float16`` only);
        default False.

    Returns:
      The :class:`Cast` policy; ``stochastic`` is ``stochastic_rounding``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> policy = cast("bfloat16", stochastic_rounding=True)
      >>> policy.encode(jnp.ones(3), jax.random.key(0)).dtype
      dtype(bfloat16)

    References:
      Gupta et al., "Deep Learning with Limited Numerical Precision", 2015,
      https://arxiv.org/abs/1502.02551; Zamirai et al., "Revisiting BFloat16 Training",
      2020, https://arxiv.org/abs/2010.06192.
    """
    return Cast(dtype, stochastic_rounding)
