"""Bias correction of moment estimates that start at zero."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import check_decay, check_moments, one_minus, scalar_dtype, transformation


def bias_correction(decay, count: jax.Array) -> jax.Array:
    """``1 - decay**count``, accurate to a few ulp for every step count and decay.

    Written as ``-expm1(count * log1p(-(1 - decay)))`` with ``1 - decay`` formed in float64
    on the host when ``decay`` is a Python number: the naive float32 ``1 - 0.999**1`` is off
    by 1.3e-5 relatively, and in bfloat16 ``0.999`` rounds to 1 and the correction to 0.
    Computed in float32 (float64 under ``jax_enable_x64``), whatever the params' dtype.
    """
    dtype = scalar_dtype()
    t = jnp.asarray(count, dtype)
    return -jnp.expm1(t * jnp.log1p(-jnp.asarray(one_minus(decay), dtype)))


def correct_bias(b1: float | None = 0.9, b2: float | None = 0.999) -> optax.GradientTransformation:
    """Divide the moments of a :class:`adamx.Moments` record by their bias corrections.

    With ``t`` the step number of the record::

        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)

    Moments that start at zero underestimate their target by the factor ``1 - b**t``;
    dividing it out makes the first steps full-sized.

    ``v^`` is about ``g**2`` and overflows float32 and bfloat16 once ``|g| > 1.8e19``,
    even where ``v`` itself fits (``(1 - b2) * g**2``, up to ``|g| ~ 5.8e20`` for
    ``b2 = 0.999``). The recipes therefore pass ``b2=None`` here and correct ``v`` inside
    the root instead, with ``normalize(eps, b2=b2)``, as PyTorch does.

    Args:
      b1: decay the first moment was averaged with, or ``None`` to leave ``m`` as it is.
      b2: decay of the second moment, or ``None`` to leave ``v`` as it is.

    Returns:
      A stateless ``optax.GradientTransformation`` from a ``Moments`` record to another.

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, §3,
      https://arxiv.org/abs/1412.6980
    """
    for name, b in (("b1", b1), ("b2", b2)):
        if b is not None:
            check_decay(name, b)

    def correct(tree, decay, count):
        if decay is None or tree is None:
            return tree
        bc = bias_correction(decay, count)
        return jax.tree.map(lambda x: x / bc.astype(x.dtype), tree)

    def update(updates, state, params=None):
        del params
        rec = check_moments(updates, "adamx.correct_bias")
        mu = correct(rec.mu, b1, rec.count)
        nu = correct(rec.nu, b2, rec.count)
        return rec._replace(mu=mu, nu=nu), state

    return transformation(lambda params: optax.EmptyState(), update)
