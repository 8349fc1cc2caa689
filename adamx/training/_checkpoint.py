"""Checkpoints: a restored optimizer state is checked against the one the optimizer expects."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

_SAME_OPTIMIZER = (
    "Restore it into the optimizer that saved it (same alias, options and chain), "
    "initialised with params of the same structure, shapes and dtypes."
)

_UNKEYED_8BIT = (
    "{path} (the stochastic-rounding key of `with_storage`) is empty in the checkpoint but "
    "the optimizer keeps one: the checkpoint was saved by a state that rounded nothing "
    'stochastically. Since adamx 0.3 8-bit storage (`"8bit"`, `blockwise8()`) rounds its '
    "codes stochastically and needs the key: its stored format changed, and a checkpoint of "
    "8-bit state from adamx 0.2 or earlier (codes rounded to nearest) is refused. Restore it "
    'into `with_storage(..., blockwise8(stochastic_rounding=False))` in place of `"8bit"` '
    "(the old format, rounded to nearest), or start a fresh state. Otherwise: "
)


def restore_state(restored: PyTree, like: PyTree) -> PyTree:
    """Check a restored optimizer state leaf by leaf and give it the optimizer's own types.

    Checkpoint libraries give back an optimizer state in their own containers, and the
    usual ways of restoring "into a target" do not check all of it: Orbax casts each
    array to the target's dtype, ``flax.serialization.from_bytes`` keeps the saved shapes
    and dtypes whatever the target says and drops entries the target lacks. Hand
    this function the raw restored tree instead and the state the optimizer expects,
    ``like = opt.init(params)`` (or ``jax.eval_shape(opt.init, params)``); walking
    ``like`` in order, it requires at every path:

    * a container where ``like`` has one, holding the same entries: ``like``'s own type,
      or its serialised forms, a dict keyed by field name, key or position (``'0'``,
      ``'1'``, ... as msgpack writes them) or a list or tuple of the same length; an
      empty state (``optax.EmptyState()``) may also come back as ``None`` or ``{}``;
    * ``None`` where ``like`` has ``None`` (a moment the recipe does not keep);
    * an array where ``like`` has a leaf, of the same shape and the same dtype.

    Nothing is cast, broadcast, padded or dropped. The result is ``like``'s structure,
    NamedTuple types included, holding the restored arrays themselves (NumPy arrays from
    msgpack stay NumPy arrays; ``jax.jit`` takes either), so training resumes bitwise where
    it stopped. The check runs on the host when the state is restored, never in a step.

    Warning: states of identical structure cannot be told apart. A checkpoint of
    ``adam`` restored without its NamedTuple types fits ``yogi`` (the same
    ``MomentsState``); only the same optimizer continues the same run.

    Args:
      restored: the state as a checkpoint library gave it back: Orbax's
        ``StandardCheckpointer().restore(path)`` without a target (dicts, lists and
        ``None``), ``flax.serialization.msgpack_restore(data)`` (dicts), or a tree with the
        optimizer's own types.
      like: the state the optimizer expects, ``opt.init(params)``, or its shapes and
        dtypes as ``jax.ShapeDtypeStruct`` leaves; only its structure, shapes and dtypes
        are read.

    Returns:
      The restored arrays in ``like``'s structure.

    Raises:
      ValueError: naming the first path (``state[0].mu['w']``) where ``restored`` and
        ``like`` differ, and how: a missing or extra entry, another container or number
        of entries, another shape or another dtype.

    Example (Orbax gives a NamedTuple back as a dict, a tuple as a list, an empty state
    as ``None``; ``flax.serialization.msgpack_restore`` gives dicts keyed ``'0'``,
    ``'1'``, ...):

    >>> import jax.numpy as jnp
    >>> import adamx
    >>> opt = adamx.adam(learning_rate=1e-3)
    >>> saved = opt.init({"w": jnp.zeros(3)})
    >>> raw = [saved[0]._asdict(), None, None, None]
    >>> state = adamx.restore_state(raw, opt.init({"w": jnp.zeros(3)}))
    >>> type(state[0]).__name__
    'MomentsState'
    >>> adamx.restore_state(raw, opt.init({"w": jnp.zeros(3, jnp.bfloat16)}))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: state[0].mu['w'] has dtype float32 but the optimizer expects bfloat16. ...

    With Orbax and flax (both optional, neither needed by adamx)::

        ckpt = ocp.StandardCheckpointer()
        ckpt.save(path, state)
        state = adamx.restore_state(ckpt.restore(path), opt.init(params))

        data = flax.serialization.to_bytes(state)
        state = adamx.restore_state(flax.serialization.msgpack_restore(data), opt.init(params))
    """
    return _restore(restored, like, "state")


def _restore(restored, like, path: str):
    if like is None:
        if restored is not None:
            raise ValueError(
                f"the checkpoint has {_describe(restored)} at {path} where the optimizer has "
                f"None (a part of the state this optimizer does not keep). {_SAME_OPTIMIZER}"
            )
        return None
    if _is_leaf(like):
        return _restore_leaf(restored, like, path)
    keys, children, treedef = _children(like)
    if restored is None and not children:
        return jax.tree_util.tree_unflatten(treedef, [])
    if isinstance(restored, dict):
        if isinstance(like, (list, tuple)) and not hasattr(like, "_fields"):
            _check_length(restored, like, path)
        entries = _match_dict(restored, keys, children, path)
    elif hasattr(restored, "_fields") and type(restored) is not type(like):
        raise ValueError(
            f"the checkpoint has {_describe(restored)} at {path} where the optimizer has "
            f"{_describe(like)}. {_SAME_OPTIMIZER}"
        )
    elif isinstance(restored, (list, tuple)) and isinstance(like, (list, tuple)):
        _check_length(restored, like, path)
        entries = list(restored)
    elif type(restored) is type(like):
        other_keys, entries, _ = _children(restored)
        if other_keys != keys:
            raise ValueError(
                f"{path} has the entries {_names(map(_name, other_keys))} in the checkpoint "
                f"but the optimizer expects {_names(map(_name, keys))}. {_SAME_OPTIMIZER}"
            )
    else:
        raise ValueError(
            f"the checkpoint has {_describe(restored)} at {path} where the optimizer has "
            f"{_describe(like)}. {_SAME_OPTIMIZER}"
        )
    leaves = [
        _restore(entry, child, path + jax.tree_util.keystr((key,)))
        for key, entry, child in zip(keys, entries, children)
    ]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _check_length(restored, like, path: str) -> None:
    if len(restored) != len(like):
        raise ValueError(
            f"{path} has {len(restored)} entries in the checkpoint but the optimizer expects "
            f"{_describe(like)}. {_SAME_OPTIMIZER}"
        )


def _match_dict(restored: dict, keys, children, path: str) -> list:
    """The entries of a dict-shaped checkpoint node, in the order of ``like``'s keys."""
    entries, used = [], set()
    for key, child in zip(keys, children):
        name = _name(key)
        found = [k for k in (name, str(name)) if k in restored]
        if not found:
            raise ValueError(
                f"the checkpoint has nothing at {path}{jax.tree_util.keystr((key,))} where "
                f"the optimizer has {_describe(child)} (the checkpoint's entries there: "
                f"{_names(list(restored))}). {_SAME_OPTIMIZER}"
            )
        used.add(found[0])
        entries.append(restored[found[0]])
    extra = [k for k in restored if k not in used]
    if extra:
        raise ValueError(
            f"the checkpoint has {path}[{extra[0]!r}] ({_describe(restored[extra[0]])}) where "
            f"the optimizer has nothing: it expects only {_names(map(_name, keys))} at {path}. "
            f"{_SAME_OPTIMIZER}"
        )
    return entries


