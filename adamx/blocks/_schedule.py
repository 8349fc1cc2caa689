"""The learning rate: a number or a schedule of the step count, with the descent sign."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    ScalarOrSchedule,
    check_learning_rate,
    compute_dtype,
    safe_increment,
    transformation,
)


class ScheduleState(NamedTuple):
    """State of :func:`scale_by_learning_rate` with a schedule: updates taken so far."""

    count: jax.Array  # type: ignore[assignment]


def scale_by_learning_rate(learning_rate: ScalarOrSchedule) -> optax.GradientTransformation:
    """Multiply the updates by minus the learning rate.

    Per leaf, with ``k`` the number of earlier updates (0 on the first)::

        u = -lr(k) * d

    ``learning_rate`` is a number (or a traced array) or a schedule, any callable of the
    step count such as ``optax.warmup_cosine_decay_schedule(...)``; the schedule is read at
    ``k = 0`` on the first update, as PyTorch's schedulers are. Arithmetic runs in the
    leaf's dtype but at least float32 and is cast back, so bfloat16 updates stay bfloat16.
    Used alone, this block is plain gradient descent.

    Args:
      learning_rate: a finite number ``>= 0`` or a schedule.

    Returns:
      An ``optax.GradientTransformation``; its state is :class:`ScheduleState` for a
      schedule, ``optax.EmptyState`` otherwise.
    """
    check_learning_rate(learning_rate)

    def scale(updates, lr):
        def leaf(u):
            u = jnp.asarray(u)
            dtype = compute_dtype(u.dtype)
            return (-jnp.asarray(lr, dtype) * u.astype(dtype)).astype(u.dtype)

        return jax.tree.map(leaf, updates)

    if not callable(learning_rate):

        def update(updates, state, params=None):
            del params
            return scale(updates, learning_rate), state

        return transformation(lambda params: optax.EmptyState(), update)

    def init(params):
        del params
        return ScheduleState(count=jnp.zeros([], jnp.int32))

    def update_scheduled(updates, state, params=None):
        del params
        lr = learning_rate(state.count)
        return scale(updates, lr), ScheduleState(count=safe_increment(state.count))

    return transformation(init, update_scheduled)
