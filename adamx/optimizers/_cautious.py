"""Cautious optimizers: drop the components of a step that go against the gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    check_optional_range,
    compute_dtype,
    concrete_value,
    is_complex,
)
from adamx.optimizers._adam_rule import COUPLED


def _check_wrappable(opt: optax.GradientTransformation) -> None:
    """Refuse the recipes whose description says the step cannot be split as
    :func:`cautious` splits it (coupled decay, ascent)."""
    if not isinstance(opt, optax.GradientTransformation):
        raise ValueError(
            f"`opt` must be an optax.GradientTransformation (e.g. adamx.adamw(...)), got "
            f"opt={opt!r}."
        )
    for name in ("adam_rule", "sgd_rule"):
        rule = getattr(opt.update, name, None)
        if rule is None:
            continue
        if rule.decay == COUPLED:
            raise ValueError(
                "`opt` decays the weights through the gradient (coupled L2 weight_decay), "
                "which cautious cannot tell apart from the gradient's own direction; use "
                "decoupled decay (adamx.adamw, or weight_decay=None and "
                "optax.add_decayed_weights in front of adamx.cautious(...))."
            )
        if rule.maximize:
            raise ValueError(
                "`opt` ascends (maximize=True): cautious keeps the components of the step "
                "that descend the gradient it is given; negate the gradients instead."
            )


def cautious(
    opt: optax.GradientTransformation, *, eps: float | None = None
) -> optax.GradientTransformationExtraArgs:
    """The Cautious form of a recipe: the components of its step whose sign disagrees with
    the gradient's are dropped, the others scaled up.

    Per leaf of ``d`` elements, with ``u`` the update of ``opt`` (the step, added to the
    params), ``u0`` its update at zero params (the step the gradient makes) and ``g`` the
    gradient::

        phi = (u0 * g < 0)                 1 where the step descends, else 0 (strict)
        s   = 1 / (mean(phi) + eps)        eps=None: 1 / d, i.e. s = d / (sum(phi) + 1)
        u   = s * phi * u0 + (u - u0)

    ``u - u0`` is the part of the update that reads the params: the decoupled weight decay
    ``-lr * wd * p`` of :func:`adamx.adamw` and :func:`adamx.lion`, which the paper keeps
    out of the mask, unscaled, at the full learning rate (Algorithm 2, C-AdamW).
    ``cautious(adamx.adamw(...))`` is C-AdamW and ``cautious(adamx.lion(...))`` C-Lion.
    Any recipe whose update reads the params only through a decoupled decay may be wrapped
    (adam, nadamw, adamaxw, signum, sgd with momentum, laprop, mars, ...). Recipes whose
    direction reads the params (lamb, lars, adafactor, novograd, schedule-free, and coupled
    L2) cannot be split this way: their masked part would be their step at zero params.
    ``adam(weight_decay=...)`` and ``sgd(weight_decay=...)`` (coupled) and
    ``maximize=True`` are refused. Without ``params`` the update is ``s * phi * u``.

    ``opt.update`` is called twice, with the params and with zeros; under ``jax.jit`` XLA
    computes the shared part (the moments) once. The state is ``opt``'s own, so
    :func:`adamx.with_storage` and :func:`adamx.skip_nonfinite` may wrap ``opt`` or the
    result. Real params only. The fused kernels of :func:`adamx.step` do not apply: it
    takes the XLA path.

    Args:
      opt: the recipe to make cautious, e.g. ``adamx.adamw(3e-4, weight_decay=0.1)``.
      eps: the paper's one-line form ``1 / (mean(phi) + eps)`` (Algorithm 1), ``> 0``; or
        ``None`` for its C-AdamW, ``d / (sum(phi) + 1)`` (Algorithm 2), which is
        ``eps = 1 / d`` per leaf. Default None.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``opt``'s state.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.cautious(adamx.sgd(learning_rate=0.1, momentum=0.9))
      >>> params = {"w": jnp.zeros(3)}
      >>> state = opt.init(params)
      >>> _, state = opt.update({"w": jnp.asarray([1.0, 1.0, 1.0])}, state, params)
      >>> u, _ = opt.update({"w": jnp.asarray([1.0, -0.5, -0.5])}, state, params)
      >>> # momentum 0.9 + g = [1.9, 0.4, 0.4]: the last two steps climb g = -0.5 and are
      >>> # dropped; the first is scaled by 3 / (1 + 1)
      >>> [round(float(x), 4) for x in u["w"]]
      [-0.285, 0.0, 0.0]

    .. warning::
       The scale is per leaf (per tensor, as in the authors' code), where the paper's ``d``
       reads as the whole model's size. The paper's Algorithm 2 decays the weights after
       the masked step, ``w = (w - s*phi*step) (1 - lr wd)``; here, as in the authors'
       C-AdamW and C-Lion code (and AdamW), the decay is of the weights before the step,
       which differs by ``lr wd`` times the masked step. The authors' later code scales by
       ``1 / max(mean(phi), 1e-3)`` (as timm's ``caution``), close to ``eps=1e-3``.

    References:
      Liang, Chen, Liu & Liu, "Cautious Optimizers: Improving Training with One Line of
      Code", 2024, https://arxiv.org/abs/2411.16085
    """
    _check_wrappable(opt)
    check_optional_range("eps", eps, low=0.0)
    if eps is not None and concrete_value(eps) == 0.0:
        raise ValueError(f"`eps` must be > 0 or None, got eps={eps!r}.")
    inner = optax.with_extra_args_support(opt)

    def init(params):
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            if is_complex(jnp.result_type(leaf)):
                raise ValueError(
                    f"params{jax.tree_util.keystr(path)} has dtype "
                    f"{jnp.result_type(leaf).name} (complex): adamx.cautious compares the "
                    f"signs of the step and the gradient, which complex numbers do not have."
                )
        return inner.init(params)

    def masked(u0, g):
        dtype = compute_dtype(u0.dtype)
        u0c = u0.astype(dtype)
        keep = (u0c * jnp.asarray(g).astype(dtype) < 0).astype(dtype)
        if eps is None:  # d / (nnz + 1): mean(phi) + 1/d, formed without the division
            scale = jnp.asarray(keep.size, dtype) / (jnp.sum(keep) + 1)
        else:
            scale = 1 / (jnp.mean(keep) + jnp.asarray(eps, dtype))
        return scale * keep * u0c

    def update(grads, state, params=None, **extra_args):
        updates, new_state = inner.update(grads, state, params, **extra_args)
        if params is None:
            out = jax.tree.map(lambda u, g: masked(u, g).astype(u.dtype), updates, grads)
            return out, new_state
        zeros = jax.tree.map(jnp.zeros_like, params)
        at_zero, _ = inner.update(grads, state, zeros, **extra_args)

        def leaf(u, u0, g):
            dtype = compute_dtype(u.dtype)
            rest = u.astype(dtype) - u0.astype(dtype)
            return (masked(u0, g) + rest).astype(u.dtype)

        return jax.tree.map(leaf, updates, at_zero, grads), new_state

    return optax.GradientTransformationExtraArgs(init, update)
