"""Adam's relatives that change its second moment or its read-out: RAdam (a rectified
read-out), AdaBelief (the EMA of ``(g - m)**2``) and Yogi (an additive update of ``v``).
See :mod:`adamx.optimizers._variants` for the chain they share with Adam.
"""

from __future__ import annotations

from typing import Any

import optax

from adamx.blocks._base import (
    ScalarOrSchedule,
    check_flag,
    check_learning_rate,
    check_optional_range,
)
from adamx.blocks._correction import correct_bias
from adamx.blocks._decay import decay_block, maximize_block
from adamx.blocks._moments import scale_by_moments
from adamx.blocks._normalize import normalize
from adamx.blocks._rules import (
    correct_bias_nesterov,
    ema_of_belief,
    normalize_rectified,
    yogi_squares,
)
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._guard import recipe


@recipe
def radam(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    *,
    nesterov: bool = False,
    weight_decay: float | None = None,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
    """RAdam: Adam whose adaptive step is rectified, or switched off while its variance is
    intractable, as ``torch.optim.RAdam``.

    Per leaf, with ``bc1 = 1 - b1**t``, ``bc2 = 1 - b2**t``::

        g       = -g;  g = g + wd * p        (if maximize; coupled weight_decay > 0)
        m, v as in Adam
        rho_inf = 2 / (1 - b2) - 1;    rho_t = rho_inf - 2 t b2**t / bc2
        r_t     = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
        p       = p - lr * (m / bc1) * r_t * sqrt(bc2) / (sqrt(v) + eps)   if rho_t > threshold
        p       = p - lr * (m / bc1)                                       otherwise

    With ``b2 = 0.999`` the first five steps are plain (bias-corrected) momentum steps.

    The chain is Adam's with the read-out swapped::

        negate()                  # if maximize
        add_decayed_weights(wd)   # coupled L2, omitted when None, 0 or decoupled
        scale_by_moments(b1, b2, mu_dtype=mu_dtype)
        correct_bias(b1, None)    # correct_bias_nesterov(b1, None) if nesterov
        normalize_rectified(b2, eps, threshold, eps_root=eps_root)
        add_decayed_weights(wd)   # only with decoupled_weight_decay
        scale_by_learning_rate(learning_rate)

    Args:
      learning_rate: a number ``>= 0`` or a schedule. Default 1e-3.
      b1: decay of the first moment, ``[0, 1)``. Default 0.9.
      b2: decay of the second moment, ``[0, 1)``. Default 0.999.
      eps: added to ``sqrt(v)`` (the raw root), ``>= 0``. Default 1e-8.
      eps_root: added to the bias-corrected ``v`` inside the root, ``>= 0`` (optax's
        ``eps_root``). Default 0.
      threshold: rectify when ``rho_t > threshold``, ``>= 4``. Default 5.0 (PyTorch's,
        fixed there).
      nesterov: read ``m^`` with Nesterov's look-ahead, as ``optax.radam(nesterov=True)``.
        Default False.
      weight_decay: ``>= 0``; ``None`` (default) or the Python 0 leave the block out.
      decoupled_weight_decay: apply the decay as AdamW does (``p *= 1 - lr*wd``) instead
        of adding it to the gradient. Default False.
      maximize: ascend instead of descend. Default False.
      mu_dtype: the dtype ``m`` is stored in, or ``None`` for the params' (as in
        :func:`adamx.adam`; optax.radam has no such option). Default None.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.radam(learning_rate=0.1)
      >>> params = {"w": jnp.ones(3)}
      >>> updates, _ = opt.update({"w": jnp.array([1.0, -2.0, 0.0])}, opt.init(params), params)
      >>> [round(float(u), 4) for u in updates["w"]]  # not rectified yet: -lr * m / bc1 = -lr * g
      [-0.1, 0.2, -0.0]

    .. warning::
       ``optax.radam`` rectifies when ``rho_t >= threshold`` (not ``>``) and adds ``eps``
       to the root of the bias-corrected ``v``: ``m^ r_t / (sqrt(v / bc2) + eps)``. With
       ``eps=0`` the two agree; otherwise optax's ``eps`` equals this one times
       ``sqrt(bc2)``, a step-dependent factor, so no constant reproduces it.

    References:
      Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020,
      https://arxiv.org/abs/1908.03265
    """
    check_learning_rate(learning_rate)
    check_flag("decoupled_weight_decay", decoupled_weight_decay)
    check_flag("nesterov", nesterov)
    coupled = [] if decoupled_weight_decay else decay_block(weight_decay)
    decoupled = decay_block(weight_decay) if decoupled_weight_decay else []
    return optax.chain(
        *maximize_block(maximize),
        *coupled,
        scale_by_moments(b1, b2, mu_dtype=mu_dtype),
        correct_bias_nesterov(b1, None) if nesterov else correct_bias(b1, None),
        normalize_rectified(b2, eps, threshold, eps_root=eps_root),
        *decoupled,
        scale_by_learning_rate(learning_rate),
    )


@recipe
def adabelief(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    eps_root: float | None = None,
    *,
    nesterov: bool = False,
    weight_decay: float | None = None,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
    """AdaBelief: Adam with the variance of the gradient around its mean in place of its
    second moment.

    Per leaf, with ``m`` the new first moment::

        g = g + wd * p                              (if weight_decay > 0)
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * (g - m)**2 + eps    (eps_root in place of eps if given)
        p = p - lr * (m / (1 - b1**t)) / (sqrt(s / (1 - b2**t)) + eps)

    The chain is Adam's with the second-moment rule swapped::

        add_decayed_weights(wd)   # coupled L2, omitted when None or 0
        scale_by_moments(b1, b2, nu_rule=ema_of_belief(eps_root), mu_dtype=mu_dtype)  # or eps
        correct_bias(b1, None)    # correct_bias_nesterov(b1, None) if nesterov
        normalize(eps, b2=b2)
        scale_by_learning_rate(learning_rate)

    Args:
      learning_rate: a number ``>= 0`` or a schedule. Default 1e-3.
      b1: decay of the first moment, ``[0, 1)``. Default 0.9.
      b2: decay of ``s``, ``[0, 1)``. Default 0.999.
      eps: added to the root, and (unless ``eps_root`` is given) to ``s`` at every step,
        as in the paper, ``>= 0``. Default 1e-16.
      eps_root: the term added to ``s`` at every step, ``>= 0`` (optax's ``eps_root``);
        ``None`` uses ``eps``, as the paper does. Default ``None`` (optax: 1e-16, the same
        value at the default ``eps``).
      nesterov: read ``m^`` with Nesterov's look-ahead, as
        ``optax.adabelief(nesterov=True)``. Default False.
      weight_decay: coupled L2 coefficient, ``>= 0``; ``None`` (default) or the Python 0
        leave the block out.
      mu_dtype: the dtype ``m`` is stored in, or ``None`` for the params' (as in
        :func:`adamx.adam`; optax.adabelief has no such option). Default None.

    Returns:
      An ``optax.GradientTransformation``.

    .. warning::
       ``optax.adabelief`` adds its own ``eps_root`` (default 1e-16) to ``s`` whatever
       ``eps`` is: ``optax.adabelief(eps=e)`` is ``adabelief(eps=e, eps_root=1e-16)``; at
       the defaults they agree. The authors' PyTorch package (``adabelief-pytorch``) also
       offers decoupled decay and rectification, which this recipe omits.

    References:
      Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
      Gradients", NeurIPS 2020, https://arxiv.org/abs/2010.07468
    """
    check_learning_rate(learning_rate)
    check_optional_range("eps_root", eps_root, low=0.0)
    check_flag("nesterov", nesterov)
    belief = ema_of_belief(eps if eps_root is None else eps_root)
    return optax.chain(
        *decay_block(weight_decay),
        scale_by_moments(b1, b2, nu_rule=belief, mu_dtype=mu_dtype),
        correct_bias_nesterov(b1, None) if nesterov else correct_bias(b1, None),
        normalize(eps, b2=b2),
        scale_by_learning_rate(learning_rate),
    )


@recipe
def yogi(
    learning_rate: ScalarOrSchedule = 1e-2,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-3,
    *,
    initial_accumulator_value: float = 1e-6,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
    """Yogi: Adam whose second moment moves additively, by at most ``(1 - b2) g**2``.

    Per leaf, with ``v`` starting at ``initial_accumulator_value`` and ``m`` at 0::

        m = b1 * m + (1 - b1) * g
        v = v - (1 - b2) * sign(v - g**2) * g**2
        p = p - lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)

    The chain is Adam's with the second-moment rule swapped::

        scale_by_moments(b1, b2, nu_rule=yogi_squares(initial_accumulator_value))
        correct_bias(b1, None)
        normalize(eps, b2=b2)
        scale_by_learning_rate(learning_rate)

    Args:
      learning_rate: a number ``>= 0`` or a schedule. Default 1e-2 (the paper's).
      b1: decay of the first moment, ``[0, 1)``. Default 0.9.
      b2: the rate of ``v``'s additive steps, ``[0, 1)``. Default 0.999.
      eps: added to the root, ``>= 0``. Default 1e-3 (the paper's).
      initial_accumulator_value: the start of ``v``, ``>= 0``. Default 1e-6.
      mu_dtype: the dtype ``m`` is stored in, or ``None`` for the params' (as in
        :func:`adamx.adam`; optax.yogi has no such option). Default None.

    Returns:
      An ``optax.GradientTransformation``.

    .. warning::
       ``optax.yogi`` also starts the *first* moment at ``initial_accumulator_value``
       (here, as in the paper, ``m`` starts at 0); otherwise the rules agree. The paper
       states its Algorithm 2 without Adam's bias corrections; this recipe applies them,
       as optax does. PyTorch has no Yogi.

    References:
      Zaheer, Reddi, Sachan, Kale & Kumar, "Adaptive Methods for Nonconvex Optimization",
      NeurIPS 2018,
      https://proceedings.neurips.cc/paper/2018/file/90365351ccc7437a1309dc64e4db32a3-Paper.pdf
    """
    check_learning_rate(learning_rate)
    return optax.chain(
        scale_by_moments(
            b1, b2, nu_rule=yogi_squares(initial_accumulator_value), mu_dtype=mu_dtype
        ),
        correct_bias(b1, None),
        normalize(eps, b2=b2),
        scale_by_learning_rate(learning_rate),
    )
