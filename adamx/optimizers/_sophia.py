"""Sophia: a momentum divided by a running estimate of the Hessian's diagonal, clipped."""

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
    as_scalar,
    check_decay,
    check_dtype,
    check_learning_rate,
    check_moments,
    check_optional_range,
    check_range,
    compute_dtype,
    cond,
    is_real_number,
    one_minus,
    real_dtype,
    require_params,
)
from adamx.blocks._correction import correct_bias
from adamx.blocks._decay import decay_block
from adamx.blocks._moments import scale_by_moments
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._guard import recipe


class HutchinsonState(NamedTuple):
    """State of :func:`hutchinson_diagonal`: the PRNG key of the next draw."""

    key: jax.Array


def _lowest_float(params) -> jnp.dtype:
    dtypes = [real_dtype(jnp.result_type(p)) for p in jax.tree.leaves(params)]
    dtypes = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)]
    return min(dtypes, key=lambda d: jnp.finfo(d).bits) if dtypes else jnp.dtype(jnp.float32)


def hutchinson_diagonal(random_seed: jax.Array | None = None) -> optax.GradientTransformation:
    """Hutchinson's estimate of the Hessian's diagonal of the objective ``obj_fn``.

    Per update, with ``z`` a fresh Rademacher vector (each element +-1, one key per leaf,
    drawn in float32 and cast to the params' lowest float dtype) and ``H`` the Hessian of
    ``obj_fn`` at the params::

        h = z * (H z)          (E[h] = diag(H); H z by forward-over-reverse differentiation)

    ``update(updates, state, params, obj_fn=f)`` needs ``params`` and ``obj_fn``, a function
    of the params alone returning the scalar loss; the incoming updates are ignored. The key
    advances by ``jax.random.split`` once per update, and the draws are those of
    ``optax.contrib.sophia``'s default estimator for the same key.

    Args:
      random_seed: the PRNG key of the first draw, or None for ``jax.random.PRNGKey(0)``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is :class:`HutchinsonState`.

    References:
      Hutchinson, "A stochastic estimator of the trace of the influence matrix for Laplacian
      smoothing splines", 1989; Bekas, Kokiopoulou & Saad, "An estimator for the diagonal of
      a matrix", 2007.
    """

    def init(params):
        del params
        return HutchinsonState(key=jax.random.PRNGKey(0) if random_seed is None else random_seed)

    def update(updates, state, params=None, obj_fn=None, **extra_args):
        del updates, extra_args
        require_params(params, "adamx.hutchinson_diagonal")
        if obj_fn is None:
            raise ValueError(
                "The Hessian estimate needs the objective: call "
                "`opt.update(grads, state, params, obj_fn=lambda p: loss(p, batch))`, a function "
                "of the params alone that returns the scalar loss."
            )
        key, subkey = jax.random.split(state.key)
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(subkey, len(leaves))
        dtype = _lowest_float(params)
        signs = [
            jax.random.rademacher(k, jnp.shape(p), jnp.float32).astype(dtype)
            for k, p in zip(keys, leaves)
        ]
        z = jax.tree.unflatten(treedef, signs)
        hz = jax.jvp(jax.grad(obj_fn), (params,), (z,))[1]
        return jax.tree.map(lambda a, b: a * b, hz, z), HutchinsonState(key=key)

    return optax.GradientTransformationExtraArgs(init, update)


class SophiaState(NamedTuple):
    """State of :func:`normalize_by_hessian`.

    Attributes:
      nu: ``h``, the moving average of the Hessian-diagonal estimates, in the params' dtypes.
      hessian_fn_state: the estimator's state (a :class:`HutchinsonState` by default).
    """

    nu: PyTree
    hessian_fn_state: Any


