"""AdaGrad and AdaDelta: the gradient over the root of accumulated squares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    PyTree,
    ScalarOrSchedule,
    abs_sq,
    as_scalar,
    check_flag,
    check_learning_rate,
    check_moments,
    check_optional_range,
    check_range,
    check_trees_match,
    compute_dtype,
    one_minus,
    scalar_dtype,
    transformation,
)
from adamx.blocks._decay import decay_block, is_off, maximize_block
from adamx.blocks._moments import SecondMomentRule, scale_by_moments, second_moment_zeros
from adamx.blocks._normalize import normalize
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._guard import recipe

# The ``b2`` handed to :func:`scale_by_moments` with a rule that carries its own decay (or
# none): it is validated there and otherwise unused.
_RULE_OWNS_DECAY = 0.0


def sum_of_squares(initial_value: float = 0.0) -> SecondMomentRule:
    """AdaGrad's second moment: ``v = v + g**2``, starting at ``initial_value``.

    A plain sum with no decay; the moment block's ``b2`` is not used.
    """

    def update(v, g, m, b2):
        del m, b2
        return v + abs_sq(g).astype(v.dtype)

    return SecondMomentRule("sum_of_squares", update, initial_value)


def average_of_squares(rho: float) -> SecondMomentRule:
    """AdaDelta's second moment: ``v = rho * v + (1 - rho) * g**2``, starting at 0.

    Unlike :func:`adamx.scale_by_moments`' ``b2`` (``[0, 1)``), ``rho`` may be 1 (``v``
    then stays 0), so the rule carries it and the moment block's ``b2`` is not used.
    """
    check_range("rho", rho, low=0.0, high=1.0)

    def update(v, g, m, b2):
        del m, b2
        dtype = v.dtype
        return v * as_scalar(rho, dtype) + as_scalar(one_minus(rho), dtype) * abs_sq(g).astype(
            dtype
        )

    return SecondMomentRule("average_of_squares", update)


def use_gradient() -> optax.GradientTransformation:
    """Put the gradient where a :class:`adamx.Moments` record keeps the first moment.

    Per leaf::

        m = g

    AdaGrad and RMSProp divide the gradient itself, not an average of it, by the root of
    ``v``; with this block in front, :func:`adamx.normalize` is their read-out. The
    gradient is cast to the dtype ``v`` is computed in (at least float32).

    Returns:
      A stateless ``optax.GradientTransformation`` from a ``Moments`` record to another.
    """

    def update(updates, state, params=None):
        del params
        rec = check_moments(updates, "adamx.use_gradient")
        ref = rec.grad if rec.nu is None else rec.nu
        mu = jax.tree.map(lambda g, r: g.astype(compute_dtype(working_dtype(g, r))), rec.grad, ref)
        return rec._replace(mu=mu), state

    return transformation(lambda params: optax.EmptyState(), update)


def working_dtype(g, r):
    """``r``'s dtype, or ``g``'s when ``g`` is complex (a real ``v`` beside a complex ``g``)."""
    return g.dtype if jnp.issubdtype(g.dtype, jnp.complexfloating) else r.dtype


def _inverse_time_decay(learning_rate: ScalarOrSchedule, lr_decay) -> ScalarOrSchedule:
    """``lr(k) / (1 + k * lr_decay)``, PyTorch AdaGrad's ``clr`` as a schedule of ``k = t-1``
    (the learning rate itself when ``lr_decay`` is the Python number 0). Formed in float32,
    or float64 under ``jax_enable_x64`` (PyTorch forms it in float64 on the host)."""
    if is_off(lr_decay):
        return learning_rate

    def schedule(count):
        dtype = scalar_dtype()
        lr = learning_rate(count) if callable(learning_rate) else learning_rate
        k = jnp.asarray(count, dtype)
        return jnp.asarray(lr, dtype) / (1 + k * jnp.asarray(lr_decay, dtype))

    return schedule


@recipe
def adagrad(
    learning_rate: ScalarOrSchedule = 1e-2,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    *,
    lr_decay: float | None = None,
    weight_decay: float | None = None,
    eps_in_sqrt: bool = False,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """AdaGrad, as ``torch.optim.Adagrad``: the gradient over the root of all its squares.

    Per leaf, with ``t`` the step number (1 on the first update)::

        g   = -g                                   (maximize)
        g   = g + wd * p                           (coupled L2, if weight_decay > 0)
        s   = s + g**2                             (s starts at initial_accumulator_value)
        clr = lr / (1 + (t - 1) * lr_decay)
        p   = p - clr * g / (sqrt(s) + eps)        (sqrt(s + eps) with eps_in_sqrt)

    The recipe is Adam's chain with no first moment, a sum for the second (the rule
    ignores ``b2``), no bias correction, the gradient as numerator, and ``lr_decay``
    folded into the schedule::

        negate()                                          # maximize only
        add_decayed_weights(weight_decay)                 # coupled L2, omitted when None/0
        scale_by_moments(b1=None, b2=0.0, nu_rule=sum_of_squares(initial_accumulator_value))
        use_gradient()                                    # m <- g
        normalize(eps)                                    # normalize(0, eps_root=eps)
        scale_by_learning_rate(lr / (1 + k * lr_decay))   # k = t - 1

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. Default 1e-2.
      initial_accumulator_value: the start of ``s``, ``>= 0``. Default 0 (PyTorch's;
        optax's is 0.1).
      eps: ``>= 0``, added to the root (inside it with ``eps_in_sqrt``). Default 1e-10
        (PyTorch's; optax's is 1e-7, inside the root).
      lr_decay: ``>= 0``; the rate of step ``t`` is divided by ``1 + (t-1)*lr_decay``.
        ``None`` (default) or the Python 0: no decay (an array, even 0, keeps the
        schedule and its step count).
      weight_decay: coupled L2 coefficient, ``>= 0``; ``None`` (default) or the Python 0
        leave the block out.
      eps_in_sqrt: put ``eps`` inside the root (optax's and Keras' reading). Default False.
      maximize: ascend instead of descend. Default False.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.adagrad(learning_rate=0.1)
      >>> params = {"w": jnp.ones(2)}
      >>> state = opt.init(params)
      >>> updates, state = opt.update({"w": jnp.array([3.0, -4.0])}, state, params)
      >>> [round(float(u), 4) for u in updates["w"]]   # s = g**2: a sign step
      [-0.1, 0.1]

    .. warning::
       optax.adagrad and Keras start the sum at 0.1 and put ``eps`` (1e-7) inside the
       root; neither has ``lr_decay`` or ``maximize``. ``adagrad(lr,
       initial_accumulator_value=0.1, eps=1e-7, eps_in_sqrt=True)`` is
       ``optax.adagrad(lr)``. With PyTorch's defaults (sum from 0, ``eps`` outside) a
       parameter whose gradient is exactly 0 on the first step gets ``0 / eps = 0``.

    References:
      Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online Learning and
      Stochastic Optimization", JMLR 12, 2011, https://jmlr.org/papers/v12/duchi11a.html
    """
    check_learning_rate(learning_rate)
    check_optional_range("lr_decay", lr_decay, low=0.0)
    check_range("initial_accumulator_value", initial_accumulator_value, low=0.0)
    check_range("eps", eps, low=0.0)
    check_flag("eps_in_sqrt", eps_in_sqrt)
    return optax.chain(
        *maximize_block(maximize),
        *decay_block(weight_decay),
        scale_by_moments(
            b1=None, b2=_RULE_OWNS_DECAY, nu_rule=sum_of_squares(initial_accumulator_value)
        ),
        use_gradient(),
        normalize(0.0, eps_root=eps) if eps_in_sqrt else normalize(eps),
        scale_by_learning_rate(_inverse_time_decay(learning_rate, lr_decay)),
    )


class UpdateRmsState(NamedTuple):
    """State of :func:`scale_by_update_rms`.

    Attributes:
      acc: the running average of the squared updates, a tree like the params, in the
        params' dtypes.
    """

    acc: PyTree


def scale_by_update_rms(rho: float = 0.9, eps: float = 1e-6) -> optax.GradientTransformation:
    """AdaDelta's read-out: the gradient times RMS(past updates) / RMS(gradients).

    Per leaf, from a :class:`adamx.Moments` record whose ``v`` averages ``g**2``::

        d   = sqrt(acc + eps) / sqrt(v + eps) * g
        acc = rho * acc + (1 - rho) * d**2            (acc starts at 0)

    The ratio carries units of the parameter, so the step needs no learning rate (1.0).
    Arithmetic in the leaf's dtype but at least float32; ``acc`` is stored in the params'
    dtypes and ``d`` cast to the gradient's.

    Args:
      rho: decay of ``acc``, in ``[0, 1]``. Default 0.9.
      eps: ``>= 0``, inside both roots. Default 1e-6.

    Returns:
      An ``optax.GradientTransformation`` from a ``Moments`` record to updates, whose
      state is :class:`UpdateRmsState`.

    References:
      Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012,
      https://arxiv.org/abs/1212.5701
    """
    check_range("rho", rho, low=0.0, high=1.0)
    check_range("eps", eps, low=0.0)

    def init(params):
        return UpdateRmsState(acc=jax.tree.map(second_moment_zeros, params))

    def direction(g, v, acc):
        dtype = v.dtype
        e = as_scalar(eps, dtype)
        return jnp.sqrt(acc.astype(dtype) + e) / jnp.sqrt(v + e) * g.astype(dtype)

    def new_acc(d, acc):
        dtype = d.dtype
        a = acc.astype(dtype) * as_scalar(rho, dtype) + as_scalar(one_minus(rho), dtype) * (d * d)
        return a.astype(acc.dtype)

    def update(updates, state, params=None):
        del params
        rec = check_moments(updates, "adamx.scale_by_update_rms")
        check_trees_match(rec.grad, state.acc, "grads", "the optimizer state")
        d = jax.tree.map(direction, rec.grad, rec.nu, state.acc)
        updates = jax.tree.map(lambda x, g: x.astype(g.dtype), d, rec.grad)
        acc = jax.tree.map(new_acc, d, state.acc)
        return updates, UpdateRmsState(acc=acc)

    return transformation(init, update)


@recipe
def adadelta(
    learning_rate: ScalarOrSchedule | None = 1.0,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float | None = None,
    weight_decay_mask: Any | Callable[[Any], Any] | None = None,
    *,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """AdaDelta, as ``torch.optim.Adadelta``: steps in the units of past steps.

    Per leaf::

        g   = -g                                   (maximize)
        g   = g + wd * p                           (coupled L2, if weight_decay > 0)
        v   = rho * v + (1 - rho) * g**2
        d   = sqrt(acc + eps) / sqrt(v + eps) * g
        acc = rho * acc + (1 - rho) * d**2
        p   = p - lr * d

    The recipe is Adam's chain with no first moment, no bias correction and a read-out
    that keeps its own average of squared steps::

        negate()                                   # maximize only
        add_decayed_weights(weight_decay, weight_decay_mask)   # coupled L2, omitted when
                                                               # None or 0
        scale_by_moments(b1=None, b2=0.0, nu_rule=average_of_squares(rho))   # rule owns rho
        scale_by_update_rms(rho, eps)
        scale_by_learning_rate(learning_rate)      # omitted when learning_rate is None

    Args:
      learning_rate: a number ``>= 0`` or a schedule; scales ``d``. ``None`` is optax's
        "no scaling": the chain ends without the learning rate *and its minus sign*, so the
        updates are ``+d`` and ascend (``optax.adadelta``'s default). Default 1.0.
      rho: decay of both averages, in ``[0, 1]``. Default 0.9.
      eps: ``>= 0``, inside both roots; it also sets the size of the first steps
        (about ``sqrt(eps)``). Default 1e-6.
      weight_decay: coupled L2 coefficient, ``>= 0``; ``None`` (default) or the Python 0
        leave the block out (optax's default 0.0 keeps a block that adds nothing and
        needs ``params``).
      weight_decay_mask: a tree of booleans like the params, or a function of the params
        returning one; only ``True`` leaves are decayed (optax's). Default None (all).
      maximize: ascend instead of descend. Default False.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.adadelta()
      >>> params = {"w": jnp.ones(2)}
      >>> state = opt.init(params)
      >>> updates, state = opt.update({"w": jnp.array([1.0, -1.0])}, state, params)
      >>> [round(float(u), 6) for u in updates["w"]]   # sqrt(eps / (0.1 + eps))
      [-0.003162, 0.003162]

    .. warning::
       ``optax.adadelta()`` defaults to ``learning_rate=None``, which skips the learning
       rate *and its minus sign*: the update is ``+d`` and the optimizer ascends. Pass
       ``optax.adadelta(learning_rate=1.0)`` for this rule (optax's ``weight_decay`` is
       coupled too). Keras' Adadelta is this rule with other defaults (``learning_rate``
       1e-3, ``rho`` 0.95, ``epsilon`` 1e-7).

    References:
      Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012,
      https://arxiv.org/abs/1212.5701
    """
    check_learning_rate(learning_rate, allow_none=True)
    check_range("eps", eps, low=0.0)
    return optax.chain(
        *maximize_block(maximize),
        *decay_block(weight_decay, weight_decay_mask),
        scale_by_moments(b1=None, b2=_RULE_OWNS_DECAY, nu_rule=average_of_squares(rho)),
        scale_by_update_rms(rho, eps),
        *([] if learning_rate is None else [scale_by_learning_rate(learning_rate)]),
    )
