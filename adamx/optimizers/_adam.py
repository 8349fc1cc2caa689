"""Adam and AdamW: recipes of the building blocks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax

from adamx.blocks._base import ScalarOrSchedule, check_flag, check_learning_rate
from adamx.blocks._correction import correct_bias
from adamx.blocks._decay import decay_block, is_off, maximize_block
from adamx.blocks._moments import scale_by_moments
from adamx.blocks._normalize import normalize
from adamx.blocks._rules import correct_bias_nesterov, keep_max_nu
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._adam_rule import (
    COUPLED,
    DECOUPLED,
    NO_DECAY,
    AdamRule,
    check_fused,
    describe,
)
from adamx.optimizers._guard import recipe


@recipe
def adam(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
    weight_decay: float | None = None,
    maximize: bool = False,
    fused: bool | None = None,
    amsgrad: bool = False,
) -> optax.GradientTransformation:
    """Adam, with optional coupled (L2) weight decay, as in ``torch.optim.Adam``.

    Per leaf, with ``t`` the step number (1 on the first update)::

        g   = -g                                           (only if maximize)
        g   = g + wd * p                                   (only if weight_decay > 0)
        m   = b1 * m + (1 - b1) * g
        v   = b2 * v + (1 - b2) * g**2
        m^  = m / (1 - b1**t);   v^ = v / (1 - b2**t)
        p   = p - lr * m^ / (sqrt(v^ + eps_root) + eps)

    With ``nesterov=True`` the first moment is read one step ahead (NAdam without a
    momentum schedule, optax's ``nesterov=True``)::

        m^  = b1 * m / (1 - b1**(t+1)) + (1 - b1) * g / (1 - b1**t)

    With ``amsgrad=True`` the root is taken of the running maximum of the raw ``v``
    (``torch.optim.Adam(amsgrad=True)``, the same chain as :func:`adamx.amsgrad`)::

        v_max = max(v_max, v);   v^ = v_max / (1 - b2**t)

    The recipe is the chain::

        negate()                            # only if maximize
        add_decayed_weights(weight_decay)   # coupled L2, omitted when None or 0
        scale_by_moments(b1, b2, mu_dtype=mu_dtype)
        keep_max_nu()                       # only if amsgrad
        correct_bias(b1, None)              # correct_bias_nesterov(b1, None) if nesterov
        normalize(eps, eps_root, b2=b2)
        scale_by_learning_rate(learning_rate)

    ``v^`` is never formed: :func:`adamx.normalize` divides ``sqrt(v)`` by
    ``sqrt(1 - b2**t)``, as PyTorch does, and ``v`` is averaged as
    ``b2 * v + ((1 - b2) * g) * g``. In float32 and bfloat16 the steps are therefore
    those of the rule as long as ``v`` itself fits: a single gradient up to
    ``|g| ~ 5.8e20`` at ``b2 = 0.999`` (``g**2`` alone overflows past ``1.8e19``), or
    ``1.8e19`` for one that stays that large (``v`` tends to ``g**2``). Past that
    ``v = inf`` and that element's steps are 0 from then on, as in PyTorch; never NaN.

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. Default 1e-3.
      b1: decay of the first moment, ``[0, 1)``. Default 0.9.
      b2: decay of the second moment, ``[0, 1)``. Default 0.999.
      eps: added to the root of ``v^``, ``>= 0``. Default 1e-8.
      eps_root: added inside the root, ``>= 0``. Default 0.
      mu_dtype: the dtype the first moment ``m`` is stored in (optax's ``mu_dtype``), e.g.
        ``jnp.bfloat16``; ``None`` keeps the params' dtypes. ``m`` is updated in at least
        float32 and cast after the update, as optax does. Takes the XLA path. Default None.
      nesterov: read the first moment with Nesterov's look-ahead (optax's ``nesterov``).
        Default False.
      weight_decay: coupled L2 coefficient, ``>= 0``; ``None`` (default) or the Python
        number 0 leave the block out. Any other value (an array too, as
        ``optax.inject_hyperparams`` passes) keeps it, and ``update`` then needs
        ``params``. Default None.
      maximize: ascend the objective instead of descending it (PyTorch's ``maximize``).
        Default False.
      fused: the single-pass CPU kernel. ``None`` (default): used when it applies
        (float32 leaves, one CPU device, not ``nesterov``, ``amsgrad`` or ``mu_dtype``) and
        the XLA path
        otherwise; ``False``: always the XLA path; ``True``: the kernel or an error saying
        why not (e.g. per shard inside ``shard_map``). Same results either way (see
        :func:`adamx.step` and the README's Performance section).
      amsgrad: keep the running maximum of the raw second moment and divide by its root
        (AMSGrad, ``torch.optim.Adam(amsgrad=True)``); the state gains a
        :class:`adamx.MaxNuState`. Not with ``fused=True``. Default False.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp, optax, adamx
      >>> params = {"w": jnp.ones(3)}
      >>> opt = adamx.adam(learning_rate=0.1)
      >>> state = opt.init(params)
      >>> updates, state = opt.update({"w": jnp.array([1.0, -2.0, 0.0])}, state, params)
      >>> [round(float(u), 4) for u in updates["w"]]  # the first step is -lr * sign(g)
      [-0.1, 0.1, -0.0]

    .. warning::
       Keras and TF1 put ``eps`` on the root of the raw ``v`` ("epsilon hat"); the two
       readings agree with ``eps_keras = eps * sqrt(1 - b2**t)``. optax.adam is this rule.
       For decoupled weight decay use :func:`adamw`. ``torch.optim.Adam`` has no
       ``nesterov``; ``adam(nesterov=True)`` is ``optax.adam(nesterov=True)`` and
       :func:`adamx.nadam` with ``momentum_decay=None`` (PyTorch's ``NAdam`` adds a momentum
       schedule).

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015,
      https://arxiv.org/abs/1412.6980
    """
    check_learning_rate(learning_rate)
    check_flag("nesterov", nesterov)
    check_flag("amsgrad", amsgrad)
    check_fused(fused)
    head = [*maximize_block(maximize), *decay_block(weight_decay)]
    blocks = [
        *head,
        scale_by_moments(b1, b2, mu_dtype=mu_dtype),
        *_max_nu_block(amsgrad),
        correct_bias_nesterov(b1, None) if nesterov else correct_bias(b1, None),
        normalize(eps, eps_root, b2=b2),
        scale_by_learning_rate(learning_rate),
    ]
    tx = optax.chain(*blocks)
    if nesterov:  # the kernel computes Adam's read-out only
        if fused:
            raise ValueError("fused=True is not available with nesterov=True; use fused=None.")
        return tx
    if amsgrad:
        return _unfused(tx, fused, "amsgrad=True (the fused kernel keeps no running maximum of v)")
    if mu_dtype is not None:
        return _unfused(tx, fused, "mu_dtype (the fused kernel keeps m in the params' dtypes)")
    decay = NO_DECAY if is_off(weight_decay) else COUPLED
    wd = 0.0 if weight_decay is None else weight_decay
    rule = AdamRule(b1, b2, eps, eps_root, learning_rate, wd, decay, None, maximize,
                    moments_at=len(head), lr_at=len(blocks) - 1)  # fmt: skip
    return describe(tx, rule, fused)


@recipe
def adamw(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: float = 1e-2,
    mask: Any | Callable[[Any], Any] | None = None,
    *,
    nesterov: bool = False,
    maximize: bool = False,
    fused: bool | None = None,
    amsgrad: bool = False,
) -> optax.GradientTransformation:
    """AdamW: Adam with decoupled weight decay, as in ``torch.optim.AdamW``.

    Per leaf::

        g = -g                                  (only if maximize)
        m, v, m^, v^ as in adam (no decay in the gradient)
        p = p - lr * (m^ / (sqrt(v^ + eps_root) + eps) + wd * p)

    i.e. ``p <- p * (1 - lr*wd) - lr * m^ / (sqrt(v^) + eps)``: the decay shrinks the
    weights at the pace of the learning rate and never passes through the moments. The
    recipe is Adam's chain with :func:`adamx.add_decayed_weights` moved from the front to
    just before the learning rate.

    With ``amsgrad=True``, :func:`adamx.keep_max_nu` follows the moments and ``v^`` is
    ``max(v_max, v) / (1 - b2**t)`` of the raw ``v``, as ``torch.optim.AdamW(amsgrad=True)``.

    Args:
      learning_rate: a number ``>= 0`` or a schedule. Default 1e-3.
      b1, b2, eps, eps_root, mu_dtype: as in :func:`adam`.
      weight_decay: ``>= 0``. Default 1e-2 (PyTorch's; optax's is 1e-4).
      mask: a tree of booleans like the params, or a function of the params returning one;
        only ``True`` leaves are decayed (commonly: not biases and norm scales).
      nesterov: read the first moment with Nesterov's look-ahead, as in :func:`adam`
        (optax's ``nesterov``). Default False.
      maximize: ascend instead of descend (PyTorch's ``maximize``); the decay still
        shrinks the weights. Default False.
      fused: the single-pass CPU kernel, as in :func:`adam` (a ``mask`` must then give
        Python bools per leaf; a traced mask takes the XLA path).
      amsgrad: AMSGrad's running maximum of the raw ``v``, as in :func:`adam`. Not with
        ``fused=True``. Default False.

    Returns:
      An ``optax.GradientTransformation`` that needs ``params`` in ``update``.

    References:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019,
      https://arxiv.org/abs/1711.05101
    """
    check_learning_rate(learning_rate)
    check_flag("nesterov", nesterov)
    check_flag("amsgrad", amsgrad)
    check_fused(fused)
    head = maximize_block(maximize)
    tail = decay_block(weight_decay, mask)
    blocks = [
        *head,
        scale_by_moments(b1, b2, mu_dtype=mu_dtype),
        *_max_nu_block(amsgrad),
        correct_bias_nesterov(b1, None) if nesterov else correct_bias(b1, None),
        normalize(eps, eps_root, b2=b2),
        *tail,
        scale_by_learning_rate(learning_rate),
    ]
    if nesterov:
        return _unfused(optax.chain(*blocks), fused, "nesterov=True")
    if amsgrad:
        return _unfused(
            optax.chain(*blocks), fused, "amsgrad=True (the fused kernel keeps no running "
            "maximum of v)"
        )  # fmt: skip
    if mu_dtype is not None:
        return _unfused(
            optax.chain(*blocks), fused, "mu_dtype (the fused kernel keeps m in the params' dtypes)"
        )
    decay = NO_DECAY if is_off(weight_decay) else DECOUPLED
    wd = 0.0 if weight_decay is None else weight_decay
    rule = AdamRule(b1, b2, eps, eps_root, learning_rate, wd, decay, mask, maximize,
                    moments_at=len(head), lr_at=len(blocks) - 1)  # fmt: skip
    return describe(optax.chain(*blocks), rule, fused)


def _max_nu_block(amsgrad: bool) -> list[optax.GradientTransformation]:
    """AMSGrad's :func:`adamx.keep_max_nu` when asked for, else nothing."""
    return [keep_max_nu()] if amsgrad else []


def _unfused(
    tx: optax.GradientTransformation, fused: bool | None, why: str
) -> optax.GradientTransformation:
    """The XLA chain of a recipe the fused kernel cannot run (``why``)."""
    if fused:
        raise ValueError(f"fused=True is not available with {why}; use fused=None or fused=False.")
    return tx
