"""Adam's relatives: AMSGrad, Adamax, AdamaxW, NAdam and NAdamW here; RAdam, AdaBelief and
Yogi in ``_variants_nu``.

Each is Adam's chain (see :func:`adamx.adam`) with one block changed::

    negate()                            # maximize
    add_decayed_weights(wd)             # coupled L2
    scale_by_moments(b1, b2)            # nu_rule: infinity_norm | ema_of_belief | yogi_squares
    [keep_max_nu()]                     # AMSGrad
    correct_bias(b1, None)              # NAdam: correct_bias_nesterov
    normalize(eps, b2=b2)               # Adamax: normalize_inf; RAdam: normalize_rectified
    [add_decayed_weights(wd, mask)]     # decoupled (NAdamW, AdamaxW)
    scale_by_learning_rate(lr)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax

from adamx.blocks._base import ScalarOrSchedule, check_decay, check_flag, check_learning_rate
from adamx.blocks._correction import correct_bias
from adamx.blocks._decay import decay_block, maximize_block
from adamx.blocks._moments import scale_by_moments
from adamx.blocks._normalize import normalize
from adamx.blocks._rules import (
    correct_bias_nesterov,
    infinity_norm,
    keep_max_nu,
    normalize_inf,
)
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._guard import recipe

Mask = Any | Callable[[Any], Any] | None


@recipe
def amsgrad(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any | None = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    weight_decay: float | None = None,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """AMSGrad: Adam whose denominator never shrinks, as ``torch.optim.Adam(amsgrad=True)``.

    Per leaf, with ``t`` the step number (1 on the first update)::

        g     = -g;  g = g + wd * p          (if maximize; if weight_decay > 0)
        m     = b1 * m + (1 - b1) * g
        v     = b2 * v + (1 - b2) * g**2     (the plain EMA, unchanged)
        v_max = max(v_max, v)                (of the raw v)
        p     = p - lr * (m / (1 - b1**t)) / (sqrt(v_max / (1 - b2**t) + eps_root) + eps)

    (``m / (1 - b1**t)`` is ``m`` with ``bias_correction_mu=False``, ``v_max / (1 - b2**t)``
    is ``v_max`` with ``bias_correction_nu=False``.)

    The chain is Adam's with :func:`adamx.keep_max_nu` inserted after the moments::

        negate()                  # if maximize
        add_decayed_weights(wd)   # coupled L2, omitted when None or 0
        scale_by_moments(b1, b2, mu_dtype=mu_dtype)
        keep_max_nu()
        correct_bias(b1, None)    # correct_bias(None, None) without bias_correction_mu
        normalize(eps, eps_root, b2=b2)   # b2=None without bias_correction_nu
        scale_by_learning_rate(learning_rate)

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. Default 1e-3.
      b1: decay of the first moment, ``[0, 1)``. Default 0.9.
      b2: decay of the second moment, ``[0, 1)``. Default 0.999.
      eps: added to the root, ``>= 0``. Default 1e-8.
      eps_root: added inside the root, to the bias-corrected ``v_max``, ``>= 0`` (optax's
        ``eps_root``). Default 0.
      mu_dtype: the dtype ``m`` is stored in, or ``None`` for the params' (optax's
        ``mu_dtype``; see :func:`adamx.adam`). Default None.
      bias_correction_mu: divide ``m`` by ``1 - b1**t`` (optax's flag). Default True.
      bias_correction_nu: divide ``v_max`` by ``1 - b2**t`` (optax's flag). With False the
        rule equals ``optax.amsgrad(..., bias_correction_nu=False)``. Default True.
      weight_decay: coupled L2 coefficient, ``>= 0``; ``None`` (default) or the Python 0
        leave the block out.
      maximize: ascend instead of descend. Default False.

    Returns:
      An ``optax.GradientTransformation``.

    .. warning::
       ``optax.amsgrad`` keeps the maximum of the *bias-corrected* ``v / (1 - b2**t)``
       instead of the raw ``v`` (and with ``bias_correction_nu=False`` divides by no
       correction at all); no setting of it reproduces this rule, which is PyTorch's and
       Keras'. The trajectories differ from the first steps on.

    References:
      Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", ICLR 2018,
      https://arxiv.org/abs/1904.09237
    """
    check_learning_rate(learning_rate)
    check_flag("bias_correction_mu", bias_correction_mu)
    check_flag("bias_correction_nu", bias_correction_nu)
    if not bias_correction_nu:
        check_decay("b2", b2)
    return optax.chain(
        *maximize_block(maximize),
        *decay_block(weight_decay),
        scale_by_moments(b1, b2, mu_dtype=mu_dtype),
        keep_max_nu(),
        correct_bias(b1 if bias_correction_mu else None, None),
        normalize(eps, eps_root, b2=b2 if bias_correction_nu else None),
        scale_by_learning_rate(learning_rate),
    )


@recipe
def adamax(
    learning_rate: ScalarOrSchedule = 2e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    mu_dtype: Any | None = None,
    weight_decay: float | None = None,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """Adamax: Adam with an infinity norm in place of the root mean square, as
    ``torch.optim.Adamax``.

    Per leaf::

        g = -g;  g = g + wd * p              (if maximize; if weight_decay > 0)
        m = b1 * m + (1 - b1) * g
        u = max(b2 * u, |g| + eps)           (u starts at 0; no bias correction)
        p = p - lr * (m / (1 - b1**t)) / u

    The chain is Adam's with the second-moment rule and the read-out swapped::

        negate()                  # if maximize
        add_decayed_weights(wd)   # coupled L2, omitted when None or 0
        scale_by_moments(b1, b2, nu_rule=infinity_norm(eps), mu_dtype=mu_dtype)
        correct_bias(b1, None)
        normalize_inf()
        scale_by_learning_rate(learning_rate)

    Args:
      learning_rate: a number ``>= 0`` or a schedule. Default 2e-3.
      b1: decay of the first moment, ``[0, 1)``. Default 0.9.
      b2: decay of the infinity norm, ``[0, 1)``. Default 0.999.
      eps: added to ``|g|`` inside the maximum, ``>= 0``. Default 1e-8.
      mu_dtype: the dtype ``m`` is stored in, or ``None`` for the params' (as in
        :func:`adamx.adam`; optax.adamax has no such option). Default None.
      weight_decay: coupled L2 coefficient, ``>= 0``; ``None`` (default) or the Python 0
        leave the block out.
      maximize: ascend instead of descend. Default False.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.adamax(learning_rate=0.1)
      >>> params = {"w": jnp.ones(3)}
      >>> updates, _ = opt.update({"w": jnp.array([1.0, -2.0, 0.0])}, opt.init(params), params)
      >>> [round(float(u), 4) for u in updates["w"]]  # -lr * g / (|g| + eps)
      [-0.1, 0.1, -0.0]

    .. warning::
       ``optax.adamax`` is this rule. Keras puts ``eps`` outside the maximum,
       ``u = max(b2 * u, |g|)`` and ``p -= lr/(1 - b1**t) * m / (u + eps)``, and defaults
       to ``eps=1e-7``; the two agree only while ``|g|`` dominates ``eps``.

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, §7.1,
      https://arxiv.org/abs/1412.6980
    """
    check_learning_rate(learning_rate)
    return optax.chain(
        *maximize_block(maximize),
        *decay_block(weight_decay),
        scale_by_moments(b1, b2, nu_rule=infinity_norm(eps), mu_dtype=mu_dtype),
        correct_bias(b1, None),
        normalize_inf(),
        scale_by_learning_rate(learning_rate),
    )


@recipe
def adamaxw(
    learning_rate: ScalarOrSchedule = 2e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    mask: Mask = None,
    *,
    mu_dtype: Any | None = None,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """AdamaxW: Adamax with decoupled weight decay, as ``optax.adamaxw``.

    Per leaf: :func:`adamax`'s direction ``d = (m / (1 - b1**t)) / u`` without decay in the
    gradient, then::

        p = p - lr * (d + wd * p)            i.e. p <- p * (1 - lr*wd) - lr * d

    The chain is Adamax's with the decay moved after the read-out (as AdamW's is Adam's)::

        negate()                  # if maximize
        scale_by_moments(b1, b2, nu_rule=infinity_norm(eps), mu_dtype=mu_dtype)
        correct_bias(b1, None)
        normalize_inf()
        add_decayed_weights(weight_decay, mask)   # decoupled; omitted when None or 0
        scale_by_learning_rate(learning_rate)

    Args:
      learning_rate, b1, b2, eps, mu_dtype, maximize: as in :func:`adamax`.
      weight_decay: decoupled decay, ``>= 0``. Default 1e-4 (optax's).
      mask: a tree of booleans like the params, or a function returning one; only
        ``True`` leaves are decayed. Default ``None`` (all).

    Returns:
      An ``optax.GradientTransformation`` that needs ``params`` in ``update``.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.adamaxw(learning_rate=0.1, weight_decay=0.5)
      >>> params = {"w": jnp.ones(2)}
      >>> updates, _ = opt.update({"w": jnp.array([1.0, -2.0])}, opt.init(params), params)
      >>> [round(float(u), 4) for u in updates["w"]]  # -lr * (sign(g) + wd * p)
      [-0.15, 0.05]

    .. warning::
       ``torch.optim.Adamax`` has only the coupled decay (:func:`adamax`'s
       ``weight_decay``). Like optax's, this decay is multiplied by the learning rate
       (PyTorch's AdamW convention), not by a schedule multiplier alone as in Loshchilov &
       Hutter.

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, §7.1,
      https://arxiv.org/abs/1412.6980; Loshchilov & Hutter, "Decoupled Weight Decay
      Regularization", ICLR 2019, https://arxiv.org/abs/1711.05101
    """
    check_learning_rate(learning_rate)
    return optax.chain(
        *maximize_block(maximize),
        scale_by_moments(b1, b2, nu_rule=infinity_norm(eps), mu_dtype=mu_dtype),
        correct_bias(b1, None),
        normalize_inf(),
        *decay_block(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


@recipe
def nadam(
    learning_rate: ScalarOrSchedule = 2e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = True,
    momentum_decay: float | None = 4e-3,
    weight_decay: float | None = None,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """NAdam: Adam with Nesterov momentum and Dozat's momentum schedule, as
    ``torch.optim.NAdam``.

    Per leaf, with ``t`` the step number and ``psi = momentum_decay``::

        g    = -g;  g = g + wd * p               (if maximize; if weight_decay > 0)
        m, v as in Adam
        mu_t = b1 * (1 - 0.5 * 0.96**(t * psi));   P_t = mu_1 * ... * mu_t
        p    = p - lr * ((1 - mu_t) / (1 - P_t) * g
                         + mu_{t+1} / (1 - P_t * mu_{t+1}) * m) / (sqrt(v / (1 - b2**t)) + eps)

    ``momentum_decay=None`` drops the schedule (``mu_t = b1``), giving ``optax.nadam``::

        p    = p - lr * (b1 * m / (1 - b1**(t+1)) + (1 - b1) * g / (1 - b1**t))
                      / (sqrt(v / (1 - b2**t)) + eps)

    The chain is Adam's with the bias correction replaced by the Nesterov read-out::

        negate()                  # if maximize
        add_decayed_weights(wd)   # coupled L2, omitted when None or 0
        scale_by_moments(b1, b2, mu_dtype=mu_dtype)
        correct_bias_nesterov(b1, None, momentum_decay=momentum_decay)  # nesterov=False:
        normalize(eps, eps_root, b2=b2)                                 # correct_bias(b1, None)
        scale_by_learning_rate(learning_rate)

    Args:
      learning_rate: a number ``>= 0`` or a schedule. Default 2e-3.
      b1: decay of the first moment and base momentum, ``[0, 1)``. Default 0.9.
      b2: decay of the second moment, ``[0, 1)``. Default 0.999.
      eps: added to the root, ``>= 0``. Default 1e-8.
      eps_root: added inside the root of the bias-corrected ``v``, ``>= 0`` (optax's).
        Default 0.
      mu_dtype: the dtype ``m`` is stored in, or ``None`` for the params' (optax's; see
        :func:`adamx.adam`). Default None.
      nesterov: the Nesterov read-out (optax's flag). ``False`` gives Adam's bias
        correction, as ``optax.nadam(nesterov=False)`` does, and ``momentum_decay`` is then
        unused. Default True.
      momentum_decay: ``psi >= 0`` of the schedule, or ``None`` for none. Default 4e-3.
      weight_decay: coupled L2 coefficient, ``>= 0``; ``None`` (default) or the Python 0
        leave the block out; see :func:`nadamw` for the decoupled decay.
      maximize: ascend instead of descend. Default False.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> params = {"w": jnp.zeros(2)}
      >>> opt = adamx.nadam(learning_rate=0.1, momentum_decay=None)
      >>> updates, _ = opt.update({"w": jnp.array([1.0, -1.0])}, opt.init(params), params)
      >>> [round(float(u), 4) for u in updates["w"]]  # m^ = (b1/(1+b1) + 1) g on step 1
      [-0.1474, 0.1474]

    .. warning::
       ``optax.nadam`` has no momentum schedule: it equals ``nadam(momentum_decay=None)``
       (and ``adam(nesterov=True)``), which PyTorch's rule approaches only as
       ``psi -> inf``. Keras' Nadam schedules the momentum with ``0.96**t``
       (``momentum_decay=1.0`` here) and defaults to ``eps=1e-7``.

    References:
      Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop,
      https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ
    """
    check_learning_rate(learning_rate)
    return optax.chain(
        *maximize_block(maximize),
        *decay_block(weight_decay),
        scale_by_moments(b1, b2, mu_dtype=mu_dtype),
        _nesterov_read(b1, nesterov, momentum_decay),
        normalize(eps, eps_root, b2=b2),
        scale_by_learning_rate(learning_rate),
    )


def _nesterov_read(b1, nesterov: bool, momentum_decay) -> optax.GradientTransformation:
    """NAdam's correction, or Adam's with ``nesterov=False`` (``momentum_decay`` checked and
    unused)."""
    check_flag("nesterov", nesterov)
    block = correct_bias_nesterov(b1, None, momentum_decay=momentum_decay)
    return block if nesterov else correct_bias(b1, None)


@recipe
def nadamw(
    learning_rate: ScalarOrSchedule = 2e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: float = 1e-2,
    mask: Mask = None,
    *,
    nesterov: bool = True,
    momentum_decay: float | None = 4e-3,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """NAdamW: NAdam with decoupled weight decay, as
    ``torch.optim.NAdam(decoupled_weight_decay=True)``.

    Per leaf: :func:`nadam`'s direction ``d`` without decay in the gradient, then::

        p = p - lr * (d + wd * p)            i.e. p <- p * (1 - lr*wd) - lr * d

    The chain is NAdam's with the decay moved before the learning rate::

        negate()                  # if maximize
        scale_by_moments(b1, b2)
        correct_bias_nesterov(b1, None, momentum_decay=momentum_decay)
        normalize(eps, b2=b2)
        add_decayed_weights(wd, mask)
        scale_by_learning_rate(learning_rate)

    Args:
      learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov, momentum_decay, maximize:
        as in :func:`nadam`.
      weight_decay: decoupled decay, ``>= 0``. Default 1e-2 (PyTorch's AdamW default).
      mask: a tree of booleans like the params, or a function returning one; only
        ``True`` leaves are decayed. Default ``None`` (all).

    Returns:
      An ``optax.GradientTransformation`` that needs ``params`` in ``update``.

    .. warning::
       ``optax.nadamw`` has no momentum schedule (``momentum_decay=None`` here) and a
       default ``weight_decay`` of 1e-4.

    References:
      Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop,
      https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ;
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019,
      https://arxiv.org/abs/1711.05101
    """
    check_learning_rate(learning_rate)
    return optax.chain(
        *maximize_block(maximize),
        scale_by_moments(b1, b2, mu_dtype=mu_dtype),
        _nesterov_read(b1, nesterov, momentum_decay),
        normalize(eps, eps_root, b2=b2),
        *decay_block(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
