"""GaLore: the optimizer's state kept for a low-rank projection of each matrix's gradient."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adamx.blocks._base import (
    PyTree,
    ScalarOrSchedule,
    abstract_or_array,
    check_learning_rate,
    compute_dtype,
    concrete_value,
    cond,
    is_real_number,
    safe_increment,
    transformation,
)
from adamx.blocks._correction import correct_bias
from adamx.blocks._decay import decay_block
from adamx.blocks._moments import scale_by_moments
from adamx.blocks._normalize import normalize
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._guard import recipe
from adamx.optimizers._muon_blocks import (
    DimensionNumbers,
    check_dimension_numbers,
    is_spec,
    matrix_axes,
    specs_per_leaf,
)


class GaLoreState(NamedTuple):
    """State of :func:`scale_by_galore` (optax's ``GaLoreState`` fields).

    Attributes:
      count: int32 number of updates taken so far (saturates at the int32 maximum).
      base_optimizer_state: the base optimizer's state, shaped for the projected gradients
        (``r x n`` or ``m x r`` for an ``m x n`` matrix; other leaves at full size).
      projector: ``P`` per matrix, ``m x r`` (``m >= n``) or ``n x r``, in the param's dtype;
        an ``optax.MaskedNode()`` (no array) for the leaves that are not matrices.
    """

    count: jax.Array  # type: ignore[assignment]
    base_optimizer_state: Any
    projector: PyTree


def _check_int(name: str, value) -> None:
    """A positive int, or a concrete integer array (``optax.inject_hyperparams`` passes
    ints as arrays); a traced one passes (it must then be static where it sets shapes)."""
    ok = is_real_number(value) and jnp.issubdtype(jnp.result_type(value), jnp.integer)
    v = concrete_value(value) if ok else None
    if not ok or (v is not None and v < 1):
        raise ValueError(f"`{name}` must be a positive int, got {name}={value!r}.")


def _static_rank(rank) -> int:
    v = concrete_value(rank)
    if v is None:
        raise ValueError(
            "`rank` sets the shapes of GaLore's state and must be concrete: under "
            'optax.inject_hyperparams, pass static_args=("rank",).'
        )
    return int(v)


class _Plain(NamedTuple):
    """The dimension numbers of a plain matrix (rows reduced, columns out)."""

    reduction_axis: int = 0
    output_axis: int = 1


def _leaf_specs(dims: DimensionNumbers, tree: PyTree) -> list:
    """Per leaf of ``tree``: the dimension numbers it is read as a matrix with, or None
    (not projected). ``dims`` None: the 2-D leaves; one spec: every leaf of rank >= 2; a
    tree (a prefix of ``tree``) or a function of ``tree`` returning one: as it says."""
    leaves = jax.tree.leaves(tree)
    if dims is None:
        return [_Plain() if jnp.ndim(x) == 2 else None for x in leaves]
    if is_spec(dims):
        return [dims if jnp.ndim(x) >= 2 else None for x in leaves]
    return specs_per_leaf(dims, tree)


class _View(NamedTuple):
    """A leaf read as an ``m x n`` matrix: ``to`` reshapes the leaf, ``back`` undoes it."""

    m: int
    n: int
    to: Callable[[jax.Array], jax.Array]
    back: Callable[[jax.Array], jax.Array]


def _view(spec, shape: tuple, where: str) -> _View | None:
    """The leaf's reduction axes (flattened, in order) as rows, its output axes as columns."""
    if spec is None:
        return None
    batch, red, out = matrix_axes(spec, shape, where)
    if batch:
        raise ValueError(
            f"{where} has shape {shape}: `weight_dimension_numbers` {spec!r} leave axes "
            f"{batch} out; each axis must be a reduction or an output axis."
        )
    order = red + out
    m, n = math.prod(shape[a] for a in red), math.prod(shape[a] for a in out)
    if order == (0, 1):
        return _View(m, n, lambda x: x, lambda y: y)
    inverse = tuple(int(a) for a in np.argsort(order))
    moved = tuple(shape[a] for a in order)
    return _View(
        m,
        n,
        lambda x: jnp.transpose(x, order).reshape(m, n),
        lambda y: jnp.transpose(y.reshape(moved), inverse),
    )


def _views(dims: DimensionNumbers, tree: PyTree, who: str) -> list:
    paths_leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [
        _view(spec, jnp.shape(x), f"{who}{jax.tree_util.keystr(path)}")
        for (path, x), spec in zip(paths_leaves, _leaf_specs(dims, tree))
    ]


def _adam_direction() -> optax.GradientTransformation:
    """``optax.scale_by_adam()``'s rule as adamx blocks, its state the moments' record
    (``count``, ``mu``, ``nu``: the fields of optax's ``ScaleByAdamState``); the bias
    correction and the normalisation keep no state."""
    moments = scale_by_moments(0.9, 0.999)
    direction = optax.chain(correct_bias(0.9, None), normalize(1e-8, b2=0.999))

    def update(grads, state, params=None):
        record, state = moments.update(grads, state, params)
        out, _ = direction.update(record, direction.init(grads), params)
        return out, state

    return transformation(moments.init, update)


def scale_by_galore(
    rank: int = 128,
    update_proj_gap: int = 200,
    scale: float = 1.0,
    base_optimizer: optax.GradientTransformation | None = None,
    weight_dimension_numbers: DimensionNumbers = None,
) -> optax.GradientTransformation:
    """Run ``base_optimizer`` on a rank-``r`` projection of every matrix's gradient.

    Per 2-D leaf ``G`` (``m x n``, ``r = min(rank, m, n)``), with ``k`` the number of earlier
    updates::

        every update_proj_gap updates (k % gap == 0): U S V^T = svd(G)   (float32 at least)
            P = U[:, :r]      (m >= n)          P = V[:, :r]      (m < n)
        R = P^T G                               R = G P            (the projected gradient)
        D = base_optimizer(R)                   (its state has R's shape)
        u = scale * P D                         u = scale * D P^T

    With ``weight_dimension_numbers`` a leaf of higher rank is ``G`` reshaped to (reduction
    dims, output dims) and its step reshaped back (see :func:`adamx.galore`). Other leaves
    go to ``base_optimizer`` whole and come back unscaled (as in optax). The
    base optimizer must not read params (it sees projected shapes): a chain of scaling
    blocks, by default Adam's ``scale_by_moments(0.9, 0.999)``, ``correct_bias(0.9, None)``,
    ``normalize(1e-8, b2=0.999)`` (``optax.scale_by_adam()``'s rule), its state the
    moments' record (``count``, ``mu``, ``nu``, as optax's ``ScaleByAdamState``).

    Args: as :func:`adamx.galore`.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`GaLoreState`.

    References:
      Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection",
      ICML 2024, https://arxiv.org/abs/2403.03507
    """
    _check_int("rank", rank)
    _check_int("update_proj_gap", update_proj_gap)
    if not is_real_number(scale):
        raise ValueError(f"`scale` must be a number, got scale={scale!r}.")
    check_dimension_numbers("weight_dimension_numbers", weight_dimension_numbers)
    dims = weight_dimension_numbers
    base = _adam_direction() if base_optimizer is None else base_optimizer
    base = optax.with_extra_args_support(base)

    def init(params):
        leaves, treedef = jax.tree.flatten(params)
        projector, proxies = [], []
        for p, view in zip(leaves, _views(dims, params, "galore: params")):
            p = abstract_or_array(p)
            if view is None:
                projector.append(optax.MaskedNode())
                proxies.append(jnp.zeros_like(p))
                continue
            m, n = view.m, view.n
            left, r = m >= n, min(_static_rank(rank), m, n)
            projector.append(jnp.zeros((m if left else n, r), p.dtype))
            proxies.append(jnp.zeros((r, n) if left else (m, r), p.dtype))
        return GaLoreState(
            count=jnp.zeros([], jnp.int32),
            base_optimizer_state=base.init(jax.tree.unflatten(treedef, proxies)),
            projector=jax.tree.unflatten(treedef, projector),
        )

    def update(grads, state, params=None):
        del params
        refresh = state.count % update_proj_gap == 0
        leaves, treedef = jax.tree.flatten(grads)
        views = _views(dims, grads, "galore: updates")
        projectors = treedef.flatten_up_to(state.projector)

        def project(g, p, view):  # r is the projector's width (rank may be traced)
            g = jnp.asarray(g)
            if view is None:
                return g, p
            g = view.to(g)
            left, r = g.shape[0] >= g.shape[1], p.shape[1]

            def fresh():
                u, _, vt = jnp.linalg.svd(g.astype(compute_dtype(g.dtype)), full_matrices=False)
                basis = u[:, :r] if left else vt[:r, :].T
                return basis.astype(p.dtype)

            p = cond(refresh, fresh, lambda: p)
            return (p.T @ g if left else g @ p), p

        pairs = [project(*args) for args in zip(leaves, projectors, views)]
        low = jax.tree.unflatten(treedef, [low for low, _ in pairs])
        projector = [p for _, p in pairs]
        low_updates, base_state = base.update(low, state.base_optimizer_state, None)

        def back(g, d, p, view):
            if view is None:
                return d
            g = jnp.asarray(g)
            dtype = compute_dtype(g.dtype)
            full = p @ d if view.m >= view.n else d @ p.T
            return view.back((jnp.asarray(scale, dtype) * full.astype(dtype)).astype(g.dtype))

        low_leaves = treedef.flatten_up_to(low_updates)
        updates = [back(*args) for args in zip(leaves, low_leaves, projector, views)]
        return jax.tree.unflatten(treedef, updates), GaLoreState(
            safe_increment(state.count), base_state, jax.tree.unflatten(treedef, projector)
        )

    return transformation(init, update)


@recipe
def galore(
    learning_rate: ScalarOrSchedule = 1e-3,
    rank: int = 128,
    update_proj_gap: int = 200,
    scale: float = 1.0,
    base_optimizer: optax.GradientTransformation | None = None,
    weight_decay: float | None = None,
    mask: Any | Callable[[PyTree], Any] | None = None,
    weight_dimension_numbers: DimensionNumbers = None,
) -> optax.GradientTransformation:
    """GaLore: Adam (or ``base_optimizer``) on a low-rank projection of every matrix's
    gradient, projected back for the step, as ``optax.contrib.galore``.

    Per 2-D leaf ``G`` (``m x n``, ``r = min(rank, m, n)``), ``k`` updates taken before::

        P = first r left (m >= n) or right (m < n) singular vectors of G, refreshed when
            k % update_proj_gap == 0 and kept in between
        R = P^T G  (or G P);   D = Adam(R)   (moments of R's shape: r x n or m x r)
        p = p - lr (scale * P D  (or D P^T) + wd p)

    A leaf named by ``weight_dimension_numbers`` is ``G`` reshaped to (reduction dims,
    output dims) and its step reshaped back. Vectors, scalars and other leaves that are not
    matrices take the base optimizer's plain step. The recipe::

        scale_by_galore(rank, update_proj_gap, scale, base_optimizer, weight_dimension_numbers)
        add_decayed_weights(weight_decay, mask)   # decoupled; None or 0 leave it out
        scale_by_learning_rate(learning_rate)

    Args:
      learning_rate: a number ``>= 0`` or a schedule. Default 1e-3 (optax's has none).
      rank: the projection's rank, a positive int (capped at ``min(m, n)``). Default 128.
      update_proj_gap: refresh the projectors every this many updates, a positive int.
        Default 200.
      scale: multiplies the projected-back step of the matrices. Default 1.0.
      base_optimizer: a transformation that does not read params, run on the projected
        gradients; None for Adam's direction (b1 0.9, b2 0.999, eps 1e-8). Default None.
      weight_decay: decoupled decay ``>= 0`` on the full params; None (default; optax's 0.0
        adds nothing) or 0 leave it out.
      mask: the leaves to decay (a tree of bools or a function of the params).
      weight_dimension_numbers: which leaves are matrices, and how. None (default): the 2-D
        leaves, as they are. One spec (``optax.contrib.GaLoreDimensionNumbers(
        reduction_axis, output_axis)`` or any object with those two fields, each an int or
        ints): every leaf of rank >= 2, read as the ``(prod of reduction dims, prod of
        output dims)`` matrix (axes transposed to reduction then output, then flattened;
        the step is reshaped back); every axis must be named. A tree of specs and None
        (not projected), a prefix of the params; or a function of the params returning
        one.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax, jax.numpy as jnp, adamx
      >>> opt = adamx.galore(learning_rate=0.1, rank=1)
      >>> params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
      >>> state = opt.init(params)
      >>> [x.shape for x in jax.tree.leaves(state[0].base_optimizer_state)[1:3]]
      [(3,), (1, 3)]

    .. warning::
       The state per ``m x n`` matrix is ``P`` (``max(m, n) r``) plus the base optimizer's
       state of an ``r x min``-sized gradient: smaller than Adam's ``2 m n`` only when
       ``r`` is well below ``min(m, n) / 3`` (``benchmarks/RESULTS.md``). A refresh of
       ``P`` leaves the moments in the old basis, as in the paper and optax. Differences from
       optax: float64 gradients are decomposed in float64 (optax rounds them to float32
       first); the default Adam's state is one record with optax's ``ScaleByAdamState``
       fields (``count``, ``mu``, ``nu``); ``weight_dimension_numbers`` may be a prefix of
       the params' tree (optax needs the whole tree). Real params only.

    References:
      Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection",
      ICML 2024, https://arxiv.org/abs/2403.03507
    """
    check_learning_rate(learning_rate)
    return optax.chain(
        scale_by_galore(rank, update_proj_gap, scale, base_optimizer, weight_dimension_numbers),
        *decay_block(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
