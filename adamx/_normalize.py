"""Read-outs: from a moments record to a direction."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from adamx._base import as_scalar, check_moments, check_range


def normalize(eps: float = 1e-8, eps_root: float = 0.0) -> optax.GradientTransformation:
    """Adam's direction: the first moment over the root of the second.

    Per leaf, from a (bias-corrected) :class:`adamx.Moments` record::

        d = m / (sqrt(v + eps_root) + eps)

    ``eps`` outside the root is PyTorch's and the paper's reading; ``eps_root`` inside it
    keeps the gradient of the update finite when differentiating through the optimizer
    (meta-learning). Computed in the leaf's dtype but at least float32, then cast to the
    gradient's dtype.

    Args:
      eps: added to the root, ``>= 0``. Default 1e-8.
      eps_root: added inside the root, ``>= 0``. Default 0.

    Returns:
      A stateless ``optax.GradientTransformation`` from a ``Moments`` record to updates.
    """
    check_range("eps", eps, low=0.0)
    check_range("eps_root", eps_root, low=0.0)

    def direction(g, m, v):
        d = m.dtype
        return (m / (jnp.sqrt(v + as_scalar(eps_root, d)) + as_scalar(eps, d))).astype(g.dtype)

    def update(updates, state, params=None):
        del params
        rec = check_moments(updates, "adamx.normalize")
        return jax.tree.map(direction, rec.grad, rec.mu, rec.nu), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
