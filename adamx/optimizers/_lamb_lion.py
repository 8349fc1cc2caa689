"""LAMB and Lion: Adam's moments behind a per-tensor trust ratio, and a sign read-out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    Moments,
    PyTree,
    ScalarOrSchedule,
    abs_sq,
    abstract_or_array,
    as_scalar,
    check_decay,
    check_dtype,
    check_learning_rate,
    check_moments,
    check_range,
    check_trees_match,
    compute_dtype,
    one_minus,
    require_params,
    safe_increment,
    transformation,
)
from adamx.blocks._correction import correct_bias
from adamx.blocks._decay import decay_block, is_off
from adamx.blocks._moments import ema, scale_by_moments
from adamx.blocks._normalize import normalize
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._adam_rule import DECOUPLED, NO_DECAY, check_fused, describe
from adamx.optimizers._guard import recipe
from adamx.optimizers._momentum_rule import LionRule


def _norm(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(abs_sq(x)))


def scale_by_trust_ratio(
    *, trust_coefficient: float = 1.0, eps: float = 0.0
) -> optax.GradientTransformation:
    """Scale each leaf's update by the ratio of the parameter's norm to the update's.

    Per leaf (one tensor, whatever its shape), with ``c = trust_coefficient``::

        u = u * c * ||p|| / (||u|| + eps)    (u unchanged where ||p|| = 0 or ||u|| = 0)

    LAMB's layer-wise adaptation: every tensor moves by ``lr * ||p||`` whatever the scale
    of its gradient. The norms are Euclidean norms over the whole leaf, computed in the
    leaf's dtype but at least float32; the result is cast back to the update's dtype.
    LARS scales the ratio down (``trust_coefficient=0.001``, optax's ``lars``).

    Args:
      trust_coefficient: ``c``, a multiplier of the ratio, ``>= 0``. Default 1.
      eps: added to ``||u||``, ``>= 0``. Default 0.

    Returns:
      A stateless ``optax.GradientTransformation`` that needs ``params`` in ``update``.

    References:
      You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76
      minutes", ICLR 2020, https://arxiv.org/abs/1904.00962; You, Gitman & Ginsburg,
      "Large Batch Training of Convolutional Networks", 2017,
      https://arxiv.org/abs/1708.03888
    """
    check_range("trust_coefficient", trust_coefficient, low=0.0)
    check_range("eps", eps, low=0.0)

    def leaf(u, p):
        u, p = jnp.asarray(u), jnp.asarray(p)
        dtype = compute_dtype(u.dtype)
        uc = u.astype(dtype)
        p_norm, u_norm = _norm(p.astype(dtype)), _norm(uc)
        both = (p_norm > 0) & (u_norm > 0)
        c, e = as_scalar(trust_coefficient, p_norm.dtype), as_scalar(eps, p_norm.dtype)
        ratio = jnp.where(both, c * p_norm / (jnp.where(both, u_norm, 1) + e), 1)
        return (uc * ratio.astype(dtype)).astype(u.dtype)

    def update(updates, state, params=None):
        require_params(params, "adamx.scale_by_trust_ratio")
        check_trees_match(params, updates, "params", "the updates")
        return jax.tree.map(leaf, updates, params), state

    return transformation(lambda params: optax.EmptyState(), update)


@recipe
def lamb(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: float | None = None,
    mask: Any | Callable[[Any], Any] | None = None,
    *,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
    """LAMB: AdamW's step rescaled per tensor by a trust ratio ``||p|| / ||step||``.

    Per leaf, with ``t`` the step number (1 on the first update)::

        m = b1 * m + (1 - b1) * g;   v = b2 * v + (1 - b2) * g**2
        r = (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t) + eps_root) + eps) + wd * p
        p = p - lr * (||p|| / ||r||) * r          (ratio 1 where either norm is 0)

    The recipe is AdamW's chain with :func:`scale_by_trust_ratio` inserted before the
    learning rate::

        scale_by_moments(b1, b2, mu_dtype=mu_dtype)
        correct_bias(b1, None)
        normalize(eps, eps_root, b2=b2)
        add_decayed_weights(weight_decay, mask)   # decoupled, inside the ratio; omitted when
                                                  # None or 0
        scale_by_trust_ratio()
        scale_by_learning_rate(learning_rate)

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. Default 1e-3.
      b1: decay of the first moment, ``[0, 1)``. Default 0.9.
      b2: decay of the second moment, ``[0, 1)``. Default 0.999.
      eps: added to the root of the bias-corrected ``v``, ``>= 0``. Default 1e-6.
      eps_root: added to the bias-corrected ``v`` inside the root, ``>= 0`` (optax's
        ``eps_root``). Default 0.
      weight_decay: decoupled decay ``>= 0``, added to the step before the trust ratio;
        ``None`` (default) or the Python 0 leave the block out (optax's default 0.0 keeps
        a block that adds nothing).
      mask: a tree of booleans like the params, or a function of the params returning one;
        only ``True`` leaves are decayed. The trust ratio applies to every leaf. Under
        ``optax.inject_hyperparams`` a function must be declared ``static_args="mask"``
        (it would otherwise be taken for a schedule).
      mu_dtype: the dtype ``m`` is stored in, or ``None`` for the params' (as in
        :func:`adamx.adam`; optax.lamb has no such option). Default None.

    Returns:
      An ``optax.GradientTransformation`` that needs ``params`` in ``update``.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> params = {"w": jnp.asarray([3.0, 4.0])}
      >>> opt = adamx.lamb(learning_rate=0.1)
      >>> updates, _ = opt.update({"w": jnp.asarray([1.0, -2.0])}, opt.init(params), params)
      >>> [round(float(u), 4) for u in updates["w"]]  # Adam's sign(g), rescaled to ||p|| = 5
      [-0.3536, 0.3536]

    .. warning::
       The ratio is taken per leaf of the pytree: a layer split over several leaves
       (kernel and bias) gets one ratio per leaf, as in optax and the paper's per-layer
       reading applied to tensors. ``optax.lamb`` is the same rule (it needs an explicit
       ``learning_rate``). Some implementations (NVIDIA apex,
       the paper's Algorithm 2 with a clipping function ``phi``) bound the ratio or skip
       bias correction; this one does neither.

    References:
      You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76
      minutes", ICLR 2020, https://arxiv.org/abs/1904.00962
    """
    check_learning_rate(learning_rate)
    return optax.chain(
        scale_by_moments(b1, b2, mu_dtype=mu_dtype),
        correct_bias(b1, None),
        normalize(eps, eps_root, b2=b2),
        *decay_block(weight_decay, mask),
        scale_by_trust_ratio(),
        scale_by_learning_rate(learning_rate),
    )


class LionMomentsState(NamedTuple):
    """State of :func:`scale_by_lion_moments`.

    Attributes:
      count: int32 number of updates taken so far (saturates at the int32 maximum).
      mu: the momentum ``m``, a tree like the params, stored in the params' dtypes.
    """

    count: jax.Array  # type: ignore[assignment]
    mu: PyTree


def scale_by_lion_moments(
    b1: float = 0.9, b2: float = 0.99, *, mu_dtype: Any | None = None
) -> optax.GradientTransformation:
    """Lion's momentum: read out an interpolation with ``b1``, then average with ``b2``.

    Per leaf::

        c = b1 * m + (1 - b1) * g          (what this step reads out)
        m = b2 * m + (1 - b2) * g          (what is kept for the next step)

    The output is a :class:`adamx.Moments` record whose ``mu`` is the interpolation ``c``
    (not the stored ``m``) and whose ``nu`` is ``None``, for a read-out such as
    :func:`read_sign`. Arithmetic runs in the leaf's dtype but at least float32, and
    ``m`` is stored in the params' dtypes.

    Args:
      b1: weight of the momentum in the read-out, ``[0, 1)``. Default 0.9.
      b2: decay of the momentum, ``[0, 1)``. Default 0.99.
      mu_dtype: the dtype ``m`` is stored in (optax's ``mu_dtype``), or ``None`` for the
        params' dtypes. Default None.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`LionMomentsState`.

    References:
      Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023,
      https://arxiv.org/abs/2302.06675
    """
    check_decay("b1", b1)
    check_decay("b2", b2)
    check_dtype("mu_dtype", mu_dtype)

    def init(params):
        return LionMomentsState(
            count=jnp.zeros([], jnp.int32),
            mu=jax.tree.map(lambda p: jnp.zeros_like(abstract_or_array(p), dtype=mu_dtype), params),
        )

    def update(grads, state, params=None):
        del params
        check_trees_match(grads, state.mu, "grads", "the optimizer state")
        grads = jax.tree.map(jnp.asarray, grads)
        cast = lambda g, m: g.astype(compute_dtype(m.dtype))  # noqa: E731
        read = jax.tree.map(lambda g, m: ema(m, cast(g, m), one_minus(b1)), grads, state.mu)
        mu = jax.tree.map(
            lambda g, m: ema(m, cast(g, m), one_minus(b2)).astype(m.dtype), grads, state.mu
        )
        count = safe_increment(state.count)
        return Moments(grad=grads, mu=read, nu=None, count=count), LionMomentsState(count, mu)

    return transformation(init, update)


def read_sign() -> optax.GradientTransformation:
    """The sign of the first moment of a :class:`adamx.Moments` record: Lion's direction.

    Per leaf::

        d = sign(mu)          (-1, 0 or +1, cast to the gradient's dtype)

    Returns:
      A stateless ``optax.GradientTransformation`` from a ``Moments`` record to updates.
    """

    def update(updates, state, params=None):
        del params
        rec = check_moments(updates, "adamx.read_sign")
        direction = jax.tree.map(lambda g, m: jnp.sign(m).astype(g.dtype), rec.grad, rec.mu)
        return direction, state

    return transformation(lambda params: optax.EmptyState(), update)


@recipe
def lion(
    learning_rate: ScalarOrSchedule = 1e-4,
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: Any | None = None,
    weight_decay: float | None = None,
    mask: Any | Callable[[Any], Any] | None = None,
    *,
    fused: bool | None = None,
) -> optax.GradientTransformation:
    """Lion: the sign of an interpolated momentum, one state tensor, decoupled decay.

    Per leaf::

        c = b1 * m + (1 - b1) * g
        p = p - lr * (sign(c) + wd * p)
        m = b2 * m + (1 - b2) * g

    Every element moves by exactly ``lr`` (plus the decay), so Lion needs a learning
    rate 3-10x smaller than AdamW's and a weight decay 3-10x larger. The recipe::

        scale_by_lion_moments(b1, b2, mu_dtype=mu_dtype)  # instead of moments + correction
        read_sign()                               # instead of normalize
        add_decayed_weights(weight_decay, mask)   # decoupled; omitted when None or 0
        scale_by_learning_rate(learning_rate)

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. Default 1e-4.
      b1: weight of the momentum in the read-out, ``[0, 1)``. Default 0.9.
      b2: decay of the momentum, ``[0, 1)``. Default 0.99.
      mu_dtype: the dtype ``m`` is stored in (optax's ``mu_dtype``), or ``None`` for the
        params' dtypes. Default None.
      weight_decay: decoupled decay ``>= 0``; ``None`` (default) or the Python 0 leave the
        block out (optax's default is 1e-3).
      mask: a tree of booleans like the params, or a function of the params returning one
        (``static_args="mask"`` under ``optax.inject_hyperparams``); only ``True`` leaves
        are decayed.
      fused: the single-pass CPU kernel of :func:`adamx.step` (reads ``p``, ``g``, ``m``
        and writes ``p``, ``m`` in place, where the XLA path also materialises a copy of
        ``m``). ``None`` (default): used when it applies (float32 params, gradients and
        ``m``, one CPU device, a ``mask`` of Python bools per leaf) and the XLA path
        otherwise; ``False``: always the XLA path; ``True``: the kernel or an error saying
        why not. Same results either way (the kernel's float32 operations are the chain's).

    Returns:
      An ``optax.GradientTransformation`` (needs ``params`` in ``update`` when decaying).

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> params = {"w": jnp.ones(3)}
      >>> opt = adamx.lion(learning_rate=0.1)
      >>> updates, _ = opt.update({"w": jnp.asarray([0.5, -2.0, 0.0])}, opt.init(params), params)
      >>> [round(float(u), 4) for u in updates["w"]]  # -lr * sign(g), whatever its size
      [-0.1, 0.1, -0.0]

    .. warning::
       ``optax.lion`` is the same rule but defaults to ``weight_decay=1e-3``; pass
       ``weight_decay=1e-3`` here to get it. ``jnp.sign(0) = 0``: an element whose
       interpolation is exactly zero is not moved (apart from the decay).

    References:
      Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023,
      https://arxiv.org/abs/2302.06675
    """
    check_learning_rate(learning_rate)
    check_fused(fused)
    tail = decay_block(weight_decay, mask)
    blocks = [
        scale_by_lion_moments(b1, b2, mu_dtype=mu_dtype),
        read_sign(),
        *tail,
        scale_by_learning_rate(learning_rate),
    ]
    tx = optax.chain(*blocks)
    if mu_dtype is not None and jnp.dtype(mu_dtype) != jnp.float32:
        if fused:
            raise ValueError(
                f"fused=True is not available with mu_dtype={jnp.dtype(mu_dtype).name} (the "
                "fused kernel keeps m in float32); use fused=None or fused=False."
            )
        return tx
    wd = 0.0 if weight_decay is None else weight_decay
    decay = NO_DECAY if is_off(weight_decay) else DECOUPLED
    rule = LionRule(b1, b2, learning_rate, wd, decay, mask, moments_at=0, lr_at=len(blocks) - 1)
    return describe(tx, rule, fused, "lion_rule")
