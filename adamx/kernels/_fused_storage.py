"""Adam and AdamW with stored moments in one pass on CPU: the kernel behind :func:`adamx.step`
for ``with_storage(adam(...) or adamw(...), mu=..., nu=...)``.

The XLA path of :func:`adamx.with_storage` decodes every stored moment into a float32
array, runs the recipe, and encodes the new moments: several loops per leaf, each moving
float32 arrays, so storing 2 or 1 bytes per moment makes the step slower than float32
Adam. ``csrc/adam_storage_cpu.cc`` decodes, updates and encodes each element in one
pass (p and the stored moments updated in place): 16 bytes per parameter with two 8-bit
moments (p read and written, g read, one byte each way per moment, plus the scales),
20 with two bfloat16 moments, against 28 for float32 Adam.

Served policies per moment (``mu`` and ``nu`` independently): None or ``"float32"``,
``"bfloat16"``, ``"bfloat16_sr"`` and ``"8bit"`` (any :func:`adamx.storage.blockwise8`;
leaves under its ``min_size`` stay float32). The results are those of the XLA path: the
same state tree, dtypes and shapes, Adam's arithmetic as the float32 kernel computes it
(``adamx.kernels._fused.formula``), then the codecs of ``adamx.storage`` exactly (ties, padding,
the stochastic-rounding noise of each element). Anything else takes the XLA path:
``float16``, ``"factored"``, ``track_error=True``, an 8-bit ``mu`` and ``nu`` with
different block sizes, non-float32 params, a mesh, another recipe.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx import storage as _storage
from adamx.blocks._base import check_trees_match
from adamx.blocks._moments import MomentsState
from adamx.kernels._build import STORAGE_TARGET, disabled_by_env
from adamx.kernels._fused import (
    GROUP,
    _is_f32,
    advance,
    decay_flags_where_the_kernel_runs,
    on_cpu_else,
    refusal,
    scalars,
)
from adamx.optimizers._adam_rule import AdamRule
from adamx.storage import _blockwise8
from adamx.storage._with_storage import (
    StorageState,
    StoredAdam,
    next_rounding_key,
    rounding_seeds,
    walk_moments,
)

F32, BF16, BF16_SR, Q8_SIGNED, Q8_UNSIGNED, Q8_SIGNED_SR, Q8_UNSIGNED_SR = range(7)
STOCHASTIC = (BF16_SR, Q8_SIGNED_SR, Q8_UNSIGNED_SR)


# ------------------------------------------------------------------ the code tables


@functools.cache
def bucket_tables() -> tuple[int, int, np.ndarray, np.ndarray]:
    """``(lo, n, buckets, tables)``: the kernel's operands for the 8-bit codes.

    ``lo``, ``n`` and ``buckets`` (``uint32[4 * 2 n]``: nearest signed, nearest unsigned,
    floor signed, floor unsigned) are ``adamx.storage._blockwise8.search_buckets()``, the searches
    the XLA path makes; ``tables`` is ``float32[2, 256]``, the signed and unsigned code
    values (the decode, and the neighbours of stochastic rounding).
    """
    lo, n, buckets = _blockwise8.search_buckets()
    tables = np.stack([_storage.dynamic_code(True), _storage.dynamic_code(False)])
    return lo, n, buckets.reshape(-1), tables.astype(np.float32)


# ------------------------------------------------------------------------ the plan


class _Leaf(NamedTuple):
    mu: int  # mode
    nu: int
    rows: int
    cols: int
    block: int
    mu_parts: int  # stored arrays: 1, or 2 for 8-bit (codes, scale)
    nu_parts: int


class _Plan(NamedTuple):
    decay: int
    maximize: bool
    decay_flags: tuple[bool, ...]
    leaves: tuple[_Leaf, ...]


def _q8_layout(policy, shape, stored) -> tuple[int, int, int] | None:
    """``(rows, cols, block)`` of a leaf's 8-bit row blocks (``codes[*S[:-1], nb, b]``, see
    :func:`adamx.storage.row_blocks`), checked against what ``policy.encode`` makes; None
    if the stored leaf is not that."""
    like = jax.ShapeDtypeStruct(shape, jnp.float32)
    want = jax.eval_shape(lambda x: policy.encode(x, jnp.uint32(0)), like)
    got = jax.tree.map(lambda x: (tuple(jnp.shape(x)), jnp.result_type(x)), stored)
    if jax.tree.map(lambda x: (tuple(x.shape), x.dtype), want) != got:
        return None
    if not isinstance(want, _storage.Quantized):
        return None
    shape = tuple(shape) or (1,)
    cols, b, nb = _storage.row_blocks(shape, policy.block_size)
    if want.codes.shape != (*shape[:-1], nb, b) or want.scale.shape != (*shape[:-1], nb):
        return None
    return math.prod(shape) // max(cols, 1), cols, b  # no rows when the leaf is empty


def _moment_leaf(policy, shape, stored):
    """``(mode, parts, layout)`` of one stored moment leaf, or a reason string."""
    size = math.prod(shape)
    if policy is None or (
        isinstance(policy, _storage.Cast)
        and policy.dtype == "float32"
        and not policy.stochastic_rounding
    ):
        if not _is_f32(stored) or tuple(jnp.shape(stored)) != tuple(shape):
            return "a float32 moment is not stored as float32"
        return F32, 1, None
    if isinstance(policy, _storage.Cast) and policy.dtype == "bfloat16":
        if jnp.result_type(stored) != jnp.bfloat16 or math.prod(jnp.shape(stored)) != size:
            return "a bfloat16 moment is not stored as bfloat16"
        return (BF16_SR if policy.stochastic_rounding else BF16), 1, None
    if isinstance(policy, _storage.Blockwise8) and policy.signed is not None:
        if size < policy.min_size:
            if not _is_f32(stored) or tuple(jnp.shape(stored)) != tuple(shape):
                return "a small 8-bit-policy leaf is not stored as float32"
            return F32, 1, None
        layout = _q8_layout(policy, tuple(shape), stored)
        if layout is None:
            return "an 8-bit moment is not in a block layout the kernel knows"
        if policy.stochastic_rounding:
            return (Q8_SIGNED_SR if policy.signed else Q8_UNSIGNED_SR), 2, layout
        return (Q8_SIGNED if policy.signed else Q8_UNSIGNED), 2, layout
    return f"storage {getattr(policy, 'name', policy)!r} has no kernel"


def _moment_fields(inner) -> list[tuple[str, object]]:
    """The moment fields of a state in encode order: (role, value)."""
    found: list[tuple[str, object]] = []

    def note(role, value, *_):
        found.append((role, value))
        return value

    walk_moments(note, inner)
    return found


def plan(rule: AdamRule, policies, track_error: bool, grads, state, params, *, fused):
    """The kernel plan for this call, or None for the XLA path; raises for ``fused=True``
    when the kernel cannot serve the call."""
    if fused is False or (fused is None and disabled_by_env()):
        return None

    no = refusal(fused, "this with_storage step")

    if track_error:
        return no("track_error=True measures the encoding error on the XLA path")
    if any(isinstance(policy, _storage.Flat) for policy in policies.values()):
        return no('flat moments have a kernel with mu="flat" and nu="flat" only')
    if not isinstance(state, StorageState) or not isinstance(state.inner, tuple):
        return no("the state is not this optimizer's")
    moments = state.inner[rule.moments_at] if len(state.inner) > rule.moments_at else None
    if not isinstance(moments, MomentsState):
        return no("the state is not this recipe's")
    g_leaves, treedef = jax.tree.flatten(grads)
    n = len(g_leaves)
    if not n:
        return no("the tree has no leaves")
    if params is None:
        return no("`params` were not given")
    fields = _moment_fields(state.inner)
    if [role for role, _ in fields] != ["mu", "nu"] or not (
        fields[0][1] is moments.mu and fields[1][1] is moments.nu
    ):
        return no("the state keeps other moments than Adam's mu and nu")
    try:
        p_leaves = treedef.flatten_up_to(params)  # type: ignore[attr-defined]
        mu_leaves = treedef.flatten_up_to(moments.mu)  # type: ignore[attr-defined]
        nu_leaves = treedef.flatten_up_to(moments.nu)  # type: ignore[attr-defined]
    except (ValueError, TypeError):
        return no("the params or the state do not match the gradients' tree")
    if not all(_is_f32(x) for x in g_leaves + p_leaves):
        return no("the kernel takes float32 params and gradients only")
    if any(jnp.shape(p) != jnp.shape(g) for p, g in zip(p_leaves, g_leaves)):
        return no("the params' and the gradients' shapes differ")
    leaves = []
    for g, m, v in zip(g_leaves, mu_leaves, nu_leaves):
        shape = tuple(jnp.shape(g))
        a = _moment_leaf(policies["mu"], shape, m)
        b = _moment_leaf(policies["nu"], shape, v)
        for found in (a, b):
            if isinstance(found, str):
                return no(found)
        layouts = {x[2] for x in (a, b) if x[2] is not None}
        if len(layouts) > 1:
            return no("8-bit mu and nu with different block layouts")
        rows, cols, block = layouts.pop() if layouts else (1, math.prod(shape), 1)
        leaves.append(_Leaf(a[0], b[0], rows, cols, block, a[1], b[1]))
    flags = decay_flags_where_the_kernel_runs(rule, params, n, fused, no)
    return None if flags is None else _Plan(rule.decay, rule.maximize, flags, tuple(leaves))


# ---------------------------------------------------------------------- the kernel


def _ffi_leaves(config: _Plan, s, seeds, p, g, m, v):
    """The kernel over all leaves, in calls of at most ``GROUP`` leaves; p and the stored
    moments (lists of their parts) are updated in place. A leaf without elements has
    nothing to update and is passed through, not given to the kernel (an 8-bit leaf with a
    zero-length last axis has blocks of 0 elements, which the kernel's layout cannot cut)."""
    lo_b, n_b, buckets, tables = bucket_tables()
    buckets, tables = jnp.asarray(buckets), jnp.asarray(tables.reshape(-1))  # type: ignore[assignment]
    outs, ms, vs = list(p), list(m), list(v)
    live = [i for i in range(len(g)) if math.prod(jnp.shape(g[i]))]
    for lo in range(0, len(live), GROUP):
        group = live[lo : lo + GROUP]
        at = np.asarray([k for i in group for k in (2 * i, 2 * i + 1)])
        operands, shapes, aliases = [s, seeds[at], tables, buckets], [], {}
        layout = []
        for i in group:
            leaf = config.leaves[i]
            layout += [leaf.mu, leaf.nu, leaf.rows, leaf.cols, leaf.block]
            for x, donate in [(p[i], True), (g[i], False), *((x, True) for x in m[i] + v[i])]:
                if donate:
                    aliases[len(operands)] = len(shapes)
                    shapes.append(jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)))
                operands.append(x)
        results = jax.ffi.ffi_call(
            STORAGE_TARGET, shapes, input_output_aliases=aliases, vmap_method="sequential"
        )(
            *operands,
            decay=np.int64(config.decay),
            maximize=config.maximize,
            decay_mask=np.asarray([config.decay_flags[i] for i in group], np.int64),
            layout=np.asarray(layout, np.int64),
            bucket_lo=np.int64(lo_b),
            bucket_n=np.int64(n_b),
        )
        k = 0
        for i in group:
            leaf = config.leaves[i]
            outs[i] = results[k]
            ms[i] = list(results[k + 1 : k + 1 + leaf.mu_parts])
            k += 1 + leaf.mu_parts
            vs[i] = list(results[k : k + leaf.nu_parts])
            k += leaf.nu_parts
    return outs, ms, vs


