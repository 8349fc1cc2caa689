"""The storage-policy protocol and the defaults the policies share."""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np

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


def check_moment_name(moment: str) -> None:
    if moment not in _MOMENTS:
        raise ValueError(f"`moment` must be one of {_MOMENTS}, got {moment!r}.")


def is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


class _Policy:
    """Defaults shared by the policies: every moment allowed, nothing to resolve."""

    stochastic = False

    def check(self, moment: str) -> None:
        """Raise ``ValueError`` if ``moment`` is not ``"mu"`` or ``"nu"``."""
        check_moment_name(moment)

    def for_moment(self, moment: str) -> Storage:
        """:meth:`check` ``moment`` and return this policy unchanged."""
        self.check(moment)
        return self  # type: ignore[return-value]


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
