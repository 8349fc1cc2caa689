"""Adam and AdamW with flat moments in one pass on CPU: the kernel behind :func:`adamx.step`
for ``with_storage(adam(...) or adamw(...), mu="flat", nu="flat")``.

With many small leaves a step's time goes to passing arrays, not to arithmetic: JAX's
dispatch of a jitted call costs about a microsecond per array it takes or returns, and
float32 Adam's state is two arrays per leaf. The "flat" policy keeps each moment in one
float32 buffer (:class:`adamx.storage.FlatMoments`); here the float32 kernel
(``csrc/adam_cpu.cc``, ``AdamxAdamFlatStep``) reads each leaf's m and v at its offset in
the buffers and updates p, m and v in place, the same arithmetic as :func:`_fused.formula`
(so the same bits as the XLA path of the flat state and as unwrapped ``adamx.adam``'s
kernel). The buffers run through the step's calls (:data:`_fused.GROUP` leaves each), each
call updating its own stretch of them in place.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx.blocks._base import check_trees_match
from adamx.blocks._moments import MomentsState
from adamx.kernels import _fused
from adamx.kernels._build import FLAT_TARGET, disabled_by_env
from adamx.optimizers._adam_rule import AdamRule
from adamx.storage._flat import Flat, FlatMoments
from adamx.storage._with_storage import StorageState, StoredAdam


class _Plan(NamedTuple):
    decay: int
    maximize: bool
    decay_flags: tuple[bool, ...]


def is_flat(stored: StoredAdam) -> bool:
    """Whether ``with_storage`` keeps both of Adam's moments flat (this module's step)."""
    return all(isinstance(stored.policies[role], Flat) for role in ("mu", "nu"))


def _flat_f32(x, treedef) -> bool:
    return (
        isinstance(x, FlatMoments)
        and x.treedef == treedef
        and set(x.dtypes) <= {"float32"}
        and all(_fused._is_f32(b) and jnp.ndim(b) == 1 for b in x.buffers.values())
    )


def plan(stored: StoredAdam, grads, state, params):
    """The kernel plan for this call, or None for the XLA path; raises for ``fused=True``
    when the kernel cannot serve the call."""
    fused = stored.fused
    if fused is False or (fused is None and disabled_by_env()):
        return None
    no = _fused.refusal(fused, "this with_storage step")
    if stored.track_error:
        return no("track_error=True measures the encoding error on the XLA path")
    rule: AdamRule = stored.rule
    inner = state.inner if isinstance(state, StorageState) else None
    moments = inner[rule.moments_at] if isinstance(inner, tuple) else None
    if not isinstance(moments, MomentsState):
        return no("the state is not this recipe's")
    g_leaves, treedef = jax.tree.flatten(grads)
    if not g_leaves:
        return no("the tree has no leaves")
    if params is None:
        return no("`params` were not given")
    if not (_flat_f32(moments.mu, treedef) and _flat_f32(moments.nu, treedef)):
        return no("the flat moments are not float32 buffers of the gradients' tree")
    shapes = tuple(tuple(jnp.shape(g)) for g in g_leaves)
    if moments.mu.shapes != shapes or moments.nu.shapes != shapes:
        return no("the flat moments' leaves have other shapes than the gradients")
    try:
        p_leaves = treedef.flatten_up_to(params)  # type: ignore[attr-defined]
    except (ValueError, TypeError):
        return no("the params do not match the gradients' tree")
    if not all(_fused._is_f32(x) for x in g_leaves + p_leaves):
        return no("the kernel takes float32 params and gradients only")
    flags = _fused.decay_flags_where_the_kernel_runs(rule, params, len(g_leaves), fused, no)
    return None if flags is None else _Plan(rule.decay, rule.maximize, flags)


def _ffi_leaves(config: _Plan, s, p, g, m, v):
    """The kernel over all leaves in calls of at most ``GROUP`` leaves; p and the flat m, v
    are updated in place. A leaf without elements is passed through."""
    out = list(p)
    live = [i for i in range(len(g)) if math.prod(jnp.shape(g[i]))]
    offsets = np.cumsum([0] + [math.prod(jnp.shape(x)) for x in g])
    for lo in range(0, len(live), _fused.GROUP):
        group = live[lo : lo + _fused.GROUP]
        operands, shapes = [s, m, v], [jax.ShapeDtypeStruct(m.shape, jnp.float32)] * 2
        aliases = {1: 0, 2: 1}
        for i in group:
            aliases[len(operands)] = len(shapes)  # p; not g
            operands += [p[i], g[i]]
            shapes.append(jax.ShapeDtypeStruct(jnp.shape(g[i]), jnp.float32))
        # Each call starts at its first leaf's offset and the kernel walks on by the
        # sizes: the leaves left out take no room in the buffers.
        results = jax.ffi.ffi_call(
            FLAT_TARGET, shapes, input_output_aliases=aliases, vmap_method="sequential"
        )(
            *operands,
            decay=np.int64(config.decay),
            maximize=config.maximize,
            decay_mask=np.asarray([config.decay_flags[i] for i in group], np.int64),
            offset=np.int64(offsets[group[0]]),
        )
        m, v = results[0], results[1]
        for i, r in zip(group, results[2:]):
            out[i] = r
    return out, m, v


def kernel_step(rule: AdamRule, config: _Plan, grads, state, params):
    """``(new_params, new_state)`` computed by the kernel; the state advanced exactly as
    :func:`adamx.with_storage`'s ``update`` advances it."""
    inner = state.inner
    moments: MomentsState = inner[rule.moments_at]
    count, lr, new_inner = _fused.advance(rule, inner)
    g, treedef = jax.tree.flatten(grads)
    g = [jnp.asarray(x) for x in g]
    p = [jnp.asarray(x) for x in treedef.flatten_up_to(params)]  # type: ignore[attr-defined]
    mu, nu = moments.mu, moments.nu
    out, m, v = _ffi_leaves(
        config,
        _fused.scalars(rule, count, lr),
        p,
        g,
        mu.buffers["float32"],
        nu.buffers["float32"],
    )
    new_mu = FlatMoments({"float32": m}, mu.treedef, mu.shapes, mu.dtypes)
    new_nu = FlatMoments({"float32": v}, nu.treedef, nu.shapes, nu.dtypes)
    new_inner[rule.moments_at] = MomentsState(count=count, mu=new_mu, nu=new_nu)
    return jax.tree.unflatten(treedef, out), StorageState(
        inner=tuple(new_inner), key=state.key, error={}
    )


def flat_step(stored: StoredAdam, xla_step: Callable, grads, state, params):
    """The in-place step of ``with_storage(adam/adamw, mu="flat", nu="flat")``: the kernel
    where it applies, else ``xla_step`` (``update`` and ``optax.apply_updates``)."""
    config = plan(stored, grads, state, params)
    if config is None:
        return xla_step(grads, state, params)
    check_trees_match(grads, params, "grads", "params")
    kernel = functools.partial(kernel_step, stored.rule, config)

    @jax.custom_jvp
    def run(grads, state, params):
        return kernel(grads, state, params)

    @run.defjvp
    def run_jvp(primals, tangents):
        return jax.jvp(xla_step, primals, tangents)

    return _fused.on_cpu_else(run, xla_step, grads, state, params)
