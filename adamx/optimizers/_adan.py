"""Adan: Nesterov momentum estimated from gradient differences, no extra gradient call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    Moments,
    PyTree,
    ScalarOrSchedule,
    abstract_or_array,
    as_scalar,
    check_decay,
    check_flag,
    check_learning_rate,
    check_range,
    check_trees_match,
    compute_dtype,
    map_unzip,
    one_minus,
    require_params,
    safe_increment,
    scalar_dtype,
    transformation,
)
from adamx.blocks._correction import bias_correction
from adamx.blocks._decay import decay_block, is_off
from adamx.blocks._moments import ema, ema_square, second_moment_zeros
from adamx.blocks._normalize import normalize
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._guard import recipe


class AdanState(NamedTuple):
    """State of :func:`scale_by_adan_moments`.

    Attributes:
      count: int32 number of updates taken so far (saturates at the int32 maximum).
      mu: ``m``, the average of the gradients, stored in the params' dtypes.
      delta: ``v``, the average of the gradient differences ``g_t - g_{t-1}``, likewise.
      nu: ``n``, the average of ``(g + (1 - b2) (g_t - g_{t-1}))**2``, in
        :func:`adamx.second_moment_dtype` of the params' dtypes.
      prev_grad: the previous gradient ``g_{t-1}`` (zeros before the first update).
    """

    count: jax.Array  # type: ignore[assignment]
    mu: PyTree
    delta: PyTree
    nu: PyTree
    prev_grad: PyTree


def scale_by_adan_moments(
    b1: float = 0.98, b2: float = 0.92, b3: float = 0.99
) -> optax.GradientTransformation:
    """Adan's three averages, the first two bias-corrected and mixed into one direction.

    Per leaf, with ``t`` the step number (1 on the first update) and ``d = g_t - g_{t-1}``
    (``d = 0`` on the first update)::

        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * d
        n = b3 * n + (1 - b3) * (g + (1 - b2) * d)**2
        mu = m / (1 - b1**t) + (1 - b2) * v / (1 - b2**t)      (handed on)

    The output is a :class:`adamx.Moments` record whose ``mu`` is the mixed, corrected
    first moment and whose ``nu`` is the raw ``n``: ``normalize(eps, eps_root, b2=b3)``
    corrects ``n`` inside the root and reads out Adan's direction. The ``b``'s weight the
    old average, as optax's do (the paper writes ``1 - b``). Arithmetic runs in the leaf's
    dtype but at least float32; ``n`` is real for a complex leaf (``|.|**2``).

    Args:
      b1: decay of the gradient average, ``[0, 1)``. Default 0.98.
      b2: decay of the gradient-difference average, ``[0, 1)``. Default 0.92.
      b3: decay of the squared term, ``[0, 1)``. Default 0.99.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`AdanState`.

    References:
      Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
      Models", IEEE TPAMI 2024, https://arxiv.org/abs/2208.06677
    """
    for name, b in (("b1", b1), ("b2", b2), ("b3", b3)):
        check_decay(name, b)

    def init(params):
        zeros = lambda p: jnp.zeros_like(abstract_or_array(p))  # noqa: E731
        return AdanState(
            count=jnp.zeros([], jnp.int32),
            mu=jax.tree.map(zeros, params),
            delta=jax.tree.map(zeros, params),
            nu=jax.tree.map(second_moment_zeros, params),
            prev_grad=jax.tree.map(zeros, params),
        )

    def update(grads, state, params=None):
        del params
        check_trees_match(grads, state.mu, "grads", "the optimizer state", dtypes=True)
        count = safe_increment(state.count)
        first = state.count == 0
        bc1, bc2 = bias_correction(b1, count), bias_correction(b2, count)

        def leaf(g, m, v, n, g_prev):
            g = jnp.asarray(g)
            dtype = compute_dtype(m.dtype)
            gc = g.astype(dtype)
            d = jnp.where(first, jnp.zeros_like(gc), gc - g_prev.astype(dtype))
            m_new = ema(m, gc, one_minus(b1))
            v_new = ema(v, d, one_minus(b2))
            n_new = ema_square(n, gc + as_scalar(one_minus(b2), dtype) * d, b3)
            mix = m_new / bc1.astype(dtype) + as_scalar(one_minus(b2), dtype) * (
                v_new / bc2.astype(dtype)
            )
            return mix, m_new.astype(m.dtype), v_new.astype(v.dtype), n_new, n_new.astype(n.dtype)

        mix, mu, delta, n_work, nu = map_unzip(
            leaf, 5, grads, state.mu, state.delta, state.nu, state.prev_grad
        )
        grads = jax.tree.map(jnp.asarray, grads)
        new_state = AdanState(count=count, mu=mu, delta=delta, nu=nu, prev_grad=grads)
        return Moments(grad=grads, mu=mix, nu=n_work, count=count), new_state

    return transformation(init, update)


class ProximalState(NamedTuple):
    """State of :func:`shrink_proximal`: ``step``, the number of updates taken so far (the
    learning-rate schedule's argument; not named ``count``, so that a recipe's state holds
    one ``count``)."""

    step: jax.Array


def shrink_proximal(
    learning_rate: ScalarOrSchedule, weight_decay: float
) -> optax.GradientTransformation:
    """Weight decay as a proximal step, after the learning rate: ``p <- (p + u) / (1 + lr wd)``.

    Per leaf, with ``u`` the incoming (already ``-lr``-scaled) update and ``lr`` read at
    ``k``, the number of earlier updates, when it is a schedule::

        u = (u - lr * wd * p) / (1 + lr * wd)

    The closed form of ``argmin_x ||x - (p + u)||**2 / (2 lr) + wd ||x||**2 / 2``: the
    authors' Adan applies its decay this way by default. Equal to the decoupled
    ``u - lr * wd * p`` to first order in ``lr * wd``. Put it last in a recipe.

    Args:
      learning_rate: the recipe's learning rate, a number or a schedule.
      weight_decay: ``wd >= 0``.

    Returns:
      An ``optax.GradientTransformation`` that needs ``params``; its state is
      :class:`ProximalState`.

    References:
      Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
      Models", IEEE TPAMI 2024, Algorithm 1, https://arxiv.org/abs/2208.06677
    """
    check_learning_rate(learning_rate)
    check_range("weight_decay", weight_decay, low=0.0)

    def update(updates, state, params=None):
        require_params(params, f"Weight decay (weight_decay={weight_decay!r})")
        check_trees_match(params, updates, "params", "the updates")
        sd = scalar_dtype()
        lr = learning_rate(state.step) if callable(learning_rate) else learning_rate
        shrink = jnp.asarray(lr, sd) * jnp.asarray(weight_decay, sd)

        def leaf(u, p):
            u, p = jnp.asarray(u), jnp.asarray(p)
            d = compute_dtype(u.dtype)
            c = shrink.astype(d)
            return ((u.astype(d) - c * p.astype(d)) / (1 + c)).astype(u.dtype)

        return jax.tree.map(leaf, updates, params), ProximalState(safe_increment(state.step))

    return transformation(lambda params: ProximalState(jnp.zeros([], jnp.int32)), update)


@recipe
def adan(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.98,
    b2: float = 0.92,
    b3: float = 0.99,
    eps: float = 1e-8,
    eps_root: float = 1e-8,
    weight_decay: float | None = None,
    mask: Any | Callable[[Any], Any] | None = None,
    *,
    proximal: bool = False,
) -> optax.GradientTransformation:
    """Adan: Adam whose first moment adds a Nesterov look-ahead made of gradient differences.

    Per leaf, with ``t`` the step number and ``d = g_t - g_{t-1}`` (0 on the first step)::

        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * d
        n = b3 * n + (1 - b3) * (g + (1 - b2) * d)**2
        p = p - lr * ((m / (1 - b1**t) + (1 - b2) * v / (1 - b2**t))
                      / (sqrt(n / (1 - b3**t) + eps_root) + eps)  + wd * p)

    The recipe is AdamW's chain with the moment block swapped (bias correction of ``m``
    and ``v`` included in it)::

        scale_by_adan_moments(b1, b2, b3)
        normalize(eps, eps_root, b2=b3)           # n corrected inside the root
        add_decayed_weights(weight_decay, mask)   # decoupled; omitted when None or 0
        scale_by_learning_rate(learning_rate)
        [shrink_proximal(learning_rate, wd)]      # proximal=True, in place of the decay

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. Default 1e-3.
      b1: decay of the gradient average, ``[0, 1)``. Default 0.98 (the paper's 0.02).
      b2: decay of the gradient-difference average, ``[0, 1)``. Default 0.92 (paper 0.08).
      b3: decay of the squared term, ``[0, 1)``. Default 0.99 (paper 0.01).
      eps: added to the root, ``>= 0``. Default 1e-8.
      eps_root: added inside the root of the bias-corrected ``n``, ``>= 0``. Default 1e-8
        (optax's).
      weight_decay: decoupled decay ``>= 0``, ``-lr * wd * p``; ``None`` (default) or the
        Python 0 leave the block out (optax's default 0.0 keeps a block that adds nothing).
      mask: a tree of booleans like the params, or a function of the params returning one
        (``static_args="mask"`` under ``optax.inject_hyperparams``); only ``True`` leaves
        are decayed.
      proximal: apply the decay as the authors' code does by default,
        ``p = (p - lr * step) / (1 + lr * wd)`` (:func:`shrink_proximal`), instead of
        optax's ``p - lr * (step + wd * p)``. Default False.

    Returns:
      An ``optax.GradientTransformation`` (needs ``params`` in ``update`` when decaying).

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> params = {"w": jnp.zeros(2)}
      >>> opt = adamx.adan(learning_rate=0.1)
      >>> updates, _ = opt.update({"w": jnp.asarray([2.0, -0.5])}, opt.init(params), params)
      >>> [round(float(u), 4) for u in updates["w"]]  # -lr * g / |g| on the first step
      [-0.1, 0.1]

    .. warning::
       The ``b``'s follow optax (the weight of the old average); the paper and its PyTorch
       code write the weight of the new term, ``(0.02, 0.08, 0.01)``. ``optax.adan`` is
       this rule (step for step, float rounding). The authors' PyTorch code applies the
       decay proximally by default, ``p = (p - lr * step) / (1 + lr * wd)``, and has no
       ``eps_root``: ``eps_root=0.0, proximal=True`` is its rule; here, as in optax, the
       default is ``p - lr * (step + wd * p)`` (equal to first order in ``lr * wd``).

    References:
      Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
      Models", IEEE TPAMI 2024, https://arxiv.org/abs/2208.06677
    """
    check_learning_rate(learning_rate)
    check_flag("proximal", proximal)
    head = [scale_by_adan_moments(b1, b2, b3), normalize(eps, eps_root, b2=b3)]
    if not proximal or is_off(weight_decay):
        return optax.chain(
            *head, *decay_block(weight_decay, mask), scale_by_learning_rate(learning_rate)
        )
    shrink = shrink_proximal(learning_rate, weight_decay)  # type: ignore[arg-type]
    return optax.chain(
        *head,
        scale_by_learning_rate(learning_rate),
        shrink if mask is None else optax.masked(shrink, mask),
    )