def _restore_leaf(restored, like, path: str):
    if restored is None or not _is_leaf(restored) or not hasattr(restored, "dtype"):
        raise ValueError(
            f"the checkpoint has {_describe(restored)} at {path} where the optimizer has "
            f"{_describe(like)}. {_SAME_OPTIMIZER}"
        )
    shape, like_shape = tuple(np.shape(restored)), tuple(np.shape(like))
    if shape != like_shape:
        if path.endswith(".key") and shape == (0,) and like_shape == (2,):
            raise ValueError(_UNKEYED_8BIT.format(path=path) + _SAME_OPTIMIZER)
        raise ValueError(
            f"{path} has shape {shape} but the optimizer expects {like_shape}. {_SAME_OPTIMIZER}"
        )
    like_dtype = like.dtype if hasattr(like, "dtype") else jnp.result_type(like)
    dtype, like_dtype = np.dtype(restored.dtype), np.dtype(like_dtype)
    if dtype != like_dtype:
        raise ValueError(
            f"{path} has dtype {dtype.name} but the optimizer expects {like_dtype.name}. "
            f"The state follows the params' dtypes: build the optimizer state from params of "
            f"the checkpoint's dtypes, or cast the restored state on purpose before this "
            f"check."
        )
    return restored


def _is_leaf(x) -> bool:
    treedef = jax.tree_util.tree_structure(x)
    return treedef.num_nodes == 1 and treedef.num_leaves == 1  # type: ignore[attr-defined]


def _children(node):
    """One level of a pytree node: its keys, its children and its (one-level) treedef."""
    pairs, treedef = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    return [path[0] for path, _ in pairs], [child for _, child in pairs], treedef


def _name(key):
    """The name a serialised (dict) form gives a child: field, dict key or position."""
    for attribute in ("name", "key", "idx"):
        if hasattr(key, attribute):
            return getattr(key, attribute)
    raise TypeError(f"unknown pytree key {key!r}")


def _names(names) -> str:
    return ", ".join(repr(n) for n in names) or "none"


def _describe(x) -> str:
    if x is None:
        return "None"
    if _is_leaf(x):
        if hasattr(x, "dtype"):
            return f"an array of shape {tuple(np.shape(x))} and dtype {np.dtype(x.dtype).name}"
        return f"a {type(x).__name__} ({x!r})"
    if hasattr(x, "_fields"):
        return f"{_article(type(x).__name__)}({', '.join(x._fields)})"
    if isinstance(x, dict):
        return f"a dict with keys {_names(list(x))}"
    if isinstance(x, (list, tuple)):
        inner = ", ".join(type(c).__name__ for c in x)
        return f"a {type(x).__name__} of {len(x)} entries ({inner})"
    return _article(type(x).__name__)


def _article(name: str) -> str:
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"
