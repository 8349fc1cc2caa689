"""RMSProp: the gradient over the root of a moving average of its square."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    ScalarOrSchedule,
    abs_sq,
    check_decay,
    check_flag,
    check_learning_rate,
    check_moments,
    check_range,
    transformation,
)
from adamx.blocks._correction import correct_bias
from adamx.blocks._decay import decay_block, maximize_block
from adamx.blocks._moments import ema_of_squares, scale_by_moments
from adamx.blocks._normalize import normalize
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._adagrad import use_gradient
from adamx.optimizers._guard import recipe
from adamx.optimizers._sgd import momentum_block


def center_second_moment() -> optax.GradientTransformation:
    """Replace the second moment of a :class:`adamx.Moments` record by the variance.

    Per leaf, with ``m`` and ``v`` the moving averages of ``g`` and ``g**2``::

        v = v - m**2

    Centered RMSProp divides by the root of this estimate of the gradient's variance
    instead of its raw second moment. Only the record changes; the moment block's state
    keeps the raw ``v``. Where ``v`` has overflowed to ``inf`` it is kept (not
    ``inf - inf = NaN``), so the step there is 0.

    Returns:
      A stateless ``optax.GradientTransformation`` from a ``Moments`` record to another.

    References:
      Graves, "Generating Sequences With Recurrent Neural Networks", 2013, eq. (38)-(41),
      https://arxiv.org/abs/1308.0850
    """

    def update(updates, state, params=None):
        del params
        rec = check_moments(updates, "adamx.center_second_moment")
        if rec.mu is None or rec.nu is None:
            raise ValueError(
                "adamx.center_second_moment needs both moments; build the moment block with "
                "numeric `b1` and `b2`."
            )
        # an overflowed v (inf) is kept: v - m*m would be inf - inf = NaN where m*m is inf too
        nu = jax.tree.map(
            lambda v, m: jnp.where(jnp.isinf(v), v, v - abs_sq(m).astype(v.dtype)), rec.nu, rec.mu
        )
        return rec._replace(nu=nu), state

    return transformation(lambda params: optax.EmptyState(), update)


@recipe
def rmsprop(
    learning_rate: ScalarOrSchedule = 1e-2,
    decay: float = 0.99,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = False,
    centered: bool = False,
    momentum: float | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
    *,
    weight_decay: float | None = None,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """RMSProp, as ``torch.optim.RMSprop`` (``decay`` is PyTorch's ``alpha``).

    Per leaf::

        g   = -g                                       (maximize)
        g   = g + wd * p                               (coupled L2, if weight_decay > 0)
        v   = decay * v + (1 - decay) * g**2           (v starts at initial_scale)
        m   = decay * m + (1 - decay) * g              (centered only)
        v, m = v / (1 - decay**t), m / (1 - decay**t)  (bias_correction only)
        a   = sqrt(v - m**2) + eps   if centered,  else  sqrt(v) + eps
              (eps inside the root with eps_in_sqrt: sqrt(v - m**2 + eps), sqrt(v + eps))
        b   = mu * b + g / a;   p = p - lr * b         (momentum mu; b starts at 0)
        p   = p - lr * (g / a + mu * b)                (nesterov)
        p   = p - lr * g / a                           (momentum None)

    The recipe is Adam's chain with no bias correction, the gradient as numerator, and
    SGD's momentum buffer on the direction::

        negate()                                   # maximize only
        add_decayed_weights(weight_decay)          # coupled L2, omitted when None or 0
        scale_by_moments(b1=decay if centered else None, b2=decay)   # v from initial_scale
        correct_bias(b1, b2)                       # bias_correction only
        center_second_moment()                     # centered only: v <- v - m**2
        use_gradient()                             # m <- g
        normalize(eps)                             # normalize(0, eps_root=eps)
        trace_momentum(momentum, nesterov=...)     # omitted when momentum is None
        scale_by_learning_rate(learning_rate)

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. Default 1e-2.
      decay: of both moving averages, ``[0, 1)``. Default 0.99 (PyTorch's; optax and
        Keras use 0.9).
      eps: ``>= 0``, added to the root (inside it with ``eps_in_sqrt``). Default 1e-8.
      initial_scale: the start of ``v``, ``>= 0`` (optax's). Default 0.
      eps_in_sqrt: put ``eps`` inside the root (optax's reading and default). Default
        False (PyTorch's).
      centered: divide by the root of the variance ``v - m**2``. Default False.
      momentum: ``mu`` in ``[0, 1)``; ``None`` (default, optax's) keeps no buffer, a
        number (0 included, as in optax) keeps one. The buffer holds the directions, not
        the steps, so a schedule scales each step by its own rate. Default None.
      nesterov: Nesterov momentum, ``g / a + mu * b`` (optax's flag); needs a positive
        ``momentum``, unused when it is ``None``. Default False.
      bias_correction: divide ``v`` (and ``m`` when centered) by ``1 - decay**t`` (optax's
        flag). Default False.
      weight_decay: coupled L2 coefficient, ``>= 0``; ``None`` (default) or the Python 0
        leave the block out.
      maximize: ascend instead of descend. Default False.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.rmsprop(learning_rate=0.01, decay=0.75)
      >>> params = {"w": jnp.ones(2)}
      >>> state = opt.init(params)
      >>> updates, state = opt.update({"w": jnp.array([1.0, -3.0])}, state, params)
      >>> [round(float(u), 4) for u in updates["w"]]   # g / sqrt(0.25 g**2) = 2 sign(g)
      [-0.02, 0.02]

    .. warning::
       optax.rmsprop puts ``eps`` inside the root by default and uses ``decay=0.9``:
       ``rmsprop(lr, decay=0.9, eps=e, eps_in_sqrt=True)`` is ``optax.rmsprop(lr,
       decay=0.9, eps=e)``, centered or not. optax's momentum trace comes after the
       learning rate and so holds ``lr``-scaled steps: with momentum the two agree only
       for a constant learning rate. Keras: ``rho=0.9``, ``epsilon=1e-7`` inside the
       root, and ``lr`` inside the momentum buffer.

    References:
      Hinton, Srivastava & Swersky, "Neural Networks for Machine Learning", lecture 6e,
      2012, https://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf;
      centered: Graves, "Generating Sequences With Recurrent Neural Networks", 2013,
      https://arxiv.org/abs/1308.0850
    """
    check_learning_rate(learning_rate)
    check_decay("decay", decay)
    check_range("eps", eps, low=0.0)
    check_range("initial_scale", initial_scale, low=0.0)
    check_flag("centered", centered)
    check_flag("eps_in_sqrt", eps_in_sqrt)
    check_flag("bias_correction", bias_correction)
    b1 = decay if centered else None
    squares = ema_of_squares()._replace(initial_value=initial_scale)
    return optax.chain(
        *maximize_block(maximize),
        *decay_block(weight_decay),
        scale_by_moments(b1=b1, b2=decay, nu_rule=squares),
        *([correct_bias(b1, decay)] if bias_correction else []),
        *([center_second_moment()] if centered else []),
        use_gradient(),
        normalize(0.0, eps_root=eps) if eps_in_sqrt else normalize(eps),
        *momentum_block(momentum, nesterov=nesterov),
        scale_by_learning_rate(learning_rate),
    )
