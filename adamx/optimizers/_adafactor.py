"""Adafactor as PyTorch reads it: a factored second moment and a relative step size."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

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
    check_dtype,
    check_flag,
    check_learning_rate,
    check_optional_range,
    check_range,
    check_trees_match,
    compute_dtype,
    concrete_value,
    is_real_number,
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
from adamx.blocks._decay import is_off, maximize_block
from adamx.blocks._moments import ema, second_moment_dtype, second_moment_zeros
from adamx.optimizers._guard import recipe


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


@recipe
def adafactor(
    learning_rate: ScalarOrSchedule | None = 1e-2,
    min_dim_size_to_factor: int = 128,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    momentum: float | None = None,
    dtype_momentum: Any = jnp.float32,
    weight_decay_rate: float | None = None,
    eps: float | tuple[float | None, float] | None = None,
    factored: bool = True,
    weight_decay_mask: Any | Callable[[Any], Any] | None = None,
    *,
    reading: str = "pytorch",
    beta2_decay: float | None = None,
    d: float | None = None,
    weight_decay: float | None = None,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """Adafactor as in ``torch.optim.Adafactor``: factored ``v``, no ``m``, relative steps.

    Per leaf, with ``t`` the step number (1 on the first update), ``eps = (eps1, eps2)``
    and ``RMS(x) = sqrt(mean(x**2))``::

        w   = t**beta2_decay                       (replaces 1 - b2; 1 on the first step)
        V   = factored (>= 2-D) or full (0/1-D) average of g**2 with weight w
        U   = g / sqrt(max(V, eps1**2))
        U   = U / max(1, RMS(U) / d)               (update clipping)
        p   = p * (1 - lr * wd) - min(lr, 1/sqrt(t)) * max(eps2, RMS(p)) * U

    The recipe: Adam's moments, bias correction and ``normalize`` become one factored
    block, and the learning rate becomes relative to the parameter's scale::

        negate()                                  # only if maximize
        scale_by_factored_rms(beta2_decay, eps1)
        clip_by_block_rms(d)
        scale_by_param_block_rms(eps2)
        scale_by_relative_step(learning_rate)
        shrink_weights(learning_rate, weight_decay)   # decoupled, at the raw lr; omitted
                                                      # when None or 0

    Two readings of the paper share this signature: ``reading="pytorch"`` (the default,
    above, ``torch.optim.Adafactor``) and ``reading="optax"`` (``optax.adafactor``, built
    from optax's own blocks, step for step its rule). optax's parameters come first, in
    optax's order; under the PyTorch reading those it can express keep their meaning
    (``decay_rate`` is ``-beta2_decay``, ``clipping_threshold`` is ``d``,
    ``multiply_by_parameter_scale``, ``factored``), and the others
    (``min_dim_size_to_factor``, ``decay_offset``, ``momentum``, ``weight_decay_rate``,
    ``weight_decay_mask``, a number as ``eps``) must keep their defaults: a ``ValueError``
    names the argument and ``reading="optax"``. PyTorch's own options (``beta2_decay``,
    ``d``, ``weight_decay``, a pair as ``eps``) are refused under the optax reading.

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. PyTorch: the step
        is ``min(lr, 1/sqrt(t))`` times the parameter's RMS. optax: a plain factor of the
        update; ``None`` (optax's default) applies none. Default 1e-2.
      min_dim_size_to_factor: optax only: factor the two largest axes of a leaf when both
        are at least this long. Default 128 (the PyTorch reading factors every leaf of
        two or more dimensions over its last two axes).
      decay_rate: the averaging weight is ``t**-decay_rate`` (PyTorch: ``-beta2_decay``;
        optax: ``1 - decay`` with ``decay = 1 - (t - decay_offset)**-decay_rate``), ``>= 0``.
        Default 0.8.
      decay_offset: optax only: starts optax's decay schedule later. Default 0.
      multiply_by_parameter_scale: scale the step by ``max(eps2, RMS(p))`` (PyTorch) or
        ``max(1e-3, RMS(p))`` (optax). Default True.
      clipping_threshold: the largest RMS of an update, ``>= 1`` (PyTorch's ``d``);
        ``None`` clips nothing. Default 1.0.
      momentum: optax only: an EMA of the updates with this decay; ``None`` keeps none.
        Default None.
      dtype_momentum: optax only: the dtype of that EMA. Default ``jnp.float32``.
      weight_decay_rate: optax only: ``u + wd * p`` before the sign flip (not scaled by the
        learning rate); ``None`` for none. Default None.
      eps: PyTorch: a pair ``(eps1, eps2)``, ``eps1 >= 0`` the floor of the second moment
        (``None``: the machine epsilon of the params' dtype), ``eps2 >= 0`` the floor of the
        parameter scale. optax: a number added to ``g**2``. ``None`` (default): ``(None,
        1e-3)`` or ``1e-30``.
      factored: ``False`` keeps the full second moment of every leaf. Default True.
      weight_decay_mask: optax only: the mask of ``weight_decay_rate``. Default None.
      reading: ``"pytorch"`` (default) or ``"optax"``, as above.
      beta2_decay: PyTorch only: ``<= 0``; ``None`` is ``-decay_rate``. Default None (-0.8).
      d: PyTorch only: clipping threshold, ``>= 1``; ``None`` is ``clipping_threshold``.
        Default None (1.0).
      weight_decay: PyTorch only: decoupled decay ``>= 0``, scaled by the raw ``lr`` (not by
        the relative step); ``None`` (default) or the Python 0 leave the block out.
      maximize: ascend instead of descend. Default False.

    Returns:
      An ``optax.GradientTransformation`` that needs ``params`` in ``update``.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> params = {"w": jnp.ones((3, 4))}
      >>> opt = adamx.adafactor(learning_rate=0.1)
      >>> state = opt.init(params)
      >>> state[0].row["w"].shape, state[0].col["w"].shape  # 3 + 4 numbers, not 12
      ((3, 1), (1, 4))
      >>> updates, state = opt.update({"w": jnp.full((3, 4), 5.0)}, state, params)
      >>> round(float(updates["w"][0, 0]), 4)  # -lr * RMS(p) * g / |g|
      -0.1

    .. warning::
       ``optax.adafactor`` is another reading of the paper: it factors only when both of
       the two largest axes are ``>= 128`` (``min_dim_size_to_factor``) and factors those
       rather than the last two, adds ``eps = 1e-30`` to ``g**2`` inside the average,
       uses ``1 - (t+1)**-0.8``-style decay with ``decay_offset``, normalises the factored
       estimate by the mean of the row statistic without PyTorch's ``eps1`` floor, takes
       ``learning_rate`` as an external step (no ``min(lr, 1/sqrt(t))``), and defaults to
       ``learning_rate=None`` (no scaling). Its trajectories differ from these:
       ``reading="optax"`` gives them. Hugging
       Face's ``transformers.Adafactor`` also differs (``relative_step``, ``warmup_init``).

    References:
      Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
      ICML 2018, https://arxiv.org/abs/1804.04235
    """
    if reading == "optax":
        return _optax_adafactor(
            learning_rate, min_dim_size_to_factor, decay_rate, decay_offset,
            multiply_by_parameter_scale, clipping_threshold, momentum, dtype_momentum,
            weight_decay_rate, 1e-30 if eps is None else eps, factored, weight_decay_mask,
            maximize=maximize, torch_options=dict(beta2_decay=beta2_decay, d=d,
                                                  weight_decay=weight_decay),
        )  # fmt: skip
    if reading != "pytorch":
        raise ValueError(f'`reading` must be "pytorch" or "optax", got reading={reading!r}.')
    check_learning_rate(learning_rate)
    for name, value, default in (
        ("min_dim_size_to_factor", min_dim_size_to_factor, 128),
        ("decay_offset", decay_offset, 0),
        ("momentum", momentum, None),
        ("weight_decay_rate", weight_decay_rate, None),
        ("weight_decay_mask", weight_decay_mask, None),
    ):
        _unused_by_pytorch_reading(name, value, default)
    if eps is None:
        eps = (None, 1e-3)
    if not isinstance(eps, (tuple, list)) or len(eps) != 2:
        raise ValueError(
            f"`eps` must be a pair (eps1, eps2) with eps1 None or >= 0 and eps2 >= 0 under "
            f'the PyTorch reading (a number is optax\'s eps: pass reading="optax"), got '
            f"eps={eps!r}."
        )
    check_range("decay_rate", decay_rate, low=0.0)
    check_flag("multiply_by_parameter_scale", multiply_by_parameter_scale)
    check_flag("factored", factored)
    beta2_decay = _one_of("beta2_decay", beta2_decay, "decay_rate", decay_rate, 0.8, -1)
    d = _one_of("d", d, "clipping_threshold", clipping_threshold, 1.0, 1)
    eps1, eps2 = eps
    if eps1 is not None:
        check_range("eps[0]", eps1, low=0.0)
    check_range("eps[1]", eps2, low=0.0)
    if d is not None:
        check_range("d", d, low=1.0)
    return optax.chain(
        *maximize_block(maximize),
        scale_by_factored_rms(beta2_decay, eps1, factored=factored),
        *([] if d is None else [clip_by_block_rms(d)]),
        *([scale_by_param_block_rms(eps2)] if multiply_by_parameter_scale else []),
        scale_by_relative_step(learning_rate),
        *shrink_weights(learning_rate, weight_decay),
    )


def _unused_by_pytorch_reading(name: str, value, default) -> None:
    """Raise unless an optax-only option of :func:`adafactor` keeps its default (a traced
    number passes: it cannot be read)."""
    if value is None and default is None:
        return
    if default is not None and is_real_number(value):
        v = concrete_value(value)
        if v is None or v == default:
            return
    raise ValueError(
        f"`{name}` is an option of optax's reading of Adafactor, which adamx.adafactor "
        f'follows only with reading="optax" (its default reading is torch.optim.Adafactor\'s),'
        f" got {name}={value!r}."
    )


def _one_of(name: str, value, optax_name: str, optax_value, optax_default: float, sign: int):
    """PyTorch's ``name`` if given, else ``sign * optax_value`` (its optax counterpart);
    both given, the optax one must keep its default (an array, as
    ``optax.inject_hyperparams`` makes of the default, cannot be read and yields)."""
    if value is None:
        return None if optax_value is None else sign * optax_value
    python = isinstance(optax_value, (int, float)) and not isinstance(optax_value, bool)
    if optax_value is None or (python and optax_value != optax_default):
        raise ValueError(
            f"`{name}` and `{optax_name}` set the same thing; pass one of them, got "
            f"{name}={value!r} and {optax_name}={optax_value!r}."
        )
    return value


def _optax_adafactor(
    learning_rate, min_dim_size_to_factor, decay_rate, decay_offset,
    multiply_by_parameter_scale, clipping_threshold, momentum, dtype_momentum,
    weight_decay_rate, eps, factored, weight_decay_mask, *, maximize, torch_options,
) -> optax.GradientTransformation:  # fmt: skip
    """``optax.adafactor``'s chain, of optax's own blocks (plus ``maximize``)."""
    for name, value in torch_options.items():
        if value is not None:
            raise ValueError(
                f"`{name}` is an option of PyTorch's reading of Adafactor; with "
                f'reading="optax" leave it None, got {name}={value!r}.'
            )
    check_learning_rate(learning_rate, allow_none=True)
    check_range("eps", eps, low=0.0)
    check_range("decay_rate", decay_rate, low=0.0)
    check_range("decay_offset", decay_offset, low=0.0)
    check_flag("multiply_by_parameter_scale", multiply_by_parameter_scale)
    check_flag("factored", factored)
    check_optional_range("clipping_threshold", clipping_threshold, low=0.0)
    check_optional_range("momentum", momentum, low=0.0, high=1.0)
    check_optional_range("weight_decay_rate", weight_decay_rate, low=0.0)
    if isinstance(min_dim_size_to_factor, bool) or not isinstance(min_dim_size_to_factor, int):
        raise ValueError(
            f"`min_dim_size_to_factor` must be a Python int >= 0 (a static shape threshold; "
            f'under optax.inject_hyperparams declare static_args="min_dim_size_to_factor"), '
            f"got min_dim_size_to_factor={min_dim_size_to_factor!r}."
        )
    check_range("min_dim_size_to_factor", min_dim_size_to_factor, low=0.0)
    tx = [
        *maximize_block(maximize),
        optax.scale_by_factored_rms(
            factored, decay_rate, decay_offset, min_dim_size_to_factor, eps
        ),
    ]
    if clipping_threshold is not None:
        tx.append(optax.clip_by_block_rms(clipping_threshold))
    if learning_rate is not None:
        tx.append(optax.scale_by_learning_rate(learning_rate, flip_sign=False))
    if multiply_by_parameter_scale:
        tx.append(optax.scale_by_param_block_rms())
    if momentum is not None:
        check_dtype("dtype_momentum", dtype_momentum, optional=False)
        tx.append(optax.ema(momentum, debias=False, accumulator_dtype=dtype_momentum))
    if weight_decay_rate is not None:
        tx.append(optax.add_decayed_weights(weight_decay_rate, mask=weight_decay_mask))
    tx.append(optax.scale(-1))
    return optax.chain(*tx)
