"""D-Adaptation and Prodigy: AdamW whose step size is an estimate of the distance to the
solution, grown from a small guess as the run goes."""

from __future__ import annotations

import jax
import optax

from adamx.blocks._base import PyTree, ScalarOrSchedule
from adamx.blocks._decay import negate
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._dadapt_blocks import (
    DAdaptAdamWState,
    ProdigyState,
    scale_by_dadapt_adamw,
    scale_by_prodigy,
)
from adamx.optimizers._guard import recipe


def distance_estimate(state: PyTree) -> jax.Array:
    """The distance estimate ``D`` of a :func:`adamx.prodigy` or :func:`adamx.dadapt_adamw`
    state (its ``estim_lr`` field): the step size the optimizer has learned, before the
    ``learning_rate`` multiplier and the bias correction.

    Args:
      state: the optimizer's state, also inside ``optax.inject_hyperparams``,
        ``optax.MultiSteps`` or a chain; it must hold exactly one such estimate.

    Returns:
      ``D``, a 0-d array (float32, or the params' dtype if wider).

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.prodigy()
      >>> params = {"w": jnp.ones(3)}
      >>> state = opt.init(params)
      >>> round(float(adamx.distance_estimate(state)), 12)  # estim_lr0 (in float32)
      1e-06
    """
    kinds = (ProdigyState, DAdaptAdamWState)
    found = [
        s
        for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, kinds))
        if isinstance(s, kinds)
    ]
    if len(found) != 1:
        raise ValueError(
            "`distance_estimate` needs the state of adamx.prodigy or adamx.dadapt_adamw "
            f"(or a chain holding one of their blocks), found {len(found)} such states in it."
        )
    return found[0].estim_lr


@recipe
def prodigy(
    learning_rate: ScalarOrSchedule = 1.0,
    betas: tuple[float, float] = (0.9, 0.999),
    beta3: float | None = None,
    eps: float = 1e-8,
    estim_lr0: float = 1e-6,
    estim_lr_coef: float = 1.0,
    weight_decay: float = 0.0,
    safeguard_warmup: bool = False,
) -> optax.GradientTransformation:
    """Prodigy: AdamW whose step size ``D`` estimates the distance to the solution, as
    ``optax.contrib.prodigy``.

    Per leaf, with ``k`` the number of earlier updates, ``t = k + 1``,
    ``c = sqrt(1 - b2**t) / (1 - b1**t)``, ``h = lr(k) D c`` and ``x_0`` the params at
    ``init``::

        m = b1 m + (1 - b1) D g;          v = b2 v + (1 - b2) (D g)**2
        s = b3 s + (h / D_0) D g          (safeguard_warmup: (D / D_0) D g)
        r = b3 r + (D / D_0) h <g, x_0 - x>                  (sums over every leaf)
        D = max(D, estim_lr_coef * r / sum|s|)               (D_0 = estim_lr0)
        x = x - h (m / (sqrt(v) + D eps) + wd x)             (h with the old D, eps the new)

    ``D`` starts at ``estim_lr0`` and only grows; read it with
    :func:`adamx.distance_estimate`. The recipe::

        scale_by_prodigy(learning_rate, betas, beta3, eps, estim_lr0, estim_lr_coef,
                         weight_decay, safeguard_warmup)   # D and the moments of D g
        scale_by_learning_rate(learning_rate)              # lr, a multiplier of D

    Args:
      learning_rate: a multiplier of the estimated step size (a number ``>= 0`` or a
        schedule; the authors advise 1.0 with a cosine or linear decay). Default 1.0.
      betas: ``(b1, b2)``, the moments' decays, each in ``[0, 1)``. Default (0.9, 0.999).
      beta3: decay of the estimate's sums ``s`` and ``r``, ``[0, 1)``, or None for
        ``sqrt(b2)``. Default None.
      eps: added to ``sqrt(v)``, scaled by ``D``, ``>= 0``. Default 1e-8.
      estim_lr0: the first estimate ``D_0``, ``> 0`` (an underestimate). Default 1e-6.
      estim_lr_coef: multiplies every new estimate, ``>= 0``. Default 1.0.
      weight_decay: decoupled decay, ``>= 0``, scaled by ``h`` as the step. Default 0.0.
      safeguard_warmup: leave ``lr`` out of ``s`` (steadier under a warmup). Default False.

    Returns:
      An ``optax.GradientTransformation`` that needs ``params`` in ``update``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, adamx
      >>> opt = adamx.prodigy()
      >>> x = {"w": jnp.zeros(3)}
      >>> state = opt.init(x)
      >>> loss = lambda x: jnp.sum((x["w"] - 5.0) ** 2)
      >>> for _ in range(50):
      ...     u, state = opt.update(jax.grad(loss)(x), state, x)
      ...     x = optax.apply_updates(x, u)
      >>> float(adamx.distance_estimate(state)) > 1.0  # grown from 1e-6 towards |x* - x_0|
      True

    .. warning::
       The state holds a copy of the initial params (``x_0``) beside the three moments: 4
       param-sized buffers, twice Adam's. ``D`` is one number for the whole tree: mask
       leaves with ``optax.masked`` or ``optax.partition``, not by giving them other rates.
       Differences from optax: the estimate's scalars are kept in float32 at least (optax
       keeps them in the params' dtype, bfloat16 included), the bias corrections are
       computed as in every adamx recipe (a few float32 ulps apart from optax's), and
       while every gradient so far was 0 ``D`` stays (optax's becomes NaN, 0 / 0).
       Real params only.

    References:
      Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner",
      ICML 2024, https://arxiv.org/abs/2306.06101
    """
    return optax.chain(
        scale_by_prodigy(
            learning_rate,
            betas,
            beta3,
            eps,
            estim_lr0,
            estim_lr_coef,
            weight_decay,
            safeguard_warmup,
        ),
        scale_by_learning_rate(learning_rate),
    )


