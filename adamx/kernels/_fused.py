"""Adam and AdamW in one pass over memory on CPU: the fused kernel behind :func:`step`.

The recipes stay chains of blocks (:func:`adamx.adam` is ``scale_by_moments``,
``correct_bias``, ``normalize``, ...). On CPU, XLA compiles such a chain plus
``optax.apply_updates`` into three loops per leaf (about 40 bytes moved per float32
parameter); the kernel in ``csrc/adam_cpu.cc`` does the same arithmetic in a single
multi-threaded pass that writes the new parameters in place (28 bytes). :func:`fuse` gives
a recipe's ``update`` an ``apply_step`` attribute, which :func:`step` calls:

* the state is the chain's own (same tree, same dtypes), so the two paths are
  interchangeable at any step, and checkpoints do not know which one ran;
* it is chosen per call, at trace time: float32 leaves, a single CPU device; when the
  default backend is not the CPU, ``jax.lax.platform_dependent`` keeps the plain XLA path
  for GPU and TPU lowerings;
* differentiating through the step (meta-learning) uses the same formula in ``jax.numpy``
  (a ``custom_jvp``), and ``vmap`` runs the kernel once per batch element.

``update`` itself stays the XLA chain: its result is a tree of updates, and materialising
it from a kernel (then adding it to the params) moves more bytes than XLA's own fusion of
``update`` and ``apply_updates`` (measured: 102 ms vs 56 ms on the benchmark's 58M
parameters).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from adamx.blocks._base import as_scalar, check_trees_match, one_minus, safe_increment
from adamx.blocks._correction import bias_correction
from adamx.blocks._moments import MomentsState
from adamx.blocks._schedule import ScheduleState
from adamx.kernels._build import TARGET, disabled_by_env, ensure_kernel
from adamx.optimizers._adam_rule import COUPLED, DECOUPLED, NO_DECAY, AdamRule

# Leaves per kernel call. One call over thousands of leaves makes XLA's compile time grow
# fast with the number of aliased operands (33 s for 1,000 leaves, measured); calls of a
# few dozen leaves compile in under a second and cost a few microseconds each.
GROUP = 8


class _Plan(NamedTuple):
    """What one traced call of the kernel needs, beyond the arrays (hashable)."""

    decay: int
    maximize: bool
    decay_flags: tuple[bool, ...]  # per leaf, in flattening order


def _is_f32(x) -> bool:
    return jnp.result_type(x) == jnp.float32


def _resolve_mask(mask, params, n: int) -> tuple[bool, ...] | None:
    """Per-leaf decay flags from AdamW's mask; None when they are not concrete per leaf."""
    if mask is None:
        return (True,) * n
    tree = mask(params) if callable(mask) else mask
    leaves, _ = jax.tree.flatten(tree)
    try:
        flags = tuple(bool(x) for x in leaves)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None
    if len(flags) != n or jax.tree.structure(tree) != jax.tree.structure(params):  # type: ignore[operator]
        return None
    return flags


def _single_cpu_process() -> bool:
    """No device mesh to respect: one CPU device in one process."""
    try:
        return jax.process_count() == 1 and len(jax.devices("cpu")) == 1
    except RuntimeError:
        return False


def refusal(fused: bool | None, what: str) -> Callable[[str], None]:
    """A plan's way out: ``no(reason)`` is None (the XLA path), or with ``fused=True`` a
    ``ValueError`` saying why the kernel cannot run ``what``."""

    def no(reason: str) -> None:
        if fused:
            raise ValueError(
                f"fused=True, but the fused kernel cannot run {what}: {reason}. Use "
                f"fused=None to let adamx fall back to the XLA path in such cases."
            )
        return None

    return no


def plan(rule: AdamRule, grads, state, params, *, fused: bool | None):
    """The kernel plan for this call, or None for the XLA path; raises for ``fused=True``
    when the kernel cannot serve the call."""
    if fused is False or (fused is None and disabled_by_env()):
        return None

    no = refusal(fused, "this step")

    moments = state[rule.moments_at] if isinstance(state, tuple) else None
    if not isinstance(moments, MomentsState):
        return no("the state is not this recipe's")
    g_leaves = jax.tree.leaves(grads)
    if not g_leaves:
        return no("the tree has no leaves")
    if params is None:
        return no("`params` were not given")
    trees = [grads, params, moments.mu, moments.nu]
    if not all(_is_f32(x) for t in trees for x in jax.tree.leaves(t)):
        return no("the kernel takes float32 params, gradients and moments only")
    flags = decay_flags_where_the_kernel_runs(rule, params, len(g_leaves), fused, no)
    return None if flags is None else _Plan(rule.decay, rule.maximize, flags)


