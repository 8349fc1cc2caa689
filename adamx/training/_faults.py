"""Faults: skip the steps whose gradients hold a NaN or an infinity."""

from __future__ import annotations

import functools
import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import _INT32_MAX, PyTree, safe_increment


class SkipNonfiniteState(NamedTuple):
    """State of :func:`skip_nonfinite`.

    Attributes:
      inner_state: the state of the wrapped transformation, as it was after the last
        update with finite gradients.
      total_skipped: int32 number of updates skipped so far (saturates at the int32 maximum).
      consecutive_skipped: int32 number of updates skipped since the last finite gradient;
        0 after a good step (saturates too).
    """

    inner_state: PyTree
    total_skipped: jax.Array
    consecutive_skipped: jax.Array


def _check_max_consecutive(value) -> int | None:
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or not 0 <= number <= _INT32_MAX:
        raise ValueError(
            f"`max_consecutive` must be None (no limit) or an int in [0, {_INT32_MAX}], got "
            f"max_consecutive={value!r}."
        )
    return number


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _all_finite(tree: PyTree) -> jax.Array:
    """A bool scalar: True when no floating leaf of ``tree`` holds a NaN or an infinity.

    Integer, boolean and ``float0`` leaves (the gradients of integer inputs) count as
    finite; an empty tree is finite.
    """
    checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if _is_float(x)]
    return functools.reduce(jnp.logical_and, checks, jnp.asarray(True))


def _keep_old(skip: jax.Array, old: PyTree, new: PyTree) -> PyTree:
    """``old`` where ``skip`` else ``new``, leaf by leaf: a bitwise copy of the chosen side."""
    old_leaves, treedef = jax.tree_util.tree_flatten_with_path(old)
    new_leaves, new_treedef = jax.tree_util.tree_flatten_with_path(new)
    if treedef != new_treedef:  # type: ignore[operator]
        raise ValueError(
            "skip_nonfinite: the wrapped transformation's `update` returned a state with "
            f"another structure than the one it was given ({new_treedef} vs {treedef}). A "
            "skipped step keeps the old state, so the two must have the same structure."
        )
    chosen = []
    for (path, a), (_, b) in zip(old_leaves, new_leaves):
        a_type, b_type = jax.typeof(a), jax.typeof(b)
        if (a_type.shape, a_type.dtype) != (b_type.shape, b_type.dtype):
            raise ValueError(
                f"skip_nonfinite: the wrapped transformation's state leaf "
                f"inner_state{jax.tree_util.keystr(path)} is {a_type.str_short()} before "
                f"`update` and {b_type.str_short()} after it. A skipped step keeps the old "
                f"state, so `update` must keep every state leaf's shape and dtype (make "
                f"`init` build the leaf with the dtype `update` returns)."
            )
        chosen.append(jnp.where(skip, a, b))
    return jax.tree.unflatten(treedef, chosen)


