"""SM3: AdaGrad with one accumulator per row, column, ... of a tensor instead of per element."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

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
    transformation,
)
from adamx.blocks._moments import scale_by_moments, second_moment_dtype
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._adopt import read_momentum
from adamx.optimizers._guard import recipe


class CoverMaximaState(NamedTuple):
    """State of :func:`normalize_by_cover_maxima`.

    Attributes:
      acc: a tree like the params whose leaves are vectors: a leaf of shape
        ``(n_1, ..., n_k)`` keeps its axes' accumulators one after the other
        (``n_1 + ... + n_k`` numbers, the first ``n_1`` for axis 0, ...), a scalar one.
        Stored in the :func:`adamx.second_moment_dtype` of the leaf's dtype.
    """

    acc: PyTree


def _length(shape: tuple[int, ...]) -> int:
    return sum(shape) if shape else 1


def _check_lengths(updates: PyTree, acc: PyTree) -> None:
    """The updates' tree and shapes against the accumulators they were made for."""
    check_trees_match(updates, acc, "the updates", "the optimizer state", shapes=False)
    for (path, g), a in zip(jax.tree_util.tree_flatten_with_path(updates)[0], jax.tree.leaves(acc)):
        if _length(jnp.shape(g)) != a.shape[0]:
            raise ValueError(
                f"the updates{jax.tree_util.keystr(path)} has shape {jnp.shape(g)}, whose axes "
                f"sum to {_length(jnp.shape(g))}, but the optimizer state keeps {a.shape[0]} "
                f"accumulators there: pass updates shaped like the params the optimizer was "
                f"initialised with."
            )


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
            return jnp.zeros((_length(p.shape),), second_moment_dtype(p.dtype))

        return CoverMaximaState(acc=jax.tree.map(leaf, params))

    def leaf(g, acc):
        g = jnp.asarray(g)
        dtype = compute_dtype(g.dtype)
        gc, a = g.astype(dtype), acc.astype(dtype)
        ndim, shape = g.ndim, g.shape
        if ndim == 0:
            smallest = a[0]
        else:
            starts = [sum(shape[:i]) for i in range(ndim)]
            covers = [
                a[s : s + n].reshape((1,) * i + (n,) + (1,) * (ndim - i - 1))
                for i, (s, n) in enumerate(zip(starts, shape))
            ]
            smallest = functools.reduce(jnp.minimum, covers)
        c = new_weight
        if not isinstance(c, float):
            c = jnp.where(jnp.asarray(b2) == 1, 1.0, c)
        nu = as_scalar(c, dtype) * gc**2 + as_scalar(b2, dtype) * smallest
        d = jnp.where(nu > 0, gc * jax.lax.rsqrt(nu + as_scalar(eps, dtype)), 0.0)
        if ndim == 0:
            new = nu.reshape(1)
        elif nu.size == 0:
            new = jnp.zeros_like(a)
        else:
            new = jnp.concatenate(
                [jnp.max(nu, axis=tuple(j for j in range(ndim) if j != i)) for i in range(ndim)]
            )
        return d.astype(g.dtype), new.astype(acc.dtype)

    def update(updates, state, params=None):
        del params
        _check_lengths(updates, state.acc)
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
      >>> [float(a) for a in state[0].acc["w"]]   # row maxima of g**2, then column maxima
      [9.0, 16.0, 9.0, 16.0]

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
