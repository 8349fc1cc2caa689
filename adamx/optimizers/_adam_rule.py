"""What a kernel needs to know of an Adam/AdamW recipe: its description, attached to the
recipe's ``update``.

A recipe stays a chain of blocks. :func:`describe` gives its ``update`` two attributes,
``adam_rule`` (an :class:`AdamRule`) and ``fused`` (the user's choice), which the execution
layer reads (:func:`adamx.step`, and :func:`adamx.with_storage` passes them on); the recipe
itself never imports a kernel. Lion and SGD describe themselves the same way
(``_momentum_rule``: ``lion_rule``, ``sgd_rule``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import optax

NO_DECAY, COUPLED, DECOUPLED = 0, 1, 2


class AdamRule(NamedTuple):
    """The static description of an Adam/AdamW recipe that the kernel computes.

    Attributes:
      b1, b2, eps, eps_root: as in :func:`adamx.adam` (numbers or traced arrays).
      learning_rate: a number, an array or a schedule.
      weight_decay: the coefficient, or 0.
      decay: ``NO_DECAY``, ``COUPLED`` (L2, into the gradient) or ``DECOUPLED`` (AdamW).
      mask: AdamW's decay mask (a tree of bools or a function of the params), or None.
      maximize: ascend instead of descend.
      moments_at: index of the ``scale_by_moments`` state in the chain's state tuple.
      lr_at: index of the ``scale_by_learning_rate`` state in it.
    """

    b1: Any
    b2: Any
    eps: Any
    eps_root: Any
    learning_rate: Any
    weight_decay: Any
    decay: int
    mask: Any
    maximize: bool
    moments_at: int
    lr_at: int


# The attributes of a described ``update`` (copied by wrappers that keep the description):
# Adam's rule, Lion's and SGD's (adamx/optimizers/_momentum_rule.py), the user's ``fused``.
DESCRIPTION = ("adam_rule", "lion_rule", "sgd_rule", "fused")


def check_fused(fused) -> None:
    """``fused`` is None (automatic), True or False."""
    if fused is not None and not isinstance(fused, bool):
        raise ValueError(f"`fused` must be None, True or False, got fused={fused!r}.")


def describe(
    tx: optax.GradientTransformation,
    rule: NamedTuple,
    fused: bool | None,
    attribute: str = "adam_rule",
) -> optax.GradientTransformationExtraArgs:
    """``tx`` (a chain described by ``rule``: an :class:`AdamRule`, or Lion's or SGD's
    rule of ``_momentum_rule``) whose ``update`` carries ``rule`` (as
    ``update.<attribute>``, one of :data:`DESCRIPTION`) and ``fused`` for
    :func:`adamx.step`; ``init`` and ``update`` are ``tx``'s (extra keyword arguments of
    ``update`` go on to ``tx``)."""
    if attribute not in DESCRIPTION:
        raise ValueError(f"unknown description {attribute!r}: expected one of {DESCRIPTION}")
    inner = optax.with_extra_args_support(tx)

    def update(grads, state, params=None, **extra_args):
        return inner.update(grads, state, params, **extra_args)

    setattr(update, attribute, rule)
    update.fused = fused  # type: ignore[attr-defined]
    return optax.GradientTransformationExtraArgs(tx.init, update)
