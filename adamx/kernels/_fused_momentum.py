"""Lion and SGD with momentum in one pass over memory on CPU: the kernels behind :func:`step`.

The recipes stay chains of blocks (:func:`adamx.lion` is ``scale_by_lion_moments``,
``read_sign``, ...; :func:`adamx.sgd` is ``trace_momentum`` between the decay and the
learning rate) and describe themselves (``update.lion_rule``, ``update.sgd_rule``). On CPU
the kernels of ``csrc/momentum_cpu.cc`` do a step of either in a single multi-threaded pass
that reads ``p``, ``g`` and the one state tensor and writes ``p`` and the state in place (20
bytes per float32 parameter), where XLA's Lion step also writes a copy of ``m`` (its
read-out and its new ``m`` are two loops over the old one). As for Adam's kernel
(``_fused.py``):

* the state is the chain's own (same tree, same dtypes, the counts advanced alike), so the
  kernel and the XLA path are interchangeable at any step;
* it is chosen per call, at trace time: float32 leaves, a single CPU device (or per shard
  inside ``shard_map``), a decay mask of Python bools; anything else takes the XLA path,
  and ``fused=True`` makes that an error that says why;
* differentiating through the step uses the same formula in ``jax.numpy`` (a
  ``custom_jvp``), and ``vmap`` runs the kernel once per batch element.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamx.blocks._base import as_scalar, check_trees_match, one_minus, safe_increment
from adamx.blocks._schedule import ScheduleState
from adamx.kernels._build import LION_TARGET, SGD_TARGET, disabled_by_env
from adamx.kernels._fused import (
    GROUP,
    _is_f32,
    decay_flags_where_the_kernel_runs,
    on_cpu_else,
    refusal,
)
from adamx.optimizers._adam_rule import COUPLED, DECOUPLED
from adamx.optimizers._lamb_lion import LionMomentsState
from adamx.optimizers._momentum_rule import LionRule, SgdRule
from adamx.optimizers._sgd import MomentumState


class _Plan(NamedTuple):
    """What one traced call of a kernel needs, beyond the arrays (hashable)."""

    target: str
    decay_flags: tuple[bool, ...]  # per leaf, in flattening order
    maximize: bool = False  # SGD only
    nesterov: bool = False  # SGD only


def _plan(rule: LionRule | SgdRule, state_type: type, at: int, grads, state, params, fused):
    """The kernel plan for this call, or None for the XLA path; raises for ``fused=True``
    when the kernel cannot serve the call."""
    if fused is False or (fused is None and disabled_by_env()):
        return None
    no = refusal(fused, "this step")
    held = state[at] if isinstance(state, tuple) and len(state) > at else None
    if not isinstance(held, state_type):
        return no("the state is not this recipe's")
    g_leaves = jax.tree.leaves(grads)
    if not g_leaves:
        return no("the tree has no leaves")
    buffer = getattr(held, "mu" if isinstance(held, LionMomentsState) else "trace")
    trees = [grads, params, buffer]
    if not all(_is_f32(x) for t in trees for x in jax.tree.leaves(t)):
        return no("the kernel takes float32 params, gradients and state only")
    flags = decay_flags_where_the_kernel_runs(rule, params, len(g_leaves), fused, no)
    if flags is None:
        return None
    if isinstance(rule, LionRule):
        return _Plan(LION_TARGET, flags if rule.decay == DECOUPLED else (False,) * len(flags))
    decayed = (rule.decay == COUPLED,) * len(flags)
    return _Plan(SGD_TARGET, decayed, rule.maximize, rule.nesterov)


def lion_scalars(rule: LionRule, lr) -> jax.Array:
    """Lion's float32 scalars, each made as the XLA path makes it: ``-lr``, ``1 - b1``,
    ``1 - b2``, ``wd``."""
    f32 = jnp.float32
    return jnp.stack(
        [
            -jnp.asarray(lr, f32),
            as_scalar(one_minus(rule.b1), f32),
            as_scalar(one_minus(rule.b2), f32),
            as_scalar(rule.weight_decay, f32),
        ]
    )


def sgd_scalars(rule: SgdRule, lr, first) -> jax.Array:
    """SGD's float32 scalars, each made as the XLA path makes it: ``-lr``, ``mu``,
    ``1 - dampening``, ``wd``, and 1 on the first step (``count == 0``), else 0."""
    f32 = jnp.float32
    return jnp.stack(
        [
            -jnp.asarray(lr, f32),
            as_scalar(rule.momentum, f32),
            as_scalar(one_minus(rule.dampening), f32),
            as_scalar(rule.weight_decay, f32),
            jnp.where(first, 1.0, 0.0).astype(f32),
        ]
    )


def lion_formula(p, g, m, s: jax.Array, decayed: bool):
    """One leaf of the Lion kernel's arithmetic in ``jax.numpy``, operation for operation
    (its derivative rule, and the documentation of what the C++ computes): new p, m."""
    neg_lr, w1, w2, wd = (s[i] for i in range(4))
    d = jnp.sign(m + w1 * (g - m))
    if decayed:
        d = d + wd * p
    return p + neg_lr * d, m + w2 * (g - m)


def sgd_formula(p, g, b, s: jax.Array, decayed: bool, maximize: bool, nesterov: bool):
    """One leaf of the SGD kernel's arithmetic in ``jax.numpy``, operation for operation:
    new p, b."""
    neg_lr, mu, w, wd, first = (s[i] for i in range(5))
    if maximize:
        g = -g
    if decayed:
        g = g + wd * p
    b = jnp.where(first != 0, g, b * mu + w * g)
    d = g + mu * b if nesterov else b
    d = jnp.where(mu == 0, g, d)
    return p + neg_lr * d, b


def _formula_leaves(config: _Plan, s, p, g, m):
    def one(p, g, m, decayed):
        if config.target == LION_TARGET:
            return lion_formula(p, g, m, s, decayed)
        return sgd_formula(p, g, m, s, decayed, config.maximize, config.nesterov)

    outs = [one(*leaf) for leaf in zip(p, g, m, config.decay_flags)]
    return [o[0] for o in outs], [o[1] for o in outs]


def _ffi_leaves(config: _Plan, s, p, g, m):
    """The kernel over all leaves, in calls of at most ``GROUP`` leaves; p and the state
    are updated in place (outputs aliased to inputs)."""
    attrs = {} if config.target == LION_TARGET else {
        "maximize": config.maximize, "nesterov": config.nesterov,
    }  # fmt: skip
    outs, ms = [], []
    for lo in range(0, len(g), GROUP):
        hi = min(lo + GROUP, len(g))
        operands, shapes, aliases = [s], [], {}
        for i in range(lo, hi):
            k, j = len(shapes), len(operands)
            aliases.update({j: k, j + 2: k + 1})  # p, state; not g
            operands += [p[i], g[i], m[i]]
            shapes += [jax.ShapeDtypeStruct(g[i].shape, jnp.float32)] * 2
        results = jax.ffi.ffi_call(
            config.target, shapes, input_output_aliases=aliases, vmap_method="sequential"
        )(*operands, **attrs, decay_mask=np.asarray(config.decay_flags[lo:hi], np.int64))
        outs += results[0::2]
        ms += results[1::2]
    return outs, ms


@functools.cache
def _kernel_for(config: _Plan) -> Callable:
    """The kernel as a function of (scalars, p, g, state) lists, differentiable through
    the formula."""

    @jax.custom_jvp
    def run(s, p, g, m):
        return _ffi_leaves(config, s, p, g, m)

    @run.defjvp
    def run_jvp(primals, tangents):
        return jax.jvp(functools.partial(_formula_leaves, config), primals, tangents)

    return run


def _learning_rate(rule: LionRule | SgdRule, state, new_state: list):
    """The learning rate of this step, advancing the schedule's count as the chain does."""
    if not callable(rule.learning_rate):
        return rule.learning_rate
    schedule: ScheduleState = state[rule.lr_at]
    new_state[rule.lr_at] = ScheduleState(count=safe_increment(schedule.count))
    return rule.learning_rate(schedule.count)


