"""8-bit block-wise dynamic quantization (Dettmers et al. 2022)."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AxisType

from adamx.storage._cast import _mix32, _seed
from adamx.storage._policy import _Policy, check_moment_name, is_int


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


# The four searches of :func:`search_buckets`, in the order of its table.
NEAREST_SIGNED, NEAREST_UNSIGNED, FLOOR_SIGNED, FLOOR_UNSIGNED = range(4)


def _mag16(x: float) -> int:
    """The top 16 bits of a float32's magnitude (exponent and 7 mantissa bits)."""
    return int(np.float32(abs(x)).view(np.uint32)) >> 16


@functools.cache
def search_buckets() -> tuple[int, int, np.ndarray]:
    """``(lo, n, buckets)``: the tables that find an 8-bit code with one read per element.

    Four searches, each counting the boundaries at or below a float32 ``y`` in ``[-1, 1]``
    (``-0.0`` taken as ``+0.0``), that is ``searchsorted(boundaries, y, side="right")``:

    * ``NEAREST_SIGNED`` / ``NEAREST_UNSIGNED``: the midpoints of :func:`dynamic_code`
      (the count is the nearest code, ties to the larger value);
    * ``FLOOR_SIGNED`` / ``FLOOR_UNSIGNED``: the code values but the first, ``table[1:]``
      (the count is the index of the largest value at or below ``y``).

    The bucket of ``y`` is ``clamp((bits(y) >> 16 & 0x7FFF) - lo, 0, n - 1)``, plus ``n``
    when ``y`` is negative: its sign, exponent and top 7 mantissa bits. ``lo`` is two
    binades below the smallest positive boundary of any search, so the first bucket
    (every magnitude below ``2**e(lo)``, zero included) holds no boundary but the signed
    code's zeros, and the last bucket takes every magnitude from 1 up.

    ``buckets[s, :]`` (``uint32[4, 2 n]``, search ``s``) holds per bucket ``c | has << 8 |
    t << 16``: ``c`` the number of boundaries at or below the bucket's lowest value;
    ``has`` whether one boundary lies above that, inside the bucket (never two: checked
    here), and then ``t`` the low 16 bits of its float32 bits (its high 16 are the
    bucket's, so ``y >= boundary`` is ``low16(y) >= t``, or ``<=`` for negative ``y``). The
    count is ``c + (has and that comparison)``. The XLA path and the fused CPU kernel
    (``adamx/kernels/csrc/adam_storage_cpu.cc``) both search with these tables.
    """
    bounds = [
        _midpoints(True),
        _midpoints(False),
        dynamic_code(True)[1:],
        dynamic_code(False)[1:],
    ]
    smallest = min(float(b[b > 0].min()) for b in bounds)
    lo = ((_mag16(smallest) >> 7) - 2) << 7
    n = _mag16(1.0) - lo + 1
    idx = np.arange(n, dtype=np.uint32)
    top16 = idx + np.uint32(lo)
    lo_val = np.where(idx == 0, np.float32(0), (top16 << 16).view(np.float32))
    hi_val = np.where(idx == n - 1, np.float32(np.inf), ((top16 << 16) | 0xFFFF).view(np.float32))
    tiny = np.float32(np.finfo(np.float32).smallest_subnormal)
    # the negative buckets: y < 0 strictly (-0.0 is searched as +0.0)
    neg_hi = np.where(idx == 0, -tiny, -lo_val).astype(np.float32)
    tables = []
    for bound in bounds:
        halves = []
        for bmin, bmax in ((lo_val.astype(np.float32), hi_val), (-hi_val, neg_hi)):
            c = np.searchsorted(bound, bmin, side="right")
            inside = np.searchsorted(bound, bmax, side="right") - c
            if inside.max() > 1:  # pragma: no cover - a property of the tables, tested
                raise AssertionError("a search bucket holds two boundaries")
            has = inside == 1
            t = bound[np.minimum(c, len(bound) - 1)].view(np.uint32)
            same = (t >> 16) & 0x7FFF == top16
            if np.any(has & (~same | (idx == 0) | (idx == n - 1))):  # pragma: no cover
                raise AssertionError("a boundary lies in a clamped bucket")
            entry = c.astype(np.uint32) | np.where(has, (t & 0xFFFF) << 16 | 0x100, 0)
            halves.append(entry.astype(np.uint32))
        tables.append(np.concatenate(halves))
    buckets = np.stack(tables)
    buckets.flags.writeable = False
    return lo, n, buckets


