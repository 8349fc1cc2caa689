"""Moment estimation: exponential moving averages of the gradient and its square."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    Moments,
    PyTree,
    abs_sq,
    abstract_or_array,
    as_scalar,
    check_decay,
    check_dtype,
    check_trees_match,
    compute_dtype,
    is_complex,
    like_grad,
    one_minus,
    real_dtype,
    safe_increment,
    state_dtype,
    transformation,
)


def second_moment_dtype(dtype) -> jnp.dtype:
    """Where a second moment is stored: the params' dtype, but float32 for float16.

    float16 cannot hold squared gradients: ``(1 - b2) * g**2`` is subnormal once
    ``|g| < 0.25`` and rounds to 0 below ``|g| ~ 5e-3``, after which ``v`` is lost and steps
    grow to tens of times the learning rate. bfloat16 has float32's range and is kept.
    A complex dtype gives its real one (``complex64 -> float32``): a second moment of a
    complex leaf averages ``|g|**2``, as optax's does.
    """
    dtype = real_dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype == jnp.float16 else dtype


def second_moment_zeros(p) -> jax.Array:
    """Zeros shaped (and sharded) like the param ``p``, in :func:`second_moment_dtype` of
    its dtype. ``p`` may be a ``jax.ShapeDtypeStruct``."""
    p = abstract_or_array(p)
    return jnp.zeros_like(p, dtype=second_moment_dtype(p.dtype))


class MomentsState(NamedTuple):
    """State of :func:`scale_by_moments`.

    Attributes:
      count: int32 number of updates taken so far (saturates at the int32 maximum).
      mu: first moment ``m``, a tree like the params, stored in the params' dtypes.
      nu: second moment ``v``, likewise (float32 for float16 params: see
        :func:`second_moment_dtype`).
    """

    count: jax.Array  # type: ignore[assignment]
    mu: PyTree
    nu: PyTree


def ema(moment: jax.Array, target: jax.Array, weight) -> jax.Array:
    """``moment + weight * (target - moment)``, the moving average of one leaf, in the
    compute dtype (``weight`` is ``1 - decay``).

    The lerp form of PyTorch's first moment. Not for squares: an overflowed ``target``
    meeting an overflowed ``moment`` gives ``inf - inf = NaN`` (see :func:`ema_square`).
    """
    dtype = compute_dtype(moment.dtype)
    m = moment.astype(dtype)
    return m + as_scalar(weight, dtype) * (target.astype(dtype) - m)


def ema_square(moment: jax.Array, x: jax.Array, decay) -> jax.Array:
    """``decay * moment + ((1 - decay) * x) * x``, the moving average of ``x**2`` for one
    leaf, in the compute dtype.

    PyTorch's order (``v.mul_(b2).addcmul_(x, x, value=1 - b2)``): the weight meets ``x``
    before ``x`` meets itself, so ``(1 - b2) * x**2`` is formed without ``x**2``, which
    overflows float32 and bfloat16 once ``|x| > 1.8e19``; with ``b2 = 0.999`` a term up to
    ``|x| ~ 5.8e20`` fits. A term or moment past the range gives ``inf``, never
    ``inf - inf = NaN`` as the lerp form :func:`ema` would.

    A complex ``x`` averages ``|x|**2`` (its real and imaginary parts' squares, each formed
    the same way): ``moment`` is real, as optax's second moment of a complex leaf.
    """
    dtype = compute_dtype(moment.dtype)
    m = moment.astype(dtype)
    x = x if is_complex(x.dtype) else x.astype(dtype)
    return as_scalar(decay, dtype) * m + abs_sq(x, one_minus(decay)).astype(dtype)


class SecondMomentRule(NamedTuple):
    """How a second moment starts and how one leaf of it is updated.

    Attributes:
      name: a short name for messages and docs.
      update: ``(v, g, m, b2) -> v_new``; ``v`` is the stored leaf, ``g`` the gradient and
        ``m`` the new first moment (or ``None``) in the compute dtype, ``b2`` the decay as
        given (a Python number or an array). Returns ``v_new`` in the compute dtype.
      initial_value: the value every element of ``v`` starts at.
    """

    name: str
    update: Callable[[jax.Array, jax.Array, Any, Any], jax.Array]
    initial_value: float = 0.0


def ema_of_squares() -> SecondMomentRule:
    """Adam's second moment: ``v = b2 * v + (1 - b2) * g**2``, starting at 0.

    Computed as ``ema_square`` (PyTorch's order, ``b2 * v + ((1 - b2) * g) * g``):
    correct while ``(1 - b2) * g**2`` and ``v`` fit the dtype, ``inf`` (never NaN) beyond.
    """

    def update(v, g, m, b2):
        del m
        return ema_square(v, g, b2)

    return SecondMomentRule("ema_of_squares", update)


def scale_by_moments(
    b1: float | None = 0.9,
    b2: float | None = 0.999,
    *,
    nu_rule: SecondMomentRule | None = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    """Exponential moving averages of the gradient and of its square (Adam's moments).

    Per leaf, with ``t`` the step number (1 on the first update)::

        m_t = b1 * m_{t-1} + (1 - b1) * g_t
        v_t = b2 * v_{t-1} + (1 - b2) * g_t**2          (the default ``nu_rule``)

    ``1 - b`` is formed in float64 on the host when ``b`` is a Python number, arithmetic
    runs in the leaf's dtype but never below float32, and ``m``, ``v`` are stored in the
    params' dtypes (``v`` in float32 for float16 params, whose range cannot hold ``g**2``).
    Relatives of Adam swap the second-moment rule (``nu_rule``) and keep
    the rest; ``b1=None`` keeps no first moment, ``b2=None`` no second.

    The output is not an update but a :class:`adamx.Moments` record (gradient, ``m``,
    ``v``, ``t``) for the next blocks of a recipe: :func:`adamx.correct_bias`, then a
    read-out such as :func:`adamx.normalize`.

    Args:
      b1: decay of the first moment, in ``[0, 1)``, or ``None``. Default 0.9.
      b2: decay of the second moment, in ``[0, 1)``, or ``None``. Default 0.999.
      nu_rule: the second-moment rule; default :func:`ema_of_squares`.
      mu_dtype: the dtype ``m`` is stored in (optax's ``mu_dtype``), or ``None`` for the
        params' dtypes. ``m`` is computed in that dtype but at least float32 and cast to it
        after the update, as ``optax.scale_by_adam`` does. A real ``mu_dtype`` gives a
        complex leaf's ``m`` the complex dtype of that precision; a complex one (optax
        accepts it) stores a real leaf's ``m`` as complex, imaginary part zero. Default None.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`MomentsState`.

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015,
      https://arxiv.org/abs/1412.6980
    """
    if b1 is not None:
        check_decay("b1", b1)
    if b2 is not None:
        check_decay("b2", b2)
    check_dtype("mu_dtype", mu_dtype, complex_ok=True)
    rule = ema_of_squares() if nu_rule is None else nu_rule
    mu_storage = lambda dtype: state_dtype(mu_dtype, dtype)  # noqa: E731

    def init(params):
        def full(value, storage=lambda dtype: dtype):
            def leaf(p):  # derived from p: a sharded param gets state sharded like it
                p = abstract_or_array(p)
                return jnp.full_like(p, value, dtype=storage(p.dtype))

            return leaf

        return MomentsState(
            count=jnp.zeros([], jnp.int32),
            mu=None if b1 is None else jax.tree.map(full(0.0, mu_storage), params),
            nu=None
            if b2 is None
            else jax.tree.map(full(rule.initial_value, second_moment_dtype), params),
        )

    def update(grads, state, params=None):
        del params
        if b1 is not None:  # m is stored in the params' dtypes (unless mu_dtype says)
            check_trees_match(
                grads, state.mu, "grads", "the optimizer state", dtypes=mu_dtype is None
            )
        elif b2 is not None:
            check_trees_match(grads, state.nu, "grads", "the optimizer state")
        grads = jax.tree.map(jnp.asarray, grads)
        cast = lambda g, ref: g.astype(compute_dtype(ref.dtype))  # noqa: E731
        mu = None
        if b1 is not None:
            mu = jax.tree.map(
                lambda g, m: like_grad(ema(m, cast(g, m), one_minus(b1)), g), grads, state.mu
            )
        nu = None
        if b2 is not None:
            step = lambda g, v, m=None: rule.update(  # noqa: E731
                v.astype(compute_dtype(v.dtype)), _working(g, v), m, b2
            )
            extra = () if mu is None else (mu,)
            nu = jax.tree.map(step, grads, state.nu, *extra)
        count = safe_increment(state.count)
        store = lambda new, old: new.astype(old.dtype)  # noqa: E731
        new_state = MomentsState(
            count=count,
            mu=None if mu is None else jax.tree.map(store, mu, state.mu),
            nu=None if nu is None else jax.tree.map(store, nu, state.nu),
        )
        return Moments(grad=grads, mu=mu, nu=nu, count=count), new_state

    return transformation(init, update)


def _working(g: jax.Array, v: jax.Array) -> jax.Array:
    """A gradient leaf as a second-moment rule sees it: in ``v``'s compute dtype, or,
    complex, in its own (``v`` is real: the rule reads ``|g|``)."""
    return (
        g.astype(compute_dtype(g.dtype))
        if is_complex(g.dtype)
        else g.astype(compute_dtype(v.dtype))
    )
