"""The blocks of D-Adaptation and Prodigy: the distance estimate D and the moments of the
D-scaled gradient, which depend on each other and so are one block per method."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    PyTree,
    ScalarOrSchedule,
    abstract_or_array,
    as_scalar,
    check_decay,
    check_learning_rate,
    check_range,
    check_trees_match,
    compute_dtype,
    map_unzip,
    one_minus,
    real_dtype,
    require_params,
    safe_increment,
    scalar_dtype,
    transformation,
)
from adamx.blocks._correction import bias_correction
from adamx.blocks._moments import ema, ema_square, second_moment_zeros


class ProdigyState(NamedTuple):
    """State of :func:`scale_by_prodigy` (optax's ``ProdigyState`` fields, adamx's names
    for the moments).

    Attributes:
      count: int32 number of updates taken so far (saturates at the int32 maximum).
      mu: ``m``, the average of ``D g``, stored in the params' dtypes.
      nu: ``v``, the average of ``(D g)**2``, likewise (float32 for float16 params).
      grad_sum: ``s``, the weighted sum of the past ``D g`` the estimate divides by.
      params0: the params at ``init``, ``x_0``.
      estim_lr: ``D``, the distance estimate (a 0-d array, float32 or above; read it with
        :func:`adamx.distance_estimate`).
      numerator_weighted: ``r``, the weighted sum of ``<g, x_0 - x>`` the estimate's
        numerator.
    """

    count: jax.Array  # type: ignore[assignment]
    mu: PyTree
    nu: PyTree
    grad_sum: PyTree
    params0: PyTree
    estim_lr: jax.Array
    numerator_weighted: jax.Array


class DAdaptAdamWState(NamedTuple):
    """State of :func:`scale_by_dadapt_adamw` (optax's ``DAdaptAdamWState`` fields, adamx's
    names for the moments).

    Attributes:
      count: int32 number of updates taken so far (saturates at the int32 maximum).
      mu: ``m``, the average of ``lr_t g`` (the step sizes are inside), in the params'
        dtypes.
      nu: ``v``, the average of ``g**2``, likewise (float32 for float16 params).
      grad_sum: ``s``, the average of ``lr_t g`` with decay ``sqrt(b2)``.
      estim_lr: ``D``, the distance estimate (read it with :func:`adamx.distance_estimate`).
      numerator_weighted: ``r``, the average of ``lr_t <g, s / (sqrt(v) + eps)>``.
    """

    count: jax.Array  # type: ignore[assignment]
    mu: PyTree
    nu: PyTree
    grad_sum: PyTree
    estim_lr: jax.Array
    numerator_weighted: jax.Array


def _scalar_dtype_of(params) -> jnp.dtype:
    """Where the estimate's scalars are kept: the params' lowest real float dtype (optax's
    choice), but never below float32 (a bfloat16 ``D`` would grow in 1/128 steps)."""
    dtypes = [real_dtype(jnp.result_type(p)) for p in jax.tree.leaves(params)]
    dtypes = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)]
    lowest = min(dtypes, key=lambda d: jnp.finfo(d).bits) if dtypes else scalar_dtype()
    return compute_dtype(lowest)


def _zeros(params) -> PyTree:
    return jax.tree.map(lambda p: jnp.zeros_like(abstract_or_array(p)), params)


def _schedule_value(learning_rate, count, dtype) -> jax.Array:
    if callable(learning_rate):
        return jnp.asarray(learning_rate(count), dtype)
    return as_scalar(learning_rate, dtype)


def _step_size(estim_lr, learning_rate, b1, b2, count, t) -> tuple[jax.Array, jax.Array]:
    """``(c, D lr(k) c)`` with ``c = sqrt(1 - b2**t) / (1 - b1**t)`` (``k = t - 1``)."""
    sd = estim_lr.dtype
    c = (jnp.sqrt(bias_correction(b2, t)) / bias_correction(b1, t)).astype(sd)
    return c, estim_lr * _schedule_value(learning_rate, count, sd) * c


def _tree_sum(f, dtype, *trees) -> jax.Array:
    """``sum over leaves of sum(f(leaves))``, accumulated in ``dtype``."""
    total = jnp.zeros([], dtype)
    for leaves in zip(*(jax.tree.leaves(t) for t in trees)):
        total = total + jnp.sum(f(*leaves)).astype(dtype)
    return total


def _estimate(numerator, denominator, estim_lr) -> jax.Array:
    """``max(D, numerator / denominator)``; ``D`` unchanged where the denominator is 0 (no
    gradient yet: optax divides 0 by 0 and its ``D`` becomes NaN)."""
    safe = jnp.where(denominator > 0, denominator, 1)
    return jnp.maximum(estim_lr, jnp.where(denominator > 0, numerator / safe, estim_lr))


def _check_common(learning_rate, betas, eps, estim_lr0, weight_decay) -> tuple:
    check_learning_rate(learning_rate)
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(
            f"`betas` must be a pair (b1, b2) of decays in [0, 1), got betas={betas!r}."
        )
    check_decay("betas[0]", betas[0])
    check_decay("betas[1]", betas[1])
    check_range("eps", eps, low=0.0)
    check_range("estim_lr0", estim_lr0, low=0.0)
    v = estim_lr0 if isinstance(estim_lr0, (int, float)) else None
    if v == 0:
        raise ValueError(
            f"`estim_lr0` must be > 0 (the first step size, and the estimate's unit), got "
            f"estim_lr0={estim_lr0!r}."
        )
    check_range("weight_decay", weight_decay, low=0.0)
    return tuple(betas)


def scale_by_prodigy(
    learning_rate: ScalarOrSchedule = 1.0,
    betas: tuple[float, float] = (0.9, 0.999),
    beta3: float | None = None,
    eps: float = 1e-8,
    estim_lr0: float = 1e-6,
    estim_lr_coef: float = 1.0,
    weight_decay: float = 0.0,
    safeguard_warmup: bool = False,
) -> optax.GradientTransformation:
    """Prodigy's distance estimate ``D`` and AdamW's moments of ``D g``, before the rate.

    Per leaf, with ``k`` the number of earlier updates, ``t = k + 1``,
    ``c = sqrt(1 - b2**t) / (1 - b1**t)`` and ``h = lr(k) D c`` (``D`` this step's
    estimate; ``learning_rate`` is read here for ``h``, the chain applies it after)::

        m = b1 m + (1 - b1) D g;          v = b2 v + (1 - b2) (D g)**2
        s = b3 s + (h / D_0) D g          (safeguard_warmup: (D / D_0) D g)
        r = b3 r + (D / D_0) h <g, x_0 - x>                  (sums over every leaf)
        D_new = max(D, estim_lr_coef * r / sum|s|)           (D kept while sum|s| = 0)
        u = D c (m / (sqrt(v) + D_new eps) + wd x)

    The moments are of ``D g``, so the estimate and the moments are one block; the
    learning rate (a multiplier of ``D``, 1.0 by default) follows as
    :func:`adamx.scale_by_learning_rate`.

    Args: as :func:`adamx.prodigy`.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`ProdigyState`; it needs
      ``params`` in ``update``.

    References:
      Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner",
      ICML 2024, https://arxiv.org/abs/2306.06101
    """
    b1, b2 = _check_common(learning_rate, betas, eps, estim_lr0, weight_decay)
    if beta3 is not None:
        check_decay("beta3", beta3)
    check_range("estim_lr_coef", estim_lr_coef, low=0.0)
    if not isinstance(safeguard_warmup, bool):
        raise ValueError(f"`safeguard_warmup` must be True or False, got {safeguard_warmup!r}.")

    def init(params):
        sd = _scalar_dtype_of(params)
        return ProdigyState(
            count=jnp.zeros([], jnp.int32),
            mu=_zeros(params),
            nu=jax.tree.map(second_moment_zeros, params),
            grad_sum=_zeros(params),
            params0=jax.tree.map(
                lambda p: (
                    jnp.array(p, copy=True)
                    if not isinstance(p, jax.ShapeDtypeStruct)
                    else jnp.zeros_like(p)
                ),
                params,
            ),
            estim_lr=as_scalar(estim_lr0, sd),
            numerator_weighted=jnp.zeros([], sd),
        )

    def update(grads, state, params=None):
        require_params(params, "adamx.scale_by_prodigy")
        check_trees_match(grads, state.mu, "grads", "the optimizer state")
        sd = state.estim_lr.dtype
        b3 = jnp.sqrt(as_scalar(b2, sd)) if beta3 is None else as_scalar(beta3, sd)
        t = safe_increment(state.count)
        d = state.estim_lr
        c, h = _step_size(d, learning_rate, b1, b2, state.count, t)
        d0 = as_scalar(estim_lr0, sd)
        s_weight = d / d0 if safeguard_warmup else h / d0
        # <g, x_0 - x>, in the leaves' compute dtype, summed in the scalars' dtype
        work = lambda x: jnp.asarray(x).astype(compute_dtype(jnp.result_type(x)))  # noqa: E731
        inner = _tree_sum(
            lambda g, x0, x: work(g) * (work(x0) - work(x)), sd, grads, state.params0, params
        )

        def moments(g, m, v, s):
            dtype = compute_dtype(m.dtype)
            dg = d.astype(dtype) * work(g).astype(dtype)
            m_new = ema(m, dg, one_minus(b1))
            v_new = ema_square(v, dg, b2)
            s_new = b3.astype(dtype) * s.astype(dtype) + s_weight.astype(dtype) * dg
            return m_new, v_new, s_new

        mu, nu, grad_sum = map_unzip(moments, 3, grads, state.mu, state.nu, state.grad_sum)
        numerator = b3 * state.numerator_weighted + (d / d0) * h * inner
        d_new = _estimate(
            as_scalar(estim_lr_coef, sd) * numerator,
            _tree_sum(jnp.abs, sd, grad_sum),
            d,
        )

        def step(g, m, v, x):
            dtype = m.dtype
            root = jnp.sqrt(v.astype(dtype)) + d_new.astype(dtype) * as_scalar(eps, dtype)
            u = m / root + as_scalar(weight_decay, dtype) * work(x).astype(dtype)
            return ((d * c).astype(dtype) * u).astype(jnp.result_type(g))

        updates = jax.tree.map(step, grads, mu, nu, params)
        store = lambda new, old: new.astype(old.dtype)  # noqa: E731
        new_state = ProdigyState(
            count=t,
            mu=jax.tree.map(store, mu, state.mu),
            nu=jax.tree.map(store, nu, state.nu),
            grad_sum=jax.tree.map(store, grad_sum, state.grad_sum),
            params0=state.params0,
            estim_lr=d_new,
            numerator_weighted=numerator,
        )
        return updates, new_state

    return transformation(init, update)


def scale_by_dadapt_adamw(
    learning_rate: ScalarOrSchedule = 1.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    estim_lr0: float = 1e-6,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """D-Adaptation's distance estimate ``D`` and AdamW's moments, the step sizes inside.

    Per leaf, with ``k`` the number of earlier updates, ``t = k + 1``,
    ``c = sqrt(1 - b2**t) / (1 - b1**t)``, ``h = lr(k) D c`` and ``b3 = sqrt(b2)``::

        r = b3 r + (1 - b3) h <g, s / (sqrt(v) + eps)>     (old s and v; sums over leaves)
        m = b1 m + (1 - b1) h g;          v = b2 v + (1 - b2) g**2
        s = b3 s + (1 - b3) h g
        D_new = max(D, r / ((1 - b3) sum|s|))              (D kept while sum|s| = 0)
        u = m / (sqrt(v) + eps) + wd h x                    (the step is -u)

    ``m`` holds the step sizes ``h`` (``lr`` included), so the block's output is the whole
    step, and the chain only negates it (:func:`adamx.negate`).

    Args: as :func:`adamx.dadapt_adamw`.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`DAdaptAdamWState`; it
      needs ``params`` in ``update``.

    References:
      Defazio & Mishchenko, "Learning-Rate-Free Learning by D-Adaptation", ICML 2023,
      https://arxiv.org/abs/2301.07733
    """
    b1, b2 = _check_common(learning_rate, betas, eps, estim_lr0, weight_decay)

    def init(params):
        sd = _scalar_dtype_of(params)
        return DAdaptAdamWState(
            count=jnp.zeros([], jnp.int32),
            mu=_zeros(params),
            nu=jax.tree.map(second_moment_zeros, params),
            grad_sum=_zeros(params),
            estim_lr=as_scalar(estim_lr0, sd),
            numerator_weighted=jnp.zeros([], sd),
        )

    def update(grads, state, params=None):
        require_params(params, "adamx.scale_by_dadapt_adamw")
        check_trees_match(grads, state.mu, "grads", "the optimizer state")
        sd = state.estim_lr.dtype
        b3 = jnp.sqrt(as_scalar(b2, sd))
        t = safe_increment(state.count)
        d = state.estim_lr
        _, h = _step_size(d, learning_rate, b1, b2, state.count, t)
        work = lambda x: jnp.asarray(x).astype(compute_dtype(jnp.result_type(x)))  # noqa: E731

        def weighted(g, s, v):
            dtype = compute_dtype(v.dtype)
            root = jnp.sqrt(v.astype(dtype)) + as_scalar(eps, dtype)
            return work(g).astype(dtype) * (s.astype(dtype) / root)

        inner = _tree_sum(weighted, sd, grads, state.grad_sum, state.nu)

        def moments(g, m, v, s):
            dtype = compute_dtype(m.dtype)
            hg = h.astype(dtype) * work(g).astype(dtype)
            return (
                ema(m, hg, one_minus(b1)),
                ema_square(v, work(g), b2),
                ema(s, hg, 1 - b3.astype(dtype)),
            )

        mu, nu, grad_sum = map_unzip(moments, 3, grads, state.mu, state.nu, state.grad_sum)
        numerator = b3 * state.numerator_weighted + (1 - b3) * h * inner
        d_new = _estimate(numerator, (1 - b3) * _tree_sum(jnp.abs, sd, grad_sum), d)

        def step(g, m, v, x):
            dtype = m.dtype
            root = jnp.sqrt(v.astype(dtype)) + as_scalar(eps, dtype)
            decay = as_scalar(weight_decay, dtype) * h.astype(dtype) * work(x).astype(dtype)
            return (m / root + decay).astype(jnp.result_type(g))

        updates = jax.tree.map(step, grads, mu, nu, params)
        store = lambda new, old: new.astype(old.dtype)  # noqa: E731
        new_state = DAdaptAdamWState(
            count=t,
            mu=jax.tree.map(store, mu, state.mu),
            nu=jax.tree.map(store, nu, state.nu),
            grad_sum=jax.tree.map(store, grad_sum, state.grad_sum),
            estim_lr=d_new,
            numerator_weighted=numerator,
        )
        return updates, new_state

    return transformation(init, update)
