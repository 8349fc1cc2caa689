"""ACProp: the gradient over the root of the previous step's centred second moment."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    ScalarOrSchedule,
    abs_sq,
    abstract_or_array,
    as_scalar,
    check_decay,
    check_learning_rate,
    check_range,
    check_trees_match,
    compute_dtype,
    map_unzip,
    one_minus,
    over_real,
    real_dtype,
    safe_increment,
    transformation,
)
from adamx.blocks._correction import bias_correction
from adamx.blocks._decay import decay_block
from adamx.blocks._moments import MomentsState, second_moment_zeros
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._guard import recipe


def normalize_by_previous_belief(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-16, eps_root: float = 1e-16
) -> optax.GradientTransformation:
    """ACProp's direction: the gradient over the root of the *previous* bias-corrected
    variance of the gradient around its moving average (AdaBelief's ``s``, one step late).

    Per leaf, with ``t`` the step number (1 on the first update)::

        d = g / (sqrt(s / (1 - b2**(t-1))) + eps)     (d = g / (1 + eps) at t = 1)
        s = b2 * s + (1 - b2) * (g - m)**2 + eps_root  (m before this update)
        m = b1 * m + (1 - b1) * g

    ``s`` is corrected inside the root, ``sqrt(s) / sqrt(1 - b2**(t-1))``. A complex leaf
    keeps a complex ``m`` and a real ``s`` of ``|g - m|**2``.

    Args:
      b1: decay of ``m``, ``[0, 1)``. Default 0.9.
      b2: decay of ``s``, ``[0, 1)``. Default 0.999.
      eps: added to the root, ``>= 0``. Default 1e-16.
      eps_root: added to ``s`` at every update, ``>= 0``. Default 1e-16.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`adamx.MomentsState`.

    References:
      Zhuang et al., "Momentum Centering and Asynchronous Update for Adaptive Gradient
      Methods", NeurIPS 2021, https://arxiv.org/abs/2110.05454
    """
    check_decay("b1", b1)
    check_decay("b2", b2)
    check_range("eps", eps, low=0.0)
    check_range("eps_root", eps_root, low=0.0)

    def init(params):
        return MomentsState(
            count=jnp.zeros([], jnp.int32),
            mu=jax.tree.map(lambda p: jnp.zeros_like(abstract_or_array(p)), params),
            nu=jax.tree.map(second_moment_zeros, params),
        )

    def update(updates, state, params=None):
        del params
        check_trees_match(updates, state.mu, "the updates", "the optimizer state")
        first = state.count == 0
        root_bc = jnp.sqrt(bias_correction(b2, jnp.maximum(state.count, 1)))

        def leaf(g, m, s):
            g = jnp.asarray(g)
            dtype = compute_dtype(g.dtype)
            rd = real_dtype(dtype)
            gc, mc, sc = g.astype(dtype), m.astype(dtype), s.astype(rd)
            root = jnp.where(first, jnp.ones([], rd), jnp.sqrt(sc) / root_bc.astype(rd))
            d = over_real(gc, root + as_scalar(eps, rd))
            w2 = as_scalar(one_minus(b2), rd)
            s_new = as_scalar(b2, rd) * sc + abs_sq(gc - mc, w2) + as_scalar(eps_root, rd)
            m_new = mc + as_scalar(one_minus(b1), rd).astype(dtype) * (gc - mc)
            return d.astype(g.dtype), m_new.astype(m.dtype), s_new.astype(s.dtype)

        d, mu, nu = map_unzip(leaf, 3, updates, state.mu, state.nu)
        return d, MomentsState(count=safe_increment(state.count), mu=mu, nu=nu)

    return transformation(init, update)


@recipe
def acprop(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    eps_root: float = 1e-16,
    weight_decay: float | None = None,
    mask: Any | Callable[[Any], Any] | None = None,
) -> optax.GradientTransformation:
    """ACProp: AdaBelief's centred second moment read one step late (asynchronously), over
    the current gradient, as ``optax.contrib.acprop``.

    Per leaf, with ``t`` the step number (1 on the first update)::

        u = g / (sqrt(s / (1 - b2**(t-1))) + eps)      (g / (1 + eps) at t = 1)
        s = b2 * s + (1 - b2) * (g - m)**2 + eps_root   (m before this update)
        m = b1 * m + (1 - b1) * g
        p = p - lr * (u + wd * p)

    The recipe::

        normalize_by_previous_belief(b1, b2, eps, eps_root)
        add_decayed_weights(weight_decay, mask)     # decoupled, omitted when None
        scale_by_learning_rate(learning_rate)

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. Default 1e-3
        (optax's has none).
      b1: decay of the first moment (used for the centring only), ``[0, 1)``. Default 0.9.
      b2: decay of ``s``, ``[0, 1)``. Default 0.999.
      eps: added to the root, ``>= 0``. Default 1e-16.
      eps_root: added to ``s`` at every update, ``>= 0``. Default 1e-16.
      weight_decay: decoupled decay, ``>= 0``, times the learning rate; None (default;
        optax's 0.0) or 0 leave it out.
      mask: which leaves decay, as optax's (a tree of bools or a function of the params).

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.acprop(learning_rate=0.1)
      >>> params = {"w": jnp.zeros(2)}
      >>> u, state = opt.update({"w": jnp.asarray([2.0, -0.5])}, opt.init(params))
      >>> [round(float(x), 4) for x in u["w"]]   # the first step is -lr * g
      [-0.2, 0.05]

    .. warning::
       This is ``optax.contrib.acprop``'s reading: the step is the gradient itself over the
       root (the first moment only centres ``s``), the centring uses ``m`` from before the
       update (optax's docstring writes ``m_t``, its code ``m_{t-1}``; adamx follows the
       code), and the first step is ``-lr * g / (1 + eps)``, not scaled to unit size. The
       authors' PyTorch code may combine these differently: compare a few steps before
       porting a tuned run.

    References:
      Zhuang et al., "Momentum Centering and Asynchronous Update for Adaptive Gradient
      Methods", NeurIPS 2021, https://arxiv.org/abs/2110.05454
    """
    check_learning_rate(learning_rate)
    return optax.chain(
        normalize_by_previous_belief(b1, b2, eps, eps_root),
        *decay_block(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
