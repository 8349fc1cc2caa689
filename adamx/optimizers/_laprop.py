"""LaProp: normalise the gradient by the root of its second moment, then average it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    PyTree,
    ScalarOrSchedule,
    as_scalar,
    check_decay,
    check_learning_rate,
    check_range,
    check_trees_match,
    compute_dtype,
    map_unzip,
    over_real,
    safe_increment,
    transformation,
)
from adamx.blocks._correction import bias_correction, correct_bias
from adamx.blocks._decay import decay_block
from adamx.blocks._moments import ema_square, scale_by_moments, second_moment_zeros
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._adopt import read_momentum
from adamx.optimizers._guard import recipe


class RmsState(NamedTuple):
    """State of :func:`normalize_by_rms`.

    Attributes:
      step: int32 number of updates taken so far (saturates at the int32 maximum). Named
        ``step``, as ADOPT's, so that ``optax.tree_utils.tree_get(state, "count")`` finds
        the one count of :func:`laprop`'s moment block.
      nu: second moment ``v``, a tree like the params (float32 for float16 params, as
        :func:`adamx.second_moment_dtype` says).
    """

    step: jax.Array
    nu: PyTree


def normalize_by_rms(b2: float = 0.999, eps: float = 1e-15) -> optax.GradientTransformation:
    """Divide the gradient by the bias-corrected root of its second moment, this step's
    gradient included.

    Per leaf, with ``t`` the step number (1 on the first update)::

        v = b2 * v + (1 - b2) * g**2
        d = g / (sqrt(v) / sqrt(1 - b2**t) + eps)

    RMSProp's step with Adam's correction of ``v``: the read-out of ``scale_by_moments(None,
    b2)``, :func:`adamx.use_gradient` and ``normalize(eps, b2=b2)`` as one block, for recipes
    that average ``d`` afterwards (:func:`laprop`). ``v`` is averaged in PyTorch's order
    (``b2 * v + ((1 - b2) * g) * g``: ``inf``, never NaN, past the range). Arithmetic runs in
    the leaf's dtype but at least float32; ``d`` is cast to the gradient's dtype.

    Args:
      b2: decay of the second moment, ``[0, 1)``. Default 0.999.
      eps: added to the corrected root, ``>= 0``. Default 1e-15 (LaProp's).

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`RmsState`.

    References:
      Ziyin, Wang & Ueda, "LaProp: Separating Momentum and Adaptivity in Adam", 2020,
      https://arxiv.org/abs/2002.04839
    """
    check_decay("b2", b2)
    check_range("eps", eps, low=0.0)

    def init(params):
        return RmsState(step=jnp.zeros([], jnp.int32), nu=jax.tree.map(second_moment_zeros, params))

    def update(grads, state, params=None):
        del params
        check_trees_match(grads, state.nu, "grads", "the optimizer state")
        step = safe_increment(state.step)
        root_bc2 = jnp.sqrt(bias_correction(b2, step))

        def leaf(g, v):
            g = jnp.asarray(g)
            dtype = compute_dtype(v.dtype)  # real, also for a complex g
            gc = g if jnp.iscomplexobj(g) else g.astype(dtype)
            v_new = ema_square(v.astype(dtype), gc, b2)
            root = jnp.sqrt(v_new) / root_bc2.astype(dtype) + as_scalar(eps, dtype)
            return over_real(gc, root).astype(g.dtype), v_new.astype(v.dtype)

        direction, nu = map_unzip(leaf, 2, grads, state.nu)
        return direction, RmsState(step=step, nu=nu)

    return transformation(init, update)


@recipe
def laprop(
    learning_rate: ScalarOrSchedule = 4e-4,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-15,
    mu_dtype: Any | None = None,
    *,
    weight_decay: float | None = None,
    mask: Any | Callable[[Any], Any] | None = None,
) -> optax.GradientTransformation:
    """LaProp: Adam with the normalisation moved in front of the momentum.

    Per leaf, with ``t`` the step number (1 on the first update)::

        v = b2 * v + (1 - b2) * g**2
        m = b1 * m + (1 - b1) * g / (sqrt(v / (1 - b2**t)) + eps)
        p = p - lr * (m / (1 - b1**t) + wd * p)         (wd only if weight_decay)

    Adam averages the gradient, then divides the average by ``sqrt(v^)``; LaProp divides
    each gradient by the ``sqrt(v^)`` of its own step, then averages. The momentum and the
    adaptivity are then separate: every normalised gradient is at most
    ``sqrt((1 - b2**t) / (1 - b2))`` in size (``v >= (1 - b2) g**2``), so is the bias-corrected
    average, whatever ``b1`` (Adam's step has no such bound once ``b1 > sqrt(b2)``, the
    paper's case for LaProp). The recipe is Adam's chain with the read-out moved before the
    first moment::

        normalize_by_rms(b2, eps)                  # v, and d = g / (sqrt(v^) + eps)
        scale_by_moments(b1, None, mu_dtype=mu_dtype)   # m = EMA of d
        correct_bias(b1, None)
        read_momentum()
        add_decayed_weights(weight_decay, mask)    # decoupled; omitted when None
        scale_by_learning_rate(learning_rate)

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. Default 4e-4 (the
        authors').
      b1: decay of the momentum, ``[0, 1)``. Default 0.9.
      b2: decay of the second moment, ``[0, 1)``. Default 0.999.
      eps: added to the corrected root, ``>= 0``. Default 1e-15 (the authors').
      mu_dtype: the dtype ``m`` is stored in, or ``None`` for the params'. Default None.
      weight_decay: decoupled (AdamW) decay ``>= 0``: ``-lr * wd * p`` added to the
        update; ``None`` (default) or the Python 0 leave the block out.
      mask: a tree of booleans like the params, or a function of the params returning one;
        only ``True`` leaves are decayed. Default None (all).

    Returns:
      An ``optax.GradientTransformation`` (needs ``params`` in ``update`` when decaying).

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> params = {"w": jnp.ones(3)}
      >>> opt = adamx.laprop(learning_rate=0.1)
      >>> updates, _ = opt.update({"w": jnp.asarray([3.0, -1e-4, 0.0])}, opt.init(params))
      >>> [round(float(u), 4) for u in updates["w"]]  # the first step is -lr * sign(g)
      [-0.1, 0.1, -0.0]

    .. warning::
       The authors' PyTorch code keeps the learning rate inside the momentum (its buffer
       sums ``lr * d``, bias-corrected by an average of the rates) and decays the weights
       by ``wd * p`` after the step, not ``lr * wd * p``. For a constant rate and no decay
       that is this rule; under a schedule, a past step keeps the rate it was taken with
       there, while here every ``m`` is scaled by the current rate. No optax or
       ``torch.optim`` anchor.

    References:
      Ziyin, Wang & Ueda, "LaProp: Separating Momentum and Adaptivity in Adam", 2020,
      https://arxiv.org/abs/2002.04839
    """
    check_learning_rate(learning_rate)
    return optax.chain(
        normalize_by_rms(b2, eps),
        scale_by_moments(b1, None, mu_dtype=mu_dtype),
        correct_bias(b1, None),
        read_momentum(),
        *decay_block(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
