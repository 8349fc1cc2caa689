"""Layer-wise methods on SGD's momentum: LARS (a per-tensor trust ratio) and NovoGrad (a
per-tensor second moment)."""

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
    abstract_or_array,
    as_scalar,
    check_decay,
    check_flag,
    check_learning_rate,
    check_range,
    compute_dtype,
    map_unzip,
    one_minus,
    over_real,
    safe_increment,
    transformation,
)
from adamx.blocks._decay import decay_block
from adamx.blocks._moments import second_moment_dtype
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._guard import recipe
from adamx.optimizers._lamb_lion import scale_by_trust_ratio
from adamx.optimizers._sgd import momentum_block

Mask = Any | Callable[[Any], Any]


def _mask(name: str, mask) -> Any:
    """optax's ``mask`` of LARS: ``True`` (every leaf: no mask), ``False`` (no leaf), a tree
    of booleans or a function of the params returning one."""
    if isinstance(mask, bool):
        return None if mask else (lambda params: jax.tree.map(lambda _: False, params))
    if mask is None or isinstance(mask, (int, float, str, jax.Array)):
        raise ValueError(
            f"`{name}` must be True, False, a tree of booleans like the params or a function "
            f"of the params returning one, got {name}={mask!r}."
        )
    return mask


@recipe
def lars(
    learning_rate: ScalarOrSchedule = 0.1,
    weight_decay: float | None = None,
    weight_decay_mask: Mask = True,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    trust_ratio_mask: Mask = True,
    momentum: float | None = 0.9,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """LARS: SGD with momentum whose step per tensor is scaled by a trust ratio, as
    ``optax.lars``.

    Per leaf (one tensor), with ``c = trust_coefficient``::

        u = g + wd * p
        u = u * c * ||p|| / (||u|| + eps)          (ratio 1 where ||p|| or ||u|| is 0)
        b = mu * b - lr * u                        (b starts at 0)
        p = p + b              (nesterov: p = p + mu * b - lr * u)

    The recipe is SGD's chain with :func:`adamx.scale_by_trust_ratio` after the decay, and
    the momentum after the learning rate (so ``b`` holds learning-rate-scaled steps, as in
    optax)::

        add_decayed_weights(weight_decay, weight_decay_mask)  # omitted when None or 0
        scale_by_trust_ratio(trust_coefficient=..., eps=eps)  # masked by trust_ratio_mask
        scale_by_learning_rate(learning_rate)
        trace_momentum(momentum, nesterov=nesterov)           # omitted when None

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. Default 0.1
        (optax's has none).
      weight_decay: coupled decay ``>= 0``, inside the trust ratio; ``None`` (default;
        optax's 0.0 adds nothing) or the Python 0 leave the block out.
      weight_decay_mask: ``True`` (all leaves, default), ``False``, a tree of booleans like
        the params or a function returning one: the leaves that are decayed.
      trust_coefficient: ``c >= 0``. Default 0.001.
      eps: added to ``||u||``, ``>= 0``. Default 0.
      trust_ratio_mask: which leaves get the trust ratio, as ``weight_decay_mask``; the
        others take the plain SGD step (exclude biases and norms' scales, as the paper
        does). Default True.
      momentum: ``mu`` in ``[0, 1)``, or ``None`` for no buffer. Default 0.9.
      nesterov: the Nesterov direction. Default False.

    Returns:
      An ``optax.GradientTransformation`` that needs ``params`` in ``update``.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.lars(learning_rate=1.0, trust_coefficient=0.1)
      >>> params = {"w": jnp.asarray([3.0, 4.0])}
      >>> updates, _ = opt.update({"w": jnp.asarray([0.0, 10.0])}, opt.init(params), params)
      >>> [round(float(u), 4) for u in updates["w"]]  # -lr * c * ||p|| * g / ||g||
      [-0.0, -0.5]

    .. warning::
       You et al. write the ratio as ``c ||p|| / (||g|| + wd ||p||)``; optax's, and this,
       is ``c ||p|| / ||g + wd p||``. With ``momentum`` the buffer holds
       ``lr``-scaled steps (optax's ``trace`` after the learning rate), so a schedule's
       change reaches the step gradually, unlike :func:`adamx.sgd`'s buffer.

    References:
      You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks", 2017,
      https://arxiv.org/abs/1708.03888
    """
    check_learning_rate(learning_rate)
    check_flag("nesterov", nesterov)
    trust = scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps)
    ratio_mask = _mask("trust_ratio_mask", trust_ratio_mask)
    return optax.chain(
        *decay_block(weight_decay, _mask("weight_decay_mask", weight_decay_mask)),
        trust if ratio_mask is None else optax.masked(trust, ratio_mask),
        scale_by_learning_rate(learning_rate),
        *momentum_block(momentum, nesterov=nesterov),
    )


class LayerwiseMomentState(NamedTuple):
    """State of :func:`scale_by_layerwise_moment`.

    Attributes:
      step: int32 number of updates taken so far (saturates at the int32 maximum). Named
        ``step`` so that in :func:`novograd`'s state ``optax.tree_utils.tree_get(state,
        "count")`` finds the one count of its momentum.
      nu: one 0-d second moment per leaf, in the params' dtypes (float32 for float16).
    """

    step: jax.Array
    nu: PyTree


