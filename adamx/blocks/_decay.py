"""Weight decay: the same term, placed before the moments (L2) or after them (decoupled)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    as_scalar,
    check_flag,
    check_range,
    check_trees_match,
    compute_dtype,
    require_params,
    transformation,
)


def add_decayed_weights(
    weight_decay: float = 0.0, mask: Any | Callable[[Any], Any] | None = None
) -> optax.GradientTransformation:
    """Add ``weight_decay * p`` to the incoming updates.

    Per leaf::

        u = u + wd * p

    Where it sits in a recipe decides which weight decay it is:

    * **coupled (L2)**, first in the chain: the decay enters the gradient and so the
      moments, as in ``torch.optim.Adam(weight_decay=...)``;
    * **decoupled**, after the direction and before the learning rate: the step becomes
      ``-lr * (d + wd * p)``, i.e. ``p <- p * (1 - lr*wd) - lr*d``, as in AdamW.

    Args:
      weight_decay: ``wd >= 0``.
      mask: a tree of booleans like the params (or a function of the params that returns
        one); only leaves marked ``True`` are decayed. ``None`` decays every leaf.

    Returns:
      An ``optax.GradientTransformation`` that needs ``params`` in ``update``.

    References:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019,
      https://arxiv.org/abs/1711.05101
    """
    check_range("weight_decay", weight_decay, low=0.0)

    def leaf(u, p):
        u, p = jnp.asarray(u), jnp.asarray(p)
        dtype = compute_dtype(u.dtype)
        return (u.astype(dtype) + as_scalar(weight_decay, dtype) * p.astype(dtype)).astype(u.dtype)

    def update(updates, state, params=None):
        require_params(params, f"Weight decay (weight_decay={weight_decay!r})")
        check_trees_match(params, updates, "params", "the updates")
        return jax.tree.map(leaf, updates, params), state

    inner = transformation(lambda params: optax.EmptyState(), update)
    return inner if mask is None else optax.masked(inner, mask)


def is_off(value) -> bool:
    """Whether an optional hyperparameter switches its block off: ``None`` or the Python
    number 0.

    Arrays, even 0, keep the block: ``optax.inject_hyperparams`` passes every number as an
    array (defaults included), and the chain, hence the state's structure, must not depend
    on whether a value is concrete or traced. That is why the options that are off by
    default default to ``None``: inject_hyperparams leaves ``None`` alone, so
    ``inject_hyperparams(recipe)(...)`` builds the same chain as ``recipe(...)``.
    """
    return value is None or (
        isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0
    )


def inert() -> optax.GradientTransformation:
    """A block that passes the updates through and keeps an ``optax.EmptyState``: the slot
    of a block switched off by the Python number 0, so that the state has the structure
    that the block itself (an array 0, as ``optax.inject_hyperparams`` passes) gives."""
    return transformation(lambda params: optax.EmptyState(), lambda u, s, p=None: (u, s))


def decay_block(weight_decay, mask=None) -> list[optax.GradientTransformation]:
    """``[add_decayed_weights(weight_decay, mask)]``; ``[]`` for ``None``; ``[inert()]``
    for the Python number 0 (validated either way).

    ``optax.inject_hyperparams`` passes every number as an array (0 included), which keeps
    the block: the inert slot of the Python 0 gives the state the same structure without
    the work, so a recipe's state does not depend on whether a value is concrete or traced.
    Splice it into a recipe with ``optax.chain(..., *decay_block(wd), ...)``.
    """
    if weight_decay is None:
        return []
    block = add_decayed_weights(weight_decay, mask)
    if is_off(weight_decay):
        return [inert()]
    return [block]


def negate() -> optax.GradientTransformation:
    """``g -> -g``: put first in a recipe, the optimizer ascends (PyTorch's ``maximize``)."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda g: -jnp.asarray(g), updates), state

    return transformation(lambda params: optax.EmptyState(), update)


def maximize_block(maximize: bool) -> list[optax.GradientTransformation]:
    """``[negate()]`` when ``maximize`` is true, else ``[]``. ``maximize`` must be a bool."""
    check_flag("maximize", maximize)
    return [negate()] if maximize else []
