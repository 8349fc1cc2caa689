"""State storage codecs: the format an optimizer moment is kept in between two steps.

Storage is separate from the algebra: a moment block computes ``mu`` and ``nu`` in float32;
a codec decides how they sit in memory until the next step. ``encode`` turns a float32 leaf
into a stored pytree, ``decode`` turns it back; both are pure and jittable, and a codec is a
frozen, hashable dataclass, so it can be closed over or passed as a static argument.

Policies (see :func:`resolve` for the names):

- :func:`cast`: a narrower float dtype, optionally with stochastic rounding;
- :func:`blockwise8`: 8-bit block-wise dynamic quantization (Dettmers et al. 2022);
- :func:`factored`: row and column means of the second moment (Shazeer & Stern 2018).

:func:`state_bytes` measures what a state really occupies.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AxisType

_MOMENTS = ("mu", "nu")


@runtime_checkable
class Storage(Protocol):
    """How one moment of an optimizer state is stored between steps.

    A policy is a frozen, hashable dataclass whose methods are pure and jittable.

    Attributes:
      name: the policy's name, as :func:`resolve` parses it (``"bfloat16_sr"``, ``"8bit"``).
      stochastic: whether :meth:`encode` needs a fresh PRNG key on every call.
    """

    @property
    def name(self) -> str: ...

    @property
    def stochastic(self) -> bool: ...

    def encode(self, x: jax.Array, key: jax.Array | None) -> Any:
        """The stored pytree of the float32 (or compute-dtype) leaf ``x``."""

    def decode(self, stored: Any, like: jax.ShapeDtypeStruct) -> jax.Array:
        """The leaf back, with ``like.shape`` and ``like.dtype`` (float32 in the wrapper)."""

    def check(self, moment: str) -> None:
        """Raise ``ValueError`` if this policy cannot store ``moment`` (``"mu"`` or ``"nu"``)."""

    def for_moment(self, moment: str) -> Storage:
        """:meth:`check` ``moment``, then return the policy with its defaults resolved for it."""


def _check_moment_name(moment: str) -> None:
    if moment not in _MOMENTS:
        raise ValueError(f"`moment` must be one of {_MOMENTS}, got {moment!r}.")


class _Policy:
    """Defaults shared by the policies: every moment allowed, nothing to resolve."""

    stochastic = False

    def check(self, moment: str) -> None:
        """Raise ``ValueError`` if ``moment`` is not ``"mu"`` or ``"nu"``."""
        _check_moment_name(moment)

    def for_moment(self, moment: str) -> Storage:
        """:meth:`check` ``moment`` and return this policy unchanged."""
        self.check(moment)
        return self


# ---------------------------------------------------------------------------------------------
# Float dtypes, with optional stochastic rounding.

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
    def stochastic(self) -> bool:
        return self.stochastic_rounding

    def encode(self, x: jax.Array, key: jax.Array | None) -> jax.Array:
        """``x`` in :attr:`dtype`, rounded to nearest or stochastically; then ``key`` is a
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


# ---------------------------------------------------------------------------------------------
# 8-bit block-wise dynamic quantization.


@functools.cache
def dynamic_code(signed: bool) -> np.ndarray:
    """The 256 values of the 8-bit dynamic code, sorted, as a read-only float32 array.

    A magnitude code of ``b`` bits (7 signed, 8 unsigned) reads as: ``z`` leading zero
    bits give the decade, the next (indicator) bit is 1, and the remaining
    ``k = b - 1 - z`` bits a linear fraction ``j``::

        value = 10**-z * (0.1 + 0.9 * (j + 1) / 2**k),   z = 0..b-1, j = 0..2**k-1

    and the all-zero code is 0. Decade ``z`` (magnitudes in ``(10**-(z+1), 10**-z]``) so
    holds ``2**k`` evenly spaced values ending at ``10**-z``: 64, 32, ..., 1 values (signed;
    128, ..., 1 unsigned), finest where the magnitudes are large and reaching down to
    ``1e-6`` (signed) and ``1e-7`` (unsigned). The top value is exactly 1, so a block's
    absmax element is stored exactly. Rounding to the nearest value within decade
    ``z < b - 1`` has relative error at most ``4.5 / (2**k + 4.5)``: 6.6%, 12%, 22%, 36%,
    53%, 69% for the signed decades ``1, 0.1, ..., 1e-5`` (3.3%, 6.6%, ... unsigned).

    The signed table is ``-magnitudes[::-1]`` then ``magnitudes``: symmetric, with ``-0.0``
    and ``0.0`` (127 negative, 127 positive values); the unsigned one is 0 and 255
    positive values.

    Reference:
      Dettmers, Lewis, Shleifer, Zettlemoyer, "8-bit Optimizers via Block-wise
      Quantization", ICLR 2022, https://arxiv.org/abs/2110.02861 (dynamic tree
      quantization, Section 2; this table places the fraction values at the top of their
      bins, so 1 is representable and decades join without a gap).
    """
    bits = 7 if signed else 8
    magnitudes = [0.0]
    for z in reversed(range(bits)):
        n = 2 ** (bits - 1 - z)
        magnitudes += [10.0**-z * (0.1 + 0.9 * (j + 1) / n) for j in range(n)]
    table = np.array(magnitudes, np.float32)
    if signed:
        table = np.concatenate([-table[::-1], table])
    table.flags.writeable = False
    return table


