"""AdEMAMix and its simplified form: Adam with a second, slow momentum mixed into ``m``."""

from __future__ import annotations

from collections.abc import Callable
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
    check_learning_rate,
    check_moments,
    check_range,
    check_trees_match,
    compute_dtype,
    is_complex,
    like_grad,
    map_unzip,
    one_minus,
    scalar_dtype,
    state_dtype,
    transformation,
)
from adamx.blocks._correction import correct_bias
from adamx.blocks._decay import decay_block
from adamx.blocks._moments import ema, scale_by_moments
from adamx.blocks._normalize import normalize
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._guard import recipe

Mask = Any | Callable[[Any], Any] | None


class SlowMomentumState(NamedTuple):
    """State of :func:`mix_slow_momentum` and :func:`mix_accumulated_momentum`.

    Attributes:
      trace: the extra momentum (AdEMAMix's slow average, or the simplified form's
        accumulation), a tree like the params (in ``mu_dtype`` if given). Named as optax
        names a momentum buffer, so that ``adamx.with_storage(mu=...)`` stores it as a
        first moment.
    """

    trace: PyTree


def _check_scheduled(name: str, value, *, decay: bool) -> None:
    """A number (checked as a decay or as ``>= 0``) or a schedule of the step count."""
    if callable(value):
        return
    if decay:
        check_decay(name, value)
    else:
        check_range(name, value, low=0.0)


def _at(value, k: jax.Array):
    """A hyperparameter that may be a schedule, read at ``k``."""
    return value(k) if callable(value) else value


def _mixer(name: str, accumulate: bool, decay, alpha, mu_dtype) -> optax.GradientTransformation:
    """The two mixing blocks: ``s = decay s + (1 - decay) g`` (``accumulate=False``) or
    ``s = decay s + g``; then ``mu = mu + alpha s`` (or ``mu = s + alpha g``)."""
    check_dtype("mu_dtype", mu_dtype)

    def init(params):
        def zeros(p):
            p = abstract_or_array(p)
            return jnp.zeros_like(p, dtype=state_dtype(mu_dtype, p.dtype))

        return SlowMomentumState(trace=jax.tree.map(zeros, params))

    def update(updates, state, params=None):
        del params
        rec = check_moments(updates, f"adamx.{name}")
        check_trees_match(rec.grad, state.trace, "grads", "the optimizer state")
        k = rec.count - 1  # the number of earlier updates: optax reads its schedules there
        b, a = _at(decay, k), _at(alpha, k)

        def leaf(g, s, m):
            dtype = compute_dtype(s.dtype)
            gc = g.astype(dtype)
            if accumulate:
                s_new = like_grad(as_scalar(b, dtype) * s.astype(dtype) + gc, g)
                read = s_new + as_scalar(a, dtype) * gc
                if not is_complex(read.dtype):  # the sum may overflow: inf/sqrt(inf) = NaN
                    top = jnp.finfo(read.dtype).max
                    read = jnp.clip(read, -top, top)
            else:
                s_new = like_grad(ema(s, gc, one_minus(b)), g)
                read = m + as_scalar(a, m.dtype) * s_new.astype(m.dtype)
            return read, s_new.astype(s.dtype)

        mus = rec.grad if rec.mu is None else rec.mu
        mu, slow = map_unzip(leaf, 2, rec.grad, state.trace, mus)
        return rec._replace(mu=mu), SlowMomentumState(trace=slow)

    return transformation(init, update)