def normalize_by_hessian(
    b2: float = 0.99,
    eps: float = 1e-8,
    gamma: float = 0.01,
    clip_threshold: float | None = 1.0,
    update_interval: int = 10,
    hessian_diagonal_fn: optax.GradientTransformation | None = None,
    *,
    verbose: bool = False,
    print_win_rate_every_n_steps: int = 0,
) -> optax.GradientTransformation:
    """Sophia's read-out: the (bias-corrected) first moment over ``gamma`` times a moving
    average of the Hessian's diagonal, clipped element-wise.

    From a :class:`adamx.Moments` record with step ``t`` (1 on the first update)::

        u = clip(m / max(gamma * h, eps), -clip_threshold, clip_threshold)
        h = b2 * h + (1 - b2) * e      only when (t - 1) % update_interval == 0, after u
                                       (e: hessian_diagonal_fn's estimate of diag(H))

    ``u`` uses the average from before this update's estimate, as optax's does; the first
    update (``h = 0``) is ``clip(m / eps)``, a full clipped step. The estimate runs under
    ``lax.cond``, so the Hessian-vector product costs nothing on the other steps.
    ``update(..., params, **extra_args)`` hands ``params`` and the extra keyword arguments
    (``obj_fn=`` for the default estimator) to ``hessian_diagonal_fn``.

    Args: as :func:`adamx.sophia` (``verbose`` prints the fraction of unclipped elements,
      the "win rate", every ``print_win_rate_every_n_steps`` updates).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` from a ``Moments`` record to updates,
      whose state is :class:`SophiaState`.
    """
    estimator = optax.with_extra_args_support(
        hutchinson_diagonal() if hessian_diagonal_fn is None else hessian_diagonal_fn
    )

    def init(params):
        return SophiaState(
            nu=jax.tree.map(lambda p: jnp.zeros_like(abstract_or_array(p)), params),
            hessian_fn_state=estimator.init(params),
        )

    def update(updates, state, params=None, **extra_args):
        rec = check_moments(updates, "adamx.normalize_by_hessian")
        require_params(params, "adamx.normalize_by_hessian")

        def direction(g, m, h):
            dtype = compute_dtype(m.dtype)
            denominator = jnp.maximum(
                as_scalar(gamma, dtype) * h.astype(dtype), as_scalar(eps, dtype)
            )
            return (m.astype(dtype) / denominator).astype(jnp.result_type(g))

        out = jax.tree.map(direction, rec.grad, rec.mu, state.nu)
        if clip_threshold is not None:
            if verbose and print_win_rate_every_n_steps > 0:
                inside = sum(
                    jnp.sum(jnp.abs(u) < as_scalar(clip_threshold, u.dtype))
                    for u in jax.tree.leaves(out)
                )
                size = sum(jnp.size(u) for u in jax.tree.leaves(out))
                cond(
                    rec.count % print_win_rate_every_n_steps == 0,
                    lambda: jax.debug.print("Sophia win rate: {}", inside / size),
                    lambda: None,
                )
            out = jax.tree.map(
                lambda u: jnp.clip(
                    u,
                    -as_scalar(clip_threshold, u.dtype),
                    as_scalar(clip_threshold, u.dtype),
                ),
                out,
            )

        def refresh(hessian_fn_state, nu):
            estimate, hessian_fn_state = estimator.update(
                rec.grad, hessian_fn_state, params, **extra_args
            )

            def average(h, e):
                dtype = compute_dtype(h.dtype)
                new = as_scalar(b2, dtype) * h.astype(dtype) + as_scalar(
                    one_minus(b2), dtype
                ) * jnp.asarray(e).astype(dtype)
                return new.astype(h.dtype)

            return hessian_fn_state, jax.tree.map(average, nu, estimate)

        hessian_fn_state, nu = cond(
            (rec.count - 1) % update_interval == 0,
            refresh,
            lambda s, n: (s, n),
            state.hessian_fn_state,
            state.nu,
        )
        return out, SophiaState(nu=nu, hessian_fn_state=hessian_fn_state)

    return optax.GradientTransformationExtraArgs(init, update)


def _check_sophia(b1, b2, eps, gamma, clip_threshold, update_interval, mu_dtype) -> None:
    check_decay("b1", b1)
    check_decay("b2", b2)
    check_range("eps", eps, low=0.0)
    check_range("gamma", gamma, low=0.0)
    check_optional_range("clip_threshold", clip_threshold, low=0.0)
    ok = is_real_number(update_interval) and not isinstance(update_interval, float)
    if not ok or (isinstance(update_interval, int) and update_interval < 1):
        raise ValueError(
            f"`update_interval` must be a positive int, got update_interval={update_interval!r}."
        )
    check_dtype("mu_dtype", mu_dtype)


