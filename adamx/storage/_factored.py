"""A factored second moment: row and column means (Shazeer & Stern 2018)."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from adamx.storage._policy import _Policy, check_moment_name, is_int


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
        if not is_int(self.min_dim) or self.min_dim < 1:
            raise ValueError(f"`min_dim` must be a positive integer, got {self.min_dim!r}.")

    @property
    def name(self) -> str:
        return "factored"

    def check(self, moment: str) -> None:
        """Raise ``ValueError`` unless ``moment`` is ``"nu"``."""
        check_moment_name(moment)
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
            return stored.astype(like.dtype).reshape(like.shape)  # type: ignore[union-attr]
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
