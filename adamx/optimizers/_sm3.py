"""SM3: AdaGrad with one accumulator per row, column, ... of a tensor instead of per element."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from adamx.blocks._base import (
    PyTree,
    ScalarOrSchedule,
    abstract_or_array,
    as_scalar,
    check_decay,
    check_dtype,
    check_learning_rate,
    check_range,
    check_trees_match,
    compute_dtype,
    map_unzip,
    one_minus,
    padded_spec,
    param_named_sharding,
    transformation,
)
from adamx.blocks._moments import scale_by_moments, second_moment_dtype
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._adopt import read_momentum
from adamx.optimizers._guard import recipe


class CoverMaximaState(NamedTuple):
    """State of :func:`normalize_by_cover_maxima`.

    Attributes:
      acc: per leaf of shape ``(n_1, ..., n_k)``, a tuple of ``k`` accumulators, the
        ``i``-th of shape ``(1, .., n_i, .., 1)`` (a vector keeps one of its own shape, a
        scalar one 0-d array). Each is sharded like its param along its axis, and stored in
        the :func:`adamx.second_moment_dtype` of the leaf's dtype.
    """

    acc: PyTree


def _axis_shape(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return tuple(n if i == axis else 1 for i, n in enumerate(shape))


def _axis_zeros(p, axis: int, dtype) -> jax.Array:
    """Zeros of shape ``(1, .., n_axis, .., 1)``, sharded like ``p`` along ``axis`` (and
    unsharded along the others) when ``p`` carries a ``NamedSharding``."""
    shape = _axis_shape(p.shape, axis)
    sharding = param_named_sharding(p)
    if sharding is None:
        return jnp.zeros(shape, dtype)
    spec = tuple(e if i == axis else None for i, e in enumerate(padded_spec(sharding, p.ndim)))
    if isinstance(p, jax.core.Tracer) and not any(spec):
        return jnp.zeros(shape, dtype)  # explicit mode, nothing sharded: the default is right
    out = NamedSharding(sharding.mesh, PartitionSpec(*spec))
    if isinstance(p, jax.core.Tracer):  # explicit mode: a sharded type
        return jnp.zeros(shape, dtype, out_sharding=out)
    return jnp.zeros(shape, dtype, device=out)


def _check_shapes(updates: PyTree, acc: PyTree) -> None:
    """The updates' tree and shapes against the accumulators they were made for."""
    treedef = jax.tree.structure(updates)
    try:
        per_leaf = treedef.flatten_up_to(acc)  # type: ignore[attr-defined]
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"`the updates` do not match the optimizer state, whose accumulators were made "
            f"for another tree of params ({error}). Pass updates shaped like the params the "
            f"optimizer was initialised with."
        ) from error
    shapes = [
        jax.ShapeDtypeStruct(tuple(a.shape[i] for i, a in enumerate(covers)), covers[0].dtype)
        if covers[0].ndim
        else jax.ShapeDtypeStruct((), covers[0].dtype)
        for covers in per_leaf
    ]
    check_trees_match(updates, jax.tree.unflatten(treedef, shapes), "the updates", "the state")