def _parts(stored) -> list:
    if isinstance(stored, _storage.Quantized):
        return [stored.codes, stored.scale]
    return [stored]


def _unparts(parts: list):
    return _storage.Quantized(*parts) if len(parts) == 2 else parts[0]


def kernel_step(rule: AdamRule, config: _Plan, stochastic: bool, grads, state, params):
    """``(new_params, new_state)`` computed by the kernel; the state advanced exactly as
    :func:`adamx.with_storage`'s ``update`` advances it."""
    inner = state.inner
    moments: MomentsState = inner[rule.moments_at]
    count, lr, new_inner = advance(rule, inner)
    g, treedef = jax.tree.flatten(grads)
    g = [jnp.asarray(x) for x in g]
    p = [jnp.asarray(x) for x in treedef.flatten_up_to(params)]  # type: ignore[attr-defined]
    m = [_parts(x) for x in treedef.flatten_up_to(moments.mu)]  # type: ignore[attr-defined]
    v = [_parts(x) for x in treedef.flatten_up_to(moments.nu)]  # type: ignore[attr-defined]
    key, sub = next_rounding_key(state.key, stochastic)
    n = len(g)
    modes = [(leaf.mu, leaf.nu) for leaf in config.leaves]
    if any(mode in STOCHASTIC for pair in modes for mode in pair):
        seeds = rounding_seeds(sub, 2 * n)
        mask = np.asarray([[mu in STOCHASTIC, nu in STOCHASTIC] for mu, nu in modes]).T.reshape(-1)
        seeds = jnp.where(mask, seeds, jnp.uint32(0))
        seeds = seeds.reshape(2, n).T.reshape(-1)  # per leaf: mu's seed, nu's seed
    else:
        seeds = jnp.zeros([2 * n], jnp.uint32)
    out, m, v = _ffi_leaves(config, scalars(rule, count, lr), seeds, p, g, m, v)
    unflat = functools.partial(jax.tree.unflatten, treedef)
    new_inner[rule.moments_at] = MomentsState(
        count=count, mu=unflat([_unparts(x) for x in m]), nu=unflat([_unparts(x) for x in v])
    )
    return unflat(out), StorageState(inner=tuple(new_inner), key=key, error={})


def _differentiable(kernel, reference):
    """``kernel`` whose derivative (forward or reverse mode, e.g. through a meta-learning
    loss) is ``reference``'s: the XLA path, the same arithmetic and codecs in
    ``jax.numpy``."""

    @jax.custom_jvp
    def run(grads, state, params):
        return kernel(grads, state, params)

    @run.defjvp
    def run_jvp(primals, tangents):
        return jax.jvp(reference, primals, tangents)

    return run


def storage_step(stored: StoredAdam, xla_step: Callable, grads, state, params):
    """The in-place step of ``with_storage(adam/adamw)``: the kernel where it applies, else
    ``xla_step`` (``update`` and ``optax.apply_updates``)."""
    rule = stored.rule
    config = plan(
        rule, stored.policies, stored.track_error, grads, state, params, fused=stored.fused
    )
    if config is None:
        return xla_step(grads, state, params)
    check_trees_match(grads, params, "grads", "params")
    kernel = functools.partial(kernel_step, rule, config, stored.stochastic)
    return on_cpu_else(_differentiable(kernel, xla_step), xla_step, grads, state, params)
