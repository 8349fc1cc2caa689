"""The checks every optimizer (recipe) runs on its inputs before any arithmetic."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import PyTree, check_trees_match
from adamx.optimizers._adam_rule import DESCRIPTION
from adamx.optimizers._torch_names import misspelt_torch_names


def check_params_are_real_floats(params: PyTree, who: str) -> None:
    """Raise ``ValueError`` at the first leaf of ``params`` that is not a real float array."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            kind = "complex" if jnp.issubdtype(dtype, jnp.complexfloating) else "not a float"
            raise ValueError(
                f"params{jax.tree_util.keystr(path)} has dtype {dtype.name} ({kind}): "
                f"{who} updates real floating-point leaves only. Leave such leaves out of the "
                f"optimizer with `optax.masked({who}(...), mask)` (mask False there)"
                + (
                    ", or split complex numbers into real and imaginary parts."
                    if kind == "complex"
                    else "."
                )
            )


def guard(tx: optax.GradientTransformation, who: str) -> optax.GradientTransformation:
    """``tx`` with its inputs checked: real float params at ``init``; at ``update``, grads
    that match the params (when given) in structure, shapes and dtypes. The state is
    ``tx``'s own, unchanged."""

    def init(params):
        check_params_are_real_floats(params, who)
        return tx.init(params)

    def checked(inner):
        def update(grads, state, params=None):
            if params is not None:
                check_trees_match(grads, params, "grads", "params", dtypes=True)
            return inner(grads, state, params)

        return update

    update = checked(tx.update)
    for name in DESCRIPTION:  # what adamx.step reads to run this recipe through a kernel
        if hasattr(tx.update, name):
            setattr(update, name, getattr(tx.update, name))
    return optax.GradientTransformation(init, update)


def recipe(factory: Callable[..., optax.GradientTransformation]):
    """Decorate an optimizer factory so that what it builds checks its inputs (:func:`guard`).

    The signature and docstring are kept, so ``optax.inject_hyperparams(factory)`` works.
    A call with torch.optim's argument names (``lr=``, ``betas=``, ``amsgrad=``, ...)
    raises a ``TypeError`` that names adamx's spelling and :func:`adamx.from_torch`.
    """
    accepted = frozenset(inspect.signature(factory).parameters)

    @functools.wraps(factory)
    def build(*args, **kwargs) -> optax.GradientTransformation:
        misspelt = misspelt_torch_names(factory.__name__, kwargs, accepted)
        if misspelt is not None:
            raise TypeError(misspelt)
        return guard(factory(*args, **kwargs), f"adamx.{factory.__name__}")

    return build