@recipe
def sophia(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.965,
    b2: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float | None = 1e-4,
    weight_decay_mask: Any | Callable[[PyTree], Any] | None = None,
    gamma: float = 0.01,
    clip_threshold: float | None = 1.0,
    update_interval: int = 10,
    hessian_diagonal_fn: optax.GradientTransformation | None = None,
    mu_dtype: Any | None = None,
    verbose: bool = False,
    print_win_rate_every_n_steps: int = 0,
) -> optax.GradientTransformation:
    """Sophia: a momentum over a running estimate of the Hessian's diagonal, clipped per
    element, as ``optax.contrib.sophia``.

    Per leaf, with ``t`` the step number (1 on the first update)::

        m = b1 m + (1 - b1) g;     m^ = m / (1 - b1**t)
        u = clip(m^ / max(gamma h, eps), -clip_threshold, clip_threshold)
        p = p - lr (u + wd p)
        h = b2 h + (1 - b2) e      every update_interval updates (t = 1, 1 + interval, ...),
                                   after the step; e: an estimate of diag(Hessian)

    **What ``update`` needs**: ``opt.update(grads, state, params, obj_fn=f)`` with ``f`` a
    function of the params alone returning the scalar loss of this step's batch (e.g.
    ``lambda p: loss(p, batch)``): the default estimator (:func:`hutchinson_diagonal`,
    ``e = z * (H z)`` for a Rademacher ``z``) differentiates it twice. Other extra keyword
    arguments go to ``hessian_diagonal_fn``; a custom estimator (any
    ``optax.GradientTransformation`` whose ``update(grads, state, params, **extra)`` returns
    a tree of diagonal estimates) may need other ones, or none.

    The recipe::

        scale_by_moments(b1, None, mu_dtype=mu_dtype)
        correct_bias(b1, None)
        normalize_by_hessian(b2, eps, gamma, clip_threshold, update_interval,
                             hessian_diagonal_fn)        # the new block
        add_decayed_weights(weight_decay, weight_decay_mask)   # decoupled; None leaves it out
        scale_by_learning_rate(learning_rate)

    Args:
      learning_rate: a number ``>= 0`` or a schedule; every step is at most ``lr *
        clip_threshold`` per element (plus the decay).
      b1: decay of the momentum, ``[0, 1)``. Default 0.965.
      b2: decay of the Hessian average, ``[0, 1)``, per refresh (every ``update_interval``
        updates). Default 0.99.
      eps: floor of ``gamma h``, ``>= 0``. Default 1e-8.
      weight_decay: decoupled decay, ``>= 0``, or None. Default 1e-4 (optax's).
      weight_decay_mask: the leaves to decay (a tree of bools or a function of the params).
      gamma: scale of the Hessian in the denominator, ``>= 0``. Default 0.01.
      clip_threshold: bound of ``|u|``, ``>= 0``, or None for no clipping. Default 1.0.
      update_interval: refresh ``h`` every this many updates, a positive int. Default 10.
      hessian_diagonal_fn: the estimator, or None for :func:`hutchinson_diagonal` with
        ``jax.random.PRNGKey(0)`` (optax's default estimator, same draws). Default None.
      mu_dtype: the dtype ``m`` is stored in, or None for the params'. Default None.
      verbose: print the fraction of unclipped elements every
        ``print_win_rate_every_n_steps`` updates (the authors aim for 0.1-0.5). Default False.
      print_win_rate_every_n_steps: see ``verbose``; 0 prints nothing. Default 0.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that needs ``params`` and ``obj_fn``
      (default estimator) in ``update``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, adamx
      >>> loss = lambda p: jnp.sum(2.0 * p["w"] ** 2)        # Hessian 4 I
      >>> opt = adamx.sophia(learning_rate=0.1, weight_decay=None)
      >>> p = {"w": jnp.asarray([1.0, -1.0])}
      >>> state = opt.init(p)
      >>> u, state = opt.update(jax.grad(loss)(p), state, p, obj_fn=loss)
      >>> [round(float(x), 4) for x in u["w"]]   # h = 0 before the first estimate: clipped
      [-0.1, 0.1]

    .. warning::
       Not in ``adamx.OPTIMIZERS``: the tables that drive every optimizer there call
       ``update(grads, state, params)`` without ``obj_fn``. With several devices, a custom
       estimator must average its estimate across them (the default does not). Differences
       from optax: ``weight_decay=None`` leaves the decay out; optax's bias correction is
       computed in float32 as ``1 - b1**t`` (adamx's to a few ulp). Real params only.

    References:
      Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
      Pre-training", ICLR 2024, https://arxiv.org/abs/2305.14342
    """
    check_learning_rate(learning_rate)
    _check_sophia(b1, b2, eps, gamma, clip_threshold, update_interval, mu_dtype)
    return optax.chain(
        scale_by_moments(b1, None, mu_dtype=mu_dtype),
        correct_bias(b1, None),
        normalize_by_hessian(
            b2,
            eps,
            gamma,
            clip_threshold,
            update_interval,
            hessian_diagonal_fn,
            verbose=verbose,
            print_win_rate_every_n_steps=print_win_rate_every_n_steps,
        ),
        *decay_block(weight_decay, weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    )
