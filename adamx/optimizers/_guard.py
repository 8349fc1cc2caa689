"""The checks every optimizer (recipe) runs on its inputs before any arithmetic."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import PyTree, check_trees_match
from adamx.optimizers._adam_rule import DESCRIPTION
from adamx.optimizers._torch_names import misspelt_torch_names

# The recipes that refuse complex params, and why. Every other recipe takes them with
# optax's semantics (README, "Complex parameters"): m complex, v the average of |g|**2
# (real), the step m^ / (sqrt(v^) + eps).
REAL_ONLY = {
    "lion": "its direction is sign(m), which has no complex reading in optax or PyTorch "
    "(optax.lion does not support complex params either)",
    "adadelta": "optax.adadelta does not support complex params, and adamx follows optax's list",
    "adopt": "its clipping of g / sqrt(v) to [-t**0.25, t**0.25] orders the values, which "
    "complex numbers do not have (optax's adopt raises on complex params too)",
    "sign_sgd": "its direction is sign(g), which has no complex reading adamx takes",
    "signum": "its direction is sign(m), which has no complex reading adamx takes",
    "soap": "its eigenbasis (eigh, QR) is written for real matrices, as in the paper",
    "sophia": "its step clips m / max(gamma h, eps) to [-clip_threshold, clip_threshold], "
    "which orders the values (optax's sophia is written for real params too)",
    "galore": "its projector comes from a real SVD and projects with P^T (optax's galore "
    "is written for real params too)",
    "prodigy": "its distance estimate sums <g, x_0 - x> and |s| over the params, a real "
    "inner product and norm (optax's prodigy is written for real params too)",
    "dadapt_adamw": "its distance estimate sums <g, s / (sqrt(v) + eps)> and |s| over the "
    "params, a real inner product and norm (optax's dadapt_adamw is written for real params "
    "too)",
    "madgrad": "its cube root of the summed squares has no complex reading in optax's "
    "madgrad, which adamx follows",
    "sm3": "its accumulators take the maximum and minimum of squared gradients over rows and "
    "columns (optax's sm3 refuses complex params too)",
}


def check_params_are_floats(params: PyTree, who: str, *, complex_ok: bool = True) -> None:
    """Raise ``ValueError`` at the first leaf of ``params`` that is not a floating-point
    array (real, or complex when ``complex_ok``). Leaves may be arrays or
    ``jax.ShapeDtypeStruct`` (abstract params)."""
    name = who.removeprefix("adamx.")
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        dtype = jnp.result_type(leaf)
        if jnp.issubdtype(dtype, jnp.floating):
            continue
        is_complex = jnp.issubdtype(dtype, jnp.complexfloating)
        if is_complex and complex_ok:
            continue
        where = f"params{jax.tree_util.keystr(path)} has dtype {dtype.name}"
        mask_hint = (
            f"Leave such leaves out of the optimizer with `optax.masked({who}(...), mask)` "
            f"(mask False there)"
        )
        if is_complex:
            raise ValueError(
                f"{where} (complex): {who} does not take complex params: "
                f"{REAL_ONLY.get(name, 'its rule is real-valued')}. {mask_hint}, or optimize "
                f"the real and imaginary parts as separate real params (e.g. "
                f"`jnp.stack([z.real, z.imag])`)."
            )
        raise ValueError(
            f"{where} (not a float): {who} updates floating-point leaves only (real, or "
            f"complex). {mask_hint}."
        )


def guard(
    tx: optax.GradientTransformation, who: str, *, complex_ok: bool = True
) -> optax.GradientTransformationExtraArgs:
    """``tx`` with its inputs checked: float params at ``init`` (complex ones too when
    ``complex_ok``); at ``update``, grads that match the params (when given) in structure,
    shapes and dtypes. The state is ``tx``'s own, unchanged.

    The result is an ``optax.GradientTransformationExtraArgs``: extra keyword arguments of
    ``update`` (``value=loss``, ...) go on to ``tx``, whose blocks ignore them."""
    inner = optax.with_extra_args_support(tx)

    def init(params):
        check_params_are_floats(params, who, complex_ok=complex_ok)
        return inner.init(params)

    def update(grads, state, params=None, **extra_args):
        if params is not None:
            check_trees_match(grads, params, "grads", "params", dtypes=True)
        return inner.update(grads, state, params, **extra_args)

    for name in DESCRIPTION:  # what adamx.step reads to run this recipe through a kernel
        if hasattr(tx.update, name):
            setattr(update, name, getattr(tx.update, name))
    return optax.GradientTransformationExtraArgs(init, update)


def resolved_signature(factory: Callable) -> tuple[inspect.Signature, dict]:
    """``factory``'s signature and annotations with the string annotations (``from
    __future__ import annotations``) evaluated in its module: ``ScalarOrSchedule`` becomes
    optax's ``ScalarOrSchedule`` object, as in optax's own signatures."""
    hints = typing.get_type_hints(factory)
    signature = inspect.signature(factory)
    parameters = [
        p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()
    ]
    returns = hints.get("return", signature.return_annotation)
    return signature.replace(parameters=parameters, return_annotation=returns), hints


def recipe(factory: Callable[..., optax.GradientTransformation]):
    """Decorate an optimizer factory so that what it builds checks its inputs (:func:`guard`).

    The signature and docstring are kept, so ``optax.inject_hyperparams(factory)`` works;
    the annotations are resolved objects (``typing.get_type_hints`` and
    ``inspect.signature`` give optax's ``ScalarOrSchedule``, not the string).
    A call with torch.optim's argument names (``lr=``, ``betas=``, ``amsgrad=``, ...)
    raises a ``TypeError`` that names adamx's spelling and :func:`adamx.from_torch`.
    The recipes named in :data:`REAL_ONLY` refuse complex params at ``init``.
    """
    accepted = frozenset(inspect.signature(factory).parameters)
    complex_ok = factory.__name__ not in REAL_ONLY
    signature, hints = resolved_signature(factory)

    @functools.wraps(factory)
    def build(*args, **kwargs) -> optax.GradientTransformationExtraArgs:
        misspelt = misspelt_torch_names(factory.__name__, kwargs, accepted)
        if misspelt is not None:
            raise TypeError(misspelt)
        return guard(factory(*args, **kwargs), f"adamx.{factory.__name__}", complex_ok=complex_ok)

    build.__signature__ = signature  # type: ignore[attr-defined]
    build.__annotations__ = dict(hints)
    return build