class DecayRule(Protocol):
    """What :func:`decay_flags_where_the_kernel_runs` reads of a rule (Adam's, Lion's, SGD's)."""

    @property
    def decay(self) -> int: ...

    @property
    def mask(self) -> Any: ...


def decay_flags_where_the_kernel_runs(rule: DecayRule, params, n: int, fused, no):
    """The last checks of a plan, shared by the kernels: a single CPU process (or inside
    ``shard_map``), a decay mask of Python bools, the kernel built. Returns the per-leaf
    decay flags, or None for the XLA path (``no(reason)`` raises for ``fused=True``)."""
    if fused is None and not _single_cpu_process():
        return None  # a mesh or several processes: the kernel would gather shards
    flags = (True,) * n
    if rule.decay == DECOUPLED and rule.mask is not None:
        flags = _resolve_mask(rule.mask, params, n)  # type: ignore[assignment]
        if flags is None:
            return no("the weight-decay mask is not a tree of Python bools like the params")
    if not ensure_kernel(required=bool(fused)):
        return None
    if not _single_cpu_process() and not _inside_shard_map():
        return no(
            "there are several devices and this is not inside `shard_map`: XLA would gather "
            "every sharded operand onto one device for the kernel. Call adamx.step per shard "
            "inside `jax.shard_map`, or use fused=None (the XLA path here)"
        )
    return flags


def _inside_shard_map() -> bool:
    """Tracing inside ``shard_map`` with every mesh axis manual: arrays are per-shard."""
    try:
        mesh = jax.sharding.get_abstract_mesh()
        return bool(mesh.axis_names) and bool(mesh.are_all_axes_manual)
    except (AttributeError, RuntimeError, ValueError):
        return False


def scalars(rule: AdamRule, count, lr) -> jax.Array:
    """The kernel's float32 scalars, each made exactly as the XLA path makes it (the order
    is the ``Scalar`` enum of the kernel source)."""
    f32 = jnp.float32
    bc2 = bias_correction(rule.b2, count)
    return jnp.stack(
        [
            -jnp.asarray(lr, f32),
            as_scalar(one_minus(rule.b1), f32),
            as_scalar(rule.b2, f32),
            as_scalar(one_minus(rule.b2), f32),
            bias_correction(rule.b1, count).astype(f32),
            as_scalar(rule.eps_root, f32) * bc2.astype(f32),
            jnp.sqrt(bc2).astype(f32),
            as_scalar(rule.eps, f32),
            as_scalar(rule.weight_decay, f32),
        ]
    )


def formula(p, g, m, v, s: jax.Array, decay: int, maximize: bool):
    """One leaf of the kernel's arithmetic in ``jax.numpy``, operation for operation (its
    derivative rule, and the documentation of what the C++ computes): the new p, m, v."""
    neg_lr, w1, b2, w2, bc1, er_bc2, sq_bc2, eps, wd = (s[i] for i in range(9))
    if maximize:
        g = -g
    if decay == COUPLED:
        g = g + wd * p
    m = m + w1 * (g - m)
    v = b2 * v + (w2 * g) * g
    d = (m / bc1) / (jnp.sqrt(v + er_bc2) / sq_bc2 + eps)
    if decay == DECOUPLED:
        d = d + wd * p
    return p + neg_lr * d, m, v


def _formula_leaves(config: _Plan, s, p, g, m, v):
    outs = [
        formula(*leaf, s, config.decay if f else NO_DECAY, config.maximize)  # type: ignore[call-arg]
        for *leaf, f in zip(p, g, m, v, config.decay_flags)
    ]
    return tuple([o[k] for o in outs] for k in range(3))


