"""MARS: AdamW on a variance-reduced gradient (a scaled gradient difference, clipped)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    PyTree,
    ScalarOrSchedule,
    abs_sq,
    abstract_or_array,
    as_scalar,
    check_decay,
    check_learning_rate,
    check_optional_range,
    check_range,
    check_trees_match,
    compute_dtype,
    concrete_value,
    cond,
    map_unzip,
    one_minus,
    real_dtype,
    transformation,
)
from adamx.blocks._correction import correct_bias
from adamx.blocks._decay import decay_block
from adamx.blocks._moments import scale_by_moments
from adamx.blocks._normalize import normalize
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._guard import guard, recipe
from adamx.optimizers._lamb_lion import read_sign


class MarsState(NamedTuple):
    """State of :func:`scale_by_mars_correction`.

    Attributes:
      previous_grad: the gradient of the previous update (zeros before the first), a tree
        like the params in their dtypes.
    """

    previous_grad: PyTree


def scale_by_mars_correction(
    gamma: float = 0.025, b1: float = 0.95, max_norm: float | None = 1.0
) -> optax.GradientTransformation:
    """MARS' variance-reduced gradient: the gradient plus a scaled difference of gradients,
    clipped to a norm.

    Per leaf, with ``g_prev`` the gradient of the previous update (0 before the first)::

        c = g + gamma * b1 / (1 - b1) * (g - g_prev)
        c = c * max_norm / ||c||     if ||c|| > max_norm   (||c||: the leaf's 2-norm)

    ``g_prev`` is the gradient the previous update received: the paper's approximate
    variant (MARS-approx; its exact variant takes the gradient of the current batch at the
    previous params, a second backward pass no transformation can make). The clip is per
    leaf, as in the authors' code (the paper writes it for the whole vector). Arithmetic
    runs in the leaf's dtype but at least float32; ``c`` is cast to the gradient's dtype.

    Args:
      gamma: weight of the correction, ``>= 0``; 0 gives the gradient itself (then
        clipped). Default 0.025.
      b1: the momentum decay of the recipe; the correction is scaled by
        ``b1 / (1 - b1)``, ``[0, 1)``. Default 0.95.
      max_norm: the norm ``c`` is clipped to, ``> 0``, or ``None`` for no clip. Default 1
        (the paper's).

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`MarsState`.

    References:
      Yuan et al., "MARS: Unleashing the Power of Variance Reduction for Training Large
      Models", 2024, https://arxiv.org/abs/2411.10438
    """
    check_range("gamma", gamma, low=0.0)
    check_decay("b1", b1)
    check_optional_range("max_norm", max_norm, low=0.0)
    if max_norm is not None and concrete_value(max_norm) == 0.0:
        raise ValueError(f"`max_norm` must be > 0 or None, got max_norm={max_norm!r}.")

    def init(params):
        return MarsState(
            previous_grad=jax.tree.map(lambda p: jnp.zeros_like(abstract_or_array(p)), params)
        )

    def update(grads, state, params=None):
        del params
        check_trees_match(grads, state.previous_grad, "grads", "the optimizer state")

        def leaf(g, g_prev):
            g = jnp.asarray(g)
            dtype = compute_dtype(g.dtype)
            gc, pc = g.astype(dtype), g_prev.astype(dtype)
            rd = real_dtype(dtype)
            # gamma * b1 / (1 - b1): on the host in float64 for Python numbers
            if isinstance(gamma, (int, float)) and isinstance(b1, (int, float)):
                scale = as_scalar(float(gamma) * float(b1) / one_minus(b1), rd)
            else:
                scale = as_scalar(gamma, rd) * as_scalar(b1, rd) / as_scalar(one_minus(b1), rd)
            k = scale.astype(dtype)
            c = gc + k * (gc - pc)
            if max_norm is None:
                return c.astype(g.dtype), g.astype(g_prev.dtype)
            limit = as_scalar(max_norm, rd)
            n2 = jnp.sum(abs_sq(c))

            def clipped(c):
                norm = jnp.sqrt(n2)
                clip = norm > limit
                return c * jnp.where(clip, limit / jnp.where(clip, norm, 1), 1).astype(dtype)

            def clipped_huge(c):  # sum(|c|**2) overflowed (|c| past ~1e19): from g / 2**100
                tiny = jnp.asarray(2.0**-100, dtype)
                cb = gc * tiny + k * (gc * tiny - pc * tiny)  # fits wherever g and g_prev do
                norm = jnp.sqrt(jnp.sum(abs_sq(cb)))  # ||c|| / 2**100
                clip = norm > limit * jnp.asarray(2.0**-100, rd)
                factor = jnp.where(clip, limit / jnp.where(clip, norm, 1), 1 / tiny.real)
                return cb * factor.astype(dtype)

            c = cond(jnp.isfinite(n2), clipped, clipped_huge, c)
            return c.astype(g.dtype), g.astype(g_prev.dtype)

        corrected, previous = map_unzip(leaf, 2, grads, state.previous_grad)
        return corrected, MarsState(previous_grad=previous)

    return transformation(init, update)


@recipe
def mars(
    learning_rate: ScalarOrSchedule = 3e-3,
    b1: float = 0.95,
    b2: float = 0.99,
    eps: float = 1e-8,
    gamma: float = 0.025,
    mu_dtype: Any | None = None,
    *,
    weight_decay: float | None = None,
    mask: Any | Callable[[Any], Any] | None = None,
    max_norm: float | None = 1.0,
    instance: str = "adamw",
) -> optax.GradientTransformation:
    """MARS-AdamW: AdamW on MARS' variance-reduced gradient (``instance="lion"``:
    MARS-Lion).

    Per leaf, with ``t`` the step number (1 on the first update) and ``g_prev`` the
    previous update's gradient (0 on the first)::

        c = g + gamma * b1 / (1 - b1) * (g - g_prev)
        c = c / ||c||   if ||c|| > 1                    (per leaf; max_norm)
        m = b1 * m + (1 - b1) * c
        v = b2 * v + (1 - b2) * c**2
        p = p - lr * (m / (1 - b1**t) / (sqrt(v / (1 - b2**t)) + eps) + wd * p)

    The scaled difference of consecutive gradients is a stochastic recursive momentum
    (STORM) with the correction scaled by ``gamma``; its clipped sum with the gradient is
    then averaged and normalised as AdamW's gradient would be. The recipe is AdamW's chain
    with one block in front::

        scale_by_mars_correction(gamma, b1, max_norm)   # c, keeps g as the next g_prev
        scale_by_moments(b1, b2, mu_dtype=mu_dtype)
        correct_bias(b1, None)
        normalize(eps, b2=b2)
        add_decayed_weights(weight_decay, mask)          # decoupled; omitted when None
        scale_by_learning_rate(learning_rate)

    ``instance="lion"`` is the paper's MARS-Lion: the sign of the average of ``c``, no
    second moment (``b2`` and ``eps`` unused, 8 bytes of state per float32 parameter)::

        m = b1 * m + (1 - b1) * c
        p = p - lr * (sign(m) + wd * p)

    its chain ``scale_by_mars_correction``, ``scale_by_moments(b1, None)``,
    ``read_sign()``, decay and rate (Signum's on ``c``). Real params only.

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. Default 3e-3 (the
        authors').
      b1: decay of the first moment, also in the correction's scale, ``[0, 1)``. Default
        0.95.
      b2: decay of the second moment, ``[0, 1)``. Default 0.99.
      eps: added to the corrected root, ``>= 0``. Default 1e-8.
      gamma: weight of the gradient correction, ``>= 0``. Default 0.025.
      mu_dtype: the dtype ``m`` is stored in, or ``None`` for the params'. Default None.
      weight_decay: decoupled (AdamW) decay ``>= 0``; ``None`` (default, the authors' 0)
        or the Python 0 leave the block out.
      mask: a tree of booleans like the params, or a function of the params returning one;
        only ``True`` leaves are decayed. Default None (all).
      max_norm: the norm each leaf's ``c`` is clipped to, ``> 0``, or ``None`` for no
        clip. Default 1 (the paper's).
      instance: ``"adamw"`` (MARS-AdamW) or ``"lion"`` (MARS-Lion), the preconditioned
        step the corrected gradient feeds. Static. Default ``"adamw"``.

    Returns:
      An ``optax.GradientTransformation`` (needs ``params`` in ``update`` when decaying).
      Its state keeps the previous gradient: 12 bytes per float32 parameter, Adam's 8 and
      ``g_prev``'s 4.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> params = {"w": jnp.zeros(2)}
      >>> opt = adamx.mars(learning_rate=0.1)
      >>> updates, _ = opt.update({"w": jnp.asarray([3.0, -4.0])}, opt.init(params))
      >>> [round(float(u), 4) for u in updates["w"]]  # the first step is -lr * sign(g)
      [-0.1, 0.1]

    .. warning::
       This is the paper's approximate variant (MARS-approx, the authors' default
       ``is_approx=True``): ``g_prev`` is the previous batch's gradient. The exact variant
       needs the current batch's gradient at the previous params, a second backward pass
       per step, which an optax transformation cannot take; it is not provided. The
       authors' code applies MARS to 2-D params only by default and AdamW (betas 0.9,
       0.95) to the rest; here every leaf takes the MARS rule (``optimize_1d=True``
       there): combine with ``optax.multi_transform`` for the split. MARS-Shampoo is not
       provided. No optax or ``torch.optim`` anchor.

    References:
      Yuan et al., "MARS: Unleashing the Power of Variance Reduction for Training Large
      Models", 2024, https://arxiv.org/abs/2411.10438
    """
    check_learning_rate(learning_rate)
    if instance not in ("adamw", "lion"):
        raise ValueError(f'`instance` must be "adamw" or "lion", got instance={instance!r}.')
    head = scale_by_mars_correction(gamma, b1, max_norm)
    tail = [*decay_block(weight_decay, mask), scale_by_learning_rate(learning_rate)]
    if instance == "lion":
        check_decay("b2", b2)  # unused, but validated as for "adamw"
        check_range("eps", eps, low=0.0)
        tx = optax.chain(head, scale_by_moments(b1, None, mu_dtype=mu_dtype), read_sign(), *tail)
        return guard(tx, "adamx.mars", complex_ok=False)
    return optax.chain(
        head,
        scale_by_moments(b1, b2, mu_dtype=mu_dtype),
        correct_bias(b1, None),
        normalize(eps, b2=b2),
        *tail,
    )