def normalize_by_cover_maxima(b2: float = 1.0, eps: float = 1e-8) -> optax.GradientTransformation:
    """SM3's normalisation: ``g / sqrt(nu)`` with ``nu`` kept as one maximum per row,
    column, ... of each tensor (the cover sets of SM3-II), not per element.

    Per leaf of shape ``(n_1, ..., n_k)`` with accumulators ``a_i`` of length ``n_i``
    (all 0 at first)::

        nu  = c * g**2 + b2 * min_i a_i[j_i]        (c = 1 if b2 == 1, else 1 - b2)
        d   = g / sqrt(nu + eps) where nu > 0, else 0
        a_i = max of nu over every axis but i

    A vector keeps one accumulator per element (the rule is then AdaGrad's, with
    ``b2 = 1``); a scalar one. The memory is ``n_1 + ... + n_k`` numbers per tensor.

    Args:
      b2: the weight of the old accumulators, ``[0, 1]``. Default 1.0 (a sum, SM3's).
      eps: added to ``nu`` inside the root, ``>= 0``. Default 1e-8.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`CoverMaximaState`.

    References:
      Anil, Gupta, Koren & Singer, "Memory-Efficient Adaptive Optimization", NeurIPS 2019,
      https://arxiv.org/abs/1901.11150
    """
    check_range("b2", b2, low=0.0, high=1.0)
    check_range("eps", eps, low=0.0)
    # the weight of g**2: 1 for a sum (b2 = 1), 1 - b2 for an average, as optax
    new_weight = 1.0 if isinstance(b2, (int, float)) and b2 == 1 else one_minus(b2)

    def init(params):
        def leaf(p):
            p = abstract_or_array(p)
            dtype = second_moment_dtype(p.dtype)
            if p.ndim == 0:
                return (jnp.zeros([], dtype),)
            return tuple(_axis_zeros(p, i, dtype) for i in range(p.ndim))

        return CoverMaximaState(acc=jax.tree.map(leaf, params))

    def leaf(g, acc):
        g = jnp.asarray(g)
        dtype = compute_dtype(g.dtype)
        gc = g.astype(dtype)
        ndim = g.ndim
        smallest = functools.reduce(jnp.minimum, [a.astype(dtype) for a in acc])
        c = new_weight
        if not isinstance(c, float):
            c = jnp.where(jnp.asarray(b2) == 1, 1.0, c)
        nu = as_scalar(c, dtype) * gc**2 + as_scalar(b2, dtype) * smallest
        d = jnp.where(nu > 0, gc * jax.lax.rsqrt(nu + as_scalar(eps, dtype)), 0.0)
        if ndim == 0 or nu.size == 0:
            new = (nu,) if ndim == 0 else tuple(jnp.zeros_like(a) for a in acc)
        else:
            new = tuple(
                jnp.max(nu, axis=tuple(j for j in range(ndim) if j != i), keepdims=True)
                for i in range(ndim)
            )
        return d.astype(g.dtype), tuple(n.astype(a.dtype) for n, a in zip(new, acc))

    def update(updates, state, params=None):
        del params
        _check_shapes(updates, state.acc)
        d, acc = map_unzip(leaf, 2, updates, state.acc)
        return d, CoverMaximaState(acc=acc)

    return transformation(init, update)


@recipe
def sm3(
    learning_rate: ScalarOrSchedule = 1e-2,
    momentum: float = 0.9,
    *,
    b2: float = 1.0,
    eps: float = 1e-8,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
    """SM3: AdaGrad whose sum of squared gradients is kept per row and per column (per
    axis slice) instead of per element, with momentum, as ``optax.sm3``.

    Per leaf (a matrix ``(n, m)``: accumulators ``r`` of length ``n``, ``c`` of ``m``)::

        nu  = g**2 + min(r[i], c[j])                 (elementwise; b2 = 1)
        r   = max_j nu;   c = max_i nu
        d   = g / sqrt(nu + eps)   (0 where nu = 0)
        m   = momentum * m + (1 - momentum) * d
        p   = p - lr * m

    The recipe is ADOPT's chain (normalise, then average) with SM3's normalisation::

        normalize_by_cover_maxima(b2, eps)
        scale_by_moments(momentum, None, mu_dtype=mu_dtype)    # m only
        read_momentum()
        scale_by_learning_rate(learning_rate)

    State: ``n + m`` numbers per matrix (one per row and column; a vector keeps one per
    element) and the momentum, in place of AdaGrad's ``n * m``.

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. Default 1e-2
        (optax's has none and takes no schedule).
      momentum: decay of the momentum, ``[0, 1)``. Default 0.9.
      b2: the weight of the old accumulators, ``(0, 1]`` (optax's ``scale_by_sm3``).
        Default 1.0, a sum.
      eps: added inside the root, ``>= 0``. Default 1e-8.
      mu_dtype: the dtype the momentum is stored in, or ``None`` for the params'.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.sm3(learning_rate=0.1, momentum=0.0)
      >>> params = {"w": jnp.zeros((2, 2))}
      >>> g = {"w": jnp.asarray([[3.0, 0.0], [0.0, 4.0]])}
      >>> u, state = opt.update(g, opt.init(params))
      >>> [round(float(x), 4) for x in u["w"].ravel()]   # -lr * sign(g) on the first step
      [-0.1, -0.0, -0.0, -0.1]
      >>> [a.ravel().tolist() for a in state[0].acc["w"]]   # row and column maxima of g**2
      [[9.0, 16.0], [9.0, 16.0]]

    .. warning::
       Real params only (optax's refuses complex ones too). optax's ``sm3`` fails on a
       0-d leaf; here a scalar keeps one accumulator. The momentum is an average of the
       normalised gradients, so the learning rate of AdaGrad carries over, not SGD's.

    References:
      Anil, Gupta, Koren & Singer, "Memory-Efficient Adaptive Optimization", NeurIPS 2019,
      https://arxiv.org/abs/1901.11150
    """
    check_learning_rate(learning_rate)
    check_decay("momentum", momentum)
    check_dtype("mu_dtype", mu_dtype)
    return optax.chain(
        normalize_by_cover_maxima(b2, eps),
        scale_by_moments(momentum, None, mu_dtype=mu_dtype),
        read_momentum(),
        scale_by_learning_rate(learning_rate),
    )
