"""Schedule-Free SGD and AdamW: an interpolation and an average in place of momentum."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    PyTree,
    ScalarOrSchedule,
    abstract_or_array,
    as_scalar,
    check_dtype,
    check_learning_rate,
    check_range,
    check_trees_match,
    compute_dtype,
    concrete_value,
    find_one_state,
    is_real_number,
    map_unzip,
    real_dtype,
    require_params,
    safe_increment,
    scalar_dtype,
    transformation,
)
from adamx.blocks._base import state_dtype as stored_dtype
from adamx.blocks._decay import decay_block
from adamx.blocks._moments import scale_by_moments
from adamx.blocks._normalize import normalize
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._adagrad import use_gradient
from adamx.optimizers._guard import recipe


class ScheduleFreeState(NamedTuple):
    """State of :func:`scale_by_schedule_free`: optax's ``ScheduleFreeState``, field for
    field, so that ``optax.contrib.schedule_free_eval_params`` reads it too.

    Attributes:
      b1: the interpolation weight ``b1``, a 0-d array in the params' lowest real dtype
        (what :func:`schedule_free_eval_params` reads).
      weight_sum: the sum of the averaging weights ``lr_max**weight_lr_power`` so far.
      step_count: int32, 1 before the first update (optax's count, which reads the
        learning-rate schedule one step ahead of the chain's own ``count``).
      max_lr: the largest learning rate seen so far.
      base_optimizer_state: the state of the base step's blocks (``base_optimizer``);
        ``optax.EmptyState()`` for the bare block.
      z: the base sequence ``z`` (the SGD or AdamW iterates), a tree like the params in
        their dtypes or ``state_dtype``.
    """

    b1: jax.Array
    weight_sum: jax.Array
    step_count: jax.Array
    max_lr: jax.Array
    base_optimizer_state: Any
    z: PyTree


def _lowest_real_dtype(params) -> jnp.dtype:
    """The lowest-precision real dtype of the float leaves (optax's ``tree.dtype(params,
    "lowest")``, complex leaves read as their real dtype); float32/64 without leaves."""
    dtypes = [real_dtype(jnp.result_type(p)) for p in jax.tree.leaves(params)]
    dtypes = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)]
    if not dtypes:
        return scalar_dtype()
    return min(dtypes, key=lambda d: (jnp.finfo(d).bits, d != jnp.bfloat16))


def warmup_constant(learning_rate, warmup_steps: int | None) -> ScalarOrSchedule:
    """``learning_rate`` after a linear warmup from 0 over ``warmup_steps`` updates
    (``optax.warmup_constant_schedule(0, lr, warmup_steps)``, written in one dtype so that it
    runs under strict promotion); ``learning_rate`` itself when ``warmup_steps`` is None.
    A schedule ``lr(count)`` is warmed up the same way: ``lr(count) * min(count, W) / W``
    (optax's warmup takes numbers only)."""
    if warmup_steps is None:
        return learning_rate

    def schedule(count):
        dtype = scalar_dtype()
        c = jnp.clip(jnp.asarray(count, dtype), 0, warmup_steps)
        frac = 1 - c / as_scalar(warmup_steps, dtype)
        rate = learning_rate(count) if callable(learning_rate) else learning_rate
        peak = jnp.asarray(rate).astype(dtype)
        return -peak * frac + peak

    return schedule


def check_schedule_free(b1, weight_lr_power, state_dtype_, warmup_steps) -> None:
    """The schedule-free options, checked where the recipe is built."""
    check_range("b1", b1, low=0.0, high=1.0)
    v = concrete_value(b1)
    if v is not None and v <= 0:
        raise ValueError(
            f"`b1` must lie in (0, 1] for schedule-free methods (the evaluation params divide "
            f"by it), got b1={b1!r}."
        )
    check_range("weight_lr_power", weight_lr_power, low=0.0)
    check_dtype("state_dtype", state_dtype_, complex_ok=True)
    if warmup_steps is None:
        return
    v = concrete_value(warmup_steps) if is_real_number(warmup_steps) else math.nan
    if v is not None and not (math.isfinite(v) and v >= 1 and v == int(v)):
        raise ValueError(
            f"`warmup_steps` must be None or a positive int, got warmup_steps={warmup_steps!r}."
        )


def scale_by_schedule_free(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    weight_lr_power: float = 2.0,
    state_dtype: Any | None = None,
    *,
    base_optimizer: optax.GradientTransformation | None = None,
) -> optax.GradientTransformation:
    """Schedule-Free's interpolation and averaging, around a base step ``u`` (no momentum).

    ``base_optimizer`` gives the base optimizer's step ``u`` (already times ``-lr``; a
    chain of blocks, run inside this one, its state kept in the field
    ``base_optimizer_state`` as in ``optax.contrib.schedule_free``); without it, the
    block takes its input updates as ``u`` and goes last in a chain. The params it
    receives are ``y``, where the gradient was taken; it keeps the base iterate ``z`` and
    returns the update that moves ``y`` to the next ``y``. With ``k`` the number of
    earlier updates::

        lr_max = max(lr_max, lr(k + 1));   w = lr_max**weight_lr_power
        c      = w / (w_sum + w);          w_sum = w_sum + w      (c = 0 where 0 / 0)
        x      = (y - (1 - b1) * z) / b1                          (the average, recomputed)
        z      = z + u
        x      = (1 - c) * x + c * z
        y_new  = b1 * x + (1 - b1) * z;    update = y_new - y

    The update is formed as ``c * (z_prev - y) + (1 - b1 + b1 * c) * u``, the same number
    without recomputing ``x`` (optax divides by ``b1``) nor the cancellation of
    ``y_new - y``: it keeps its own precision however small it is next to ``y``, and ``y``
    takes the whole step ``u`` where ``z``'s storage (``state_dtype``) rounds it away.

    The evaluation point is ``x``, which :func:`adamx.schedule_free_eval_params` recovers
    from ``y`` and ``z``. The schedule is read at ``k + 1`` here and at ``k`` by the chain's
    :func:`adamx.scale_by_learning_rate`, as in optax. The scalars are kept in the params'
    lowest real dtype (as optax keeps them); the per-leaf arithmetic runs in the leaf's
    dtype but at least float32.

    Args:
      learning_rate: the base step's learning rate (a number or schedule), read for the
        averaging weights.
      b1: the interpolation weight, ``(0, 1]``. Default 0.9.
      weight_lr_power: the averaging weight is ``lr_max**weight_lr_power``, ``>= 0``.
        Default 2.0.
      state_dtype: the dtype ``z`` is kept in, or ``None`` for the params'. Default None.
      base_optimizer: the transformation giving ``u`` from the gradient, or ``None``
        (the updates are ``u``). Default None.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`ScheduleFreeState` (the
      one ``optax.contrib.schedule_free_eval_params`` takes when the block holds the base
      step); it needs ``params`` in ``update``.

    References:
      Defazio et al., "The Road Less Scheduled", NeurIPS 2024,
      https://arxiv.org/abs/2405.15682
    """
    check_learning_rate(learning_rate)
    check_schedule_free(b1, weight_lr_power, state_dtype, None)
    base = optax.identity() if base_optimizer is None else base_optimizer

    def init(params):
        dtype = _lowest_real_dtype(params)

        def z_leaf(p):
            p = abstract_or_array(p)
            if isinstance(p, jax.ShapeDtypeStruct):
                return jnp.zeros_like(p, dtype=state_dtype_of(p.dtype))
            return jnp.array(p, dtype=state_dtype_of(p.dtype), copy=True)

        return ScheduleFreeState(
            b1=jnp.asarray(b1, dtype),
            weight_sum=jnp.zeros([], dtype),
            step_count=jnp.ones([], jnp.int32),
            max_lr=jnp.zeros([], dtype),
            base_optimizer_state=base.init(params),
            z=jax.tree.map(z_leaf, params),
        )

    def state_dtype_of(dtype):
        return stored_dtype(state_dtype, dtype)

    def update(updates, state, params=None):
        require_params(params, "adamx.scale_by_schedule_free")
        check_trees_match(updates, state.z, "the updates", "the optimizer state")
        updates, base_state = base.update(updates, state.base_optimizer_state, params)
        sd = state.max_lr.dtype
        if callable(learning_rate):
            lr = jnp.asarray(learning_rate(state.step_count), sd)
        else:
            lr = as_scalar(learning_rate, sd)
        max_lr = jnp.maximum(state.max_lr, lr)
        weight = max_lr ** as_scalar(weight_lr_power, sd)
        total = state.weight_sum + weight
        nan = jnp.isnan(weight) | jnp.isnan(total)
        c = jnp.where(nan, jnp.nan, jnp.nan_to_num(weight / total, nan=0.0, posinf=jnp.inf))

        def leaf(y, z, u):
            y, u = jnp.asarray(y), jnp.asarray(u)
            dtype = compute_dtype(jnp.result_type(y.dtype, z.dtype))
            yc, zc = y.astype(dtype), z.astype(dtype)
            uc = u.astype(dtype)
            b, cc = as_scalar(b1, dtype), c.astype(dtype)
            # y takes the whole step u, also where z's storage (bfloat16) rounds it away
            return (cc * (zc - yc) + (1 - b + b * cc) * uc).astype(y.dtype), (zc + uc).astype(
                z.dtype
            )

        new_updates, z = map_unzip(leaf, 2, params, state.z, updates)
        new_state = ScheduleFreeState(
            b1=state.b1,
            weight_sum=total,
            step_count=safe_increment(state.step_count),
            max_lr=max_lr,
            base_optimizer_state=base_state,
            z=z,
        )
        return new_updates, new_state

    return transformation(init, update)


def _find_state(state) -> ScheduleFreeState:
    return find_one_state(
        state,
        ScheduleFreeState,
        "schedule_free_eval_params",
        "the state of an adamx schedule-free optimizer (adamx.schedule_free_adamw, "
        "adamx.schedule_free_sgd or a chain with adamx.scale_by_schedule_free)",
    )


def schedule_free_eval_params(state: PyTree, params: PyTree) -> PyTree:
    """The params to evaluate a schedule-free optimizer at: ``x = (y - (1 - b1) z) / b1``.

    A schedule-free optimizer trains ``y`` (the params the train step updates, where the
    gradient is taken) and keeps ``z`` in its state; the average ``x``, the point its
    guarantees are about, is neither. Evaluate, checkpoint for inference and export ``x``.

    Args:
      state: the state of :func:`adamx.schedule_free_adamw`, :func:`adamx.schedule_free_sgd`
        or any chain holding one :func:`adamx.scale_by_schedule_free` (also under
        ``optax.inject_hyperparams``, ``optax.MultiSteps`` and other wrappers).
      params: the params ``y`` the optimizer has been training, the same tree.

    Returns:
      ``x``, a tree like ``params`` in their dtypes.

    Example:
      >>> import jax.numpy as jnp, optax, adamx
      >>> opt = adamx.schedule_free_sgd(learning_rate=0.5)
      >>> y = {"w": jnp.asarray([1.0, -2.0])}
      >>> state = opt.init(y)
      >>> u, state = opt.update({"w": jnp.asarray([1.0, 1.0])}, state, y)
      >>> y = optax.apply_updates(y, u)
      >>> [round(float(v), 4) for v in adamx.schedule_free_eval_params(state, y)["w"]]
      [0.5, -2.5]

    .. warning::
       ``params`` during training are ``y``, not the evaluation params: a model evaluated
       at ``y`` looks worse than it is, by more for larger ``b1``. Models with batch
       statistics (BatchNorm) should recompute them at ``x`` before evaluation.
    """
    sf = _find_state(state)
    check_trees_match(params, sf.z, "params", "the optimizer state")

    def leaf(y, z):
        y = jnp.asarray(y)
        dtype = compute_dtype(jnp.result_type(y.dtype, z.dtype))
        b = sf.b1.astype(dtype)
        x = (y.astype(dtype) - (1 - b) * z.astype(dtype)) / b
        return x.astype(y.dtype)

    return jax.tree.map(leaf, params, sf.z)


@recipe
def schedule_free_sgd(
    learning_rate: ScalarOrSchedule = 1.0,
    warmup_steps: int | None = None,
    b1: float = 0.9,
    weight_decay: float | None = None,
    weight_lr_power: float = 2.0,
    state_dtype: Any | None = None,
) -> optax.GradientTransformation:
    """Schedule-Free SGD: plain SGD steps on ``z``, an interpolation ``y`` to take the
    gradient at, and an average ``x`` to evaluate, as ``optax.contrib.schedule_free_sgd``.

    Per leaf, with ``k`` the number of earlier updates, ``lr_k`` the (warmed-up) rate::

        z = z - lr_k * (g + wd * y)                      (g taken at the params y)
        c = w_k / (w_1 + ... + w_k),   w_k = max(lr_1, ..., lr_{k+1})**weight_lr_power
        x = (1 - c) * x + c * z
        y = b1 * x + (1 - b1) * z                        (the new params)

    The recipe is the schedule-free block around SGD's chain (optax's state layout)::

        scale_by_schedule_free(lr, b1, weight_lr_power, state_dtype, base_optimizer=chain(
            add_decayed_weights(weight_decay),    # coupled, omitted when None or 0
            scale_by_learning_rate(lr)))          # warmed up over warmup_steps

    Args:
      learning_rate: a number ``>= 0`` or a schedule (best constant). Default 1.0 (optax's).
      warmup_steps: a linear warmup from 0 over this many updates, a positive int, or None
        (a schedule `learning_rate` is multiplied by the warmup).
      b1: the interpolation weight, ``(0, 1]``. Default 0.9.
      weight_decay: coupled L2 coefficient, ``>= 0``, taken at ``y``; None (default) or 0
        leave the block out.
      weight_lr_power: the averaging weight is ``lr_max**weight_lr_power``. Default 2.0.
      state_dtype: the dtype ``z`` is kept in, or ``None`` for the params'. Default None.

    Returns:
      An ``optax.GradientTransformation`` that needs ``params`` in ``update``; pair it with
      :func:`adamx.schedule_free_eval_params`.

    Example:
      >>> import jax.numpy as jnp, optax, adamx
      >>> opt = adamx.schedule_free_sgd(learning_rate=0.1)
      >>> params = {"w": jnp.asarray([1.0, -1.0])}
      >>> state = opt.init(params)
      >>> updates, state = opt.update({"w": jnp.asarray([2.0, 2.0])}, state, params)
      >>> [round(float(u), 4) for u in updates["w"]]   # the first step is plain SGD's
      [-0.2, -0.2]

    .. warning::
       The params this optimizer updates are the gradient points ``y``, not the params
       to evaluate: call ``adamx.schedule_free_eval_params(state, params)`` to get ``x``
       for evaluation, checkpoints meant for inference and export (models with BatchNorm:
       recompute the batch statistics at ``x``). Use a constant learning rate (a warmup is
       fine, ``warmup_steps``): the averaging replaces the decay of a schedule.
       ``optax.contrib.schedule_free_sgd`` is this rule; like it, the warmup is read one
       step later for the averaging weights than for the step itself (it matters only during
       the warmup). The authors' PyTorch code differs in such details: compare a few steps
       before porting a tuned run.

    References:
      Defazio et al., "The Road Less Scheduled", NeurIPS 2024,
      https://arxiv.org/abs/2405.15682
    """
    check_learning_rate(learning_rate)
    check_schedule_free(b1, weight_lr_power, state_dtype, warmup_steps)
    lr = warmup_constant(learning_rate, warmup_steps)
    base = optax.chain(*decay_block(weight_decay), scale_by_learning_rate(lr))
    return scale_by_schedule_free(lr, b1, weight_lr_power, state_dtype, base_optimizer=base)


@recipe
def schedule_free_adamw(
    learning_rate: ScalarOrSchedule = 0.0025,
    warmup_steps: int | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float | None = None,
    weight_lr_power: float = 2.0,
    state_dtype: Any | None = None,
) -> optax.GradientTransformation:
    """Schedule-Free AdamW: AdamW's step without momentum on ``z``, an interpolation ``y``
    to take the gradient at, and an average ``x`` to evaluate, as
    ``optax.contrib.schedule_free_adamw``.

    Per leaf, with ``t`` the step number (1 on the first update), ``lr_t`` the rate::

        v = b2 * v + (1 - b2) * g**2                     (g taken at the params y)
        z = z - lr_t * (g / (sqrt(v / (1 - b2**t)) + eps) + wd * y)
        c = w_t / (w_1 + ... + w_t),   w_t = max(lr_1, ..., lr_{t+1})**weight_lr_power
        x = (1 - c) * x + c * z
        y = b1 * x + (1 - b1) * z                        (the new params)

    The recipe is the schedule-free block around AdamW's chain without a first moment
    (RMSProp's read-out)::

        scale_by_schedule_free(lr, b1, weight_lr_power, state_dtype, base_optimizer=chain(
            scale_by_moments(None, b2),
            use_gradient(),
            normalize(eps, b2=b2),
            add_decayed_weights(weight_decay),    # decoupled, omitted when None or 0
            scale_by_learning_rate(lr)))          # warmed up over warmup_steps

    Args:
      learning_rate: a number ``>= 0`` or a schedule (best constant). Default 0.0025
        (optax's).
      warmup_steps: a linear warmup from 0 over this many updates, a positive int, or None
        (a schedule `learning_rate` is multiplied by the warmup).
      b1: the interpolation weight, ``(0, 1]``. Default 0.9.
      b2: decay of the second moment, ``[0, 1)``. Default 0.999.
      eps: added to the root of the bias-corrected ``v``, ``>= 0``. Default 1e-8.
      weight_decay: decoupled decay ``>= 0``, taken at ``y``; None (default; optax's 0.0
        adds nothing) or 0 leave the block out.
      weight_lr_power: the averaging weight is ``lr_max**weight_lr_power``. Default 2.0.
      state_dtype: the dtype ``z`` is kept in, or ``None`` for the params'. Default None.

    Returns:
      An ``optax.GradientTransformation`` that needs ``params`` in ``update``; pair it with
      :func:`adamx.schedule_free_eval_params`.

    Example:
      >>> import jax.numpy as jnp, optax, adamx
      >>> opt = adamx.schedule_free_adamw(learning_rate=0.1)
      >>> params = {"w": jnp.asarray([1.0, -1.0])}
      >>> state = opt.init(params)
      >>> updates, state = opt.update({"w": jnp.asarray([2.0, -0.5])}, state, params)
      >>> [round(float(u), 4) for u in updates["w"]]   # the first step is -lr * sign(g)
      [-0.1, 0.1]

    .. warning::
       The params this optimizer updates are the gradient points ``y``, not the params
       to evaluate: call ``adamx.schedule_free_eval_params(state, params)`` to get ``x``
       for evaluation, checkpoints meant for inference and export (models with BatchNorm:
       recompute the batch statistics at ``x``). Use a constant learning rate (a warmup is
       fine, ``warmup_steps``): the averaging replaces the decay of a schedule.
       ``optax.contrib.schedule_free_adamw`` is this rule; like it, the warmup is read one
       step later for the averaging weights than for the step itself (it matters only during
       the warmup). The authors' PyTorch code differs in such details: compare a few steps
       before porting a tuned run.

    References:
      Defazio et al., "The Road Less Scheduled", NeurIPS 2024,
      https://arxiv.org/abs/2405.15682
    """
    check_learning_rate(learning_rate)
    check_schedule_free(b1, weight_lr_power, state_dtype, warmup_steps)
    lr = warmup_constant(learning_rate, warmup_steps)
    base = optax.chain(
        scale_by_moments(None, b2),
        use_gradient(),
        normalize(eps, b2=b2),
        *decay_block(weight_decay),
        scale_by_learning_rate(lr),
    )
    return scale_by_schedule_free(lr, b1, weight_lr_power, state_dtype, base_optimizer=base)
