"""Sharded optimizer state: the state of a sharded param is sharded like the param.

Every recipe's ``init`` derives each param-shaped state leaf from its param
(``jnp.zeros_like`` / ``jnp.full_like``), so an eager ``opt.init(params)`` of sharded params,
and ``jax.jit(opt.init)`` under an explicit-sharding mesh, give state sharded like the
params. Under ``jax.jit`` in the default (auto) sharding mode, ``init`` sees no sharding:
:func:`state_shardings` computes the state's shardings for ``out_shardings``.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from adamx.blocks._base import PyTree, padded_spec


def _mesh_of(params: PyTree) -> Mesh:
    meshes = []
    for leaf in jax.tree.leaves(params):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding) and not sharding.mesh.empty:
            if not any(sharding.mesh == m for m in meshes):
                meshes.append(sharding.mesh)
    if not meshes:
        raise ValueError(
            "adamx.state_shardings: no leaf of the params carries a NamedSharding; place the "
            "params on a mesh first (jax.device_put(params, NamedSharding(mesh, spec)))."
        )
    if len(meshes) > 1:
        raise ValueError(
            f"adamx.state_shardings: the params lie on {len(meshes)} different meshes; "
            "put them on one mesh."
        )
    mesh = meshes[0]
    if not isinstance(mesh, Mesh):
        raise ValueError(
            "adamx.state_shardings needs params on a concrete jax.sharding.Mesh, got "
            f"{type(mesh).__name__}."
        )
    return mesh


def _spec_of(leaf) -> PartitionSpec:
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, NamedSharding) and not sharding.mesh.empty:
        return PartitionSpec(*padded_spec(sharding, len(np.shape(leaf))))
    return PartitionSpec()


def _probe(optimizer, params, mesh: Mesh) -> PyTree:
    """The state's partition specs, traced under an explicit-sharding copy of ``mesh``."""
    explicit = Mesh(
        mesh.devices, mesh.axis_names, axis_types=(AxisType.Explicit,) * len(mesh.axis_names)
    )
    recorded = []

    def init(abstract_params):
        state = optimizer.init(abstract_params)
        recorded.append(jax.tree.map(lambda x: jax.typeof(x).sharding.spec, state))
        return state

    with jax.set_mesh(explicit):
        abstract = jax.tree.map(
            lambda p: jax.ShapeDtypeStruct(
                np.shape(p), p.dtype, sharding=NamedSharding(explicit, _spec_of(p))
            ),
            params,
        )
        jax.eval_shape(init, abstract)
    return recorded[-1]


def _by_structure(optimizer, params, mesh: Mesh) -> PyTree:
    """Fallback: a state leaf in a param-shaped subtree takes its param's spec when the
    shapes agree; every other leaf is replicated."""
    replicated = PartitionSpec()
    shapes = jax.eval_shape(optimizer.init, params)
    specs = jax.tree.map(_spec_of, params)

    def pick(spec, leaf, param):
        same = tuple(np.shape(leaf)) == tuple(np.shape(param))
        return spec if same else replicated

    def is_leaf(x):
        return isinstance(x, jax.ShapeDtypeStruct)

    return optax.tree_utils.tree_map_params(
        optimizer,
        lambda leaf, spec, param: pick(spec, leaf, param),
        shapes,
        specs,
        params,
        transform_non_params=lambda _: replicated,
        is_leaf=is_leaf,
    )


def state_shardings(optimizer: optax.GradientTransformation, params: PyTree) -> PyTree:
    """The shardings of ``optimizer.init(params)``'s state: each leaf shaped like a param
    sharded like it, scalars and other small leaves replicated.

    For ``jax.jit`` in the default (auto) sharding mode, where ``init`` cannot see the
    params' shardings (an eager ``optimizer.init(params)`` already places the state like
    the params)::

        state = jax.jit(opt.init, out_shardings=adamx.state_shardings(opt, params))(params)

    The specs are found by tracing ``init`` (no computation) under an explicit-sharding
    copy of the params' mesh, so derived leaves get their own specs too (Adafactor's row
    factor of a ``P('x', None)`` matrix is ``P('x', None)``, its column factor replicated).

    Args:
      optimizer: any ``optax.GradientTransformation`` built from the adamx blocks (or any
        whose ``init`` derives its leaves from the params).
      params: the params, or ``jax.ShapeDtypeStruct`` s with shardings; their sharded
        leaves must lie on one ``jax.sharding.Mesh``. Leaves without a ``NamedSharding``
        count as replicated.

    Returns:
      A tree like the state, of ``jax.sharding.NamedSharding`` on the params' mesh.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, adamx
      >>> from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      >>> mesh = Mesh(np.array(jax.devices()), ("x",))
      >>> params = {"w": jax.device_put(jnp.ones((8 * len(jax.devices()), 4)),
      ...                               NamedSharding(mesh, P("x")))}
      >>> opt = adamx.adam(learning_rate=1e-3)
      >>> shardings = adamx.state_shardings(opt, params)
      >>> state = jax.jit(opt.init, out_shardings=shardings)(params)
      >>> state[0].mu["w"].sharding.spec
      P('x', None)
      >>> state[0].count.sharding.spec
      P()
    """
    mesh = _mesh_of(params)
    try:
        specs = _probe(optimizer, params, mesh)
    except Exception:  # an init that cannot be traced in explicit mode
        specs = _by_structure(optimizer, params, mesh)

    def to_sharding(spec: Any) -> NamedSharding:
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree.map(to_sharding, specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