def scale_by_layerwise_moment(
    b2: float = 0.25, eps: float = 1e-6, eps_root: float = 0.0
) -> optax.GradientTransformation:
    """NovoGrad's normalisation: the gradient over the root of a per-tensor moving average
    of its squared norm.

    Per leaf (one tensor), with ``k`` the number of earlier updates::

        n = ||g||**2                                  (k = 0)
        n = b2 * n + (1 - b2) * ||g||**2              (k > 0)
        d = g / (sqrt(n + eps_root) + eps)

    One number per tensor instead of Adam's one per element. Arithmetic runs in the
    leaf's dtype but at least float32; ``d`` is cast to the gradient's dtype.

    Args:
      b2: decay of the second moment, ``[0, 1)``. Default 0.25 (optax's).
      eps: added to the root, ``>= 0``. Default 1e-6.
      eps_root: added inside the root, ``>= 0``. Default 0.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`LayerwiseMomentState`.

    References:
      Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive Moments for
      Training of Deep Networks", 2019, https://arxiv.org/abs/1905.11286
    """
    check_decay("b2", b2)
    check_range("eps", eps, low=0.0)
    check_range("eps_root", eps_root, low=0.0)

    def init(params):
        def zero(p):
            p = abstract_or_array(p)
            return jnp.zeros([], second_moment_dtype(p.dtype))

        return LayerwiseMomentState(step=jnp.zeros([], jnp.int32), nu=jax.tree.map(zero, params))

    def update(grads, state, params=None):
        del params
        if jax.tree.structure(grads) != jax.tree.structure(state.nu):
            raise ValueError(
                f"`grads` do not match the optimizer state: {jax.tree.structure(grads)} vs "
                f"{jax.tree.structure(state.nu)}."
            )
        first = state.step == 0

        def leaf(g, n):
            g = jnp.asarray(g)
            dtype = compute_dtype(n.dtype)
            gc = g.astype(compute_dtype(g.dtype))
            sq = jnp.sum(abs_sq(gc)).astype(dtype)
            nc = n.astype(dtype)
            later = as_scalar(b2, dtype) * nc + as_scalar(one_minus(b2), dtype) * sq
            new = jnp.where(first, sq, later)
            root = jnp.sqrt(new + as_scalar(eps_root, dtype)) + as_scalar(eps, dtype)
            return over_real(gc, root).astype(g.dtype), new.astype(n.dtype)

        updates, nu = map_unzip(leaf, 2, grads, state.nu)
        return updates, LayerwiseMomentState(step=safe_increment(state.step), nu=nu)

    return transformation(init, update)


@recipe
def novograd(
    learning_rate: ScalarOrSchedule = 1e-2,
    b1: float = 0.9,
    b2: float = 0.25,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: float | None = None,
) -> optax.GradientTransformation:
    """NovoGrad: SGD momentum on gradients normalised per tensor, as ``optax.novograd``.

    Per leaf (one tensor), with ``k`` the number of earlier updates::

        n = ||g||**2  (k = 0);   n = b2 * n + (1 - b2) * ||g||**2  (k > 0)
        u = g / (sqrt(n + eps_root) + eps) + wd * p
        m = u  (k = 0);          m = b1 * m + u  (k > 0)
        p = p - lr * m

    The recipe is SGD's chain with :func:`scale_by_layerwise_moment` in front and the
    decay after it::

        scale_by_layerwise_moment(b2, eps, eps_root)
        add_decayed_weights(weight_decay)     # omitted when None or 0
        trace_momentum(b1)
        scale_by_learning_rate(learning_rate)

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. Default 1e-2
        (optax's has none).
      b1: the momentum, ``[0, 1)``. Default 0.9.
      b2: decay of the per-tensor second moment, ``[0, 1)``. Default 0.25 (optax's; the
        paper uses 0.98 with ``b1`` 0.95).
      eps: added to the root, ``>= 0``. Default 1e-6.
      eps_root: added inside the root, ``>= 0``. Default 0.
      weight_decay: decay ``>= 0`` added to the normalised gradient (inside the momentum);
        ``None`` (default; optax's 0.0 adds nothing) or the Python 0 leave the block out.

    Returns:
      An ``optax.GradientTransformation`` (needs ``params`` in ``update`` when decaying).

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.novograd(learning_rate=0.1, eps=0.0)
      >>> params = {"w": jnp.ones(2)}
      >>> updates, _ = opt.update({"w": jnp.asarray([3.0, -4.0])}, opt.init(params), params)
      >>> [round(float(u), 4) for u in updates["w"]]  # -lr * g / ||g||
      [-0.06, 0.08]

    .. warning::
       The momentum adds ``u`` undamped (``m = b1 * m + u``, optax's and the paper's), so
       the step grows to ``lr / (1 - b1)`` times ``u``. The paper's defaults differ from
       optax's (``b1=0.95, b2=0.98``).

    References:
      Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive Moments for
      Training of Deep Networks", 2019, https://arxiv.org/abs/1905.11286
    """
    check_learning_rate(learning_rate)
    check_decay("b1", b1)
    return optax.chain(
        scale_by_layerwise_moment(b2, eps, eps_root),
        *decay_block(weight_decay),
        *momentum_block(b1),
        scale_by_learning_rate(learning_rate),
    )
