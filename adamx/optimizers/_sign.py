"""signSGD and Signum: the sign of the gradient, or of its moving average."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    ScalarOrSchedule,
    check_decay,
    check_dtype,
    check_learning_rate,
    transformation,
)
from adamx.blocks._moments import scale_by_moments
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._guard import recipe
from adamx.optimizers._lamb_lion import read_sign


def scale_by_sign() -> optax.GradientTransformation:
    """The sign of each element of the incoming updates (a plain tree, not a record).

    Per leaf::

        d = sign(u)           (-1, 0 or +1, in the update's dtype)

    :func:`adamx.read_sign` is the same read-out for the first moment of a
    :class:`adamx.Moments` record.

    Returns:
      A stateless ``optax.GradientTransformation``.

    References:
      Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex Problems", ICML
      2018, https://arxiv.org/abs/1802.04434
    """

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u: jnp.sign(jnp.asarray(u)), updates), state

    return transformation(lambda params: optax.EmptyState(), update)


@recipe
def sign_sgd(learning_rate: ScalarOrSchedule = 1e-3) -> optax.GradientTransformation:
    """signSGD: a step of ``lr`` against the sign of every gradient element, as
    ``optax.sign_sgd``.

    Per leaf::

        p = p - lr * sign(g)

    The recipe is plain SGD's chain with :func:`scale_by_sign` in front of the learning
    rate::

        scale_by_sign()
        scale_by_learning_rate(learning_rate)

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. Default 1e-3
        (optax's has none).

    Returns:
      An ``optax.GradientTransformation`` without state (a schedule keeps its count).

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.sign_sgd(learning_rate=0.1)
      >>> params = {"w": jnp.ones(3)}
      >>> updates, _ = opt.update({"w": jnp.asarray([3.0, -1e-6, 0.0])}, opt.init(params))
      >>> [round(float(u), 4) for u in updates["w"]]
      [-0.1, 0.1, -0.0]

    .. warning::
       ``jnp.sign(0) = 0``: an element whose gradient is exactly zero does not move. Every
       other element moves by ``lr`` whatever its gradient's size, so the learning rate of
       SGD does not carry over (start 10-100x smaller). Real params only.

    References:
      Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex Problems", ICML
      2018, https://arxiv.org/abs/1802.04434
    """
    check_learning_rate(learning_rate)
    return optax.chain(scale_by_sign(), scale_by_learning_rate(learning_rate))


@recipe
def signum(
    learning_rate: ScalarOrSchedule = 1e-3,
    beta: float = 0.9,
    accumulator_dtype: Any | None = None,
) -> optax.GradientTransformation:
    """Signum: signSGD on a moving average of the gradient, as ``optax.signum``.

    Per leaf::

        m = beta * m + (1 - beta) * g          (m starts at 0; no bias correction)
        p = p - lr * sign(m)

    The recipe is Lion's chain with Adam's first moment in place of Lion's two-speed one::

        scale_by_moments(beta, None, mu_dtype=accumulator_dtype)   # m only
        read_sign()
        scale_by_learning_rate(learning_rate)

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. Default 1e-3
        (optax's has none).
      beta: decay of the moving average, ``[0, 1)``. Default 0.9.
      accumulator_dtype: the dtype ``m`` is stored in (optax's), or ``None`` for the
        params'. Default None.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.signum(learning_rate=0.1)
      >>> params = {"w": jnp.ones(2)}
      >>> state = opt.init(params)
      >>> _, state = opt.update({"w": jnp.asarray([1.0, 1.0])}, state)
      >>> updates, _ = opt.update({"w": jnp.asarray([-5.0, -20.0])}, state)
      >>> [round(float(u), 4) for u in updates["w"]]  # m = 0.09 - 0.5 < 0; 0.09 - 2 < 0
      [0.1, 0.1]

    .. warning::
       Bias correction would not change the sign, so there is none (as in optax). Bernstein
       et al.'s Signum adds weight decay to the gradient; chain
       ``optax.add_decayed_weights(wd)`` in front for it. Real params only.

    References:
      Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex Problems", ICML
      2018, https://arxiv.org/abs/1802.04434
    """
    check_learning_rate(learning_rate)
    check_decay("beta", beta)
    check_dtype("accumulator_dtype", accumulator_dtype, complex_ok=True)
    return optax.chain(
        scale_by_moments(beta, None, mu_dtype=accumulator_dtype),
        read_sign(),
        scale_by_learning_rate(learning_rate),
    )
