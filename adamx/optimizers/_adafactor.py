"""Adafactor as PyTorch reads it: a factored second moment and a relative step size."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    ScalarOrSchedule,
    check_dtype,
    check_flag,
    check_learning_rate,
    check_optional_range,
    check_range,
    concrete_value,
    is_real_number,
)
from adamx.blocks._decay import maximize_block
from adamx.optimizers._adafactor_blocks import (
    clip_by_block_rms,
    scale_by_factored_rms,
    scale_by_param_block_rms,
    scale_by_relative_step,
    shrink_weights,
)
from adamx.optimizers._guard import recipe


@recipe
def adafactor(
    learning_rate: ScalarOrSchedule | None = 1e-2,
    min_dim_size_to_factor: int = 128,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    momentum: float | None = None,
    dtype_momentum: Any = jnp.float32,
    weight_decay_rate: float | None = None,
    eps: float | tuple[float | None, float] | None = None,
    factored: bool = True,
    weight_decay_mask: Any | Callable[[Any], Any] | None = None,
    *,
    reading: str = "pytorch",
    beta2_decay: float | None = None,
    d: float | None = None,
    weight_decay: float | None = None,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """Adafactor as in ``torch.optim.Adafactor``: factored ``v``, no ``m``, relative steps.

    Per leaf, with ``t`` the step number (1 on the first update), ``eps = (eps1, eps2)``
    and ``RMS(x) = sqrt(mean(x**2))``::

        w   = t**beta2_decay                       (replaces 1 - b2; 1 on the first step)
        V   = factored (>= 2-D) or full (0/1-D) average of g**2 with weight w
        U   = g / sqrt(max(V, eps1**2))
        U   = U / max(1, RMS(U) / d)               (update clipping)
        p   = p * (1 - lr * wd) - min(lr, 1/sqrt(t)) * max(eps2, RMS(p)) * U

    The recipe: Adam's moments, bias correction and ``normalize`` become one factored
    block, and the learning rate becomes relative to the parameter's scale::

        negate()                                  # only if maximize
        scale_by_factored_rms(beta2_decay, eps1)
        clip_by_block_rms(d)
        scale_by_param_block_rms(eps2)
        scale_by_relative_step(learning_rate)
        shrink_weights(learning_rate, weight_decay)   # decoupled, at the raw lr; omitted
                                                      # when None or 0

    Two readings of the paper share this signature: ``reading="pytorch"`` (the default,
    above, ``torch.optim.Adafactor``) and ``reading="optax"`` (``optax.adafactor``, built
    from optax's own blocks, step for step its rule). optax's parameters come first, in
    optax's order; under the PyTorch reading those it can express keep their meaning
    (``decay_rate`` is ``-beta2_decay``, ``clipping_threshold`` is ``d``,
    ``multiply_by_parameter_scale``, ``factored``), and the others
    (``min_dim_size_to_factor``, ``decay_offset``, ``momentum``, ``weight_decay_rate``,
    ``weight_decay_mask``, a number as ``eps``) must keep their defaults: a ``ValueError``
    names the argument and ``reading="optax"``. PyTorch's own options (``beta2_decay``,
    ``d``, ``weight_decay``, a pair as ``eps``) are refused under the optax reading.

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. PyTorch: the step
        is ``min(lr, 1/sqrt(t))`` times the parameter's RMS. optax: a plain factor of the
        update; ``None`` (optax's default) applies none. Default 1e-2.
      min_dim_size_to_factor: optax only: factor the two largest axes of a leaf when both
        are at least this long. Default 128 (the PyTorch reading factors every leaf of
        two or more dimensions over its last two axes).
      decay_rate: the averaging weight is ``t**-decay_rate`` (PyTorch: ``-beta2_decay``;
        optax: ``1 - decay`` with ``decay = 1 - (t - decay_offset)**-decay_rate``), ``>= 0``.
        Default 0.8.
      decay_offset: optax only: starts optax's decay schedule later. Default 0.
      multiply_by_parameter_scale: scale the step by ``max(eps2, RMS(p))`` (PyTorch) or
        ``max(1e-3, RMS(p))`` (optax). Default True.
      clipping_threshold: the largest RMS of an update, ``>= 1`` (PyTorch's ``d``);
        ``None`` clips nothing. Default 1.0.
      momentum: optax only: an EMA of the updates with this decay; ``None`` keeps none.
        Default None.
      dtype_momentum: optax only: the dtype of that EMA. Default ``jnp.float32``.
      weight_decay_rate: optax only: ``u + wd * p`` before the sign flip (not scaled by the
        learning rate); ``None`` for none. Default None.
      eps: PyTorch: a pair ``(eps1, eps2)``, ``eps1 >= 0`` the floor of the second moment
        (``None``: the machine epsilon of the params' dtype), ``eps2 >= 0`` the floor of the
        parameter scale. optax: a number added to ``g**2``. ``None`` (default): ``(None,
        1e-3)`` or ``1e-30``.
      factored: ``False`` keeps the full second moment of every leaf. Default True.
      weight_decay_mask: optax only: the mask of ``weight_decay_rate``. Default None.
      reading: ``"pytorch"`` (default) or ``"optax"``, as above.
      beta2_decay: PyTorch only: ``<= 0``; ``None`` is ``-decay_rate``. Default None (-0.8).
      d: PyTorch only: clipping threshold, ``>= 1``; ``None`` is ``clipping_threshold``.
        Default None (1.0).
      weight_decay: PyTorch only: decoupled decay ``>= 0``, scaled by the raw ``lr`` (not by
        the relative step); ``None`` (default) or the Python 0 leave the block out.
      maximize: ascend instead of descend. Default False.

    Returns:
      An ``optax.GradientTransformation`` that needs ``params`` in ``update``.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> params = {"w": jnp.ones((3, 4))}
      >>> opt = adamx.adafactor(learning_rate=0.1)
      >>> state = opt.init(params)
      >>> state[0].row["w"].shape, state[0].col["w"].shape  # 3 + 4 numbers, not 12
      ((3, 1), (1, 4))
      >>> updates, state = opt.update({"w": jnp.full((3, 4), 5.0)}, state, params)
      >>> round(float(updates["w"][0, 0]), 4)  # -lr * RMS(p) * g / |g|
      -0.1

    .. warning::
       ``optax.adafactor`` is another reading of the paper: it factors only when both of
       the two largest axes are ``>= 128`` (``min_dim_size_to_factor``) and factors those
       rather than the last two, adds ``eps = 1e-30`` to ``g**2`` inside the average,
       uses ``1 - (t+1)**-0.8``-style decay with ``decay_offset``, normalises the factored
       estimate by the mean of the row statistic without PyTorch's ``eps1`` floor, takes
       ``learning_rate`` as an external step (no ``min(lr, 1/sqrt(t))``), and defaults to
       ``learning_rate=None`` (no scaling). Its trajectories differ from these:
       ``reading="optax"`` gives them. Hugging
       Face's ``transformers.Adafactor`` also differs (``relative_step``, ``warmup_init``).

    References:
      Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
      ICML 2018, https://arxiv.org/abs/1804.04235
    """
    if reading == "optax":
        return _optax_adafactor(
            learning_rate, min_dim_size_to_factor, decay_rate, decay_offset,
            multiply_by_parameter_scale, clipping_threshold, momentum, dtype_momentum,
            weight_decay_rate, 1e-30 if eps is None else eps, factored, weight_decay_mask,
            maximize=maximize, torch_options=dict(beta2_decay=beta2_decay, d=d,
                                                  weight_decay=weight_decay),
        )  # fmt: skip
    if reading != "pytorch":
        raise ValueError(f'`reading` must be "pytorch" or "optax", got reading={reading!r}.')
    check_learning_rate(learning_rate)
    for name, value, default in (
        ("min_dim_size_to_factor", min_dim_size_to_factor, 128),
        ("decay_offset", decay_offset, 0),
        ("momentum", momentum, None),
        ("weight_decay_rate", weight_decay_rate, None),
        ("weight_decay_mask", weight_decay_mask, None),
    ):
        _unused_by_pytorch_reading(name, value, default)
    if eps is None:
        eps = (None, 1e-3)
    if not isinstance(eps, (tuple, list)) or len(eps) != 2:
        raise ValueError(
            f"`eps` must be a pair (eps1, eps2) with eps1 None or >= 0 and eps2 >= 0 under "
            f'the PyTorch reading (a number is optax\'s eps: pass reading="optax"), got '
            f"eps={eps!r}."
        )
    check_range("decay_rate", decay_rate, low=0.0)
    check_flag("multiply_by_parameter_scale", multiply_by_parameter_scale)
    check_flag("factored", factored)
    beta2_decay = _one_of("beta2_decay", beta2_decay, "decay_rate", decay_rate, 0.8, -1)
    d = _one_of("d", d, "clipping_threshold", clipping_threshold, 1.0, 1)
    eps1, eps2 = eps
    if eps1 is not None:
        check_range("eps[0]", eps1, low=0.0)
    check_range("eps[1]", eps2, low=0.0)
    if d is not None:
        check_range("d", d, low=1.0)
    return optax.chain(
        *maximize_block(maximize),
        scale_by_factored_rms(beta2_decay, eps1, factored=factored),
        *([] if d is None else [clip_by_block_rms(d)]),
        *([scale_by_param_block_rms(eps2)] if multiply_by_parameter_scale else []),
        scale_by_relative_step(learning_rate),
        *shrink_weights(learning_rate, weight_decay),
    )


def _unused_by_pytorch_reading(name: str, value, default) -> None:
    """Raise unless an optax-only option of :func:`adafactor` keeps its default (a traced
    number passes: it cannot be read)."""
    if value is None and default is None:
        return
    if default is not None and is_real_number(value):
        v = concrete_value(value)
        if v is None or v == default:
            return
    raise ValueError(
        f"`{name}` is an option of optax's reading of Adafactor, which adamx.adafactor "
        f'follows only with reading="optax" (its default reading is torch.optim.Adafactor\'s),'
        f" got {name}={value!r}."
    )


def _one_of(name: str, value, optax_name: str, optax_value, optax_default: float, sign: int):
    """PyTorch's ``name`` if given, else ``sign * optax_value`` (its optax counterpart);
    both given, the optax one must keep its default (an array, as
    ``optax.inject_hyperparams`` makes of the default, cannot be read and yields)."""
    if value is None:
        return None if optax_value is None else sign * optax_value
    python = isinstance(optax_value, (int, float)) and not isinstance(optax_value, bool)
    if optax_value is None or (python and optax_value != optax_default):
        raise ValueError(
            f"`{name}` and `{optax_name}` set the same thing; pass one of them, got "
            f"{name}={value!r} and {optax_name}={optax_value!r}."
        )
    return value


def _optax_adafactor(
    learning_rate, min_dim_size_to_factor, decay_rate, decay_offset,
    multiply_by_parameter_scale, clipping_threshold, momentum, dtype_momentum,
    weight_decay_rate, eps, factored, weight_decay_mask, *, maximize, torch_options,
) -> optax.GradientTransformation:  # fmt: skip
    """``optax.adafactor``'s chain, of optax's own blocks (plus ``maximize``)."""
    for name, value in torch_options.items():
        if value is not None:
            raise ValueError(
                f"`{name}` is an option of PyTorch's reading of Adafactor; with "
                f'reading="optax" leave it None, got {name}={value!r}.'
            )
    check_learning_rate(learning_rate, allow_none=True)
    check_range("eps", eps, low=0.0)
    check_range("decay_rate", decay_rate, low=0.0)
    check_range("decay_offset", decay_offset, low=0.0)
    check_flag("multiply_by_parameter_scale", multiply_by_parameter_scale)
    check_flag("factored", factored)
    check_optional_range("clipping_threshold", clipping_threshold, low=0.0)
    check_optional_range("momentum", momentum, low=0.0, high=1.0)
    check_optional_range("weight_decay_rate", weight_decay_rate, low=0.0)
    if isinstance(min_dim_size_to_factor, bool) or not isinstance(min_dim_size_to_factor, int):
        raise ValueError(
            f"`min_dim_size_to_factor` must be a Python int >= 0 (a static shape threshold; "
            f'under optax.inject_hyperparams declare static_args="min_dim_size_to_factor"), '
            f"got min_dim_size_to_factor={min_dim_size_to_factor!r}."
        )
    check_range("min_dim_size_to_factor", min_dim_size_to_factor, low=0.0)
    tx = [
        *maximize_block(maximize),
        optax.scale_by_factored_rms(
            factored, decay_rate, decay_offset, min_dim_size_to_factor, eps
        ),
    ]
    if clipping_threshold is not None:
        tx.append(optax.clip_by_block_rms(clipping_threshold))
    if learning_rate is not None:
        tx.append(optax.scale_by_learning_rate(learning_rate, flip_sign=False))
    if multiply_by_parameter_scale:
        tx.append(optax.scale_by_param_block_rms())
    if momentum is not None:
        check_dtype("dtype_momentum", dtype_momentum, optional=False)
        tx.append(optax.ema(momentum, debias=False, accumulator_dtype=dtype_momentum))
    if weight_decay_rate is not None:
        tx.append(optax.add_decayed_weights(weight_decay_rate, mask=weight_decay_mask))
    tx.append(optax.scale(-1))
    return optax.chain(*tx)
