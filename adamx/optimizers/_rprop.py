"""Rprop: a step size per element that grows while its gradient keeps its sign."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    PyTree,
    abstract_or_array,
    as_scalar,
    check_range,
    check_trees_match,
    compute_dtype,
    concrete_value,
    is_complex,
    map_unzip,
    transformation,
)
from adamx.blocks._decay import maximize_block, negate
from adamx.optimizers._guard import recipe

READINGS = ("torch", "optax")


class RpropState(NamedTuple):
    """State of :func:`scale_by_rprop`.

    Attributes:
      step_size: each element's step size, a tree like the params in their dtypes (starts
        at ``learning_rate``; a complex leaf keeps one size for the real and one for the
        imaginary part, as torch does).
      prev: what the next sign comparison reads, like the params: the last gradient, zeroed
        where its sign flipped (``reading="torch"``), or the last step ``step_size *
        sign(g)``, likewise zeroed (``reading="optax"``).
    """

    step_size: PyTree
    prev: PyTree


def _check_open(name: str, value, low: float, high: float) -> None:
    """``value`` a number in the open interval ``(low, high)`` (traced values pass)."""
    check_range(name, value, low=low, high=high)
    v = concrete_value(value)
    if v is not None and not low < v < high:
        raise ValueError(f"`{name}` must lie in ({low}, {high}), got {name}={value!r}.")


def check_rprop(learning_rate, eta_minus, eta_plus, min_step_size, max_step_size, reading):
    """The Rprop options, checked where the optimizer is built."""
    if callable(learning_rate):
        raise ValueError(
            "`learning_rate` of Rprop is the initial step size of every element, a number "
            f"in [0.0, inf); the step sizes then adapt themselves, so a schedule has no "
            f"meaning here, got learning_rate={learning_rate!r}."
        )
    check_range("learning_rate", learning_rate, low=0.0)
    _check_open("eta_minus", eta_minus, 0.0, 1.0)
    _check_open("eta_plus", eta_plus, 1.0, float("inf"))
    check_range("min_step_size", min_step_size, low=0.0)
    check_range("max_step_size", max_step_size, low=0.0)
    lo, hi = concrete_value(min_step_size), concrete_value(max_step_size)
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(
            f"`min_step_size` must not exceed `max_step_size`, got min_step_size="
            f"{min_step_size!r} and max_step_size={max_step_size!r}."
        )
    if reading not in READINGS:
        raise ValueError(f"`reading` must be one of {READINGS}, got reading={reading!r}.")


def scale_by_rprop(
    learning_rate: float = 1e-2,
    eta_minus: float = 0.5,
    eta_plus: float = 1.2,
    min_step_size: float = 1e-6,
    max_step_size: float = 50.0,
    *,
    reading: str = "torch",
) -> optax.GradientTransformation:
    """Rprop's step ``step_size * sign(g)`` per element, the size adapted to sign changes.

    Per element, with ``prev`` the last gradient (0 before the first update) and the step
    size ``s`` starting at ``learning_rate``; ``reading="torch"`` (``torch.optim.Rprop``)::

        c = g * prev
        s = clip(s * (eta_plus if c > 0 else eta_minus if c < 0 else 1),
                 min_step_size, max_step_size)
        g = 0 where c < 0                 (no step after a sign change)
        d = s * sign(g);   prev = g

    ``reading="optax"`` (``optax.scale_by_rprop``) keeps ``prev`` as the last step
    ``s * sign(g)`` instead, leaves ``s`` unclipped where ``c = 0``, and hands on the step
    made at the *previous* update (0 on the first, and 0 where the sign flipped)::

        d = 0 where c < 0, else prev;     prev = 0 where c < 0, else s * sign(g)

    The result is a direction to descend along: follow it with :func:`adamx.negate`. A
    complex leaf takes this rule on its real and imaginary parts apart, as torch does.

    Args:
      learning_rate: the initial step size, a number ``>= 0`` (not a schedule).
        Default 1e-2 (torch's).
      eta_minus: the factor after a sign change, ``(0, 1)``. Default 0.5.
      eta_plus: the factor while the sign holds, ``(1, inf)``. Default 1.2.
      min_step_size: the smallest step size, ``>= 0``. Default 1e-6.
      max_step_size: the largest step size, ``>= min_step_size``. Default 50.0.
      reading: ``"torch"`` (default) or ``"optax"``, as above.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`RpropState`.

    References:
      Riedmiller & Braun, "A Direct Adaptive Method for Faster Backpropagation Learning:
      The RPROP Algorithm", IEEE ICNN 1993, https://doi.org/10.1109/ICNN.1993.298623
    """
    check_rprop(learning_rate, eta_minus, eta_plus, min_step_size, max_step_size, reading)
    torch_reading = reading == "torch"

    def init(params):
        def leaf(p):
            p = abstract_or_array(p)
            lr = as_scalar(learning_rate, p.dtype)
            if is_complex(p.dtype):  # one size for each part
                lr = lr + 1j * lr
            return jnp.full_like(p, lr)  # sharded like a NamedSharding param

        return RpropState(
            step_size=jax.tree.map(leaf, params),
            prev=jax.tree.map(lambda p: jnp.zeros_like(abstract_or_array(p)), params),
        )

    def real_leaf(g, s, prev):
        dtype = g.dtype
        em, ep = as_scalar(eta_minus, dtype), as_scalar(eta_plus, dtype)
        lo, hi = as_scalar(min_step_size, dtype), as_scalar(max_step_size, dtype)
        c = g * prev
        flipped = c < 0
        zero = jnp.zeros([], dtype)
        if torch_reading:
            # The same numbers as clip(s * factor): the outer op a select of full-size
            # operands, so XLA keeps s_new as one array that the step reads, instead of
            # recomputing it from the old s and prev (which then had to be copied before
            # being overwritten in place: 68 bytes moved per parameter, now 52).
            s_new = jnp.where(
                c > 0,
                jnp.clip(s * ep, lo, hi),
                jnp.where(flipped, jnp.clip(s * em, lo, hi), jnp.clip(s, lo, hi)),
            )
            g = jnp.where(flipped, zero, g)
            return s_new * jnp.sign(g), s_new, g
        factor = jnp.where(c > 0, ep, jnp.where(flipped, em, jnp.ones([], dtype)))
        s_new = jnp.where(c == 0, s, jnp.clip(s * factor, lo, hi))
        d = jnp.where(flipped, zero, prev)
        return d, s_new, jnp.where(flipped, zero, s_new * jnp.sign(g))

    def leaf(g, s, prev):
        g = jnp.asarray(g)
        dtype = compute_dtype(s.dtype)
        if is_complex(dtype):
            parts = [
                real_leaf(f(g).astype(f(s).dtype), f(s), f(prev)) for f in (jnp.real, jnp.imag)
            ]
            out = [jax.lax.complex(re, im) for re, im in zip(*parts)]
        else:
            out = real_leaf(g.astype(dtype), s.astype(dtype), prev.astype(dtype))
        return out[0].astype(g.dtype), out[1].astype(s.dtype), out[2].astype(prev.dtype)

    def update(updates, state, params=None):
        del params
        check_trees_match(updates, state.step_size, "the updates", "the optimizer state")
        d, s, prev = map_unzip(leaf, 3, updates, state.step_size, state.prev)
        return d, RpropState(step_size=s, prev=prev)

    return transformation(init, update)


@recipe
def rprop(
    learning_rate: float = 1e-2,
    eta_minus: float = 0.5,
    eta_plus: float = 1.2,
    min_step_size: float = 1e-6,
    max_step_size: float = 50.0,
    *,
    maximize: bool = False,
    reading: str = "torch",
) -> optax.GradientTransformation:
    """Rprop: each element steps by its own size against the sign of its gradient; the
    size grows while the sign holds and shrinks when it flips, as ``torch.optim.Rprop``.

    Per element, ``s`` starting at ``learning_rate`` and ``prev`` at 0::

        c = g * prev
        s = clip(s * (eta_plus if c > 0 else eta_minus if c < 0 else 1),
                 min_step_size, max_step_size)
        g = 0 where c < 0;   p = p - s * sign(g);   prev = g

    The recipe::

        negate()                                   # maximize only
        scale_by_rprop(learning_rate, eta_minus, eta_plus, min_step_size, max_step_size,
                       reading=reading)
        negate()                                   # descend

    Args:
      learning_rate: the initial step size, a number ``>= 0`` (Rprop's sizes adapt
        themselves, so it takes no schedule; under ``optax.inject_hyperparams`` a new value
        reaches only a fresh ``init``). Default 1e-2 (torch's; optax's has none).
      eta_minus: the factor after a sign change, ``(0, 1)``. Default 0.5.
      eta_plus: the factor while the sign holds, ``(1, inf)``. Default 1.2.
      min_step_size: the smallest step size (torch's ``step_sizes[0]``), ``>= 0``.
        Default 1e-6.
      max_step_size: the largest (torch's ``step_sizes[1]``), ``>= min_step_size``.
        Default 50.0.
      maximize: ascend instead of descend (torch's). Default False.
      reading: ``"torch"`` (default), the rule above; ``"optax"``, the rule of
        ``optax.rprop`` (see the warning).

    Returns:
      An ``optax.GradientTransformation`` whose state holds :class:`RpropState`.

    Example:
      >>> import jax.numpy as jnp, optax, adamx
      >>> opt = adamx.rprop(learning_rate=0.1)
      >>> params = {"w": jnp.zeros(2)}
      >>> state = opt.init(params)
      >>> for g in ([1.0, 1.0], [1.0, -1.0], [1.0, 1.0]):
      ...     u, state = opt.update({"w": jnp.asarray(g)}, state, params)
      ...     print([round(float(x), 4) for x in u["w"]])
      [-0.1, -0.1]
      [-0.12, -0.0]
      [-0.144, -0.05]

    .. warning::
       ``optax.rprop`` (``reading="optax"``) differs from torch's in three ways: it moves by
       the step it computed at the *previous* update (its first update is 0; where the sign
       flips it moves by nothing, and so does torch); it leaves a step size unclipped when
       the sign comparison is 0 (torch clips it, which matters only for a
       ``learning_rate`` outside ``[min_step_size, max_step_size]``); and it has no
       ``maximize``. Both forget the gradient after a sign change (the next comparison is
       0: the size holds). Rprop is meant for full-batch gradients: mini-batch noise flips
       signs at random and shrinks the sizes.

    References:
      Riedmiller & Braun, "A Direct Adaptive Method for Faster Backpropagation Learning:
      The RPROP Algorithm", IEEE ICNN 1993, https://doi.org/10.1109/ICNN.1993.298623
    """
    check_rprop(learning_rate, eta_minus, eta_plus, min_step_size, max_step_size, reading)
    return optax.chain(
        *maximize_block(maximize),
        scale_by_rprop(
            learning_rate, eta_minus, eta_plus, min_step_size, max_step_size, reading=reading
        ),
        negate(),
    )
