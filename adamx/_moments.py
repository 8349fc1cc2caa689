"""Moment estimation: exponential moving averages of the gradient and its square."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx._base import (
    Moments,
    PyTree,
    as_scalar,
    check_decay,
    check_trees_match,
    compute_dtype,
    one_minus,
    safe_increment,
)


class MomentsState(NamedTuple):
    """State of :func:`scale_by_moments`.

    Attributes:
      count: int32 number of updates taken so far (saturates at the int32 maximum).
      mu: first moment ``m``, a tree like the params, stored in the params' dtypes.
      nu: second moment ``v``, likewise.
    """

    count: jax.Array
    mu: PyTree
    nu: PyTree


def ema(moment: jax.Array, target: jax.Array, weight) -> jax.Array:
    """``moment + weight * (target - moment)``, the moving average of one leaf, in the
    compute dtype (``weight`` is ``1 - decay``)."""
    dtype = compute_dtype(moment.dtype)
    m = moment.astype(dtype)
    return m + as_scalar(weight, dtype) * (target.astype(dtype) - m)


def scale_by_moments(b1: float = 0.9, b2: float = 0.999) -> optax.GradientTransformation:
    """Exponential moving averages of the gradient and of its square (Adam's moments).

    Per leaf, with ``t`` the step number (1 on the first update)::

        m_t = b1 * m_{t-1} + (1 - b1) * g_t
        v_t = b2 * v_{t-1} + (1 - b2) * g_t**2

    ``1 - b`` is formed in float64 on the host when ``b`` is a Python number, arithmetic
    runs in the leaf's dtype but never below float32, and ``m``, ``v`` are stored in the
    params' dtypes.

    The output is not an update but a :class:`adamx.Moments` record (gradient, ``m``,
    ``v``, ``t``) for the next blocks of a recipe: :func:`adamx.correct_bias`, then a
    read-out such as :func:`adamx.normalize`.

    Args:
      b1: decay of the first moment, in ``[0, 1)``. Default 0.9.
      b2: decay of the second moment, in ``[0, 1)``. Default 0.999.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`MomentsState`.

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015,
      https://arxiv.org/abs/1412.6980
    """
    check_decay("b1", b1)
    check_decay("b2", b2)

    def init(params):
        zeros = lambda p: jnp.zeros_like(jnp.asarray(p))  # noqa: E731
        return MomentsState(
            count=jnp.zeros([], jnp.int32),
            mu=jax.tree.map(zeros, params),
            nu=jax.tree.map(zeros, params),
        )

    def update(grads, state, params=None):
        del params
        check_trees_match(grads, state.mu, "grads", "the optimizer state")
        grads = jax.tree.map(jnp.asarray, grads)
        mu = jax.tree.map(lambda g, m: ema(m, g, one_minus(b1)), grads, state.mu)
        nu = jax.tree.map(
            lambda g, v: ema(v, jnp.square(g.astype(compute_dtype(v.dtype))), one_minus(b2)),
            grads,
            state.nu,
        )
        count = safe_increment(state.count)
        store = lambda new, old: new.astype(old.dtype)  # noqa: E731
        new_state = MomentsState(
            count=count,
            mu=jax.tree.map(store, mu, state.mu),
            nu=jax.tree.map(store, nu, state.nu),
        )
        return Moments(grad=grads, mu=mu, nu=nu, count=count), new_state

    return optax.GradientTransformation(init, update)