def _gather(table: jax.Array, index: jax.Array) -> jax.Array:
    """``table[index]`` for a small replicated table, with ``index`` sharded or not: under an
    explicit-sharding mesh the result takes ``index``'s sharding (JAX asks for it)."""
    sharding = getattr(jax.typeof(index), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is not None and AxisType.Explicit in getattr(mesh, "axis_types", ()):
        return table.at[index].get(out_sharding=sharding)
    return table[index]


def _count_at_or_below(y: jax.Array, search: int) -> jax.Array:
    """``searchsorted(boundaries, y, side="right")`` for one of the searches of
    :func:`search_buckets`, int32: one read of its bucket table per element."""
    lo, n, buckets = search_buckets()
    bits = lax.bitcast_convert_type(y, jnp.uint32)
    bits = jnp.where(bits == jnp.uint32(0x80000000), jnp.uint32(0), bits)  # -0.0 as +0.0
    neg = (bits >> 31).astype(jnp.int32)
    idx = jnp.clip(((bits >> 16) & 0x7FFF).astype(jnp.int32) - lo, 0, n - 1)
    entry = _gather(jnp.asarray(buckets[search]), idx + n * neg)
    low, t = bits & 0xFFFF, entry >> 16
    up = ((entry & 0x100) != 0) & jnp.where(neg == 1, low <= t, low >= t)
    return (entry & 0xFF).astype(jnp.int32) + up.astype(jnp.int32)


def unit_scaled(blocks: jax.Array, scale: jax.Array) -> jax.Array:
    """``blocks`` (``[..., b]``) over their ``scale`` (``[...]``, each block's absmax) as the
    codes see them: ``x * (1 / scale)`` in float32, exactly ``sign(x)`` where ``|x|`` is the
    absmax (``x`` itself for a block of zeros). A multiply by the reciprocal, not a division:
    XLA's CPU backend compiles a division by a broadcast scale into that multiply anyway, so
    the fused kernel, which does the same, and the XLA path give the same codes."""
    safe = jnp.where(scale > 0, scale, jnp.ones_like(scale))[..., None]
    at_max = jnp.abs(blocks) == scale[..., None]
    return jnp.where(at_max, jnp.sign(blocks), blocks * (jnp.ones_like(safe) / safe))


def _element_bits(seed: jax.Array, shape: tuple[int, ...], cols: int) -> jax.Array:
    """Uniform 32-bit words for the blocks ``shape = (*lead, nb, b)`` of a leaf whose rows
    have ``cols`` elements: each element's row-major index in the leaf (``row * cols +
    column``, modulo ``2**32``) hashed with the leaf's seed, as bfloat16 stochastic
    rounding does (:func:`adamx.storage.cast`); padding gets numbers too (unused)."""
    *lead, nb, b = shape
    rows = math.prod(lead)
    r = lax.broadcasted_iota(jnp.uint32, (rows, nb, b), 0)
    col = lax.broadcasted_iota(jnp.uint32, (rows, nb, b), 1) * jnp.uint32(b)
    col = col + lax.broadcasted_iota(jnp.uint32, (rows, nb, b), 2)
    index = (r * jnp.uint32(cols) + col).reshape(shape)
    return _mix32(_mix32(index ^ seed) + seed)


def _stochastic_code(y: jax.Array, signed: bool, bits: jax.Array) -> jax.Array:
    """The code of ``y`` rounded stochastically between its two neighbouring table values
    ``t[k] <= y < t[k + 1]``: ``k + 1`` when ``y - t[k] > u * (t[k + 1] - t[k])`` with
    ``u = (bits >> 8) * 2**-24`` uniform in ``[0, 1)``, else ``k`` (so a table value is
    kept exactly, and ``E[t[code]] = y`` up to ``2**-24`` of the gap); ``y = 1`` (a block's
    absmax) is the top code."""
    count = _count_at_or_below(y, FLOOR_SIGNED if signed else FLOOR_UNSIGNED)
    k = jnp.minimum(count, 254)
    table = jnp.asarray(dynamic_code(signed))
    below, above = _gather(table, k), _gather(table, k + 1)
    u = (bits >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)
    up = (y - below) > u * (above - below)
    return jnp.where(count >= 255, 255, k + up.astype(jnp.int32))


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


@dataclasses.dataclass(frozen=True)
class Blockwise8(_Policy):
    """An 8-bit block-wise policy; built by :func:`blockwise8`, whose arguments are its fields
    (``stochastic`` is ``stochastic_rounding``: then :meth:`encode` needs a key)."""

    block_size: int = 256
    min_size: int = 4096
    signed: bool | None = None
    stochastic_rounding: bool = True

    def __post_init__(self):
        size = self.block_size
        if not is_int(size) or size <= 0 or size & (size - 1):
            raise ValueError(
                f"`block_size` must be a positive power of two, got {self.block_size!r}."
            )
        if not is_int(self.min_size) or self.min_size < 0:
            raise ValueError(f"`min_size` must be a non-negative integer, got {self.min_size!r}.")
        if self.signed not in (None, True, False):
            raise ValueError(f"`signed` must be None, True or False, got {self.signed!r}.")
        if not isinstance(self.stochastic_rounding, bool):
            raise ValueError(
                f"`stochastic_rounding` must be True or False, got {self.stochastic_rounding!r}."
            )

    @property
    def name(self) -> str:
        return "8bit"

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        """Whether :meth:`encode` needs a key: ``stochastic_rounding``."""
        return self.stochastic_rounding

    def check(self, moment: str) -> None:
        """Raise ``ValueError`` for an unknown moment, or ``"mu"`` with the unsigned code."""
        check_moment_name(moment)
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
        """``x`` as :class:`Quantized`, or float32 when it has fewer than ``min_size``
        elements. With ``stochastic_rounding`` (the default), ``key`` is a PRNG key or a
        ``uint32`` scalar seed (as for :func:`adamx.storage.cast`); else it is ignored."""
        signed = self._signed()
        x = x.astype(jnp.float32)
        if x.size < self.min_size:
            return x
        if self.stochastic_rounding and key is None:
            raise ValueError(
                "8-bit storage with `stochastic_rounding=True` needs a PRNG `key` (or a uint32 "
                "seed) to encode, got None; pass one, or build the policy with "
                "`blockwise8(stochastic_rounding=False)` to round to nearest."
            )
        shape = x.shape or (1,)
        c, b, nb = row_blocks(shape, self.block_size)
        rows = x.reshape(shape)
        if nb * b != c:
            rows = jnp.pad(rows, [(0, 0)] * (len(shape) - 1) + [(0, nb * b - c)])
        blocks = rows.reshape(*shape[:-1], nb, b)
        scale = jnp.max(jnp.abs(blocks), axis=-1)
        y = unit_scaled(blocks, scale)
        if self.stochastic_rounding:
            codes = _stochastic_code(y, signed, _element_bits(_seed(key), blocks.shape, c))  # type: ignore[arg-type]
        else:
            codes = _count_at_or_below(y, NEAREST_SIGNED if signed else NEAREST_UNSIGNED)
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
            return stored.astype(like.dtype).reshape(like.shape)  # type: ignore[union-attr]
        signed = self._signed()
        shape = tuple(like.shape) or (1,)
        c, b, nb = row_blocks(shape, self.block_size)
        values = _gather(jnp.asarray(dynamic_code(signed)), stored.codes) * stored.scale[..., None]  # type: ignore[union-attr]
        if not signed:
            tiny = jnp.full_like(values, jnp.finfo(jnp.float32).tiny)
            values = jnp.where(stored.codes > 0, jnp.maximum(values, tiny), values)  # type: ignore[union-attr]
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


def blockwise8(
    block_size: int = 256,
    min_size: int = 4096,
    signed: bool | None = None,
    stochastic_rounding: bool = True,
) -> Blockwise8:
    """Store a moment in 8 bits per element: block-wise absmax scaling and a dynamic code.

    Per leaf of at least ``min_size`` elements, each row of its last axis (length ``C``;
    a vector is one row) is cut into blocks of ``b = min(block_size, C)`` elements, the
    last one zero-padded, and per block ``k``::

        scale[k] = max |x[k]|                          (float32)
        y        = x[k] * (1 / scale[k])               (float32; exactly +-1 at the absmax)
        codes[k] = index of y rounded to the 256-value table (uint8)
        decode   = table[codes[k]] * scale[k]

    The table is :func:`dynamic_code`: signed for ``mu`` (sign plus a dynamic exponent and
    linear fraction; exact 0, exact ``+-1``), unsigned for ``nu`` (twice the resolution, and
    a positive normal float32 never rounds or decodes to 0: it gets at least the smallest
    positive code, and decodes to at least the smallest normal float32).

    Rounding is **stochastic** by default: with ``t[k] <= y < t[k + 1]`` the neighbouring
    table values, the code is ``k + 1`` with probability ``(y - t[k]) / (t[k + 1] - t[k])``
    (exactly: when ``y - t[k] > u * (t[k + 1] - t[k])``, ``u = (h >> 8) * 2**-24`` from
    ``h``, a 32-bit hash of the element's row-major index in the leaf and the leaf's
    seed, the one bfloat16 stochastic rounding uses), else ``k``; so ``E[decode] = x`` and
    a moving average of ``x`` (Adam's ``v = b2 v + (1 - b2) g**2``) moves on average as in
    float32 even when one step's change is far below the gap between two codes. Rounding
    to the nearest code instead (``stochastic_rounding=False``, ties to the larger; the
    rounding of adamx before 0.3) freezes such averages: with ``b2 = 0.999`` a code of ``v``
    moves only when ``g**2`` differs from ``v`` by more than the code's relative gap over
    ``2 (1 - b2)`` (4x to 100x), so ``v`` follows its block's absmax instead of its own
    gradients, and fine convergence suffers (``benchmarks/convergence.py``: 8-bit moments
    rounded to nearest end 20-30% above float32 on a teacher-student regression, rounded
    stochastically within 1%). The codes themselves mean the same in both modes; a table
    value (0, a block's absmax) is kept exactly in both. Both searches read one entry of a
    small bucket table per element (``search_buckets``), no binary search.

    A NaN or inf in a block makes its whole block decode to non-finite values. Smaller
    leaves are stored in float32 as they are (they are few bytes, and often biases and
    norms sensitive to error).

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
      stochastic_rounding: round stochastically (default True; :func:`adamx.with_storage`
        keeps the key and draws each leaf's seed every step) or to the nearest code
        (False: deterministic, no key; the state of adamx before 0.3).

    Returns:
      The :class:`Blockwise8` policy; leaves are stored as :class:`Quantized`.

    Raises:
      ValueError: ``block_size`` not a positive power of two, ``min_size`` negative, or
        ``stochastic_rounding`` not a bool.

    Example:
      >>> import jax.numpy as jnp
      >>> nu = blockwise8().for_moment("nu")
      >>> stored = nu.encode(jnp.ones((64, 512)), jnp.uint32(0))  # a seed: rounds stochastically
      >>> stored.codes.shape, stored.scale.shape
      ((64, 2, 256), (64, 2))

    Reference:
      Dettmers, Lewis, Shleifer, Zettlemoyer, "8-bit Optimizers via Block-wise
      Quantization", ICLR 2022, https://arxiv.org/abs/2110.02861.
    """
    return Blockwise8(block_size, min_size, signed, stochastic_rounding)
