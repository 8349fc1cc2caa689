"""MADGRAD: momentumised, adaptive, dual-averaged gradient steps."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    PyTree,
    ScalarOrSchedule,
    abstract_or_array,
    as_scalar,
    check_decay,
    check_learning_rate,
    check_range,
    check_trees_match,
    compute_dtype,
    map_unzip,
    require_params,
    safe_increment,
    scalar_dtype,
    transformation,
)
from adamx.blocks._decay import decay_block
from adamx.blocks._moments import second_moment_zeros
from adamx.optimizers._guard import recipe


class MadgradState(NamedTuple):
    """State of :func:`scale_by_madgrad` (the fields of optax's ``MadgradState``).

    Attributes:
      count: int32 number of updates taken so far.
      grad_sum_sq: the weighted sum of squared gradients ``v``, like the params (float32
        for float16 params).
      s: the weighted sum of gradients, like the params.
      x0: the params at ``init`` (zeros for abstract params), the dual averaging's anchor.
    """

    count: jax.Array  # type: ignore[assignment]
    grad_sum_sq: PyTree
    s: PyTree
    x0: PyTree


def scale_by_madgrad(
    learning_rate: ScalarOrSchedule = 1e-2, momentum: float = 0.9, eps: float = 1e-6
) -> optax.GradientTransformation:
    """MADGRAD's step, learning rate included: dual averaging of ``lr``-weighted gradients,
    normalised by the cube root of the weighted squares, then an average towards it.

    Per leaf, with ``k`` the number of earlier updates and ``x0`` the params at ``init``::

        lam = (lr(k) + eps) * sqrt(k + 1)
        s   = s + lam * g;     v = v + lam * g**2
        z   = x0 - s / (cbrt(v) + eps)
        u   = (1 - momentum) * (z - p)            (p = momentum p + (1 - momentum) z)

    ``u`` is the whole update (no learning-rate block after it); it is formed without
    optax's ``x_new - p``, which cancels to a float's rounding of ``p``.

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count.
      momentum: the weight of the current params in the average, ``[0, 1)``. Default 0.9.
      eps: added to the rate and to the cube root, ``>= 0``. Default 1e-6.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`MadgradState`; it needs
      ``params`` in ``update`` and keeps a copy of the initial params.

    References:
      Defazio & Jelassi, "Adaptivity without Compromise: A Momentumized, Adaptive, Dual
      Averaged Gradient Method for Stochastic Optimization", JMLR 2022,
      https://arxiv.org/abs/2101.11075
    """
    check_learning_rate(learning_rate)
    check_decay("momentum", momentum)
    check_range("eps", eps, low=0.0)

    def init(params):
        def anchor(p):
            p = abstract_or_array(p)
            if isinstance(p, jax.ShapeDtypeStruct):
                return jnp.zeros_like(p)
            return jnp.array(p, copy=True)

        return MadgradState(
            count=jnp.zeros([], jnp.int32),
            grad_sum_sq=jax.tree.map(second_moment_zeros, params),
            s=jax.tree.map(lambda p: jnp.zeros_like(abstract_or_array(p)), params),
            x0=jax.tree.map(anchor, params),
        )

    def update(updates, state, params=None):
        require_params(params, "adamx.scale_by_madgrad")
        check_trees_match(updates, state.s, "the updates", "the optimizer state")
        sd = scalar_dtype()
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        k1 = state.count.astype(sd) + 1  # in floats: a saturated int32 count + 1 would wrap
        lam = (jnp.asarray(lr, sd) + as_scalar(eps, sd)) * jnp.sqrt(k1)

        def leaf(g, p, v, s, x0):
            g, p = jnp.asarray(g), jnp.asarray(p)
            dtype = compute_dtype(g.dtype)
            gc, pc, lc = g.astype(dtype), p.astype(dtype), lam.astype(dtype)
            v_new = v.astype(dtype) + (lc * gc**2)
            s_new = s.astype(dtype) + lc * gc
            z = x0.astype(dtype) - s_new / (jnp.cbrt(v_new) + as_scalar(eps, dtype))
            u = (1 - as_scalar(momentum, dtype)) * (z - pc)
            return u.astype(g.dtype), v_new.astype(v.dtype), s_new.astype(s.dtype)

        u, v, s = map_unzip(leaf, 3, updates, params, state.grad_sum_sq, state.s, state.x0)
        return u, MadgradState(count=safe_increment(state.count), grad_sum_sq=v, s=s, x0=state.x0)

    return transformation(init, update)


@recipe
def madgrad(
    learning_rate: ScalarOrSchedule = 1e-2,
    momentum: float = 0.9,
    weight_decay: float | None = None,
    eps: float = 1e-6,
) -> optax.GradientTransformation:
    """MADGRAD: dual averaging of the gradients with AdaGrad-like cube-root scaling and a
    momentum that averages the iterates, as ``optax.contrib.madgrad``.

    Per leaf, with ``k`` the number of earlier updates and ``x0`` the params at ``init``::

        g   = g + wd * p                              (weight_decay)
        lam = (lr(k) + eps) * sqrt(k + 1)
        s   = s + lam * g;     v = v + lam * g**2
        z   = x0 - s / (cbrt(v) + eps)
        p   = momentum * p + (1 - momentum) * z

    The recipe::

        add_decayed_weights(weight_decay)             # coupled, omitted when None
        scale_by_madgrad(learning_rate, momentum, eps)

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. Default 1e-2
        (optax's has none).
      momentum: ``[0, 1)``. Default 0.9.
      weight_decay: coupled (L2) decay, ``>= 0``; None (default; optax's 0.0) or 0 leave
        it out.
      eps: added to the rate and to the cube root, ``>= 0``. Default 1e-6.

    Returns:
      An ``optax.GradientTransformation`` that needs ``params`` in ``update``.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.madgrad(learning_rate=0.1, momentum=0.0, eps=0.0)
      >>> params = {"w": jnp.zeros(2)}
      >>> u, state = opt.update({"w": jnp.asarray([8.0, -1.0])}, opt.init(params), params)
      >>> [round(float(x), 4) for x in u["w"]]   # -lam g / cbrt(lam g**2), lam = 0.1
      [-0.4309, 0.2154]

    .. warning::
       The learning rate enters the weights of the sums, so a rate of 0 from some update on
       still moves the params towards the last ``z`` (as in optax). ``x0`` is a copy of the
       initial params: the state holds three param-sized trees. The step sizes of SGD and
       Adam do not carry over. Real params only.

    References:
      Defazio & Jelassi, "Adaptivity without Compromise: A Momentumized, Adaptive, Dual
      Averaged Gradient Method for Stochastic Optimization", JMLR 2022,
      https://arxiv.org/abs/2101.11075
    """
    check_learning_rate(learning_rate)
    return optax.chain(*decay_block(weight_decay), scale_by_madgrad(learning_rate, momentum, eps))
