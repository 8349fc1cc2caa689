"""``adamx.step``: update and apply in one call, through a fused kernel where one applies."""

from __future__ import annotations

from typing import Any

import optax

from adamx.blocks._base import PyTree, check_trees_match
from adamx.kernels._fused import adam_step
from adamx.kernels._fused_storage import storage_step


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
    means no copy. ``adamx.with_storage(adamx.adam(...), mu=..., nu=...)`` (or ``adamw``)
    with float32, bfloat16, bfloat16_sr or 8-bit moments has a kernel of its own
    (decode, update and encode in the same pass; the state as the XLA path makes it).
    The kernel is found from what the recipe describes (``update.adam_rule``, and
    ``update.stored_adam`` for ``with_storage``), never by the recipe calling a kernel.
    Any other optimizer (an ``optax.chain``, a wrapper, another recipe) takes the two
    calls above, as does ``optax.inject_hyperparams(adamx.adam)(...)`` (its
    wrapper hides the fused step: build ``adamx.adam`` from array hyperparameters inside the
    jitted function instead to keep it).

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
        return storage_step(stored, xla_step, grads, state, params)
    rule = getattr(optimizer.update, "adam_rule", None)
    if rule is not None:
        check_trees_match(grads, params, "grads", "params", dtypes=True)
        fused = getattr(optimizer.update, "fused", None)
        return adam_step(rule, fused, xla_step, grads, state, params)
    return xla_step(grads, state, params)