def skip_nonfinite(
    opt: optax.GradientTransformation, *, max_consecutive: int | None = None
) -> optax.GradientTransformationExtraArgs:
    """Skip every update whose gradient holds a NaN or an infinity, leaving the state as it was.

    With ``bad`` true when any element of any floating leaf of the incoming gradient is NaN,
    ``+inf`` or ``-inf``, and ``n`` the number of bad steps in a row including this one::

        bad:      updates = 0                (same tree, shapes and dtypes as a real update)
                  inner state unchanged      (bitwise: moments, step count, everything)
                  total_skipped += 1;  consecutive_skipped = n
        not bad:  updates, inner state = opt.update(grads, inner state, params)
                  consecutive_skipped = 0
        n > max_consecutive:  updates = NaN  (every floating element; the inner state is
                                              still unchanged)

    So a run with bad steps is bitwise the run with those steps removed, until more than
    ``max_consecutive`` come in a row: then the update is NaN, the params become NaN and
    the failure shows in the loss instead of the optimizer silently standing still. With
    ``max_consecutive=k`` the ``(k+1)``-th bad step in a row and every further one in that
    run give NaN; ``max_consecutive=0`` skips nothing silently (the first bad step gives
    NaN); ``None`` (the default) skips forever. A good step resets the run. Both counters
    are int32 and saturate at the int32 maximum.

    Args:
      opt: any ``optax.GradientTransformation``: an adamx alias, an optax transformation,
        a chain, ``optax.inject_hyperparams(...)(...)`` or ``optax.MultiSteps(...)``.
      max_consecutive: ``None`` or an int in ``[0, 2**31 - 1]``: how many bad steps in a
        row are skipped silently. Default None.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` (extra keyword arguments of ``update``
      go to ``opt``) whose state is :class:`SkipNonfiniteState`.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.skip_nonfinite(adamx.adam(0.1), max_consecutive=1)
      >>> params = {"w": jnp.ones(2)}
      >>> state = opt.init(params)
      >>> bad = {"w": jnp.array([1.0, jnp.nan])}
      >>> updates, state = opt.update(bad, state, params)
      >>> updates["w"].tolist(), int(state.total_skipped), int(state.consecutive_skipped)
      ([0.0, 0.0], 1, 1)
      >>> int(state.inner_state[0].count)  # adam's step count did not move
      0
      >>> updates, state = opt.update(bad, state, params)  # two in a row: more than 1
      >>> updates["w"].tolist()
      [nan, nan]
      >>> updates, state = opt.update({"w": jnp.array([1.0, -1.0])}, state, params)
      >>> [round(u, 4) for u in updates["w"].tolist()], int(state.consecutive_skipped)
      ([-0.1, 0.1], 0)

    Notes:
      * Only the incoming gradient is checked. A step whose gradient is finite but whose
        update overflows (or whose params already hold NaN) runs as usual. Integer leaves
        count as finite and, unable to hold NaN, get zeros past ``max_consecutive``.
      * The choice is made with selects (``jnp.where``), not ``lax.cond``: the compiled step
        has no control flow, so nothing waits on the predicate (XLA's GPU runtime reads a
        conditional's predicate back to the host to pick the branch) and there is no host
        sync of any kind; it also vmaps as is, lane by lane. The price is that the inner
        update also runs on a skipped step (rare by assumption), and every step adds a
        finiteness reduction over the gradient and elementwise selects over the gradient,
        the state and the update. On a skipped step the inner update is fed zeros instead
        of the bad gradient, so it computes nothing non-finite (no ``jax_debug_nans``
        trip), and its result is discarded by the select, which copies the old state's
        bits: the kept state cannot be poisoned.
      * "Bitwise" compares like with like: a jitted step fed bad and good gradients ends
        bit for bit where the same jitted step fed only the good ones ends. Against the
        bare optimizer in another jitted program the values may differ in the last bit,
        as between any two XLA programs (it contracts ``a * b + c`` into fused
        multiply-adds where its fusion allows, and the selects change the fusion).
      * ``optax.apply_if_finite`` differs: past its limit it *applies* the non-finite
        update, which writes NaN into the moments; here the moments are never touched by a
        bad gradient, and the NaN goes only to the update.
      * With gradient accumulation, put this wrapper outside:
        ``skip_nonfinite(optax.MultiSteps(opt, k))`` drops a bad micro-batch before it is
        accumulated, and the window goes on with the others. The other nesting,
        ``optax.MultiSteps(skip_nonfinite(opt), k)``, skips the window that holds a bad
        micro-batch (its mean is not finite), but optax (0.2.8) then resets its accumulator
        by multiplying it by 0, and ``0 * nan`` is NaN: every later window is skipped too.
    """
    if not (callable(getattr(opt, "init", None)) and callable(getattr(opt, "update", None))):
        hint = ""
        if callable(opt):
            name = getattr(opt, "__name__", "the factory")
            hint = f" `opt` is a function; call it first, e.g. skip_nonfinite({name}(1e-3))."
        raise TypeError(
            f"`opt` must be an optax.GradientTransformation (with `init` and `update`), got "
            f"{type(opt).__name__}.{hint}"
        )
    limit = _check_max_consecutive(max_consecutive)
    inner = optax.with_extra_args_support(opt)

    def init(params):
        zero = jnp.zeros([], jnp.int32)
        return SkipNonfiniteState(
            inner_state=inner.init(params), total_skipped=zero, consecutive_skipped=zero
        )

    def update(updates, state, params=None, **extra_args):
        bad = jnp.logical_not(_all_finite(updates))
        clean = jax.tree.map(
            lambda g: jnp.where(bad, jnp.zeros_like(g), g) if _is_float(g) else g, updates
        )
        new_updates, new_inner = inner.update(clean, state.inner_state, params, **extra_args)
        inner_state = _keep_old(bad, state.inner_state, new_inner)
        consecutive = jnp.where(
            bad, safe_increment(state.consecutive_skipped), jnp.zeros([], jnp.int32)
        )
        total = jnp.where(bad, safe_increment(state.total_skipped), state.total_skipped)
        over = None if limit is None else consecutive > limit

        def leaf(u):
            u = jnp.where(bad, jnp.zeros_like(u), u)
            if limit is None or not _is_float(u):
                return u
            return jnp.where(over, jnp.nan, u)  # a Python NaN: no NaN array is made

        return jax.tree.map(leaf, new_updates), SkipNonfiniteState(inner_state, total, consecutive)

    return optax.GradientTransformationExtraArgs(init, update)