@recipe
def dadapt_adamw(
    learning_rate: ScalarOrSchedule = 1.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    estim_lr0: float = 1e-6,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """D-Adaptation AdamW: AdamW whose step size ``D`` estimates the distance to the
    solution, as ``optax.contrib.dadapt_adamw``.

    Per leaf, with ``k`` the number of earlier updates, ``t = k + 1``,
    ``c = sqrt(1 - b2**t) / (1 - b1**t)``, ``h = lr(k) D c`` and ``b3 = sqrt(b2)``::

        r = b3 r + (1 - b3) h <g, s / (sqrt(v) + eps)>     (old s and v; sums over leaves)
        m = b1 m + (1 - b1) h g;          v = b2 v + (1 - b2) g**2
        s = b3 s + (1 - b3) h g
        D = max(D, r / ((1 - b3) sum|s|))                  (D_0 = estim_lr0)
        x = x - m / (sqrt(v) + eps) - wd h x

    ``D`` starts at ``estim_lr0`` and only grows; read it with
    :func:`adamx.distance_estimate`. The recipe::

        scale_by_dadapt_adamw(learning_rate, betas, eps, estim_lr0, weight_decay)
        negate()                       # m already holds the step sizes h, lr included

    Args:
      learning_rate: a multiplier of the estimated step size (a number ``>= 0`` or a
        schedule; the authors advise 1.0 with a decay). Default 1.0.
      betas: ``(b1, b2)``, the moments' decays, each in ``[0, 1)``. Default (0.9, 0.999).
      eps: added to ``sqrt(v)``, ``>= 0``. Default 1e-8.
      estim_lr0: the first estimate ``D_0``, ``> 0`` (an underestimate). Default 1e-6.
      weight_decay: decoupled decay, ``>= 0``, scaled by ``h``. Default 0.0.

    Returns:
      An ``optax.GradientTransformation`` that needs ``params`` in ``update``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, adamx
      >>> opt = adamx.dadapt_adamw()
      >>> x = {"w": jnp.zeros(3)}
      >>> state = opt.init(x)
      >>> loss = lambda x: jnp.sum((x["w"] - 5.0) ** 2)
      >>> for _ in range(50):
      ...     u, state = opt.update(jax.grad(loss)(x), state, x)
      ...     x = optax.apply_updates(x, u)
      >>> float(adamx.distance_estimate(state)) > 1e-3  # grown from 1e-6
      True

    .. warning::
       ``m`` holds past steps with their learning rates, so a new ``learning_rate`` (0
       included) reaches the step only as ``m`` forgets the old ones, at rate ``b1``: the
       params keep moving after the rate drops to 0, as with optax's. ``D`` is one number
       for the whole tree. Differences from optax: the estimate's scalars are kept in
       float32 at least, the bias corrections are adamx's (a few float32 ulps apart), and
       while every gradient so far was 0 ``D`` stays (optax's becomes NaN). Real params only.

    References:
      Defazio & Mishchenko, "Learning-Rate-Free Learning by D-Adaptation", ICML 2023,
      https://arxiv.org/abs/2301.07733
    """
    return optax.chain(
        scale_by_dadapt_adamw(learning_rate, betas, eps, estim_lr0, weight_decay),
        negate(),
    )
