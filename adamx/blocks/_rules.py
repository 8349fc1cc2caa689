"""Blocks of Adam's relatives: other second-moment rules and other read-outs.

Each relative of Adam changes one block of Adam's chain. The second-moment rules here plug
into :func:`adamx.scale_by_moments` (``nu_rule=...``); the other blocks sit after it and read
or rewrite its :class:`adamx.Moments` record.

=============================  ========================================================
block                          replaces, in Adam's chain
=============================  ========================================================
:func:`keep_max_nu`            (inserted after the moments) AMSGrad's running maximum
:func:`infinity_norm`          the ``nu_rule``: Adamax's exponentially weighted max
:func:`ema_of_belief`          the ``nu_rule``: AdaBelief's variance around ``m``
:func:`yogi_squares`           the ``nu_rule``: Yogi's additive update
:func:`correct_bias_nesterov`  ``correct_bias``: NAdam's Nesterov read-out of ``m``
:func:`normalize_rectified`    ``normalize``: RAdam's rectified step
:func:`normalize_inf`          ``normalize``: ``m / u`` without a root (Adamax)
=============================  ========================================================
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    PyTree,
    abs_sq,
    as_scalar,
    check_decay,
    check_moments,
    check_range,
    check_trees_match,
    is_complex,
    one_minus,
    over_real,
    real_dtype,
    safe_increment,
    scalar_dtype,
    transformation,
)
from adamx.blocks._correction import bias_correction
from adamx.blocks._moments import SecondMomentRule, ema_square, second_moment_zeros


# ----------------------------------------------------------------------------- second moments
def infinity_norm(eps: float = 1e-8) -> SecondMomentRule:
    """Adamax's second moment: an exponentially weighted infinity norm of the gradient.

    Per leaf, starting at ``u = 0``::

        u = max(b2 * u, |g| + eps)

    ``eps`` sits inside the maximum, as in PyTorch and optax; ``u`` needs no bias
    correction, and the read-out is :func:`normalize_inf` (``m^ / u``, no root).

    Args:
      eps: added to ``|g|`` inside the maximum, ``>= 0``. Default 1e-8.

    Returns:
      A :class:`adamx.SecondMomentRule` for ``scale_by_moments(..., nu_rule=...)``.

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, §7.1,
      https://arxiv.org/abs/1412.6980
    """
    check_range("eps", eps, low=0.0)

    def update(u, g, m, b2):
        del m
        d = u.dtype  # |g| is real for a complex g too
        return jnp.maximum(as_scalar(b2, d) * u, jnp.abs(g).astype(d) + as_scalar(eps, d))

    return SecondMomentRule("infinity_norm", update)


def ema_of_belief(eps: float = 1e-16) -> SecondMomentRule:
    """AdaBelief's second moment: a moving average of ``(g - m)**2``, the "belief" in ``g``.

    Per leaf, with ``m`` the first moment already updated with this ``g``::

        s = b2 * s + (1 - b2) * (g - m)**2 + eps

    The ``eps`` added at every step accumulates in ``s`` (as in the paper's Algorithm 2
    and the authors' code); a recipe then bias-corrects ``s`` like Adam's ``v``. The
    average is taken in PyTorch's order (:func:`adamx.ema_of_squares`): a huge ``g - m``
    gives ``s = inf``, never NaN.

    Args:
      eps: added to ``s`` at every step, ``>= 0``. Default 1e-16.

    Returns:
      A :class:`adamx.SecondMomentRule`; ``scale_by_moments`` must keep a first moment.

    References:
      Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
      Gradients", NeurIPS 2020, https://arxiv.org/abs/2010.07468
    """
    check_range("eps", eps, low=0.0)

    def update(s, g, m, b2):
        if m is None:
            raise ValueError(
                "`ema_of_belief` measures g against the first moment m: use it with "
                "`scale_by_moments(b1=...)`, not `b1=None`."
            )
        return ema_square(s, g - m, b2) + as_scalar(eps, s.dtype)

    return SecondMomentRule("ema_of_belief", update)


def yogi_squares(initial_value: float = 1e-6) -> SecondMomentRule:
    """Yogi's second moment: an additive, sign-controlled step towards ``g**2``.

    Per leaf, starting at ``v = initial_value``::

        v = v - (1 - b2) * sign(v - g**2) * g**2

    Unlike Adam's average, ``v`` moves by at most ``(1 - b2) * g**2`` per step, so a burst of
    small gradients cannot shrink it multiplicatively. ``v`` stays ``>= 0`` when it starts
    there. The step is formed as ``((1 - b2) * g) * g`` and the sign by comparing ``v``
    with ``g**2``, so a gradient whose square overflows still moves ``v`` up (and an
    overflowed ``v`` stays ``inf``) without ``inf - inf = NaN``.

    Args:
      initial_value: the value every element of ``v`` starts at, ``>= 0``. Default 1e-6.

    Returns:
      A :class:`adamx.SecondMomentRule`.

    References:
      Zaheer et al., "Adaptive Methods for Nonconvex Optimization", NeurIPS 2018,
      https://proceedings.neurips.cc/paper/2018/file/90365351ccc7437a1309dc64e4db32a3-Paper.pdf
    """
    check_range("initial_accumulator_value", initial_value, low=0.0)

    def update(v, g, m, b2):
        del m
        g = g if is_complex(g.dtype) else g.astype(v.dtype)
        g2 = abs_sq(g).astype(v.dtype)  # only compared with v: inf where it overflows is right
        step = abs_sq(g, one_minus(b2)).astype(v.dtype)
        return jnp.where(v > g2, v - step, jnp.where(v < g2, v + step, v))

    return SecondMomentRule("yogi_squares", update, initial_value)


# ----------------------------------------------------------------------------- running max
class MaxNuState(NamedTuple):
    """State of :func:`keep_max_nu`.

    Attributes:
      nu_max: the running maximum of the raw second moment, a tree like the params,
        stored in the params' dtypes.
    """

    nu_max: PyTree


def keep_max_nu() -> optax.GradientTransformation:
    """AMSGrad's running maximum of the raw second moment, handed on in place of ``v``.

    Per leaf, after a moment block::

        v_max = max(v_max, v)          (v_max starts at 0)
        record.nu <- v_max             (the moment block's own v keeps its plain EMA)

    The maximum is taken of the *raw* ``v``, before bias correction, as PyTorch and Keras
    do; :func:`adamx.correct_bias` after it then divides ``v_max`` by ``1 - b2**t`` of the
    current step.

    Returns:
      An ``optax.GradientTransformation`` from a ``Moments`` record to another; its state
      is :class:`MaxNuState`.

    References:
      Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", ICLR 2018,
      https://arxiv.org/abs/1904.09237
    """

    def init(params):
        return MaxNuState(nu_max=jax.tree.map(second_moment_zeros, params))

    def update(updates, state, params=None):
        del params
        rec = check_moments(updates, "adamx.keep_max_nu")
        if rec.nu is None:
            raise ValueError("`keep_max_nu` needs a second moment: use `scale_by_moments(b2=...)`.")
        check_trees_match(rec.nu, state.nu_max, "the second moment", "the optimizer state")
        nu_max = jax.tree.map(
            lambda v, vm: jnp.maximum(vm.astype(v.dtype), v), rec.nu, state.nu_max
        )
        stored = jax.tree.map(lambda new, old: new.astype(old.dtype), nu_max, state.nu_max)
        return rec._replace(nu=nu_max), MaxNuState(nu_max=stored)

    return transformation(init, update)


# ----------------------------------------------------------------------------- read-outs
class NesterovState(NamedTuple):
    """State of :func:`correct_bias_nesterov` with a momentum schedule.

    Attributes:
      mu_product: the running product ``P_t = mu_1 * ... * mu_t`` of the scheduled
        momenta, a 0-d float32 array (float64 under ``jax_enable_x64``), 1 before the
        first update.
    """

    mu_product: jax.Array


def correct_bias_nesterov(
    b1: float = 0.9, b2: float | None = 0.999, *, momentum_decay: float | None = None
) -> optax.GradientTransformation:
    """NAdam's read-out of the first moment: a bias-corrected Nesterov look-ahead.

    Replaces :func:`adamx.correct_bias` in Adam's chain. Per leaf, with ``t`` the step of
    the record and ``g`` its gradient::

        m^ = mu_{t+1} / (1 - P_t * mu_{t+1}) * m  +  (1 - mu_t) / (1 - P_t) * g
        v^ = v / (1 - b2**t)

    With ``momentum_decay=None`` the momentum is constant, ``mu_t = b1`` and
    ``P_t = b1**t`` (optax's ``nesterov=True``)::

        m^ = b1 * m / (1 - b1**(t+1))  +  (1 - b1) * g / (1 - b1**t)

    With ``momentum_decay = psi`` it follows Dozat's schedule, as PyTorch's NAdam does::

        mu_t = b1 * (1 - 0.5 * 0.96**(t * psi)),   P_t = P_{t-1} * mu_t,  P_0 = 1

    ``P_t`` is kept as a running product in the state, in float32 (float64 under
    ``jax_enable_x64``), like PyTorch's ``mu_product``; the factors are formed at that
    precision and cast to each leaf's compute dtype. ``m^`` is clamped to the largest
    finite value of its dtype: near the top of the range (``|g| ~ 3e38`` in float32) the
    sum of the two terms overflows, and ``inf / sqrt(inf)`` would be NaN.

    The recipes pass ``b2=None`` and let :func:`adamx.normalize` correct ``v`` inside
    the root (``normalize(eps, b2=b2)``), so that ``v / (1 - b2**t)``, which overflows
    in the first steps where ``v`` does not, is never formed.

    Args:
      b1: the momentum ``b1`` the first moment was averaged with, ``[0, 1)``. Default 0.9.
      b2: decay of the second moment, ``[0, 1)``, or ``None`` to leave ``v`` as it is.
        Default 0.999.
      momentum_decay: ``psi >= 0`` of the momentum schedule, or ``None`` for a constant
        momentum. Default ``None``.

    Returns:
      An ``optax.GradientTransformation`` from a ``Moments`` record to another; its state
      is :class:`NesterovState` with a schedule, ``optax.EmptyState`` without.

    References:
      Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop,
      https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ
    """
    check_decay("b1", b1)
    if b2 is not None:
        check_decay("b2", b2)
    if momentum_decay is not None:
        check_range("momentum_decay", momentum_decay, low=0.0)

    def momentum(t):
        sd = scalar_dtype()
        decay = jnp.power(as_scalar(0.96, sd), jnp.asarray(t, sd) * as_scalar(momentum_decay, sd))
        return as_scalar(b1, sd) * (1 - as_scalar(0.5, sd) * decay)

    def factors(count, state):
        """``(c_m, c_g, new_state)``: the factors of ``m`` and ``g`` in ``m^``."""
        sd = scalar_dtype()
        if momentum_decay is None:
            c_m = as_scalar(b1, sd) / bias_correction(b1, safe_increment(count))
            c_g = as_scalar(one_minus(b1), sd) / bias_correction(b1, count)
            return c_m, c_g, state
        mu, mu_next = momentum(count), momentum(safe_increment(count))
        product = state.mu_product * mu
        c_m = mu_next / (1 - product * mu_next)
        c_g = (1 - mu) / (1 - product)
        return c_m, c_g, NesterovState(mu_product=product)

    def init(params):
        del params
        if momentum_decay is None:
            return optax.EmptyState()
        return NesterovState(mu_product=jnp.ones([], scalar_dtype()))

    def update(updates, state, params=None):
        del params
        rec = check_moments(updates, "adamx.correct_bias_nesterov")
        if rec.mu is None:
            raise ValueError(
                "`correct_bias_nesterov` reads the first moment: use `scale_by_moments(b1=...)`."
            )
        c_m, c_g, state = factors(rec.count, state)

        def look_ahead(m, g):
            d = m.dtype
            top = as_scalar(jnp.finfo(d).max, real_dtype(d))  # the sum of two huge terms: not inf
            x = c_m.astype(d) * m + c_g.astype(d) * g.astype(d)
            if is_complex(d):  # complex numbers have no order: clamp each part
                return jax.lax.complex(jnp.clip(x.real, -top, top), jnp.clip(x.imag, -top, top))
            return jnp.clip(x, -top, top)

        mu = jax.tree.map(look_ahead, rec.mu, rec.grad)
        nu = rec.nu
        if b2 is not None and nu is not None:
            bc2 = bias_correction(b2, rec.count)
            nu = jax.tree.map(lambda v: v / bc2.astype(v.dtype), nu)
        return rec._replace(mu=mu, nu=nu), state

    return transformation(init, update)


# coth(z) - 1/z = z/3 - z**3/45 + ...: the coefficients 2**(2n) B_2n / (2n)! of z**(2n-1).
_COTH_SERIES = (
    1 / 3,
    -1 / 45,
    2 / 945,
    -1 / 4725,
    2 / 93555,
    -1382 / 638512875,
    4 / 18243225,
    -3617 / 162820783125,
)


def _coth_minus_inverse(z: jax.Array) -> jax.Array:
    """``coth(z) - 1/z`` for ``z >= 0`` to a few ulp: its series below 1/4 (where the
    difference cancels), the difference above (both branches are finite everywhere)."""
    small = z < 0.25
    zs = jnp.where(small, z, 0.0)
    z2 = zs * zs
    series = jnp.zeros_like(z)
    for c in reversed(_COTH_SERIES):
        series = series * z2 + c
    zl = jnp.where(small, 1.0, z)
    return jnp.where(small, zs * series, 1 / jnp.tanh(zl) - 1 / zl)


def sma_length(b2, count: jax.Array) -> jax.Array:
    """RAdam's ``rho_t = rho_inf - 2 t b2**t / (1 - b2**t)``, without its cancellation.

    With ``s = -log(b2)`` the formula is ``t + coth(s/2) - t coth(t s/2)``, i.e.
    ``f(s/2) + t (1 - f(t s/2))`` with ``f(z) = coth(z) - 1/z``, a sum of non-negative
    terms. The textbook form subtracts two numbers near ``rho_inf = 2/(1-b2) - 1``
    (2e4 for ``b2 = 0.9999``) and, in float32, leaves ``rho_t ~ 6`` with an error of 1e-3
    (4e-4 relatively in the step); this form is good to a few ulp at any ``t``. Computed
    in float32 (float64 under ``jax_enable_x64``).
    """
    sd = scalar_dtype()
    s = -jnp.log1p(-as_scalar(one_minus(b2), sd))
    t = jnp.asarray(count, sd)
    z = t * s / 2
    large = z >= 1
    zl = jnp.where(large, z, 1.0)
    tail = jnp.where(large, 1 / zl - 2 / jnp.expm1(2 * zl), 1 - _coth_minus_inverse(z))
    return _coth_minus_inverse(s / 2) + t * tail


def normalize_rectified(
    b2: float = 0.999, eps: float = 1e-8, threshold: float = 5.0, *, eps_root: float = 0.0
) -> optax.GradientTransformation:
    """RAdam's read-out: Adam's direction scaled by the variance rectification, or plain
    momentum while the variance of the adaptive rate is intractable.

    Replaces :func:`adamx.normalize`, after ``correct_bias(b1, None)`` (``m`` corrected,
    ``v`` raw). With ``t`` the step of the record, ``bc2 = 1 - b2**t``::

        rho_inf = 2 / (1 - b2) - 1
        rho_t   = rho_inf - 2 * t * b2**t / bc2          (see sma_length)
        r_t     = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
        d = m^ * r_t * sqrt(bc2) / (sqrt(v + eps_root * bc2) + eps)   if rho_t > threshold
        d = m^                                                        otherwise

    ``eps`` is added to the root of the raw ``v`` (PyTorch); ``eps_root`` inside the root
    of the bias-corrected ``v^ = v / bc2`` (optax's ``eps_root``):
    ``sqrt(v + eps_root * bc2) / sqrt(bc2) = sqrt(v^ + eps_root)``. The scalars are formed in
    float32 (float64 under ``jax_enable_x64``), ``rho_t`` by ``sma_length`` without
    cancellation. Both branches are computed and ``jnp.where`` picks one, so a traced
    ``b2`` or ``threshold`` works.

    Args:
      b2: decay of the second moment, ``[0, 1)``. Default 0.999.
      eps: added to ``sqrt(v)``, ``>= 0``. Default 1e-8.
      threshold: rectify when ``rho_t > threshold``; ``>= 4``, since ``r_t`` is not real
        for ``2 < rho_t < 4``. Default 5.0.
      eps_root: added to the bias-corrected ``v`` inside the root, ``>= 0``. Default 0.

    Returns:
      A stateless ``optax.GradientTransformation`` from a ``Moments`` record to updates.

    References:
      Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020,
      https://arxiv.org/abs/1908.03265
    """
    check_decay("b2", b2)
    check_range("eps", eps, low=0.0)
    check_range("threshold", threshold, low=4.0)
    check_range("eps_root", eps_root, low=0.0)

    def scalars(count):
        """``(rectify, scale, bc2)``: whether to rectify at step ``count``, ``r_t sqrt(bc2)``
        and ``bc2``."""
        sd = scalar_dtype()
        rho_inf = 2 / as_scalar(one_minus(b2), sd) - 1
        rho_t = sma_length(b2, count)
        bc2 = bias_correction(b2, count)
        rectify = rho_t > as_scalar(threshold, sd)
        rho = jnp.where(rectify, rho_t, rho_inf)  # r = 1 where not used: no nan to leak
        r = jnp.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
        return rectify, r * jnp.sqrt(bc2), bc2

    def update(updates, state, params=None):
        del params
        rec = check_moments(updates, "adamx.normalize_rectified")
        rectify, scale, bc2 = scalars(rec.count)

        def direction(g, m, v):
            d = v.dtype  # real, also for a complex m
            root = jnp.sqrt(v + as_scalar(eps_root, d) * bc2.astype(d))
            adapted = over_real(m * scale.astype(m.dtype), root + as_scalar(eps, d))
            return jnp.where(rectify, adapted, m).astype(g.dtype)

        return jax.tree.map(direction, rec.grad, rec.mu, rec.nu), state

    return transformation(lambda params: optax.EmptyState(), update)


def normalize_inf() -> optax.GradientTransformation:
    """Adamax's read-out: the first moment over the infinity norm, no root.

    Per leaf, from a record whose ``nu`` is :func:`infinity_norm`'s ``u``::

        d = m^ / u

    Computed in the leaf's compute dtype, then cast to the gradient's dtype.

    Returns:
      A stateless ``optax.GradientTransformation`` from a ``Moments`` record to updates.

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, §7.1,
      https://arxiv.org/abs/1412.6980
    """

    def update(updates, state, params=None):
        del params
        rec = check_moments(updates, "adamx.normalize_inf")
        return jax.tree.map(
            lambda g, m, u: over_real(m, u).astype(g.dtype), rec.grad, rec.mu, rec.nu
        ), state

    return transformation(lambda params: optax.EmptyState(), update)