@functools.cache
def _midpoints(signed: bool) -> np.ndarray:
    table = dynamic_code(signed).astype(np.float64)
    return ((table[1:] + table[:-1]) / 2).astype(np.float32)


@functools.cache
def _lookup(signed: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per decade ``z``: ``10**z`` and ``2**k``; and the midpoints padded with ``-+inf``."""
    bits = 7 if signed else 8
    z = np.arange(bits)
    edges = np.concatenate([[-np.inf], _midpoints(signed), [np.inf]]).astype(np.float32)
    return (10.0**z).astype(np.float32), (2.0 ** (bits - 1 - z)).astype(np.float32), edges


def _gather(table: jax.Array, index: jax.Array) -> jax.Array:
    """``table[index]`` for a small replicated table, with ``index`` sharded or not: under an
    explicit-sharding mesh the result takes ``index``'s sharding (JAX asks for it)."""
    sharding = getattr(jax.typeof(index), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is not None and AxisType.Explicit in getattr(mesh, "axis_types", ()):
        return table.at[index].get(out_sharding=sharding)
    return table[index]


def _nearest_code(y: jax.Array, signed: bool) -> jax.Array:
    """Index of the table value nearest to ``y`` in ``[-1, 1]``, int32.

    Equal to ``searchsorted(midpoints, y, side="right")`` (ties to the larger value), but
    computed from the table's structure instead of a binary search: the decade
    ``z = floor(-log10|y|)`` and the rounded fraction give the magnitude index
    ``2**k + round((|y| * 10**z - 0.1) / 0.9 * 2**k) - 1``; float rounding leaves it at
    most one step off, which one comparison with each neighbouring midpoint corrects.
    """
    bits = 7 if signed else 8
    pow10, steps, edges = (jnp.asarray(t) for t in _lookup(signed))
    a = jnp.abs(y)
    z = jnp.clip(jnp.floor(-jnp.log10(a)), 0, bits - 1)  # log10(0) = -inf: the last decade
    z = jnp.where(jnp.isnan(z), 0, z).astype(jnp.int32)
    n = _gather(steps, z)
    fraction = (a * _gather(pow10, z) - 0.1) / 0.9 * n
    j = jnp.clip(jnp.round(fraction) - 1, -1, n - 1)  # -1: 10**-(z+1)
    m = (n + j).astype(jnp.int32)
    guess = jnp.clip(jnp.where(y < 0, 127 - m, 128 + m) if signed else m, 0, 255)
    up = (_gather(edges, guess + 1) <= y).astype(jnp.int32)
    down = (y < _gather(edges, guess)).astype(jnp.int32)
    return guess + up - down


class Quantized(NamedTuple):
    """One leaf in 8-bit block-wise storage (see :func:`blockwise8`).

    Attributes:
      codes: ``uint8[*shape[:-1], n_blocks, b]``, indices into :func:`dynamic_code`: each
        row of the leaf's last axis ``C`` cut into ``n_blocks = ceil(C / b)`` blocks of
        ``b = min(block_size, C)`` elements, the row's last block padded with the code of 0.
      scale: ``float32[*shape[:-1], n_blocks]``, each block's largest absolute value.
    """

    codes: jax.Array
    scale: jax.Array


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclasses.dataclass(frozen=True)
class Blockwise8(_Policy):
    """An 8-bit block-wise policy; built by :func:`blockwise8`, whose arguments are its fields."""

    block_size: int = 256
    min_size: int = 4096
    signed: bool | None = None

    def __post_init__(self):
        size = self.block_size
        if not _is_int(size) or size <= 0 or size & (size - 1):
            raise ValueError(
                f"`block_size` must be a positive power of two, got {self.block_size!r}."
            )
        if not _is_int(self.min_size) or self.min_size < 0:
            raise ValueError(f"`min_size` must be a non-negative integer, got {self.min_size!r}.")
        if self.signed not in (None, True, False):
            raise ValueError(f"`signed` must be None, True or False, got {self.signed!r}.")

    @property
    def name(self) -> str:
        return "8bit"

    def check(self, moment: str) -> None:
        """Raise ``ValueError`` for an unknown moment, or ``"mu"`` with the unsigned code."""
        _check_moment_name(moment)
        if moment == "mu" and self.signed is False:
            raise ValueError(
                "8-bit storage with `signed=False` (the unsigned code) would round every "
                "negative value of the first moment `mu` to 0; use `signed=None` or True."
            )

    def for_moment(self, moment: str) -> Blockwise8:
        """:meth:`check` ``moment``; with ``signed=None``, the signed code for ``"mu"``, the
        unsigned one for ``"nu"``."""
        self.check(moment)
        if self.signed is None:
            return dataclasses.replace(self, signed=moment == "mu")
        return self

    def _signed(self) -> bool:
        if self.signed is None:
            raise ValueError(
                "8-bit storage with `signed=None` picks its code per moment: call "
                "`.for_moment('mu')` or `.for_moment('nu')` first, or pass `signed`."
            )
        return self.signed

    def encode(self, x: jax.Array, key: jax.Array | None) -> Quantized | jax.Array:
        """``x`` as :class:`Quantized`, or float32 when it has fewer than ``min_size`` elements."""
        del key
        signed = self._signed()
        x = x.astype(jnp.float32)
        if x.size < self.min_size:
            return x
        shape = x.shape or (1,)
        c, b, nb = row_blocks(shape, self.block_size)
        rows = x.reshape(shape)
        if nb * b != c:
            rows = jnp.pad(rows, [(0, 0)] * (len(shape) - 1) + [(0, nb * b - c)])
        blocks = rows.reshape(*shape[:-1], nb, b)
        scale = jnp.max(jnp.abs(blocks), axis=-1)
        safe = jnp.where(scale > 0, scale, jnp.ones_like(scale))
        codes = _nearest_code(blocks / safe[..., None], signed)
        if not signed:  # a positive value never rounds to 0; a negative one (an error) does
            codes = jnp.where(blocks > 0, jnp.maximum(codes, 1), 0)
        return Quantized(codes.astype(jnp.uint8), scale)

    def decode(self, stored: Quantized | jax.Array, like: jax.ShapeDtypeStruct) -> jax.Array:
        """``table[codes] * scale`` in ``like``'s shape and dtype (float32 leaves as they are).

        With the unsigned code a non-zero code decodes to at least the smallest normal
        float32, so a positive ``v`` stays positive even when ``table[1] * scale`` underflows.
        """
        size = math.prod(like.shape)
        if size < self.min_size:
            return stored.astype(like.dtype).reshape(like.shape)
        signed = self._signed()
        shape = tuple(like.shape) or (1,)
        c, b, nb = row_blocks(shape, self.block_size)
        values = _gather(jnp.asarray(dynamic_code(signed)), stored.codes) * stored.scale[..., None]
        if not signed:
            tiny = jnp.full_like(values, jnp.finfo(jnp.float32).tiny)
            values = jnp.where(stored.codes > 0, jnp.maximum(values, tiny), values)
        values = values.reshape(*shape[:-1], nb * b)
        if nb * b != c:
            values = values[..., :c]
        return values.reshape(like.shape).astype(like.dtype)


def row_blocks(shape: tuple[int, ...], block_size: int) -> tuple[int, int, int]:
    """``(C, b, nb)`` of the 8-bit row layout of a leaf of ``shape``: its last axis ``C``
    (1 for a scalar), the block length ``b = min(block_size, C)`` (1 when ``C = 0``) and
    ``nb = ceil(C / b)`` blocks per row."""
    c = shape[-1] if shape else 1
    b = max(min(block_size, c), 1)
    return c, b, -(-c // b)


def blockwise8(block_size: int = 256, min_size: int = 4096, signed: bool | None = None):
    """Store a moment in 8 bits per element: block-wise absmax scaling and a dynamic code.

    Per leaf of at least ``min_size`` elements, each row of its last axis (length ``C``;
    a vector is one row) is cut into blocks of ``b = min(block_size, C)`` elements, the
    last one zero-padded, and per block ``k``::

        scale[k] = max |x[k]|                         (float32)
        codes[k] = nearest index of x[k] / scale[k] in the 256-value table (uint8)
        decode   = table[codes[k]] * scale[k]

    The table is :func:`dynamic_code`: signed for ``mu`` (sign plus a dynamic exponent and
    linear fraction; exact 0, exact ``+-1``), unsigned for ``nu`` (twice the resolution, and
    a positive normal float32 never rounds or decodes to 0: it gets at least the smallest
    positive code, and decodes to at least the smallest normal float32). Rounding is to the
    nearest table value, ties to the larger (the result of a search among the midpoints of
    the table, computed arithmetically: a few operations per element, no binary search).
    A block's absmax element round-trips exactly. NaN or inf in a block makes its
    whole block decode to non-finite values. Smaller leaves are stored in float32 as they
    are (they are few bytes, and often biases and norms sensitive to error).

    Blocks never cross a row, so the stored leaf shards like its param: ``codes`` and
    ``scale`` keep the param's leading axes, and its last axis becomes ``(n_blocks, b)``.
    A param sharded along any leading axis, or along its last axis in whole blocks (``C``
    per device a multiple of ``b``), keeps whole blocks on every device, and the update
    decodes and encodes each shard where it lies (no gather); ZeRO-1 (:func:`adamx.shard_state`)
    splits the leading axis, which is also whole blocks. Memory: ``1 + 4 / b`` bytes per
    element, plus the padding of rows whose ``C`` is not a multiple of ``b`` (1.016 at the
    default block of 256; rows shorter than 256 use one block each, e.g. 1.0625 for
    ``C = 64``).

    Args:
      block_size: elements per block with its own scale, a positive power of two; default
        256 (bitsandbytes uses 256 or 2048).
      min_size: leaves with fewer elements stay float32; default 4096 (as bitsandbytes).
      signed: the code; None (default) picks it per moment in :meth:`Blockwise8.for_moment`
        (signed for ``"mu"``, unsigned for ``"nu"``), which must be called before encoding.

    Returns:
      The :class:`Blockwise8` policy; leaves are stored as :class:`Quantized`.

    Raises:
      ValueError: ``block_size`` not a positive power of two, or ``min_size`` negative.

    Example:
      >>> import jax.numpy as jnp
      >>> nu = blockwise8().for_moment("nu")
      >>> stored = nu.encode(jnp.ones((64, 512)), None)
      >>> stored.codes.shape, stored.scale.shape
      ((64, 2, 256), (64, 2))

    Reference:
      Dettmers, Lewis, Shleifer, Zettlemoyer, "8-bit Optimizers via Block-wise
      Quantization", ICLR 2022, https://arxiv.org/abs/2110.02861.
    """
    return Blockwise8(block_size, min_size, signed)


# ---------------------------------------------------------------------------------------------
# Factored second moment.


class FactoredMoment(NamedTuple):
    """A second moment kept as row and column means over its last two axes.

    Attributes:
      row: ``float32[..., n]``, the mean of ``v`` over its last axis.
      col: ``float32[..., m]``, the mean of ``v`` over its second-to-last axis.
    """

    row: jax.Array
    col: jax.Array


@dataclasses.dataclass(frozen=True)
class Factored(_Policy):
    """A factored second-moment policy; built by :func:`factored`, with ``min_dim`` its field."""

    min_dim: int = 128

    def __post_init__(self):
        if not _is_int(self.min_dim) or self.min_dim < 1:
            raise ValueError(f"`min_dim` must be a positive integer, got {self.min_dim!r}.")

    @property
    def name(self) -> str:
        return "factored"

    def check(self, moment: str) -> None:
        """Raise ``ValueError`` unless ``moment`` is ``"nu"``."""
        _check_moment_name(moment)
        if moment != "nu":
            raise ValueError(
                "factored storage keeps row and column means of a non-negative second moment "
                f"and applies to `nu` only, not {moment!r}; use a dtype or '8bit' for `mu`."
            )

    def _factors(self, shape: tuple[int, ...]) -> bool:
        return len(shape) >= 2 and min(shape[-2:]) >= self.min_dim

    def encode(self, x: jax.Array, key: jax.Array | None) -> FactoredMoment | jax.Array:
        """Row and column means of a matrix-like ``x``; other leaves as float32."""
        del key
        x = x.astype(jnp.float32)
        if not self._factors(x.shape):
            return x
        return FactoredMoment(jnp.mean(x, axis=-1), jnp.mean(x, axis=-2))

    def decode(self, stored: FactoredMoment | jax.Array, like: jax.ShapeDtypeStruct) -> jax.Array:
        """``row[..., :, None] * col[..., None, :] / mean(row)``, 0 where ``mean(row) = 0``."""
        if not self._factors(tuple(like.shape)):
            return stored.astype(like.dtype).reshape(like.shape)
        row, col = stored
        denom = jnp.mean(row, axis=-1, keepdims=True)
        ratio = jnp.where(denom > 0, row / jnp.where(denom > 0, denom, 1.0), 0.0)
        return (ratio[..., :, None] * col[..., None, :]).astype(like.dtype)


def factored(min_dim: int = 128) -> Factored:
    """Store the second moment ``nu`` of a matrix as its row and column means (Adafactor).

    A leaf ``v`` of shape ``(..., n, m)`` with ``n >= min_dim`` and ``m >= min_dim`` is
    stored as ``row = mean(v, -1)`` and ``col = mean(v, -2)`` (``n + m`` instead of ``n * m``
    numbers per matrix) and decoded to the rank-1 estimate::

        V = row[..., :, None] * col[..., None, :] / mean(row)      (0 where mean(row) = 0)

    Since ``mean(V, -1) = row`` and ``mean(V, -2) = col``, an Adam step that decodes ``V``,
    computes ``v = b2 * V + (1 - b2) * g**2`` and encodes ``v`` keeps exactly Adafactor's
    factored moving averages ``row <- b2 * row + (1 - b2) * mean(g**2, -1)`` (likewise
    ``col``). Other leaves (vectors, scalars, small matrices) are stored in float32.
    Only for ``nu``: :meth:`Factored.check` rejects ``"mu"``.

    Args:
      min_dim: both of the last two dimensions must be at least this for a leaf to be
        factored; default 128 (optax's ``min_dim_size_to_factor``; PyTorch's Adafactor
        factors every matrix, ``min_dim=1``).

    Returns:
      The :class:`Factored` policy; factored leaves are stored as :class:`FactoredMoment`.

    Example:
      >>> import jax.numpy as jnp
      >>> stored = factored().encode(jnp.ones((256, 512)), None)
      >>> stored.row.shape, stored.col.shape
      ((256,), (512,))

    Reference:
      Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
      2018, https://arxiv.org/abs/1804.04235.
    """
    return Factored(min_dim)


# ---------------------------------------------------------------------------------------------
# Names and measurement.

_NAMED = {
    "float32": lambda: cast("float32"),
    "bfloat16": lambda: cast("bfloat16"),
    "float16": lambda: cast("float16"),
    "bfloat16_sr": lambda: cast("bfloat16", stochastic_rounding=True),
    "float16_sr": lambda: cast("float16", stochastic_rounding=True),
    "8bit": blockwise8,
    "factored": factored,
}


def resolve(spec: str | Storage | None) -> Storage | None:
    """The storage policy a name stands for; a policy or None is returned as it is.

    Names: ``"float32"``, ``"bfloat16"``, ``"float16"`` (:func:`cast`), ``"bfloat16_sr"``,
    ``"float16_sr"`` (:func:`cast` with stochastic rounding), ``"8bit"``
    (:func:`blockwise8` with its defaults), ``"factored"`` (:func:`factored` with its
    defaults). None means "as the optimizer computes it".

    Example:
      >>> resolve("bfloat16_sr")
      Cast(dtype='bfloat16', stochastic_rounding=True)

    Raises:
      ValueError: an unknown name (the message lists the valid ones) or another type.
    """
    if spec is None or isinstance(spec, Storage):
        return spec
    if isinstance(spec, str) and spec in _NAMED:
        return _NAMED[spec]()
    raise ValueError(
        f"Unknown storage policy {spec!r}: use one of {', '.join(map(repr, _NAMED))}, "
        "a policy such as `adamx.blockwise8(block_size=2048)`, or None."
    )


def state_bytes(tree: Any) -> int:
    """Bytes of all arrays in a pytree: the sum of ``size * itemsize`` over its leaves.

    Counts every leaf with a ``shape`` and a ``dtype`` (arrays of any kind, PRNG keys,
    ``jax.ShapeDtypeStruct``, so ``jax.eval_shape`` output works too); other leaves (Python
    scalars) count 0. Divide by the parameter count for bytes per parameter: 4 for a float32
    moment, 2 for bfloat16, ``1 + 4 / block_size`` for 8-bit blocks.

    Example:
      >>> import jax.numpy as jnp
      >>> state_bytes({"m": jnp.zeros(10), "step": jnp.zeros((), jnp.int32)})
      44
    """
    total = 0
    for leaf in jax.tree.leaves(tree):
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            total += math.prod(leaf.shape) * leaf.dtype.itemsize
    return total