def _run(config: _Plan, s, grads, buffer, params):
    """The kernel on the flattened trees: ``(new params tree, new state-buffer tree)``."""
    check_trees_match(grads, buffer, "grads", "the optimizer state", dtypes=True)
    g, treedef = jax.tree.flatten(grads)
    g = [jnp.asarray(x) for x in g]
    m = treedef.flatten_up_to(buffer)  # type: ignore[attr-defined]
    p = [jnp.asarray(x) for x in treedef.flatten_up_to(params)]  # type: ignore[attr-defined]
    out, m = _kernel_for(config)(s, p, g, m)
    return jax.tree.unflatten(treedef, out), jax.tree.unflatten(treedef, m)


def lion_kernel_step(rule: LionRule, config: _Plan, grads, state, params):
    """``(new_params, new_state)`` computed by the Lion kernel; the state is the chain's."""
    held: LionMomentsState = state[rule.moments_at]
    new_state = list(state)
    lr = _learning_rate(rule, state, new_state)
    new_params, mu = _run(config, lion_scalars(rule, lr), grads, held.mu, params)
    new_state[rule.moments_at] = LionMomentsState(count=safe_increment(held.count), mu=mu)
    return new_params, tuple(new_state)


def sgd_kernel_step(rule: SgdRule, config: _Plan, grads, state, params):
    """``(new_params, new_state)`` computed by the SGD kernel; the state is the chain's."""
    held: MomentumState = state[rule.trace_at]
    new_state = list(state)
    lr = _learning_rate(rule, state, new_state)
    s = sgd_scalars(rule, lr, held.count == 0)
    new_params, trace = _run(config, s, grads, held.trace, params)
    new_state[rule.trace_at] = MomentumState(count=safe_increment(held.count), trace=trace)
    return new_params, tuple(new_state)


def lion_step(rule: LionRule, fused: bool | None, xla_step: Callable, grads, state, params):
    """The in-place step of a Lion recipe: the kernel where it applies, else ``xla_step``
    (``update`` and ``optax.apply_updates``)."""
    config = _plan(rule, LionMomentsState, rule.moments_at, grads, state, params, fused)
    if config is None:
        return xla_step(grads, state, params)
    on_cpu = functools.partial(lion_kernel_step, rule, config)
    return on_cpu_else(on_cpu, xla_step, grads, state, params)


def sgd_step(rule: SgdRule, fused: bool | None, xla_step: Callable, grads, state, params):
    """The in-place step of an SGD-with-momentum recipe: the kernel where it applies, else
    ``xla_step``."""
    config = _plan(rule, MomentumState, rule.trace_at, grads, state, params, fused)
    if config is None:
        return xla_step(grads, state, params)
    on_cpu = functools.partial(sgd_kernel_step, rule, config)
    return on_cpu_else(on_cpu, xla_step, grads, state, params)
