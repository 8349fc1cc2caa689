"""Optimistic Adam: Adam's direction extrapolated by the change since the last step."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    PyTree,
    ScalarOrSchedule,
    abstract_or_array,
    as_scalar,
    check_flag,
    check_learning_rate,
    check_range,
    check_trees_match,
    compute_dtype,
    map_unzip,
    transformation,
)
from adamx.blocks._correction import correct_bias
from adamx.blocks._moments import scale_by_moments
from adamx.blocks._normalize import normalize
from adamx.blocks._rules import correct_bias_nesterov
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._guard import recipe


class OptimisticState(NamedTuple):
    """State of :func:`scale_by_optimistic_gradient`.

    Attributes:
      is_initial_step: a bool scalar, True before the first update.
      previous: the incoming updates of the previous step, a tree like the params in their
        dtypes (zeros before the first update).
    """

    is_initial_step: jax.Array
    previous: PyTree


def scale_by_optimistic_gradient(
    alpha: float = 1.0, beta: float = 1.0
) -> optax.GradientTransformation:
    """Optimistic extrapolation of the incoming direction ``r``.

    Per leaf, with ``r_prev`` the ``r`` of the previous update (``r`` itself on the first)::

        d = (alpha + beta) * r - beta * r_prev   =   alpha * r + beta * (r - r_prev)

    Optimistic gradient descent: the step leans further along the change of direction,
    which damps the cycling of plain gradient steps on min-max (saddle-point) problems.
    Arithmetic runs in the leaf's dtype but at least float32.

    Args:
      alpha: the weight of the current direction, ``>= 0``. Default 1.
      beta: the weight of its change, ``>= 0``. Default 1.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`OptimisticState`.

    References:
      Daskalakis et al., "Training GANs with Optimism", ICLR 2018,
      https://arxiv.org/abs/1711.00141
    """
    check_range("alpha", alpha, low=0.0)
    check_range("beta", beta, low=0.0)

    def init(params):
        return OptimisticState(
            is_initial_step=jnp.asarray(True),
            previous=jax.tree.map(lambda p: jnp.zeros_like(abstract_or_array(p)), params),
        )

    def update(updates, state, params=None):
        del params
        check_trees_match(updates, state.previous, "the updates", "the optimizer state")

        def leaf(r, prev):
            r = jnp.asarray(r)
            dtype = compute_dtype(r.dtype)
            rc = r.astype(dtype)
            prev = jnp.where(state.is_initial_step, rc, prev.astype(dtype))
            a, b = as_scalar(alpha, dtype), as_scalar(beta, dtype)
            return ((a + b) * rc - b * prev).astype(r.dtype), r

        new, previous = map_unzip(leaf, 2, updates, state.previous)
        previous = jax.tree.map(lambda x, old: x.astype(old.dtype), previous, state.previous)
        return new, OptimisticState(is_initial_step=jnp.asarray(False), previous=previous)

    return transformation(init, update)


@recipe
def optimistic_adam(
    learning_rate: ScalarOrSchedule = 1e-3,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any | None = None,
    nesterov: bool = True,
) -> optax.GradientTransformation:
    """Optimistic Adam: Adam's direction plus ``beta`` times its change since the last
    step, as ``optax.optimistic_adam_v2``.

    Per leaf, with ``t`` the step number (1 on the first update)::

        m, v as in Adam;   m^ = b1 * m / (1 - b1**(t+1)) + (1 - b1) * g / (1 - b1**t)
                                (nesterov; m / (1 - b1**t) without)
        r = m^ / (sqrt(v / (1 - b2**t) + eps_root) + eps)
        p = p - lr * ((alpha + beta) * r - beta * r_prev)      (r_prev = r at t = 1)

    The chain is Adam's with :func:`scale_by_optimistic_gradient` before the learning rate::

        scale_by_moments(b1, b2, mu_dtype=mu_dtype)
        correct_bias_nesterov(b1, None)       # correct_bias(b1, None) with nesterov=False
        normalize(eps, eps_root, b2=b2)
        scale_by_optimistic_gradient(alpha, beta)
        scale_by_learning_rate(learning_rate)

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. Default 1e-3
        (optax's has none).
      alpha: the weight of the current direction, ``>= 0``. Default 1.
      beta: the weight of its change (the optimism), ``>= 0``. Default 1.
      b1: decay of the first moment, ``[0, 1)``. Default 0.9.
      b2: decay of the second moment, ``[0, 1)``. Default 0.999.
      eps: added to the root, ``>= 0``. Default 1e-8.
      eps_root: added inside the root, ``>= 0``. Default 0.
      mu_dtype: the dtype ``m`` is stored in, or ``None`` for the params'. Default None.
      nesterov: Adam's Nesterov read-out of ``m`` (optax's default). Default True.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.optimistic_adam(learning_rate=0.1, nesterov=False)
      >>> params = {"w": jnp.zeros(2)}
      >>> state = opt.init(params)
      >>> updates, state = opt.update({"w": jnp.asarray([1.0, -1.0])}, state)
      >>> [round(float(u), 4) for u in updates["w"]]  # r_prev = r: plain Adam's first step
      [-0.1, 0.1]

    .. warning::
       This is optax's ``optimistic_adam_v2`` (also exported under that name,
       ``adamx.optimistic_adam_v2``, the same function). optax's ``optimistic_adam`` is
       the deprecated first interface (it warns, takes no schedule, and its second
       positional is ``optimism``): ``optax.optimistic_adam(lr, optimism)`` is
       ``adamx.optimistic_adam(lr, alpha=1, beta=optimism / lr)``, and
       ``optax.optimistic_adam(lr)`` the same numbers as ``adamx.optimistic_adam(lr)``
       (optimism defaults to ``lr``: ``beta=1``). adamx keeps the current interface under
       the plain name, and issues no ``DeprecationWarning``; ``alpha`` and ``beta`` are
       keyword-only, so a v1 call with ``optimism`` given positionally raises a
       ``TypeError`` instead of meaning something else.

    References:
      Daskalakis et al., "Training GANs with Optimism", ICLR 2018,
      https://arxiv.org/abs/1711.00141
    """
    check_learning_rate(learning_rate)
    check_flag("nesterov", nesterov)
    read = correct_bias_nesterov(b1, None) if nesterov else correct_bias(b1, None)
    return optax.chain(
        scale_by_moments(b1, b2, mu_dtype=mu_dtype),
        read,
        normalize(eps, eps_root, b2=b2),
        scale_by_optimistic_gradient(alpha, beta),
        scale_by_learning_rate(learning_rate),
    )


# optax's name for the same interface (its plain `optimistic_adam` is the deprecated v1)
optimistic_adam_v2 = optimistic_adam
