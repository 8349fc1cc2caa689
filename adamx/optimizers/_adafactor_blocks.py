"""Adafactor's blocks: the factored second moment, block-RMS clipping, the parameter-scale
and relative step sizes, and the weight shrinkage (used by :func:`adafactor` only)."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from adamx.blocks._base import (
    PyTree,
    ScalarOrSchedule,
    abs_sq,
    abstract_or_array,
    as_scalar,
    check_flag,
    check_learning_rate,
    check_optional_range,
    check_range,
    check_trees_match,
    compute_dtype,
    map_unzip,
    over_real,
    padded_spec,
    param_named_sharding,
    real_dtype,
    require_params,
    safe_increment,
    scalar_dtype,
    transformation,
)
from adamx.blocks._decay import is_off
from adamx.blocks._moments import ema, second_moment_dtype, second_moment_zeros


def _mean(x: jax.Array, axis: int) -> jax.Array:
    """Mean over one axis, kept as a size-1 axis; 0 (not NaN) over an empty axis."""
    return jnp.sum(x, axis=axis, keepdims=True) / max(x.shape[axis], 1)


def _saturate(x: jax.Array, storage) -> jax.Array:
    """``min(x, 1 / tiny)``, ``tiny`` the smallest normal number of the ``storage`` dtype
    (``2**126 ~ 8.5e37`` for float32 and bfloat16).

    Squares and their means stay finite in the state, so no ``inf - inf`` or ``inf / inf``
    follows; and below ``1 / tiny`` a divisor keeps a normal reciprocal (XLA turns the
    division by the row mean, a broadcast, into a product with its reciprocal, which is
    flushed to 0 past ``1 / tiny``).
    """
    return jnp.minimum(x, as_scalar(1 / float(jnp.finfo(storage).tiny), x.dtype))


def _rms(x: jax.Array) -> jax.Array:
    """Root mean square of a whole leaf; 0 for an empty leaf."""
    return jnp.sqrt(jnp.sum(abs_sq(x)) / max(x.size, 1))


class FactoredRmsState(NamedTuple):
    """State of :func:`scale_by_factored_rms`.

    Attributes:
      count: int32 number of updates taken so far (saturates at the int32 maximum).
      row: per leaf of at least 2 dimensions, the mean of ``g**2`` over the last axis,
        shape ``(..., n, 1)``; an unused ``(1,)`` placeholder for other leaves.
      col: likewise over the second-to-last axis, shape ``(..., 1, m)``.
      full: per leaf of 0 or 1 dimensions, the moving average of ``g**2`` itself;
        a ``(1,)`` placeholder for factored leaves. Stored in the params' dtypes (float32
        for float16 params). Placeholders are not empty arrays, which Orbax cannot save.
    """

    count: jax.Array  # type: ignore[assignment]
    row: PyTree
    col: PyTree
    full: PyTree


def scale_by_factored_rms(
    beta2_decay: float = -0.8, eps1: float | None = None, *, factored: bool = True
) -> optax.GradientTransformation:
    """Divide the gradient by the root of a factored estimate of its second moment.

    Per leaf, with ``t`` the step number (1 on the first update) and ``w = t**beta2_decay``
    (so ``w = 1`` on the first step)::

        >= 2-D:  R = R + w * (mean_last(g**2) - R)         (one value per row)
                 C = C + w * (mean_second_last(g**2) - C)  (one value per column)
                 V = R * C / max(mean_rows(R), eps1)
        0/1-D:   V = V + w * (g**2 - V)
        u = g / sqrt(max(V, eps1**2))

    A matrix of ``n x m`` keeps ``n + m`` numbers instead of ``n * m``; leaves of more
    than two dimensions are factored over their last two axes, batched over the others.
    Arithmetic runs in the leaf's dtype but at least float32. ``V`` is formed as
    ``R * (C / max(mean_rows(R), eps1))``, and ``g**2`` and its means are saturated at
    ``2**126 ~ 8.5e37`` (float32, bfloat16): past ``|g| ~ 9e18`` the estimate is a floor,
    not ``inf * inf / inf = NaN``; ``u`` stays finite, and the update clipping that
    follows makes the step finite (0 where ``RMS(u)`` itself overflows).

    Args:
      beta2_decay: exponent of the averaging weight ``w = t**beta2_decay``, ``<= 0``.
        Default -0.8.
      eps1: floor of the row mean and of ``sqrt(V)``, ``>= 0``; ``None`` takes the
        machine epsilon of each leaf's dtype (``jnp.finfo(dtype).eps``). Default None.
      factored: ``False`` keeps the full ``V`` of every leaf (no factoring). Default True.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`FactoredRmsState`.

    References:
      Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
      ICML 2018, https://arxiv.org/abs/1804.04235
    """
    check_range("beta2_decay", beta2_decay, low=-math.inf, high=0.0)
    if eps1 is not None:
        check_range("eps1", eps1, low=0.0)
    check_flag("factored", factored)

    def init(params):
        def slots(p):
            p = abstract_or_array(p)

            def empty():  # a fresh buffer per slot: a donated state must not alias itself
                return jnp.zeros((1,), real_dtype(p.dtype))

            if p.ndim < 2 or not factored:
                return empty(), empty(), second_moment_zeros(p)
            dtype = second_moment_dtype(p.dtype)  # squared gradients: float32 for float16
            row_shape, col_shape = p.shape[:-1] + (1,), p.shape[:-2] + (1, p.shape[-1])
            sharding = param_named_sharding(p)
            if sharding is None:
                return jnp.zeros(row_shape, dtype), jnp.zeros(col_shape, dtype), empty()
            # sharded like p along the axes the factors keep: row P(..., a, None), col
            # P(..., None, b) for a param P(..., a, b)
            spec = padded_spec(sharding, p.ndim)
            row_spec, col_spec = spec[:-1] + (None,), spec[:-2] + (None, spec[-1])
            if isinstance(p, jax.core.Tracer) and not any(row_spec + col_spec):
                # explicit mode, nothing sharded: the default placement is already right
                return jnp.zeros(row_shape, dtype), jnp.zeros(col_shape, dtype), empty()

            def zeros(shape, spec):
                out = NamedSharding(sharding.mesh, PartitionSpec(*spec))
                if isinstance(p, jax.core.Tracer):  # explicit mode: a sharded type
                    return jnp.zeros(shape, dtype, out_sharding=out)
                return jnp.zeros(shape, dtype, device=out)  # eager: placed on the mesh

            return zeros(row_shape, row_spec), zeros(col_shape, col_spec), empty()

        row, col, full = map_unzip(slots, 3, params)
        return FactoredRmsState(jnp.zeros([], jnp.int32), row, col, full)

    def update(grads, state, params=None):
        del params
        if jax.tree.structure(grads) != jax.tree.structure(state.full):
            raise ValueError(
                f"`grads` does not match the optimizer state: {jax.tree.structure(grads)} vs "
                f"{jax.tree.structure(state.full)}. Pass grads with the params' structure."
            )
        count = safe_increment(state.count)
        w = jnp.asarray(count, scalar_dtype()) ** jnp.asarray(beta2_decay, scalar_dtype())

        def leaf(g, row, col, full):
            g = jnp.asarray(g)
            gc = g.astype(compute_dtype(g.dtype))
            dtype = real_dtype(gc.dtype)  # the statistics of a complex g are real (|g|**2)
            floor = as_scalar(jnp.finfo(g.dtype).eps if eps1 is None else eps1, dtype)
            storage = second_moment_dtype(g.dtype)
            g2 = _saturate(abs_sq(gc), storage)
            weight = w.astype(dtype)
            if g.ndim >= 2 and factored:
                r = ema(row, _saturate(_mean(g2, -1), storage), weight)
                c = ema(col, _saturate(_mean(g2, -2), storage), weight)
                v = r * (c / jnp.maximum(_saturate(_mean(r, -2), storage), floor))
                row, col = r.astype(row.dtype), c.astype(col.dtype)
            else:
                v = ema(full, g2, weight)
                full = v.astype(full.dtype)
            u = over_real(gc, jnp.sqrt(jnp.maximum(v, floor * floor)))
            return u.astype(g.dtype), row, col, full

        u, row, col, full = map_unzip(leaf, 4, grads, state.row, state.col, state.full)
        return u, FactoredRmsState(count, row, col, full)

    return transformation(init, update)


def clip_by_block_rms(threshold: float = 1.0) -> optax.GradientTransformation:
    """Shrink each leaf whose root mean square exceeds ``threshold`` back to it.

    Per leaf::

        u = u / max(1, RMS(u) / threshold)        RMS(u) = sqrt(mean(u**2))

    Adafactor's update clipping (``d`` in the paper and PyTorch): it replaces the first
    moment as the guard against the rare huge step. Same rule as
    ``optax.clip_by_block_rms``; computed in the leaf's dtype but at least float32.

    Args:
      threshold: the largest RMS a leaf keeps, ``>= 1``. Default 1.

    Returns:
      A stateless ``optax.GradientTransformation``.
    """
    check_range("threshold", threshold, low=1.0)

    def leaf(u):
        u = jnp.asarray(u)
        dtype = compute_dtype(u.dtype)
        uc = u.astype(dtype)
        denom = jnp.maximum(1, _rms(uc) / as_scalar(threshold, real_dtype(dtype)))
        return over_real(uc, denom).astype(u.dtype)

    def update(updates, state, params=None):
        del params
        return jax.tree.map(leaf, updates), state

    return transformation(lambda params: optax.EmptyState(), update)


def scale_by_param_block_rms(min_scale: float = 1e-3) -> optax.GradientTransformation:
    """Multiply each leaf's update by the root mean square of its parameter.

    Per leaf::

        u = u * max(min_scale, RMS(p))

    Adafactor's relative step: a step size of ``lr`` moves a tensor by about
    ``lr * RMS(p)``, and a tensor at zero by ``lr * min_scale``. Same rule as
    ``optax.scale_by_param_block_rms``; computed in the leaf's dtype but at least float32.

    Args:
      min_scale: the floor of the scale, ``>= 0`` (``eps[1]`` of :func:`adafactor`).
        Default 1e-3.

    Returns:
      A stateless ``optax.GradientTransformation`` that needs ``params`` in ``update``.
    """
    check_range("min_scale", min_scale, low=0.0)

    def leaf(u, p):
        u, p = jnp.asarray(u), jnp.asarray(p)
        dtype = compute_dtype(u.dtype)
        scale = jnp.maximum(as_scalar(min_scale, real_dtype(dtype)), _rms(p.astype(dtype)))
        return (u.astype(dtype) * scale.astype(dtype)).astype(u.dtype)

    def update(updates, state, params=None):
        require_params(params, "adamx.scale_by_param_block_rms")
        check_trees_match(params, updates, "params", "the updates")
        return jax.tree.map(leaf, updates, params), state

    return transformation(lambda params: optax.EmptyState(), update)


class RelativeStepState(NamedTuple):
    """State of :func:`scale_by_relative_step` and of :func:`shrink_weights`.

    Attributes:
      step: int32 number of updates taken so far (saturates at the int32 maximum). Named
        ``step``, not ``count``, so that in :func:`adafactor`'s state
        ``optax.tree_utils.tree_get(state, "count")`` finds the one count of
        :class:`FactoredRmsState` (these blocks kept a :class:`adamx.ScheduleState` before
        adamx 0.2).
    """

    step: jax.Array


def _learning_rate(learning_rate, count):
    return learning_rate(count) if callable(learning_rate) else learning_rate


def scale_by_relative_step(learning_rate: ScalarOrSchedule = 1e-2) -> optax.GradientTransformation:
    """Multiply the updates by minus Adafactor's step size ``min(lr, 1 / sqrt(t))``.

    Per leaf, with ``t`` the step number (1 on the first update) and ``lr`` read at
    ``t - 1`` when it is a schedule::

        u = -min(lr, 1 / sqrt(t)) * u

    The ``1 / sqrt(t)`` cap decays the step of a large ``lr``; with PyTorch's default
    ``lr = 1e-2`` it binds only after 10,000 steps. The factor is formed in float32
    (float64 under ``jax_enable_x64``) and the product in the leaf's dtype but at least
    float32.

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. Default 1e-2.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`RelativeStepState`.
    """
    check_learning_rate(learning_rate)

    def update(updates, state, params=None):
        del params
        dtype = scalar_dtype()
        t = jnp.asarray(state.step, dtype) + 1
        lr = jnp.asarray(_learning_rate(learning_rate, state.step), dtype)
        rho = jnp.minimum(lr, 1 / jnp.sqrt(t))

        def leaf(u):
            u = jnp.asarray(u)
            d = compute_dtype(u.dtype)
            return (-rho.astype(d) * u.astype(d)).astype(u.dtype)

        return jax.tree.map(leaf, updates), RelativeStepState(step=safe_increment(state.step))

    return transformation(lambda params: RelativeStepState(step=jnp.zeros([], jnp.int32)), update)


def shrink_weights(
    learning_rate: ScalarOrSchedule, weight_decay: float | None
) -> list[optax.GradientTransformation]:
    """``[block]`` subtracting ``lr * wd * p`` from the updates, or ``[]`` when
    ``weight_decay`` is ``None`` or the Python number 0 (validated either way). Its state
    is a :class:`RelativeStepState`.

    Per leaf, with ``lr`` read at ``t - 1`` when it is a schedule::

        u = u - lr * wd * p          (so p <- p * (1 - lr * wd) + u)

    Decoupled decay at the pace of the raw learning rate, after the step size of the
    direction has been applied: Adafactor's, where the direction's step is relative and
    the decay's is not. Put it last in a recipe. Arrays (as ``optax.inject_hyperparams``
    passes) always keep the block, so the state's structure does not depend on it.
    """
    check_learning_rate(learning_rate)
    check_optional_range("weight_decay", weight_decay, low=0.0)
    if is_off(weight_decay):
        return []

    def update(updates, state, params=None):
        require_params(params, f"Weight decay (weight_decay={weight_decay!r})")
        check_trees_match(params, updates, "params", "the updates")
        dtype = scalar_dtype()
        lr = jnp.asarray(_learning_rate(learning_rate, state.step), dtype)
        factor = lr * jnp.asarray(weight_decay, dtype)

        def leaf(u, p):
            u, p = jnp.asarray(u), jnp.asarray(p)
            d = compute_dtype(u.dtype)
            return (u.astype(d) - factor.astype(d) * p.astype(d)).astype(u.dtype)

        return jax.tree.map(leaf, updates, params), RelativeStepState(safe_increment(state.step))

    init = lambda params: RelativeStepState(step=jnp.zeros([], jnp.int32))  # noqa: E731
    return [transformation(init, update)]
