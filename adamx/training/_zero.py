"""ZeRO-1 style partitioning of optimizer state over a data-parallel mesh axis."""

from __future__ import annotations

from typing import Any

import jax
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any


def _leaf_sharding(leaf: Any, mesh: Mesh, axis: str) -> NamedSharding:
    """``P(axis)`` on the leading dimension when the axis size divides it, else ``P()``."""
    n = mesh.shape[axis]
    shape = getattr(leaf, "shape", ())
    if len(shape) >= 1 and shape[0] > 0 and shape[0] % n == 0:  # type: ignore[misc]
        return NamedSharding(mesh, PartitionSpec(axis))
    return NamedSharding(mesh, PartitionSpec())


def _is_array(leaf: Any) -> bool:
    return hasattr(leaf, "shape") and hasattr(leaf, "dtype")


def _constrain(tree: PyTree, fn) -> PyTree:
    """``with_sharding_constraint`` on the array leaves of ``tree`` (others pass through)."""
    leaves, treedef = jax.tree.flatten(tree)
    idx = [i for i, x in enumerate(leaves) if _is_array(x)]
    if not idx:
        return tree
    constrained = jax.lax.with_sharding_constraint(
        [leaves[i] for i in idx], [fn(leaves[i]) for i in idx]
    )
    for i, x in zip(idx, constrained):
        leaves[i] = x
    return jax.tree.unflatten(treedef, leaves)


def zero_shardings(state: PyTree, mesh: Mesh, axis: str) -> PyTree:
    """The ``NamedSharding`` that :func:`shard_state` gives each leaf of an optimizer state.

    Rule, per array leaf: ``NamedSharding(mesh, P(axis))`` (split along its leading
    dimension) when that dimension is a positive multiple of ``mesh.shape[axis]``, else
    ``NamedSharding(mesh, P())`` (replicated); scalars are replicated. Useful as the
    ``out_shardings`` / ``in_shardings`` of a jitted step or to place a restored state.

    Args:
      state: an optimizer state (or its ``jax.eval_shape``); non-array leaves map to None.
      mesh: the device mesh.
      axis: the data-parallel mesh axis name.

    Returns:
      A tree like ``state`` of ``NamedSharding``.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, adamx
      >>> from jax.sharding import Mesh
      >>> mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
      >>> state = adamx.adam(1e-3).init({"w": jnp.zeros((4, 3))})
      >>> shardings = adamx.zero_shardings(state, mesh, "data")
      >>> [tuple(s.spec) for s in jax.tree.leaves(shardings)]  # count, mu["w"], nu["w"]
      [(), ('data',), ('data',)]
    """
    _check_mesh_axis(mesh, axis)
    return jax.tree.map(lambda x: _leaf_sharding(x, mesh, axis) if _is_array(x) else None, state)


def _check_mesh_axis(mesh: Any, axis: Any) -> None:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh, got {type(mesh).__name__}.")
    if not isinstance(axis, str):
        raise TypeError(
            f"`axis` must be the name (a str) of one of the mesh's axes {tuple(mesh.axis_names)},"
            f" got {axis!r}."
        )
    if axis not in mesh.axis_names:
        raise ValueError(
            f"`axis` {axis!r} is not an axis of the mesh; its axes are {tuple(mesh.axis_names)}."
        )


def shard_state(
    optimizer: optax.GradientTransformation, mesh: Mesh, axis: str
) -> optax.GradientTransformation:
    """Partition an optimizer's state over a data-parallel mesh axis (ZeRO-1).

    Params (and gradients, after their data-parallel mean) stay replicated on ``axis``;
    every optimizer state leaf is placed by the rule::

        leaf.shape[0] % mesh.shape[axis] == 0  ->  NamedSharding(mesh, P(axis))  # split rows
        otherwise (or a scalar)                ->  NamedSharding(mesh, P())      # replicated

    applied with ``jax.lax.with_sharding_constraint`` to the state made by ``init``, to the
    state entering ``update`` and to the state it returns, and the updates are constrained
    to be replicated (``P()``) so that new params stay replicated. Each device then updates
    only its rows of the sharded moments and XLA all-gathers the *updates* (ZeRO-1's one
    collective); the state itself is never gathered. The result equals the unsharded
    optimizer's: the per-element algebra is unchanged (bitwise in float32 for Adam-type,
    Lion and SGD rules); optimizers that reduce over a leaf (Adafactor's row/column means,
    trust ratios) differ only by summation order.

    Memory: a sharded leaf occupies ``1 / mesh.shape[axis]`` of its bytes on each device,
    so with all leading dimensions divisible the per-device state drops by the axis size
    (Adam's ``mu`` and ``nu``: 8 bytes per parameter become ``8 / n``). Leaves whose leading
    dimension is not divisible stay whole on every device (no padding). With
    :func:`adamx.with_storage` the 8-bit codes ``uint8[*shape[:-1], n_blocks, block]`` and
    scales ``float32[*shape[:-1], n_blocks]`` split on their leading axis, which never cuts
    a block, so no block straddles two devices.

    Works with any ``optax.GradientTransformation`` (an adamx recipe, a chain, a wrapper);
    it is pure and jit-friendly, and also runs eagerly. :func:`adamx.step` takes the
    ``update`` + ``apply_updates`` path for it (the fused kernel is not used). Other mesh
    axes: state and updates are replicated over them (the ZeRO-1 setting of replicated
    params); for params sharded over a model axis, let the state follow the params instead.

    Reference: Rajbhandari, Rasley, Ruwase and He, "ZeRO: Memory Optimizations Toward
    Training Trillion Parameter Models", SC 2020 (arXiv:1910.02054), stage 1.

    Args:
      optimizer: any ``optax.GradientTransformation``.
      mesh: the ``jax.sharding.Mesh`` the training step runs on.
      axis: the name of the data-parallel axis of ``mesh`` to shard the state over.

    Returns:
      An ``optax.GradientTransformation`` with the same state tree and the same updates.

    Raises:
      TypeError: ``optimizer`` lacks ``init``/``update``, ``mesh`` is not a ``Mesh`` or
        ``axis`` not a str.
      ValueError: ``axis`` is not one of ``mesh.axis_names``.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, adamx
      >>> from jax.sharding import Mesh
      >>> mesh = Mesh(np.array(jax.devices()[:1]), ("data",))  # e.g. all devices in practice
      >>> opt = adamx.shard_state(adamx.adam(learning_rate=0.1), mesh, "data")
      >>> params = {"w": jnp.ones((2, 3))}
      >>> state = opt.init(params)
      >>> tuple(state[0].mu["w"].sharding.spec)  # rows split over "data"
      ('data',)
      >>> train = jax.jit(lambda p, s, g: adamx.step(opt, g, s, p))
      >>> params, state = train(params, state, {"w": jnp.ones((2, 3))})
      >>> [round(float(x), 4) for x in params["w"][0]]
      [0.9, 0.9, 0.9]
    """
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise TypeError(
            f"`optimizer` must be an optax.GradientTransformation, got {type(optimizer).__name__}."
        )
    _check_mesh_axis(mesh, axis)
    replicated = NamedSharding(mesh, PartitionSpec())

    def constrain_state(state):
        return _constrain(state, lambda x: _leaf_sharding(x, mesh, axis))

    inner = optax.with_extra_args_support(optimizer)  # extras go on where they are taken

    def init_fn(params):
        return constrain_state(inner.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        state = constrain_state(state)
        updates, state = inner.update(updates, state, params, **extra_args)
        updates = _constrain(updates, lambda _: replicated)
        return updates, constrain_state(state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
