"""SGD with momentum: PyTorch's momentum buffer as a block, and the ``sgd`` recipe."""

from __future__ import annotations

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
    check_flag,
    check_learning_rate,
    check_range,
    check_trees_match,
    compute_dtype,
    concrete_value,
    like_grad,
    one_minus,
    safe_increment,
    state_dtype,
    transformation,
)
from adamx.blocks._decay import decay_block, is_off, maximize_block
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._adam_rule import COUPLED, NO_DECAY, check_fused, describe
from adamx.optimizers._guard import recipe
from adamx.optimizers._momentum_rule import SgdRule


class MomentumState(NamedTuple):
    """State of :func:`trace_momentum`.

    Attributes:
      count: int32 number of updates taken so far (saturates at the int32 maximum); the
        first update (``count == 0``) starts the buffer at the gradient.
      trace: the momentum buffer ``b``, a tree like the params, in the params' dtypes.
    """

    count: jax.Array  # type: ignore[assignment]
    trace: PyTree


def trace_momentum(
    momentum: float = 0.9,
    *,
    dampening: float = 0.0,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
) -> optax.GradientTransformation:
    """Heavy-ball (or Nesterov) momentum, kept as ``torch.optim.SGD`` keeps it.

    Per leaf, with ``k`` the number of earlier updates::

        b = g                                    (k = 0: the buffer starts at g)
        b = mu * b + (1 - dampening) * g         (k > 0)
        d = g + mu * b    if nesterov,   else  d = b
        d = g                                    (mu == 0: no momentum at all)

    The buffer holds no learning rate, so a schedule placed after this block scales each
    step by its own rate. The first-step choice is a ``jnp.where`` on the count and the
    ``mu == 0`` case another, so ``momentum`` and ``dampening`` may be traced (e.g. by
    ``optax.inject_hyperparams``). Arithmetic runs in the leaf's dtype but at least
    float32; the buffer is stored in the params' dtypes (in ``accumulator_dtype`` if given).

    Args:
      momentum: ``mu``, in ``[0, 1)``. Default 0.9.
      dampening: ``d``, in ``[0, 1]``; the weight of the new gradient is ``1 - d``.
        Default 0.
      nesterov: use the Nesterov direction ``g + mu * b``; needs ``mu > 0`` and ``d == 0``.
      accumulator_dtype: the dtype the buffer is stored in (optax's ``accumulator_dtype``),
        or ``None`` for the params' dtypes; for complex params a real dtype means the
        complex one of that precision, and a complex dtype for real params (optax accepts
        it) keeps a zero imaginary part. Default None.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`MomentumState`.

    References:
      Polyak, "Some methods of speeding up the convergence of iteration methods", 1964;
      Sutskever, Martens, Dahl & Hinton, "On the importance of initialization and momentum
      in deep learning", ICML 2013, https://proceedings.mlr.press/v28/sutskever13.html
    """
    check_decay("momentum", momentum)
    check_range("dampening", dampening, low=0.0, high=1.0)
    check_flag("nesterov", nesterov)
    check_dtype("accumulator_dtype", accumulator_dtype, complex_ok=True)
    if nesterov:
        mu, d = concrete_value(momentum), concrete_value(dampening)
        if (mu is not None and mu <= 0) or (d is not None and d != 0):
            raise ValueError(
                "`nesterov=True` needs `momentum` in (0, 1) and `dampening` = 0 (PyTorch's "
                f"rule), got momentum={momentum!r} and dampening={dampening!r}. Set "
                "nesterov=False, or a positive momentum without dampening."
            )

    def init(params):
        return MomentumState(
            count=jnp.zeros([], jnp.int32),
            trace=jax.tree.map(
                lambda p: jnp.zeros_like(
                    abstract_or_array(p), dtype=state_dtype(accumulator_dtype, p.dtype)
                ),
                params,
            ),
        )

    def new_trace(g0, b, first):
        dtype = compute_dtype(b.dtype)
        g, b = g0.astype(dtype), b.astype(dtype)
        later = b * as_scalar(momentum, dtype) + as_scalar(one_minus(dampening), dtype) * g
        return like_grad(jnp.where(first, g, later), g0)

    def direction(g, b):
        dtype = compute_dtype(b.dtype)
        b = b.astype(dtype)
        mu = as_scalar(momentum, dtype)
        g_c = g.astype(dtype)
        d = g_c + mu * b if nesterov else b
        return jnp.where(mu == 0, g_c, d).astype(g.dtype)

    def update(grads, state, params=None):
        del params
        check_trees_match(grads, state.trace, "grads", "the optimizer state")
        grads = jax.tree.map(jnp.asarray, grads)
        first = state.count == 0
        trace = jax.tree.map(lambda g, b: new_trace(g, b, first), grads, state.trace)
        updates = jax.tree.map(direction, grads, trace)
        stored = jax.tree.map(lambda new, old: new.astype(old.dtype), trace, state.trace)
        return updates, MomentumState(count=safe_increment(state.count), trace=stored)

    return transformation(init, update)


def momentum_block(momentum, *, dampening=0.0, nesterov=False, accumulator_dtype=None) -> list:
    """``[trace_momentum(...)]``, or ``[]`` when ``momentum`` is ``None`` (optax's "no
    momentum": ``nesterov`` and the other options are then unused, as in optax).

    Any number, 0 included, keeps the block and its buffer, as ``optax.sgd`` does: the
    state's structure is then the same whether the value is concrete or traced (as
    ``optax.inject_hyperparams`` passes it), and a momentum of 0 gives the plain gradient,
    as PyTorch's ``momentum=0`` does. Pass ``None`` to keep no buffer.
    """
    if momentum is None:
        check_flag("nesterov", nesterov)
        check_range("dampening", dampening, low=0.0, high=1.0)
        check_dtype("accumulator_dtype", accumulator_dtype, complex_ok=True)
        return []
    block = trace_momentum(
        momentum, dampening=dampening, nesterov=nesterov, accumulator_dtype=accumulator_dtype
    )
    return [block]


