"""ADOPT: normalise the gradient by the previous second moment, then average it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    PyTree,
    ScalarOrSchedule,
    as_scalar,
    check_decay,
    check_flag,
    check_learning_rate,
    check_moments,
    check_optional_range,
    check_range,
    check_trees_match,
    compute_dtype,
    map_unzip,
    one_minus,
    safe_increment,
    scalar_dtype,
    transformation,
)
from adamx.blocks._moments import ema_square, scale_by_moments, second_moment_zeros
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._guard import recipe


class PreviousRmsState(NamedTuple):
    """State of :func:`normalize_by_previous_rms`.

    Attributes:
      step: int32 number of updates taken so far (saturates at the int32 maximum). Named
        ``step``, not ``count``, so that in :func:`adopt`'s state
        ``optax.tree_utils.tree_get(state, "count")`` finds the one count of its moment
        block (called ``count`` before adamx 0.2).
      nu: second moment ``v``, a tree like the params, stored in the params' dtypes.
    """

    step: jax.Array
    nu: PyTree


def normalize_by_previous_rms(
    b2: float = 0.9999,
    eps: float = 1e-6,
    *,
    clip_exponent: float | None = 0.25,
    clip_value_fn: Callable[[jax.Array], jax.Array] | None = None,
) -> optax.GradientTransformation:
    """Divide the gradient by the root of the second moment *before* it sees the gradient.

    Per leaf, with ``t`` the number of earlier updates (0 on the first)::

        t = 0:   d = 0;                          v = g**2
        t >= 1:  d = g / max(sqrt(v), eps)       (v of the previous step)
                 d = clip(d, -t**a, t**a)        (a = clip_exponent; skipped when None)
                 v = b2 * v + (1 - b2) * g**2

    Leaving the current gradient out of its own denominator is what lets ADOPT converge
    for any ``b2``. The first update only initialises ``v`` and returns zeros. Arithmetic
    runs in the leaf's dtype but at least float32; ``d`` is cast to the gradient's dtype.
    The average is taken in PyTorch's order (:func:`adamx.ema_of_squares`): a ``v`` that
    overflows becomes ``inf`` (and that element's steps 0), never NaN.

    Args:
      b2: decay of the second moment, ``[0, 1)``. Default 0.9999.
      eps: floor of the root, ``>= 0``. Default 1e-6.
      clip_exponent: the bound on ``|d|`` is ``t**clip_exponent``, ``>= 0``; ``None``
        clips nothing (the first version of the paper). Default 0.25.
      clip_value_fn: a function of ``t`` (an int32 scalar) giving the bound, in place of
        ``t**clip_exponent`` (optax's ``clip_value_fn``). Default None.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`PreviousRmsState`.

    References:
      Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any beta_2 with the
      Optimal Rate", NeurIPS 2024, https://arxiv.org/abs/2411.02853
    """
    check_decay("b2", b2)
    check_range("eps", eps, low=0.0)
    check_optional_range("clip_exponent", clip_exponent, low=0.0)
    if clip_value_fn is not None and not callable(clip_value_fn):
        raise ValueError(
            f"`clip_value_fn` must be a function of the step count or None, got "
            f"clip_value_fn={clip_value_fn!r}."
        )

    def init(params):
        return PreviousRmsState(
            step=jnp.zeros([], jnp.int32),
            nu=jax.tree.map(second_moment_zeros, params),
        )

    def bound_at(step):
        t = jnp.asarray(step, scalar_dtype())
        if clip_value_fn is not None:
            return jnp.asarray(clip_value_fn(step), t.dtype)
        return None if clip_exponent is None else t ** jnp.asarray(clip_exponent, t.dtype)

    def update(grads, state, params=None):
        del params
        check_trees_match(grads, state.nu, "grads", "the optimizer state")
        first = state.step == 0
        bound = bound_at(state.step)

        def leaf(g, v):
            g = jnp.asarray(g)
            dtype = compute_dtype(v.dtype)
            gc, vc = g.astype(dtype), v.astype(dtype)
            d = gc / jnp.maximum(jnp.sqrt(vc), as_scalar(eps, dtype))
            if bound is not None:
                d = jnp.clip(d, -bound.astype(dtype), bound.astype(dtype))
            d = jnp.where(first, jnp.zeros_like(d), d)
            v_new = jnp.where(first, jnp.square(gc), ema_square(vc, gc, b2))
            return d.astype(g.dtype), v_new.astype(v.dtype)

        direction, nu = map_unzip(leaf, 2, grads, state.nu)
        return direction, PreviousRmsState(step=safe_increment(state.step), nu=nu)

    return transformation(init, update)


def read_momentum(nesterov_b1: float | None = None) -> optax.GradientTransformation:
    """The first moment of a :class:`adamx.Moments` record, as it is: ``d = mu``; with
    ``nesterov_b1``, one more average ahead: ``d = b1 * mu + (1 - b1) * g``.

    The read-out of momentum methods that normalise before averaging (ADOPT; the look-ahead
    is optax's ``adopt(nesterov=True)``); cast to the gradient's dtype.

    Args:
      nesterov_b1: ``b1`` of the look-ahead, ``[0, 1)``, or ``None`` for none. Default None.

    Returns:
      A stateless ``optax.GradientTransformation`` from a ``Moments`` record to updates.
    """
    if nesterov_b1 is not None:
        check_decay("nesterov_b1", nesterov_b1)

    def leaf(g, m):
        if nesterov_b1 is None:
            return m.astype(g.dtype)
        d = m.dtype
        ahead = m + as_scalar(one_minus(nesterov_b1), d) * (g.astype(d) - m)
        return ahead.astype(g.dtype)

    def update(updates, state, params=None):
        del params
        rec = check_moments(updates, "adamx.read_momentum")
        return jax.tree.map(leaf, rec.grad, rec.mu), state

    return transformation(lambda params: optax.EmptyState(), update)


@recipe
def adopt(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.9999,
    eps: float = 1e-6,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], jax.Array] | None = None,
    clip_exponent: float | None = 0.25,
) -> optax.GradientTransformation:
    """ADOPT: Adam with the gradient normalised by the previous ``v`` before averaging.

    Per leaf, with ``t`` the number of earlier updates (0 on the first)::

        t = 0:   v = g**2;  no step (m stays 0, the update is 0)
        t >= 1:  m = b1 * m + (1 - b1) * clip(g / max(sqrt(v), eps), t**(1/4))
                 p = p - lr * m
                 v = b2 * v + (1 - b2) * g**2

    Adam normalises the averaged gradient by a ``v`` that already contains it; ADOPT
    normalises each gradient by the ``v`` of the steps before, then averages. No bias
    correction is needed (``v`` starts at ``g_0**2``, ``m`` holds normalised values). The
    recipe::

        normalize_by_previous_rms(b2, eps, clip_exponent=..., clip_value_fn=...)
        scale_by_moments(b1, None, mu_dtype=mu_dtype)   # first moment only
        read_momentum()                                 # read_momentum(b1) if nesterov
        scale_by_learning_rate(learning_rate)

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. Default 1e-3.
      b1: decay of the first moment, ``[0, 1)``. Default 0.9.
      b2: decay of the second moment, ``[0, 1)``. Default 0.9999.
      eps: floor of ``sqrt(v)``, ``>= 0``. Default 1e-6.
      mu_dtype: the dtype ``m`` is stored in (optax's), or ``None`` for the params'.
        Default None.
      nesterov: read ``b1 * m + (1 - b1) * d`` instead of ``m`` (optax's flag). Default
        False.
      use_clipping: clip the normalised gradient (optax's flag); False is
        ``clip_exponent=None``. Default True.
      clip_value_fn: the bound as a function of ``t`` (an int32 scalar), in place of
        ``t**clip_exponent`` (optax's; its default is ``t**0.25``, the same as
        ``clip_value_fn=None`` here). Under ``optax.inject_hyperparams`` a function must
        be declared ``static_args="clip_value_fn"``, or it is taken for a schedule.
        Default None.
      clip_exponent: the normalised gradient is clipped to ``[-t**a, t**a]`` with
        ``a = clip_exponent >= 0``, ``t`` counting the updates after the first (so the
        bound is 1 on the first real step); ``None`` does not clip. Default 0.25.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> params = {"w": jnp.ones(2)}
      >>> opt = adamx.adopt(learning_rate=0.1)
      >>> state = opt.init(params)
      >>> g = {"w": jnp.asarray([1.0, -4.0])}
      >>> updates, state = opt.update(g, state, params)
      >>> [float(u) for u in updates["w"]]  # the first step only records v = g**2
      [-0.0, -0.0]
      >>> updates, state = opt.update(g, state, params)
      >>> [round(float(u), 4) for u in updates["w"]]  # -lr * (1 - b1) * g / |g|
      [-0.01, 0.01]

    .. warning::
       The first call returns a zero update: ``optax.MultiSteps`` or a convergence check
       see one idle step. The clip is the current version of the paper (arXiv v3 and the
       authors' PyTorch code, ``clip_lambda=lambda step: step**0.25``);
       ``clip_exponent=None`` is the unclipped first version. ``optax.contrib.adopt`` is
       the same rule, with the same options (``use_clipping``, ``clip_value_fn``); a
       callable ``clip_value_fn`` is taken for a schedule by ``optax.inject_hyperparams``
       (unless declared static), which is why ``clip_exponent``, a number, is offered too.

    References:
      Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any beta_2 with the
      Optimal Rate", NeurIPS 2024, https://arxiv.org/abs/2411.02853
    """
    check_learning_rate(learning_rate)
    check_flag("nesterov", nesterov)
    check_flag("use_clipping", use_clipping)
    check_optional_range("clip_exponent", clip_exponent, low=0.0)
    if not use_clipping:
        clip_exponent, clip_value_fn = None, None
    return optax.chain(
        normalize_by_previous_rms(
            b2, eps, clip_exponent=clip_exponent, clip_value_fn=clip_value_fn
        ),
        scale_by_moments(b1, None, mu_dtype=mu_dtype),
        read_momentum(b1 if nesterov else None),
        scale_by_learning_rate(learning_rate),
    )
