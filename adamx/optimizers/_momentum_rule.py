"""What a kernel needs to know of a Lion or an SGD-with-momentum recipe: its description,
attached to the recipe's ``update`` as ``lion_rule`` or ``sgd_rule`` (with ``fused``) by
:func:`~adamx.optimizers._adam_rule.describe`, as Adam's is; ``adamx.step`` reads it."""

from __future__ import annotations

from typing import Any, NamedTuple


class LionRule(NamedTuple):
    """The static description of a Lion recipe that the kernel computes.

    Attributes:
      b1, b2: as in :func:`adamx.lion` (numbers or traced arrays).
      learning_rate: a number, an array or a schedule.
      weight_decay: the decoupled decay coefficient, or 0.
      decay: ``NO_DECAY`` or ``DECOUPLED`` (of ``_adam_rule``).
      mask: the decay mask (a tree of bools or a function of the params), or None.
      moments_at: index of the ``scale_by_lion_moments`` state in the chain's state tuple.
      lr_at: index of the ``scale_by_learning_rate`` state in it.
    """

    b1: Any
    b2: Any
    learning_rate: Any
    weight_decay: Any
    decay: int
    mask: Any
    moments_at: int
    lr_at: int


class SgdRule(NamedTuple):
    """The static description of an SGD-with-momentum recipe that the kernel computes.

    Attributes:
      momentum, dampening: as in :func:`adamx.sgd` (numbers or traced arrays).
      nesterov, maximize: as in :func:`adamx.sgd`.
      learning_rate: a number, an array or a schedule.
      weight_decay: the coupled (L2) decay coefficient, or 0.
      decay: ``NO_DECAY`` or ``COUPLED`` (of ``_adam_rule``).
      trace_at: index of the ``trace_momentum`` state in the chain's state tuple.
      lr_at: index of the ``scale_by_learning_rate`` state in it.
    """

    momentum: Any
    dampening: Any
    nesterov: bool
    maximize: bool
    learning_rate: Any
    weight_decay: Any
    decay: int
    trace_at: int
    lr_at: int

    @property
    def mask(self) -> None:
        """SGD decays every leaf (no mask)."""
        return None
