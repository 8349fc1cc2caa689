"""The "flat" layout: all leaves of a moment in one 1-D buffer per dtype.

A jitted step takes and returns every array of the state, and JAX's dispatch of a call
costs about a microsecond per array: with 1,000 leaves, Adam's per-leaf ``mu`` and ``nu``
are 4,000 of the ~7,000 arrays a step passes in and out. Kept flat, they are 4. The
values are the same float32 numbers (the layout is lossless), so the XLA path splits the
buffers into leaves, runs the recipe and concatenates them again, and :func:`adamx.step`
runs Adam's fused kernel on the buffers in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adamx.storage._policy import _Policy


@jax.tree_util.register_pytree_with_keys_class
class FlatMoments:
    """A tree of moment leaves kept as one 1-D buffer per dtype.

    Its pytree children are the buffers, keyed by dtype name (``{"float32": f32[n]}``);
    the tree's structure, the leaves' shapes and dtypes are static (pytree auxiliary
    data), so a checkpoint holds the buffers and :meth:`tree` gives the leaves back.
    The leaves of each dtype follow each other in the tree's flattening order.

    Checkpoints: libraries that walk pytrees (Orbax) store the buffers; restore with
    :func:`adamx.restore_state`. ``flax.serialization`` serialises the types it knows only;
    teach it this one with ``flax.serialization.register_serialization_state(FlatMoments,
    FlatMoments.state_dict, FlatMoments.from_state_dict)``.

    Attributes:
      buffers: ``{dtype name: 1-D array}``, sorted by name.
      treedef: the structure of the tree of leaves.
      shapes: each leaf's shape, in flattening order.
      dtypes: each leaf's dtype name, in flattening order.
    """

    def __init__(self, buffers: dict[str, Any], treedef, shapes, dtypes):
        self.buffers = dict(sorted(buffers.items()))
        self.treedef = treedef
        self.shapes = tuple(tuple(s) for s in shapes)
        self.dtypes = tuple(dtypes)

    @classmethod
    def of(cls, tree) -> FlatMoments:
        """The flat form of a tree of arrays (or ``jax.ShapeDtypeStruct`` leaves)."""
        leaves, treedef = jax.tree.flatten(tree)
        shapes = [tuple(jnp.shape(x)) for x in leaves]
        dtypes = [np.dtype(jnp.result_type(x)).name for x in leaves]
        buffers = {}
        for name in sorted(set(dtypes)):
            parts = [jnp.ravel(x) for x, d in zip(leaves, dtypes) if d == name]
            buffers[name] = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
        return cls(buffers, treedef, shapes, dtypes)

    def offsets(self) -> tuple[int, ...]:
        """Where each leaf starts in the buffer of its dtype."""
        at: dict[str, int] = {}
        out = []
        for shape, name in zip(self.shapes, self.dtypes):
            out.append(at.get(name, 0))
            at[name] = out[-1] + math.prod(shape)
        return tuple(out)

    def tree(self):
        """The tree of leaves: slices of the buffers, in their shapes."""
        leaves = [
            jax.lax.slice(self.buffers[name], (at,), (at + math.prod(shape),)).reshape(shape)
            for shape, name, at in zip(self.shapes, self.dtypes, self.offsets())
        ]
        return jax.tree.unflatten(self.treedef, leaves)

    def state_dict(self) -> dict[str, Any]:
        """The buffers as a plain dict (what a checkpoint holds)."""
        return dict(self.buffers)

    def from_state_dict(self, state: dict[str, Any]) -> FlatMoments:
        """This layout with the buffers of ``state`` (a dict like :meth:`state_dict`'s)."""
        return FlatMoments(state, self.treedef, self.shapes, self.dtypes)

    def tree_flatten_with_keys(self):
        children = [(jax.tree_util.DictKey(k), v) for k, v in self.buffers.items()]
        return children, (tuple(self.buffers), self.treedef, self.shapes, self.dtypes)

    @classmethod
    def tree_unflatten(cls, aux, children):
        names, treedef, shapes, dtypes = aux
        return cls(dict(zip(names, children)), treedef, shapes, dtypes)

    def __repr__(self) -> str:
        return f"FlatMoments({len(self.shapes)} leaves in {self.buffers!r})"


@dataclass(frozen=True)
class Flat(_Policy):
    """All leaves of a moment in one 1-D buffer per dtype (:class:`FlatMoments`).

    Lossless: the values are the working values, only fewer arrays. Use it for models
    with many small leaves, where a jitted step spends its time passing arrays rather than
    computing: with ``mu="flat", nu="flat"`` on :func:`adamx.adam` or :func:`adamx.adamw`
    (float32), :func:`adamx.step` runs the fused kernel on the buffers in place.
    :func:`adamx.with_storage` flattens the whole moment tree at once; :meth:`encode` and
    :meth:`decode` of a single leaf keep it as it is. Meant for one device (where the kernel
    runs): a buffer of many leaves cannot be sharded like each of them, so on a mesh
    (:func:`adamx.state_shardings`, ZeRO) keep the moments per leaf.
    """

    name: str = "flat"

    def encode(self, x: jax.Array, key: jax.Array | None) -> jax.Array:
        """One leaf is stored as it is (the tree is flattened by ``with_storage``)."""
        del key
        return x

    def decode(self, stored: jax.Array, like: jax.ShapeDtypeStruct) -> jax.Array:
        """One leaf as it is stored."""
        del like
        return stored


def flat() -> Flat:
    """The "flat" storage policy: a moment's leaves in one 1-D buffer per dtype.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.with_storage(adamx.adam(1e-3), mu="flat", nu="flat")
      >>> state = opt.init({"a": jnp.zeros(3), "b": jnp.zeros((2, 2))})
      >>> state.inner[0].mu.buffers["float32"].shape
      (7,)
    """
    return Flat()
