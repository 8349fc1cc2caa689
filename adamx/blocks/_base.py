"""Shared pieces of every block: the moments record, validation, dtypes and tree checks."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

PyTree = Any
# optax's own alias (a Union of float, jax.Array and a schedule), so that
# `typing.get_type_hints` and `inspect.signature(..., eval_str=True)` on adamx's factories
# give the object optax's annotations hold.
ScalarOrSchedule = optax.ScalarOrSchedule

_INT32_MAX = jnp.iinfo(jnp.int32).max


class Moments(NamedTuple):
    """The record a moment block hands to the next block of a recipe.

    Blocks after a moment block (bias correction, normalisation, read-outs) take and give
    this record instead of a plain gradient tree; a read-out block such as
    :func:`adamx.normalize` turns it back into a tree of updates. Keeping the gradient,
    both moments and the step count together is what lets a relative of Adam change one
    block and leave the others alone.

    Attributes:
      grad: the gradient tree the moments were updated with (after coupled weight decay).
        Its leaves fix the dtypes of the final updates.
      mu: the first moment, a tree like ``grad`` in the compute dtype (at least float32),
        or ``None`` when the recipe keeps no first moment.
      nu: the second moment, likewise, or ``None``.
      count: the step number ``t`` of this update, an int32 scalar, 1 on the first update.
    """

    grad: PyTree
    mu: PyTree
    nu: PyTree
    count: jax.Array  # type: ignore[assignment]


def transformation(
    init: Callable[[PyTree], Any], update: Callable[..., tuple[PyTree, Any]]
) -> optax.GradientTransformationExtraArgs:
    """A block's ``optax.GradientTransformationExtraArgs`` from its ``init`` and its
    ``update(updates, state, params=None)``.

    The ``update`` it returns takes and ignores extra keyword arguments
    (``opt.update(grads, state, params, value=loss)``), as optax's own transformations
    do, so a block works alone or in an ``optax.chain`` with transformations that use them.
    """

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        return update(updates, state, params)

    return optax.GradientTransformationExtraArgs(init, update_fn)


def abstract_or_array(p) -> Any:
    """A param leaf as something with a shape and dtype (and the param's sharding):
    a ``jax.ShapeDtypeStruct`` unchanged (``init`` may be given abstract params, as optax's
    ``init`` may), anything else through ``jnp.asarray``.

    ``jnp.zeros_like`` / ``jnp.full_like`` of the result give concrete state, sharded like
    a ``NamedSharding`` param (abstract or not).
    """
    if isinstance(p, jax.ShapeDtypeStruct):
        return p
    return jnp.asarray(p)


def is_complex(dtype) -> bool:
    """Whether ``dtype`` is a complex floating-point dtype."""
    return bool(jnp.issubdtype(jnp.dtype(dtype), jnp.complexfloating))


def real_dtype(dtype) -> jnp.dtype:
    """The real dtype of a complex one (``complex64 -> float32``); others unchanged."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.finfo(dtype).dtype) if is_complex(dtype) else dtype


def state_dtype(requested, leaf_dtype) -> jnp.dtype:
    """The dtype a leaf's state buffer is stored in, given an optional ``requested`` one
    (``mu_dtype``, ``accumulator_dtype``): the leaf's own dtype when ``None``; for a complex
    leaf and a real request, the complex dtype of that precision (``float32 -> complex64``:
    a real buffer would drop the imaginary part); otherwise the request (a complex buffer
    for a real leaf is optax's reading; its imaginary part stays zero, see
    :func:`like_grad`)."""
    if requested is None:
        return jnp.dtype(leaf_dtype)
    requested = jnp.dtype(requested)
    if is_complex(leaf_dtype) and not is_complex(requested):
        return jnp.dtype(jnp.complex128 if jnp.finfo(requested).bits == 64 else jnp.complex64)
    return requested


def like_grad(x: jax.Array, g: jax.Array) -> jax.Array:
    """``x`` as the next blocks see it: its real part when ``x`` is a complex buffer of a
    real gradient ``g`` (exact: that buffer's imaginary part is zero at every step)."""
    return jnp.real(x) if is_complex(x.dtype) and not is_complex(g.dtype) else x


def abs_sq(x: jax.Array, weight=None) -> jax.Array:
    """``weight * |x|**2``, real-valued, in ``x``'s real dtype (``weight`` a scalar, or None
    for 1).

    Real ``x``: ``(weight * x) * x`` (the weight meets ``x`` before ``x`` meets itself, so
    the term fits where ``x**2`` alone overflows). Complex ``x``: the same for the real and
    imaginary parts, summed (``re(x conj(x))``, optax's second moment of a complex leaf).
    """
    rd = real_dtype(x.dtype)
    w = None if weight is None else as_scalar(weight, rd)

    def term(y):
        return y * y if w is None else (w * y) * y

    if is_complex(x.dtype):
        return term(jnp.real(x)) + term(jnp.imag(x))
    return term(x)


def over_real(x: jax.Array, r: jax.Array) -> jax.Array:
    """``x / r`` for a real ``r`` and an ``x`` that may be complex (the quotient in ``x``'s
    dtype: a complex moment over a real root, as optax divides)."""
    return x / r.astype(x.dtype)


def compute_dtype(dtype) -> jnp.dtype:
    """The dtype a leaf's arithmetic runs in: its own, but never below float32."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
        return jnp.dtype(jnp.float32)
    return dtype


def scalar_dtype() -> jnp.dtype:
    """float64 when ``jax_enable_x64`` is on, else float32: where scalar factors are made."""
    return jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))


def safe_increment(count: jax.Array) -> jax.Array:
    """``count + 1``, saturating at the int32 maximum instead of wrapping to negative."""
    return jnp.where(count < _INT32_MAX, count + 1, count)


def one_minus(x):
    """``1 - x``: in float64 on the host for Python numbers (``1 - 0.999`` keeps its digits),
    traced arithmetic otherwise."""
    if isinstance(x, (int, float)):
        return 1.0 - float(x)
    return 1 - jnp.asarray(x, scalar_dtype())


def as_scalar(x, dtype) -> jax.Array:
    """A hyperparameter (Python number or array) as a 0-d array of ``dtype``."""
    return jnp.asarray(x, dtype)


def concrete_value(x) -> float | None:
    """The float value of a concrete scalar hyperparameter; None for traced or non-scalar."""
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return float(x)
    try:
        return float(x)
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None


def cond(pred, true_fn: Callable, false_fn: Callable, *operands):
    """``jax.lax.cond``, except that a concrete ``pred`` (eager code) runs its branch directly.

    An eager ``lax.cond`` whose branches are closures traces and compiles them at every call
    (a new function object each time misses JAX's caches): ~35 ms per call on CPU, seconds
    per step for a recipe with a cond per leaf. Under ``jit``, ``vmap`` or ``grad`` the
    predicate is a tracer and this is ``lax.cond``, both branches type-checked alike.
    """
    if isinstance(pred, jax.core.Tracer):
        return jax.lax.cond(pred, true_fn, false_fn, *operands)
    return true_fn(*operands) if bool(pred) else false_fn(*operands)


def find_one_state(state: PyTree, cls: type, who: str, needs: str) -> Any:
    """The one node of type ``cls`` in an optimizer state (a chain's too); a ``ValueError``
    saying what ``who`` needs and how many it found otherwise."""
    is_one = lambda s: isinstance(s, cls)  # noqa: E731
    found = [s for s in jax.tree.leaves(state, is_leaf=is_one) if is_one(s)]
    if len(found) != 1:
        raise ValueError(f"`{who}` needs {needs}, found {len(found)} {cls.__name__} in it.")
    return found[0]


def is_real_number(value) -> bool:
    """Whether ``value`` is a real number a hyperparameter may be: a Python ``int`` or
    ``float`` (not ``bool``), a NumPy integer or float scalar, or a NumPy / JAX array of an
    integer or float dtype (concrete or traced, as ``optax.inject_hyperparams`` passes).
    Strings, ``None``, complex numbers and containers are not."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True
    if isinstance(value, (jax.Array, np.ndarray)):
        dtype = value.dtype
        return bool(jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating))
    return False


def _interval(low: float, high: float, high_open: bool) -> str:
    if high == math.inf:
        return f"[{low}, inf) and finite"
    return f"[{low}, {high})" if high_open else f"[{low}, {high}]"


def check_range(
    name: str, value, *, low: float, high: float = math.inf, high_open: bool = False
) -> None:
    """Raise ``ValueError`` unless ``value`` is a real number (:func:`is_real_number`) and,
    when concrete, lies in ``[low, high]`` (or ``[low, high)``); traced values pass
    untouched. A string such as ``"1e-3"`` is refused, not parsed."""
    interval = _interval(low, high, high_open)
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be a number in {interval}, got the bool {name}={value!r}.")
    if not is_real_number(value):
        raise ValueError(
            f"`{name}` must be a number in {interval}, got {name}={value!r} "
            f"(a {type(value).__name__})."
        )
    v = concrete_value(value)
    if v is None:
        return
    ok = math.isfinite(v) and low <= v and (v < high if high_open else v <= high)
    if not ok:
        raise ValueError(f"`{name}` must lie in {interval}, got {name}={value!r}.")


def check_optional_range(
    name: str, value, *, low: float, high: float = math.inf, high_open: bool = False
) -> None:
    """:func:`check_range` for an option whose ``None`` means "off"."""
    if value is not None:
        check_range(name, value, low=low, high=high, high_open=high_open)


def check_dtype(name: str, value, *, optional: bool = True, complex_ok: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` names a floating-point dtype (``jnp.bfloat16``,
    ``"float32"``, ``np.dtype("float16")``), or a complex one when ``complex_ok``, or is
    ``None`` when ``optional``.

    Under ``optax.inject_hyperparams`` a dtype class such as ``jnp.bfloat16`` is callable
    and is taken for a schedule: declare it with ``static_args=("mu_dtype",)``."""
    if value is None and optional:
        return
    try:
        ok = not isinstance(value, (bool, jax.Array, np.ndarray)) and jnp.issubdtype(
            jnp.dtype(value), jnp.inexact if complex_ok else jnp.floating
        )
    except TypeError:
        ok = False
    if not ok:
        hint = (
            " Under `optax.inject_hyperparams`, a dtype is callable and is taken for a "
            f'schedule: pass static_args=("{name}",).'
            if isinstance(value, (jax.Array, np.ndarray))
            else ""
        )
        allowed = "a floating-point or complex dtype" if complex_ok else "a floating-point dtype"
        allowed = f"None or {allowed}" if optional else allowed
        raise ValueError(f"`{name}` must be {allowed}, got {name}={value!r}.{hint}")


def check_decay(name: str, value) -> None:
    """A moment decay (``b1``, ``b2``, ...): in ``[0, 1)``, and not stored below float32."""
    check_range(name, value, low=0.0, high=1.0, high_open=True)
    dtype = getattr(value, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jnp.floating):
        if jnp.finfo(dtype).bits < 32:
            raise ValueError(
                f"`{name}` arrived as a {jnp.dtype(dtype).name} array, which cannot hold a "
                f"decay near 1 (0.999 rounds to 1.0 in bfloat16). With "
                f"`optax.inject_hyperparams`, pass `hyperparam_dtype=jnp.float32`."
            )


def check_flag(name: str, value) -> None:
    """Raise ``ValueError`` unless a static option (``nesterov``, ``centered``, ...) is a
    Python bool: it selects blocks when the recipe is built and cannot be traced."""
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False, got {name}={value!r}.")


def check_learning_rate(value, *, allow_none: bool = False) -> None:
    """A learning rate: a finite number ``>= 0`` (a Python, NumPy or JAX scalar, concrete
    or traced), or a schedule (a callable of the step count); ``None`` only with
    ``allow_none`` (the optimizers whose optax namesake declares ``learning_rate=None``).
    Anything else, a string included, raises ``ValueError`` naming the argument."""
    if value is None:
        if allow_none:
            return
        raise ValueError(
            "`learning_rate` must be a number in [0.0, inf) or a schedule (a callable of the "
            "step count), got learning_rate=None."
        )
    if callable(value):
        return
    if is_real_number(value) and jnp.ndim(value) != 0:
        raise ValueError(
            f"`learning_rate` must be a scalar in [0.0, inf) or a schedule, got an array of "
            f"shape {jnp.shape(value)}: learning_rate={value!r}."
        )
    check_range("learning_rate", value, low=0.0)


def _listed(keys: list[str], tree: str, most: int = 3) -> str:
    """``params['b']``, ``params['b'] and params['c']``, or the first ``most`` and a count."""
    named = [f"{tree}{k}" if tree.isidentifier() else f"the leaf at {k}" for k in keys[:most]]
    more = len(keys) - len(named)
    text = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
    return text if not more else f"{', '.join(named)} and {more} more"


def check_trees_match(
    tree: PyTree, reference: PyTree, name: str, reference_name: str, *, dtypes: bool = False
) -> None:
    """Raise ``ValueError`` naming the first path where ``tree`` and ``reference`` differ in
    structure or leaf shape (and dtype, with ``dtypes=True``). Runs at trace time: it costs
    nothing inside a jitted step."""

    def expects(path) -> str:  # "params['w'] has" or "the optimizer state expects"
        if reference_name.isidentifier():
            return f"{reference_name}{jax.tree_util.keystr(path)} has"
        return f"{reference_name} expects"

    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    ref_leaves, ref_treedef = jax.tree_util.tree_flatten_with_path(reference)
    paths = [p for p, _ in leaves]
    ref_paths = [p for p, _ in ref_leaves]
    if paths != ref_paths:
        keys = [jax.tree_util.keystr(p) for p in paths]
        ref_keys = [jax.tree_util.keystr(p) for p in ref_paths]
        missing = [k for k in ref_keys if k not in set(keys)]
        extra = [k for k in keys if k not in set(ref_keys)]
        said = []
        if missing:
            said.append(
                f"{_listed(missing, reference_name)} {'is' if len(missing) == 1 else 'are'} "
                f"missing from {name}"
            )
        if extra:
            said.append(f"{name} has {_listed(extra, name)}, which {reference_name} lacks")
        if not said:  # the same paths in another order
            said.append(f"{name} lists its leaves in another order than {reference_name}")
        raise ValueError(
            f"`{name}` does not match {reference_name}: {'; '.join(said)}. Pass a {name} tree "
            f"with the same structure as the params the optimizer was initialised with."
        )
    if treedef != ref_treedef:  # type: ignore[operator]
        raise ValueError(
            f"`{name}` has the same leaf paths as {reference_name} but other container types "
            f"(a list where the other has a tuple, say): {name} is {treedef}, "
            f"{reference_name} is {ref_treedef}. Build {name} with the containers of "
            f"{reference_name}, e.g. `jax.tree.unflatten(jax.tree.structure({reference_name}), "
            f"jax.tree.leaves({name}))`."
        )
    for (path, leaf), (_, ref_leaf) in zip(leaves, ref_leaves):
        shape, ref_shape = jnp.shape(leaf), jnp.shape(ref_leaf)
        if shape != ref_shape:
            raise ValueError(
                f"{name}{jax.tree_util.keystr(path)} has shape {shape} but "
                f"{expects(path)} {ref_shape}."
            )
        dtype, ref_dtype = jnp.result_type(leaf), jnp.result_type(ref_leaf)
        if dtypes and dtype != ref_dtype:
            raise ValueError(
                f"{name}{jax.tree_util.keystr(path)} has dtype {dtype.name} but "
                f"{expects(path)} {ref_dtype.name}. Cast the gradients to the params' "
                f"dtypes, e.g. `jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)`."
            )


def require_params(params: PyTree, who: str) -> None:
    """Raise ``ValueError`` when a block that reads the parameters is given none."""
    if params is None:
        raise ValueError(
            f"{who} reads the current parameters, but `update` was called without them. "
            f"Call `opt.update(grads, state, params)`."
        )


def check_moments(updates, who: str) -> Moments:
    """The incoming updates of a block that expects a :class:`Moments` record."""
    if not isinstance(updates, Moments):
        raise TypeError(
            f"{who} expects the `Moments` record made by a moment block such as "
            f"`adamx.scale_by_moments`, got {type(updates).__name__}. Put it after a moment "
            f"block in the chain."
        )
    return updates


def map_unzip(f, n: int, tree: PyTree, *rest: PyTree) -> tuple:
    """``jax.tree.map(f, tree, *rest)`` for an ``f`` returning an ``n``-tuple per leaf,
    split into ``n`` trees shaped like ``tree``.

    ``jax.tree.transpose`` of the mapped tree does the same but raises on a tree without
    leaves (``{}``, ``[None]``), which ``optax.masked`` hands an optimizer whose leaves are
    all masked out; here such a tree gives ``n`` empty trees of its structure.
    """
    leaves, treedef = jax.tree.flatten(tree)
    others = [treedef.flatten_up_to(r) for r in rest]  # type: ignore[attr-defined]
    tuples = [f(*args) for args in zip(leaves, *others)]
    columns = list(zip(*tuples)) if tuples else [()] * n
    return tuple(jax.tree.unflatten(treedef, list(column)) for column in columns)


def param_named_sharding(p) -> NamedSharding | None:
    """The :class:`jax.sharding.NamedSharding` a param carries, or ``None``.

    A concrete array's own sharding; for a tracer, the sharding of its type (set under an
    explicit-sharding mesh only). ``None`` when it is not a ``NamedSharding`` on a
    non-empty mesh (a single-device array, a tracer in auto mode).
    """
    if isinstance(p, jax.core.Tracer):
        sharding = getattr(jax.typeof(p), "sharding", None)
    else:
        sharding = getattr(p, "sharding", None)
    if not isinstance(sharding, NamedSharding) or sharding.mesh.empty:
        return None
    return sharding


def padded_spec(sharding: NamedSharding, ndim: int) -> tuple:
    """The partition spec of ``sharding`` as ``ndim`` entries (``None`` for unsharded)."""
    entries = [None if e is PartitionSpec.UNCONSTRAINED else e for e in sharding.spec]
    return tuple(entries[:ndim]) + (None,) * max(0, ndim - len(entries))