def mix_slow_momentum(
    b3: ScalarOrSchedule = 0.9999, alpha: ScalarOrSchedule = 5.0, *, mu_dtype: Any = None
) -> optax.GradientTransformation:
    """AdEMAMix's slow momentum, added to the (corrected) first moment of a record.

    Per leaf, with ``k`` the number of earlier updates (0 on the first)::

        s  = b3(k) * s + (1 - b3(k)) * g         (no bias correction)
        mu = mu + alpha(k) * s

    Placed after :func:`adamx.correct_bias` in Adam's chain, so that ``mu`` is ``m^``.
    ``b3`` and ``alpha`` are numbers or schedules of ``k`` (optax's reading).

    Args:
      b3: decay of the slow momentum, ``[0, 1)``, or a schedule. Default 0.9999.
      alpha: weight of the slow momentum, ``>= 0``, or a schedule. Default 5.0.
      mu_dtype: the dtype ``s`` is stored in, or ``None`` for the params'. Default None.

    Returns:
      An ``optax.GradientTransformation`` from a ``Moments`` record to another; its state
      is :class:`SlowMomentumState`.

    References:
      Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older",
      ICLR 2025, https://arxiv.org/abs/2409.03137
    """
    _check_scheduled("b3", b3, decay=True)
    _check_scheduled("alpha", alpha, decay=False)
    return _mixer("mix_slow_momentum", False, b3, alpha, mu_dtype)


def mix_accumulated_momentum(
    b1: float = 0.99, alpha: ScalarOrSchedule = 0.0, *, mu_dtype: Any = None
) -> optax.GradientTransformation:
    """Simplified AdEMAMix's momentum: an undamped accumulation, plus ``alpha`` times ``g``.

    Per leaf, with ``k`` the number of earlier updates (0 on the first)::

        s  = b1 * s + g                          (no (1 - b1): s ~ g / (1 - b1))
        mu = s + alpha(k) * g                    (clamped to the largest finite value)

    The clamp keeps an overflowing sum from reaching the read-out as ``inf``, where
    ``inf / sqrt(inf)`` would be NaN (as :func:`adamx.correct_bias_nesterov` does).
    The record's own ``mu`` (if any) is replaced; put it after a moment block that keeps
    only ``v`` (``scale_by_moments(None, b2)``).

    Args:
      b1: decay of the accumulation, ``[0, 1)``. Default 0.99.
      alpha: weight of the current gradient, ``>= 0``, or a schedule. Default 0.
      mu_dtype: the dtype ``s`` is stored in, or ``None`` for the params'. Default None.

    Returns:
      An ``optax.GradientTransformation`` from a ``Moments`` record to another; its state
      is :class:`SlowMomentumState`.

    References:
      Morwani et al., "Connections between Schedule-Free Optimizers, AdEMAMix, and
      Accelerated SGD Variants", 2025, https://arxiv.org/abs/2502.02431
    """
    check_decay("b1", b1)
    _check_scheduled("alpha", alpha, decay=False)
    return _mixer("mix_accumulated_momentum", True, b1, alpha, mu_dtype)


def ademamix_schedules(
    alpha: float, b3: float, b1: float, warmup: int
) -> tuple[Callable[[jax.Array], jax.Array], Callable[[jax.Array], jax.Array]]:
    """The paper's warm-ups of ``alpha`` and ``b3`` over ``warmup`` steps, as schedules of
    ``k``, the number of earlier updates (``t = k + 1`` the step)::

        alpha(t) = alpha * min(t / T, 1)
        b3(t)    = exp(ln(b1) ln(b3) / ((1 - u) ln(b3) + u ln(b1))),  u = min(t / T, 1)

    ``b3(t)`` goes from ``b1`` at ``t = 0`` to ``b3`` at ``t = T`` with a half-life growing
    linearly in ``t`` (the paper's Eq. of the ``beta_3`` scheduler).
    """

    def fraction(k):
        sd = scalar_dtype()
        t = jnp.asarray(k, sd) + 1
        return jnp.minimum(t / jnp.asarray(warmup, sd), 1)

    def alpha_at(k):
        return jnp.asarray(alpha, scalar_dtype()) * fraction(k)

    def b3_at(k):
        sd = scalar_dtype()
        u = fraction(k)
        log_start = jnp.log1p(-jnp.asarray(one_minus(b1), sd))  # 1 - b formed on the host
        log_end = jnp.log1p(-jnp.asarray(one_minus(b3), sd))
        b = jnp.exp(log_start * log_end / ((1 - u) * log_end + u * log_start))
        return jnp.minimum(b, jnp.asarray(b3, sd))

    return alpha_at, b3_at


