"""8-bit block-wise dynamic quantization (Dettmers et al. 2022)."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType

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


@dataclasses.dataclass(frozen=True)
class Blockwise8(_Policy):
    """An 8-bit block-wise policy; built by :func:`blockwise8`, whose arguments are its fields."""

    block_size: int = 256
    min_size: int = 4096
    signed: bool | None = None

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

    @property
    def name(self) -> str:
        return "8bit"

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
