"""GaLore: the optimizer's state kept for a low-rank projection of each matrix's gradient."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    PyTree,
    ScalarOrSchedule,
    abstract_or_array,
    check_learning_rate,
    compute_dtype,
    concrete_value,
    is_real_number,
    map_unzip,
    safe_increment,
    transformation,
)
from adamx.blocks._correction import correct_bias
from adamx.blocks._decay import decay_block
from adamx.blocks._moments import scale_by_moments
from adamx.blocks._normalize import normalize
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._guard import recipe


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


def scale_by_galore(
    rank: int = 128,
    update_proj_gap: int = 200,
    scale: float = 1.0,
    base_optimizer: optax.GradientTransformation | None = None,
) -> optax.GradientTransformation:
    """Run ``base_optimizer`` on a rank-``r`` projection of every matrix's gradient.

    Per 2-D leaf ``G`` (``m x n``, ``r = min(rank, m, n)``), with ``k`` the number of earlier
    updates::

        every update_proj_gap updates (k % gap == 0): U S V^T = svd(G)   (float32 at least)
            P = U[:, :r]      (m >= n)          P = V[:, :r]      (m < n)
        R = P^T G                               R = G P            (the projected gradient)
        D = base_optimizer(R)                   (its state has R's shape)
        u = scale * P D                         u = scale * D P^T

    Other leaves go to ``base_optimizer`` whole and come back unscaled (as in optax). The
    base optimizer must not read params (it sees projected shapes): a chain of scaling
    blocks, by default Adam's ``scale_by_moments(0.9, 0.999)``, ``correct_bias(0.9, None)``,
    ``normalize(1e-8, b2=0.999)`` (``optax.scale_by_adam()``'s rule).

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
    base = base_optimizer
    if base is None:
        base = optax.chain(
            scale_by_moments(0.9, 0.999), correct_bias(0.9, None), normalize(1e-8, b2=0.999)
        )
    base = optax.with_extra_args_support(base)

    def init(params):
        def leaf(p):
            p = abstract_or_array(p)
            if p.ndim != 2:
                return optax.MaskedNode(), jnp.zeros_like(p)
            m, n = p.shape
            left, r = m >= n, min(_static_rank(rank), m, n)
            proxy = (r, n) if left else (m, r)
            return jnp.zeros((m if left else n, r), p.dtype), jnp.zeros(proxy, p.dtype)

        projector, proxies = map_unzip(leaf, 2, params)
        return GaLoreState(
            count=jnp.zeros([], jnp.int32),
            base_optimizer_state=base.init(proxies),
            projector=projector,
        )

    def update(grads, state, params=None):
        del params
        refresh = state.count % update_proj_gap == 0

        def project(g, p):  # r is the projector's width (rank is not read: it may be traced)
            g = jnp.asarray(g)
            if g.ndim != 2:
                return g, p
            left, r = g.shape[0] >= g.shape[1], p.shape[1]

            def fresh():
                u, _, vt = jnp.linalg.svd(g.astype(compute_dtype(g.dtype)), full_matrices=False)
                basis = u[:, :r] if left else vt[:r, :].T
                return basis.astype(p.dtype)

            p = jax.lax.cond(refresh, fresh, lambda: p)
            return (p.T @ g if left else g @ p), p

        low, projector = map_unzip(project, 2, grads, state.projector)
        low_updates, base_state = base.update(low, state.base_optimizer_state, None)

        def back(g, d, p):
            g = jnp.asarray(g)
            if g.ndim != 2:
                return d
            dtype = compute_dtype(g.dtype)
            full = p @ d if g.shape[0] >= g.shape[1] else d @ p.T
            return (jnp.asarray(scale, dtype) * full.astype(dtype)).astype(g.dtype)

        updates = jax.tree.map(back, grads, low_updates, projector)
        return updates, GaLoreState(safe_increment(state.count), base_state, projector)

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
    weight_dimension_numbers: None = None,
) -> optax.GradientTransformation:
    """GaLore: Adam (or ``base_optimizer``) on a low-rank projection of every matrix's
    gradient, projected back for the step, as ``optax.contrib.galore``.

    Per 2-D leaf ``G`` (``m x n``, ``r = min(rank, m, n)``), ``k`` updates taken before::

        P = first r left (m >= n) or right (m < n) singular vectors of G, refreshed when
            k % update_proj_gap == 0 and kept in between
        R = P^T G  (or G P);   D = Adam(R)   (moments of R's shape: r x n or m x r)
        p = p - lr (scale * P D  (or D P^T) + wd p)

    Vectors, scalars and other non-matrix leaves take the base optimizer's plain step. The
    recipe::

        scale_by_galore(rank, update_proj_gap, scale, base_optimizer)
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
      weight_dimension_numbers: only None (2-D leaves are the matrices): optax's reshaping
        of higher-rank leaves into matrices is not implemented.

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
       first); ``weight_dimension_numbers`` only None. Real params only.

    References:
      Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection",
      ICML 2024, https://arxiv.org/abs/2403.03507
    """
    check_learning_rate(learning_rate)
    if weight_dimension_numbers is not None:
        raise ValueError(
            "`weight_dimension_numbers` must be None (the 2-D leaves are the matrices), got "
            f"weight_dimension_numbers={weight_dimension_numbers!r}; reshape higher-rank "
            "leaves, or use optax.contrib.galore for them."
        )
    return optax.chain(
        scale_by_galore(rank, update_proj_gap, scale, base_optimizer),
        *decay_block(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