@recipe
def ademamix(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    b3: ScalarOrSchedule = 0.9999,
    alpha: ScalarOrSchedule = 5.0,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: float | None = None,
    mask: Mask = None,
    *,
    warmup: int | None = None,
) -> optax.GradientTransformation:
    """AdEMAMix: AdamW whose first moment adds ``alpha`` times a second, slow momentum.

    Per leaf, with ``t`` the step number (1 on the first update), ``k = t - 1``::

        m = b1 * m + (1 - b1) * g;   v = b2 * v + (1 - b2) * g**2
        s = b3(k) * s + (1 - b3(k)) * g                 (the slow momentum, uncorrected)
        p = p - lr * ((m / (1 - b1**t) + alpha(k) * s)
                      / (sqrt(v / (1 - b2**t) + eps_root) + eps) + wd * p)

    The recipe is AdamW's chain with one block inserted after the bias correction::

        scale_by_moments(b1, b2, mu_dtype=mu_dtype)
        correct_bias(b1, None)
        mix_slow_momentum(b3, alpha, mu_dtype=mu_dtype)   # mu = m^ + alpha s
        normalize(eps, eps_root, b2=b2)
        add_decayed_weights(weight_decay, mask)          # decoupled; omitted when None or 0
        scale_by_learning_rate(learning_rate)

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. Default 1e-3.
      b1: decay of the fast momentum, ``[0, 1)``. Default 0.9.
      b2: decay of the second moment, ``[0, 1)``. Default 0.999.
      b3: decay of the slow momentum, ``[0, 1)``, or a schedule of ``k``. Default 0.9999.
      alpha: weight of the slow momentum, ``>= 0``, or a schedule of ``k``. Default 5.0.
      eps: added to the root, ``>= 0``. Default 1e-8.
      eps_root: added inside the root of the bias-corrected ``v``, ``>= 0``. Default 0.
      mu_dtype: the dtype ``m`` and ``s`` are stored in, or ``None`` for the params'.
        Default None.
      weight_decay: decoupled decay ``>= 0``; ``None`` (default) or the Python 0 leave the
        block out (optax's default 0.0 keeps a block that adds nothing).
      mask: a tree of booleans like the params, or a function returning one
        (``static_args="mask"`` under ``optax.inject_hyperparams``); only ``True`` leaves
        are decayed.
      warmup: ``T``, the paper's warm-up of both ``alpha`` and ``b3`` over ``T`` steps
        (``alpha`` linear from 0, ``b3`` from ``b1`` with a linearly growing half-life;
        :func:`ademamix_schedules`), with ``b3`` and ``alpha`` numbers; ``None`` (default)
        uses them as given. The paper warms both up over the whole run for long trainings.

    Returns:
      An ``optax.GradientTransformation`` (needs ``params`` in ``update`` when decaying).

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> params = {"w": jnp.zeros(2)}
      >>> opt = adamx.ademamix(learning_rate=0.1, alpha=5.0, b3=0.9)
      >>> updates, _ = opt.update({"w": jnp.asarray([2.0, -0.5])}, opt.init(params), params)
      >>> [round(float(u), 4) for u in updates["w"]]  # -lr (1 + alpha (1 - b3)) sign(g)
      [-0.15, 0.15]

    .. warning::
       ``optax.contrib.ademamix`` is this rule (step for step, float rounding) but stores
       ``v`` in ``mu_dtype`` too (here ``v`` follows the params, float32 for float16); it
       needs an explicit ``learning_rate`` and defaults to ``weight_decay=0.0``. The slow
       momentum is not bias-corrected, as in the paper: with ``b3 = 0.9999`` it takes
       thousands of steps to fill, hence the warm-up.

    References:
      Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older",
      ICLR 2025, https://arxiv.org/abs/2409.03137
    """
    check_learning_rate(learning_rate)
    if warmup is not None:
        check_range("warmup", warmup, low=1.0)
        for name, value in (("b3", b3), ("alpha", alpha)):
            if callable(value):
                raise ValueError(
                    f"`{name}` must be a number when `warmup` is given (the warm-up is its "
                    f"schedule), got a callable {name}={value!r}; pass warmup=None to use "
                    f"your own schedule."
                )
        check_decay("b1", b1)
        check_decay("b3", b3)
        check_range("alpha", alpha, low=0.0)
        alpha, b3 = ademamix_schedules(alpha, b3, b1, warmup)
    return optax.chain(
        scale_by_moments(b1, b2, mu_dtype=mu_dtype),
        correct_bias(b1, None),
        mix_slow_momentum(b3, alpha, mu_dtype=mu_dtype),
        normalize(eps, eps_root, b2=b2),
        *decay_block(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


@recipe
def simplified_ademamix(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.99,
    b2: float = 0.95,
    alpha: ScalarOrSchedule = 0.0,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float | None = None,
    mask: Mask = None,
    *,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
    """Simplified AdEMAMix: one undamped momentum plus ``alpha`` times the gradient.

    Per leaf, with ``t`` the step number (1 on the first update), ``k = t - 1``::

        m = b1 * m + g                         (no (1 - b1), no bias correction)
        v = b2 * v + (1 - b2) * g**2
        p = p - lr * ((m + alpha(k) * g) / (sqrt(v / (1 - b2**t) + eps_root) + eps) + wd * p)

    ``alpha = 0`` is Adam with the step ``lr / (1 - b1)`` and no correction of ``m``. The
    recipe::

        scale_by_moments(None, b2)                      # v only
        mix_accumulated_momentum(b1, alpha, mu_dtype=mu_dtype)   # mu = m + alpha g
        normalize(eps, eps_root, b2=b2)
        add_decayed_weights(weight_decay, mask)         # decoupled; omitted when None or 0
        scale_by_learning_rate(learning_rate)

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. Default 1e-3
        (the momentum sums ``1 / (1 - b1)`` gradients: scale it down accordingly).
      b1: decay of the accumulated momentum, ``[0, 1)``. Default 0.99.
      b2: decay of the second moment, ``[0, 1)``. Default 0.95.
      alpha: weight of the current gradient, ``>= 0``, or a schedule of ``k``. Default 0.
      eps: added to the root, ``>= 0``. Default 1e-8.
      eps_root: added inside the root of the bias-corrected ``v``, ``>= 0``. Default 0.
      weight_decay: decoupled decay ``>= 0``; ``None`` (default) or the Python 0 leave the
        block out.
      mask: a tree of booleans like the params, or a function returning one; only ``True``
        leaves are decayed.
      mu_dtype: the dtype ``m`` is stored in, or ``None`` for the params' (optax's
        simplified_ademamix has no such option). Default None.

    Returns:
      An ``optax.GradientTransformation`` (needs ``params`` in ``update`` when decaying).

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> params = {"w": jnp.zeros(2)}
      >>> opt = adamx.simplified_ademamix(learning_rate=0.1, alpha=1.0)
      >>> updates, _ = opt.update({"w": jnp.asarray([2.0, -0.5])}, opt.init(params), params)
      >>> [round(float(u), 4) for u in updates["w"]]  # -lr (1 + alpha) sign(g) on step 1
      [-0.2, 0.2]

    .. warning::
       ``optax.contrib.simplified_ademamix`` is this rule (step for step, float rounding);
       it needs an explicit ``learning_rate``.

    References:
      Morwani et al., "Connections between Schedule-Free Optimizers, AdEMAMix, and
      Accelerated SGD Variants", 2025, https://arxiv.org/abs/2502.02431
    """
    check_learning_rate(learning_rate)
    return optax.chain(
        scale_by_moments(None, b2),
        mix_accumulated_momentum(b1, alpha, mu_dtype=mu_dtype),
        normalize(eps, eps_root, b2=b2),
        *decay_block(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
