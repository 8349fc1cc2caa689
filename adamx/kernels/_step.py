"""``adamx.step``: update and apply in one call, through a fused kernel where one applies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax

from adamx.blocks._base import PyTree, check_trees_match
from adamx.kernels._fused import adam_step
from adamx.kernels._fused_flat import flat_step, is_flat
from adamx.kernels._fused_momentum import lion_step, sgd_step
from adamx.kernels._fused_storage import storage_step

# What a recipe's ``update`` may describe itself as, and the step that reads it.
_KERNEL_STEPS: dict[str, Callable[..., tuple[PyTree, PyTree]]] = {
    "adam_rule": adam_step,
    "lion_rule": lion_step,
    "sgd_rule": sgd_step,
}


def step(
    optimizer: optax.GradientTransformation,
    grads: PyTree,
    state: PyTree,
    params: PyTree,
    **extra_args: Any,
) -> tuple[PyTree, PyTree]:
    """One optimizer step: ``update`` and ``optax.apply_updates`` together.

    ``params, state = adamx.step(opt, grads, state, params)`` is
    ``updates, state = opt.update(grads, state, params)`` followed by
    ``params = optax.apply_updates(params, updates)``: the same float32 operations, equal up
    to rounding (XLA's own path is within an ulp or two of the kernel's exact float32). For
    :func:`adamx.adam` and :func:`adamx.adamw` on CPU it is one pass of the fused kernel
    that writes the new parameters in place (28 bytes per float32 parameter instead of
    36 through ``update`` + ``apply_updates``, or about 40 through XLA); donate the params
    and state to the jitted step (``jax.jit(..., donate_argnums=...)``) so that in place
    means no copy. :func:`adamx.lion` and :func:`adamx.sgd` with momentum have kernels of
    their own (20 bytes per float32 parameter, the state written in place).
    ``adamx.with_storage(adamx.adam(...), mu=..., nu=...)`` (or ``adamw``) with float32,
    bfloat16, bfloat16_sr or 8-bit moments has a kernel of its own (decode, update and
    encode in the same pass; the state as the XLA path makes it), and with
    ``mu="flat", nu="flat"`` the float32 kernel runs on the flat buffers in place.
    The kernel is found from what the recipe describes (``update.adam_rule``,
    ``update.lion_rule``, ``update.sgd_rule``, and ``update.stored_adam`` for
    ``with_storage``), never by the recipe calling a kernel.
    Any other optimizer (an ``optax.chain``, a wrapper, another recipe) takes the two
    calls above, as does ``optax.inject_hyperparams(adamx.adam)(...)`` (its
    wrapper hides the fused step: build ``adamx.adam`` from array hyperparameters inside the
    jitted function instead to keep it), and so does ``adamx.with_storage`` of Lion or SGD.

    Args:
      optimizer: any ``optax.GradientTransformation``.
      grads: the gradients, a tree like ``params``.
      state: the optimizer's state.
      params: the current parameters.
      **extra_args: extra keyword arguments of ``update`` (``value=loss``, ...), passed
        on to an optimizer that takes them (``optax.GradientTransformationExtraArgs``)
        and ignored by one that does not; the fused kernels' recipes ignore them.

    Returns:
      ``(new_params, new_state)``.

    Example:
      >>> import jax, jax.numpy as jnp, adamx
      >>> opt = adamx.adam(learning_rate=0.1)
      >>> params = {"w": jnp.ones(3)}
      >>> state = opt.init(params)
      >>> # donated arguments in the order of the results, so each buffer is reused in place
      >>> train = jax.jit(lambda p, s, g: adamx.step(opt, g, s, p), donate_argnums=(0, 1))
      >>> params, state = train(params, state, {"w": jnp.array([1.0, -2.0, 0.0])})
      >>> [round(float(x), 4) for x in params["w"]]
      [0.9, 1.1, 1.0]
    """
    if params is None:
        raise ValueError(
            "adamx.step needs the current params: call adamx.step(opt, grads, state, params)."
        )

    inner = optax.with_extra_args_support(optimizer)

    def xla_step(grads, state, params):
        updates, state = inner.update(grads, state, params, **extra_args)
        return optax.apply_updates(params, updates), state

    stored = getattr(optimizer.update, "stored_adam", None)
    if stored is not None:
        if is_flat(stored):
            return flat_step(stored, xla_step, grads, state, params)
        return storage_step(stored, xla_step, grads, state, params)
    fused = getattr(optimizer.update, "fused", None)
    for attribute, kernel_step in _KERNEL_STEPS.items():
        rule = getattr(optimizer.update, attribute, None)
        if rule is not None:
            check_trees_match(grads, params, "grads", "params", dtypes=True)
            return kernel_step(rule, fused, xla_step, grads, state, params)
    return xla_step(grads, state, params)