def _ffi_leaves(config: _Plan, s, p, g, m, v):
    """The kernel over all leaves, in calls of at most :data:`GROUP` leaves; p, m and v
    are updated in place (outputs aliased to inputs)."""
    outs, ms, vs = [], [], []
    for lo in range(0, len(g), GROUP):
        hi = min(lo + GROUP, len(g))
        operands, shapes, aliases = [s], [], {}
        for i in range(lo, hi):
            k, j = len(shapes), len(operands)
            aliases.update({j: k, j + 2: k + 1, j + 3: k + 2})  # p, m, v; not g
            operands += [p[i], g[i], m[i], v[i]]
            shapes += [jax.ShapeDtypeStruct(g[i].shape, jnp.float32)] * 3
        results = jax.ffi.ffi_call(
            TARGET, shapes, input_output_aliases=aliases, vmap_method="sequential"
        )(
            *operands,
            decay=np.int64(config.decay),
            maximize=config.maximize,
            decay_mask=np.asarray(config.decay_flags[lo:hi], np.int64),
        )
        outs += results[0::3]
        ms += results[1::3]
        vs += results[2::3]
    return outs, ms, vs


@functools.cache
def _kernel_for(config) -> Callable:
    """The kernel as a function of (scalars, p, g, m, v) lists, differentiable through
    :func:`formula`."""

    @jax.custom_jvp
    def run(s, p, g, m, v):
        return _ffi_leaves(config, s, p, g, m, v)

    @run.defjvp
    def run_jvp(primals, tangents):
        return jax.jvp(functools.partial(_formula_leaves, config), primals, tangents)

    return run


def advance(rule: AdamRule, chain_state) -> tuple[jax.Array, Any, list]:
    """The step's count and learning rate, and the chain's state as a list with the
    schedule's count advanced, as the chain advances them (every Adam kernel starts so)."""
    moments: MomentsState = chain_state[rule.moments_at]
    lr, new_state = rule.learning_rate, list(chain_state)
    if callable(rule.learning_rate):
        schedule: ScheduleState = chain_state[rule.lr_at]
        lr = rule.learning_rate(schedule.count)
        new_state[rule.lr_at] = ScheduleState(count=safe_increment(schedule.count))
    return safe_increment(moments.count), lr, new_state


def kernel_step(rule: AdamRule, config: _Plan, grads, state, params):
    """``(new_params, new_state)`` computed by the kernel. The state is the chain's,
    advanced exactly as the chain advances it."""
    moments: MomentsState = state[rule.moments_at]
    check_trees_match(grads, moments.mu, "grads", "the optimizer state", dtypes=True)
    check_trees_match(grads, moments.nu, "grads", "the optimizer state", dtypes=True)
    count, lr, new_state = advance(rule, state)
    g, treedef = jax.tree.flatten(grads)
    g = [jnp.asarray(x) for x in g]
    m = treedef.flatten_up_to(moments.mu)  # type: ignore[attr-defined]
    v = treedef.flatten_up_to(moments.nu)  # type: ignore[attr-defined]
    p = [jnp.asarray(x) for x in treedef.flatten_up_to(params)]  # type: ignore[attr-defined]
    out, m, v = _kernel_for(config)(scalars(rule, count, lr), p, g, m, v)
    unflat = functools.partial(jax.tree.unflatten, treedef)
    new_state[rule.moments_at] = MomentsState(count=count, mu=unflat(m), nu=unflat(v))
    return unflat(out), tuple(new_state)


def adam_step(rule: AdamRule, fused: bool | None, xla_step: Callable, grads, state, params):
    """The in-place step of a recipe described by ``rule``: the fused kernel where it
    applies, else ``xla_step`` (``update`` and ``optax.apply_updates``)."""
    config = plan(rule, grads, state, params, fused=fused)
    if config is None:
        return xla_step(grads, state, params)
    on_cpu = functools.partial(kernel_step, rule, config)
    return on_cpu_else(on_cpu, xla_step, grads, state, params)


def on_cpu_else(on_cpu: Callable, xla_step: Callable, *args):
    """``on_cpu(*args)`` in CPU lowerings, ``xla_step(*args)`` in GPU and TPU ones."""
    if jax.default_backend() == "cpu":  # no accelerator: no need to trace the XLA path
        return on_cpu(*args)
    return jax.lax.platform_dependent(*args, cpu=on_cpu, default=xla_step)