@recipe
def sgd(
    learning_rate: ScalarOrSchedule = 1e-3,
    momentum: float | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
    *,
    dampening: float = 0.0,
    weight_decay: float | None = None,
    maximize: bool = False,
    fused: bool | None = None,
) -> optax.GradientTransformation:
    """Stochastic gradient descent with optional momentum, as ``torch.optim.SGD``.

    Per leaf, with ``k`` the number of earlier updates::

        g = -g                                     (maximize)
        g = g + wd * p                             (coupled L2, if weight_decay > 0)
        b = g  (k = 0);   b = mu * b + (1 - dampening) * g  (k > 0)     (if mu > 0)
        d = g + mu * b  (nesterov),  b  (momentum),  g  (mu = 0)
        p = p - lr * d

    The recipe is the chain (Adam's moment, bias-correction and normalisation blocks are
    replaced by one momentum buffer)::

        negate()                                         # maximize only
        add_decayed_weights(weight_decay)                # coupled L2, omitted when None or 0
        trace_momentum(momentum, ...)                    # omitted when momentum is None or 0
        scale_by_learning_rate(learning_rate)

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. Default 1e-3.
      momentum: ``mu`` in ``[0, 1)``; ``None`` (default, optax's) keeps no buffer. A number,
        0 included, keeps one, as ``optax.sgd`` does (at ``mu = 0`` the steps are plain
        SGD's; pass ``None`` to save the buffer).
      nesterov: Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``. Unused
        with ``momentum=None``, as in optax. Default False.
      accumulator_dtype: the dtype the momentum buffer is stored in (optax's), or ``None``
        for the params' dtypes. Default None.
      dampening: ``[0, 1]``; the buffer adds ``(1 - dampening) * g``. Default 0.
      weight_decay: coupled L2 coefficient, ``>= 0``; ``None`` (default) or the Python 0
        leave the block out; otherwise ``update`` needs ``params``.
      maximize: ascend instead of descend. Default False.
      fused: the single-pass CPU kernel of :func:`adamx.step` for SGD with momentum
        (reads ``p``, ``g``, ``b`` and writes ``p``, ``b`` in place). ``None`` (default):
        used when it applies (a momentum buffer, float32 params, gradients and buffer,
        one CPU device) and the XLA path otherwise; ``False``: always the XLA path;
        ``True``: the kernel or an error saying why not (plain SGD without momentum is
        refused: XLA's ``p - lr * g`` is one pass already). Same results either way.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.sgd(learning_rate=0.1, momentum=0.9)
      >>> params = {"w": jnp.ones(2)}
      >>> state = opt.init(params)
      >>> grads = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = opt.update(grads, state, params)   # b = g on the first step
      >>> [round(float(u), 4) for u in updates["w"]]
      [-0.1, 0.2]
      >>> updates, state = opt.update(grads, state, params)   # b = 0.9 * g + g
      >>> [round(float(u), 4) for u in updates["w"]]
      [-0.19, 0.38]

    .. warning::
       ``optax.sgd(lr, momentum, nesterov)`` is this rule for ``dampening=0`` (its trace
       starts at 0, so ``b = 0 * mu + g = g`` on the first step too); optax has no
       dampening, and with ``dampening > 0`` PyTorch's first step still takes the whole
       ``g`` while later ones take ``(1 - dampening) * g``. Keras' SGD keeps ``lr`` inside
       the buffer (``b = mu * b - lr * g``), which equals this rule only for a constant
       learning rate. optax and Keras have no ``maximize``.

    References:
      Robbins & Monro, "A Stochastic Approximation Method", 1951; Sutskever, Martens, Dahl
      & Hinton, "On the importance of initialization and momentum in deep learning", ICML
      2013, https://proceedings.mlr.press/v28/sutskever13.html
    """
    check_learning_rate(learning_rate)
    check_fused(fused)
    head = [*maximize_block(maximize), *decay_block(weight_decay)]
    trace = momentum_block(
        momentum, dampening=dampening, nesterov=nesterov, accumulator_dtype=accumulator_dtype
    )
    blocks = [*head, *trace, scale_by_learning_rate(learning_rate)]
    tx = optax.chain(*blocks)
    why = None
    if not trace or is_off(momentum):
        why = (
            f"momentum={momentum!r} (plain SGD keeps no buffer, and XLA's p - lr * g is one "
            "pass already)"
        )
    elif accumulator_dtype is not None and jnp.dtype(accumulator_dtype) != jnp.float32:
        why = (
            f"accumulator_dtype={jnp.dtype(accumulator_dtype).name} (the fused kernel keeps "
            "the buffer in float32)"
        )
    if why is not None:
        if fused:
            raise ValueError(f"fused=True is not available with {why}; use fused=None or False.")
        return tx
    decay = NO_DECAY if is_off(weight_decay) else COUPLED
    wd = 0.0 if weight_decay is None else weight_decay
    rule = SgdRule(momentum, dampening, nesterov, maximize, learning_rate, wd, decay,
                   trace_at=len(head), lr_at=len(blocks) - 1)  # fmt: skip
    return describe(tx, rule, fused, "sgd_rule")
