"""Read-outs: from a moments record to a direction."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    as_scalar,
    check_decay,
    check_moments,
    check_range,
    over_real,
    transformation,
)
from adamx.blocks._correction import bias_correction


def normalize(
    eps: float = 1e-8, eps_root: float = 0.0, *, b2: float | None = None
) -> optax.GradientTransformation:
    """Adam's direction: the first moment over the root of the second.

    Per leaf, from a :class:`adamx.Moments` record, with ``t`` its step and
    ``bc2 = 1 - b2**t``::

        d = m / (sqrt(v + eps_root) + eps)                      b2=None: v is already v^
        d = m / (sqrt(v + eps_root * bc2) / sqrt(bc2) + eps)    b2 given: v is the raw v

    The two are the same number. With ``b2`` the second moment is bias-corrected here,
    inside the root, as PyTorch does (``sqrt(v) / sqrt(bc2)``): in the first steps
    ``v / bc2`` is about ``g**2`` and overflows float32 and bfloat16 once ``|g| > 1.8e19``,
    while ``sqrt(v) / sqrt(bc2)`` stays finite as long as ``v`` does. The recipes use
    ``correct_bias(b1, None)`` followed by ``normalize(eps, eps_root, b2=b2)``.

    ``eps`` outside the root is PyTorch's and the paper's reading; ``eps_root`` inside it
    keeps the gradient of the update finite when differentiating through the optimizer
    (meta-learning). Computed in the leaf's dtype but at least float32 (``sqrt(bc2)`` in
    float32, float64 under ``jax_enable_x64``), then cast to the gradient's dtype.

    Args:
      eps: added to the root, ``>= 0``. Default 1e-8.
      eps_root: added inside the root, ``>= 0``. Default 0.
      b2: decay of the second moment, ``[0, 1)``, to bias-correct a raw ``v`` here; or
        ``None`` when ``v`` is already corrected (by :func:`adamx.correct_bias`) or needs
        no correction. Default ``None``.

    Returns:
      A stateless ``optax.GradientTransformation`` from a ``Moments`` record to updates.

    Example:
      >>> import jax.numpy as jnp, optax, adamx
      >>> g = jnp.asarray([1e20, -3.0])  # (1 - b2) * g**2 = 1e37 fits float32, g**2 does not
      >>> opt = optax.chain(
      ...     adamx.scale_by_moments(0.9, 0.999),
      ...     adamx.correct_bias(0.9, None),
      ...     adamx.normalize(1e-8, b2=0.999),
      ... )
      >>> d, _ = opt.update(g, opt.init(g))
      >>> [round(float(x), 4) for x in d]  # m^ / sqrt(v^) = sign(g) on the first step
      [1.0, -1.0]
    """
    check_range("eps", eps, low=0.0)
    check_range("eps_root", eps_root, low=0.0)
    if b2 is not None:
        check_decay("b2", b2)

    def update(updates, state, params=None):
        del params
        rec = check_moments(updates, "adamx.normalize")
        if b2 is None:

            def direction(g, m, v):
                d = v.dtype  # real, also for a complex m
                root = jnp.sqrt(v + as_scalar(eps_root, d))
                return over_real(m, root + as_scalar(eps, d)).astype(g.dtype)

        else:
            bc2 = bias_correction(b2, rec.count)
            bc2_root = jnp.sqrt(bc2)

            def direction(g, m, v):
                d = v.dtype  # real, also for a complex m
                root = jnp.sqrt(v + as_scalar(eps_root, d) * bc2.astype(d)) / bc2_root.astype(d)
                return over_real(m, root + as_scalar(eps, d)).astype(g.dtype)

        return jax.tree.map(direction, rec.grad, rec.mu, rec.nu), state

    return transformation(lambda params: optax.EmptyState(), update)
