"""ASGD: SGD with a decaying step size and a running average of the iterates."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    PyTree,
    ScalarOrSchedule,
    abstract_or_array,
    as_scalar,
    check_learning_rate,
    check_range,
    check_trees_match,
    compute_dtype,
    find_one_state,
    map_unzip,
    require_params,
    safe_increment,
    scalar_dtype,
    transformation,
)
from adamx.blocks._decay import add_decayed_weights, decay_block, maximize_block
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._guard import recipe


class AverageState(NamedTuple):
    """State of :func:`average_params`.

    Attributes:
      step: the number of updates taken so far, int32 (torch's ``state["step"]``; not
        ``count``, which is the learning-rate block's in :func:`adamx.asgd`).
      ax: the running average of the params after each update, a tree like the params in
        their dtypes (the params themselves until the averaging starts); read it with
        :func:`adamx.asgd_eval_params`.
    """

    step: jax.Array
    ax: PyTree


def average_params(t0: float = 1e6) -> optax.GradientTransformation:
    """Keep the running average ``ax`` of the params each update leads to; the updates pass
    through unchanged.

    Put last in a chain (it reads the final update ``u``). Per leaf, with ``k`` the number
    of earlier updates (0 on the first)::

        p_new = p + u
        mu    = 1 / max(1, k - t0)
        ax    = p_new                     where mu = 1
        ax    = ax + mu * (p_new - ax)    otherwise

    so ``ax`` follows the params until ``k > t0 + 1`` and then averages the iterates from
    there on, as ``torch.optim.ASGD`` does.

    Args:
      t0: the number of updates before the averaging starts, ``>= 0``. Default 1e6.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`AverageState`; it needs
      ``params`` in ``update``.

    References:
      Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging", SIAM J.
      Control Optim. 30(4), 1992, https://doi.org/10.1137/0330046
    """
    check_range("t0", t0, low=0.0)

    def init(params):
        def leaf(p):
            p = abstract_or_array(p)
            if isinstance(p, jax.ShapeDtypeStruct):
                return jnp.zeros_like(p)
            return jnp.array(p, copy=True)

        return AverageState(step=jnp.zeros([], jnp.int32), ax=jax.tree.map(leaf, params))

    def update(updates, state, params=None):
        require_params(params, "adamx.average_params")
        check_trees_match(updates, state.ax, "the updates", "the optimizer state")
        sd = scalar_dtype()
        k = state.step.astype(sd)
        mu = 1 / jnp.maximum(jnp.ones([], sd), k - as_scalar(t0, sd))

        def leaf(p, ax, u):
            p, u = jnp.asarray(p), jnp.asarray(u)
            new = (p + u).astype(p.dtype)  # what optax.apply_updates gives
            dtype = compute_dtype(ax.dtype)
            a, n = ax.astype(dtype), new.astype(dtype)
            mean = a + (n - a) * mu.astype(dtype)
            return (jnp.where(mu == 1, n, mean).astype(ax.dtype),)

        (ax,) = map_unzip(leaf, 1, params, state.ax, updates)
        return updates, AverageState(step=safe_increment(state.step), ax=ax)

    return transformation(init, update)


def _find_state(state) -> AverageState:
    return find_one_state(
        state,
        AverageState,
        "asgd_eval_params",
        "the state of adamx.asgd (or of a chain with one adamx.average_params)",
    )


def asgd_eval_params(state: PyTree) -> PyTree:
    """The averaged params ``ax`` of :func:`adamx.asgd`, the point to evaluate.

    ASGD trains the params with SGD steps and keeps their running average (from update
    ``t0 + 2`` on; the params themselves before). The average is the point Polyak and
    Juditsky's guarantees are about: evaluate, checkpoint for inference and export it.

    Args:
      state: the state of :func:`adamx.asgd` or of a chain holding one
        :func:`adamx.average_params` (also under ``optax.inject_hyperparams``,
        ``optax.MultiSteps`` and other wrappers).

    Returns:
      ``ax``, a tree like the params in their dtypes (torch's ``state[p]["ax"]``).

    Example:
      >>> import jax.numpy as jnp, optax, adamx
      >>> opt = adamx.asgd(learning_rate=0.5, lambd=0.0, t0=0.0)
      >>> params = {"w": jnp.asarray([4.0])}
      >>> state = opt.init(params)
      >>> for _ in range(3):
      ...     u, state = opt.update({"w": jnp.asarray([2.0])}, state, params)
      ...     params = optax.apply_updates(params, u)
      >>> float(params["w"][0]), float(adamx.asgd_eval_params(state)["w"][0])
      (1.0, 1.5)
    """
    return _find_state(state).ax


def asgd_learning_rate(learning_rate, lambd, alpha) -> ScalarOrSchedule:
    """ASGD's step size after ``k`` updates, ``lr(k) / (1 + lambd * lr(k) * k)**alpha``, as
    a schedule (in float64 when ``jax_enable_x64`` is on, as torch forms it)."""

    def schedule(count):
        sd = scalar_dtype()
        k = jnp.asarray(count, sd)
        lr = learning_rate(count) if callable(learning_rate) else learning_rate
        lr = jnp.asarray(lr, sd)
        return lr / (1 + as_scalar(lambd, sd) * lr * k) ** as_scalar(alpha, sd)

    return schedule


@recipe
def asgd(
    learning_rate: ScalarOrSchedule = 1e-2,
    lambd: float = 1e-4,
    alpha: float = 0.75,
    t0: float = 1e6,
    *,
    weight_decay: float | None = None,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """ASGD: SGD with the step size ``lr / (1 + lambd lr k)**alpha``, a decay ``lambd`` and
    a running average of the iterates to evaluate, as ``torch.optim.ASGD``.

    Per leaf, with ``k`` the number of earlier updates (0 on the first)::

        g   = g + wd * p                                  (weight_decay)
        eta = lr(k) / (1 + lambd * lr(k) * k)**alpha
        p   = p * (1 - lambd * eta) - eta * g
        ax  = p                     while k <= t0 + 1
        ax  = ax + (p - ax) / (k - t0)                    afterwards

    The recipe is SGD's chain with ``lambd`` as a second weight decay, the step size as a
    schedule and the averaging block last::

        negate()                                          # maximize only
        add_decayed_weights(weight_decay)                 # omitted when None
        add_decayed_weights(lambd)
        scale_by_learning_rate(eta)
        average_params(t0)

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. Default 1e-2.
      lambd: the decay term, ``>= 0``; it also slows the step size. Default 1e-4.
      alpha: the power of the step-size decay, ``>= 0``. Default 0.75.
      t0: the number of updates before the averaging starts, ``>= 0``. Default 1e6.
      weight_decay: coupled (L2) decay, ``>= 0``; None (default) or 0 leave it out.
      maximize: ascend instead of descend. Default False.

    Returns:
      An ``optax.GradientTransformation`` that needs ``params`` in ``update``; read the
      average with :func:`adamx.asgd_eval_params`.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.asgd(learning_rate=0.1, lambd=0.5, alpha=1.0)
      >>> params = {"w": jnp.ones(2)}
      >>> state = opt.init(params)
      >>> u, state = opt.update({"w": jnp.asarray([1.0, -1.0])}, state, params)
      >>> [round(float(x), 4) for x in u["w"]]   # -0.1 * (g + 0.5 p)
      [-0.15, 0.05]
      >>> u, state = opt.update({"w": jnp.asarray([1.0, -1.0])}, state, params)
      >>> [round(float(x), 4) for x in u["w"]]   # eta = 0.1 / (1 + 0.05)
      [-0.1429, 0.0476]

    .. warning::
       Defaults are torch's: with ``t0=1e6`` the average is the params themselves for the
       first million updates; set ``t0`` to the update the averaging should start from.
       The step size reads ``lr(k)`` at the current update, where torch forms the next
       step size with the group's ``lr`` at the end of the previous one (the same for a
       constant rate). optax has no ASGD.

    References:
      Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging", SIAM J.
      Control Optim. 30(4), 1992, https://doi.org/10.1137/0330046; Bottou, "Stochastic
      Gradient Descent Tricks", Neural Networks: Tricks of the Trade, 2012,
      https://doi.org/10.1007/978-3-642-35289-8_25
    """
    check_learning_rate(learning_rate)
    check_range("lambd", lambd, low=0.0)
    check_range("alpha", alpha, low=0.0)
    check_range("t0", t0, low=0.0)
    return optax.chain(
        *maximize_block(maximize),
        *decay_block(weight_decay),
        add_decayed_weights(lambd),
        scale_by_learning_rate(asgd_learning_rate(learning_rate, lambd, alpha)),
        average_params(t0),
    )
