"""``adamx.from_torch``: the adamx recipe that reproduces a ``torch.optim`` optimizer.

torch is never imported here: a torch object (a class, an optimizer, a 0-d tensor ``lr``)
is read through its attributes, and a name needs no torch at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import optax

from adamx.optimizers._adafactor import adafactor
from adamx.optimizers._adagrad import adadelta, adagrad
from adamx.optimizers._adam import adam, adamw
from adamx.optimizers._asgd import asgd
from adamx.optimizers._lazy import lazy_adam
from adamx.optimizers._rmsprop import rmsprop
from adamx.optimizers._rprop import rprop
from adamx.optimizers._sgd import sgd
from adamx.optimizers._torch_names import IMPLEMENTATION_SWITCHES, TORCH_DEFAULTS
from adamx.optimizers._variants import adamax, nadam, nadamw
from adamx.optimizers._variants_nu import radam

Kwargs = dict[str, Any]
Recipe = Callable[..., optax.GradientTransformation]


# ----------------------------------------------------------------------------- translations
# Each takes torch's arguments (every one present: torch's defaults filled in) and returns
# the adamx recipe and its arguments.
def _buffer(momentum):
    """torch's ``momentum=0`` keeps no buffer: adamx's ``None`` (its 0 keeps one, as optax)."""
    return None if momentum == 0 else momentum


def _sgd(kw: Kwargs) -> tuple[Recipe, Kwargs]:
    return sgd, dict(
        learning_rate=kw["lr"], momentum=_buffer(kw["momentum"]), dampening=kw["dampening"],
        nesterov=kw["nesterov"], weight_decay=kw["weight_decay"], maximize=kw["maximize"],
    )  # fmt: skip


def _adagrad(kw: Kwargs) -> tuple[Recipe, Kwargs]:
    return adagrad, dict(
        learning_rate=kw["lr"], lr_decay=kw["lr_decay"], eps=kw["eps"],
        initial_accumulator_value=kw["initial_accumulator_value"],
        weight_decay=kw["weight_decay"], maximize=kw["maximize"],
    )  # fmt: skip


def _rmsprop(kw: Kwargs) -> tuple[Recipe, Kwargs]:
    return rmsprop, dict(
        learning_rate=kw["lr"], decay=kw["alpha"], eps=kw["eps"], centered=kw["centered"],
        momentum=_buffer(kw["momentum"]), weight_decay=kw["weight_decay"],
        maximize=kw["maximize"],
    )  # fmt: skip


def _adadelta(kw: Kwargs) -> tuple[Recipe, Kwargs]:
    return adadelta, dict(
        learning_rate=kw["lr"], rho=kw["rho"], eps=kw["eps"], weight_decay=kw["weight_decay"],
        maximize=kw["maximize"],
    )  # fmt: skip


def _adam_like(kw: Kwargs) -> Kwargs:
    """``lr``, ``betas``, ``eps`` and ``maximize`` in adamx's spelling."""
    b1, b2 = _pair("betas", kw["betas"])
    return dict(learning_rate=kw["lr"], b1=b1, b2=b2, eps=kw["eps"], maximize=kw["maximize"])


def _adam(kw: Kwargs) -> tuple[Recipe, Kwargs]:
    recipe = adamw if kw["decoupled_weight_decay"] else adam
    return recipe, dict(**_adam_like(kw), weight_decay=kw["weight_decay"], amsgrad=kw["amsgrad"])


def _adamw(kw: Kwargs) -> tuple[Recipe, Kwargs]:
    if not kw["decoupled_weight_decay"]:
        raise ValueError(
            "torch.optim.AdamW always decouples its weight decay, got "
            "decoupled_weight_decay=False: coupled (L2) decay is torch.optim.Adam's, "
            "adamx.from_torch('Adam', ...)."
        )
    return adamw, dict(**_adam_like(kw), weight_decay=kw["weight_decay"], amsgrad=kw["amsgrad"])


def _adamax(kw: Kwargs) -> tuple[Recipe, Kwargs]:
    return adamax, dict(**_adam_like(kw), weight_decay=kw["weight_decay"])


def _nadam(kw: Kwargs) -> tuple[Recipe, Kwargs]:
    recipe = nadamw if kw["decoupled_weight_decay"] else nadam
    return recipe, dict(
        **_adam_like(kw), momentum_decay=kw["momentum_decay"], weight_decay=kw["weight_decay"]
    )


def _radam(kw: Kwargs) -> tuple[Recipe, Kwargs]:
    return radam, dict(
        **_adam_like(kw),
        weight_decay=kw["weight_decay"],
        decoupled_weight_decay=kw["decoupled_weight_decay"],
    )


def _adafactor(kw: Kwargs) -> tuple[Recipe, Kwargs]:
    return adafactor, dict(
        learning_rate=kw["lr"], beta2_decay=kw["beta2_decay"], eps=_pair("eps", kw["eps"]),
        d=kw["d"], weight_decay=kw["weight_decay"], maximize=kw["maximize"],
    )  # fmt: skip


def _sparse_adam(kw: Kwargs) -> tuple[Recipe, Kwargs]:
    return lazy_adam, dict(**_adam_like(kw), eps_hat=True)


def _rprop(kw: Kwargs) -> tuple[Recipe, Kwargs]:
    eta_minus, eta_plus = _pair("etas", kw["etas"])
    smallest, largest = _pair("step_sizes", kw["step_sizes"])
    return rprop, dict(
        learning_rate=kw["lr"], eta_minus=eta_minus, eta_plus=eta_plus,
        min_step_size=smallest, max_step_size=largest, maximize=kw["maximize"],
    )  # fmt: skip


def _asgd(kw: Kwargs) -> tuple[Recipe, Kwargs]:
    return asgd, dict(
        learning_rate=kw["lr"], lambd=kw["lambd"], alpha=kw["alpha"], t0=kw["t0"],
        weight_decay=kw["weight_decay"], maximize=kw["maximize"],
    )  # fmt: skip


TRANSLATIONS: Mapping[str, Callable[[Kwargs], tuple[Recipe, Kwargs]]] = {
    "SGD": _sgd,
    "Adagrad": _adagrad,
    "RMSprop": _rmsprop,
    "Adadelta": _adadelta,
    "Adam": _adam,
    "AdamW": _adamw,
    "Adamax": _adamax,
    "NAdam": _nadam,
    "RAdam": _radam,
    "Adafactor": _adafactor,
    "SparseAdam": _sparse_adam,
    "Rprop": _rprop,
    "ASGD": _asgd,
}
SUPPORTED = tuple(TRANSLATIONS)


# ----------------------------------------------------------------------------- reading torch
def _is_torch(obj: Any) -> bool:
    """Whether ``obj`` (or, for a class, the class itself) comes from torch."""
    module = obj.__module__ if isinstance(obj, type) else type(obj).__module__
    return isinstance(module, str) and (module == "torch" or module.startswith("torch."))


def _pair(name: str, value: Any) -> tuple:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"torch's `{name}` is a pair, got {name}={value!r}.")
    return tuple(value)


def _plain(name: str, value: Any) -> Any:
    """A torch tensor (``lr``, ``betas``) as a Python float; pairs element by element."""
    if isinstance(value, (tuple, list)):
        return tuple(_plain(name, v) for v in value)
    if _is_torch(value) and hasattr(value, "numel"):
        if value.numel() != 1:
            raise ValueError(
                f"`{name}` is a tensor of {value.numel()} elements; torch.optim takes one "
                f"number there (a 1-element tensor is read as float({name}))."
            )
        return float(value)
    return value


def _class_name(obj: Any) -> str:
    """The torch.optim class name of a name, a class or an optimizer instance."""
    if isinstance(obj, str):
        parts = obj.split(".")
        if len(parts) > 1 and parts[:2] != ["torch", "optim"] and parts[0] != "optim":
            raise ValueError(
                f"{obj!r} is not a torch.optim class name: give 'Adam', 'optim.Adam' or "
                f"'torch.optim.Adam'."
            )
        return _check_supported(parts[-1], obj)
    cls = obj if isinstance(obj, type) else type(obj)
    if not _is_torch(cls):
        for base in cls.__mro__[1:]:
            if _is_torch(base) and base.__name__ in TRANSLATIONS:
                raise ValueError(
                    f"{cls.__module__}.{cls.__qualname__} subclasses torch.optim."
                    f"{base.__name__}; from_torch reproduces torch.optim's own classes (a "
                    f"subclass may change step()). If its step is {base.__name__}'s, pass "
                    f"the name: adamx.from_torch({base.__name__!r}, ...)."
                )
        raise TypeError(
            f"adamx.from_torch takes a torch.optim class name (e.g. 'Adam'), the class or an "
            f"optimizer instance, got {obj!r} of type {type(obj).__name__}."
        )
    return _check_supported(cls.__name__, repr(cls))


def _check_supported(name: str, given: str) -> str:
    if name in TRANSLATIONS:
        return name
    close = [s for s in SUPPORTED if s.casefold() == name.casefold()]
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"{given!r}: adamx reproduces no torch.optim class {name!r}.{hint} It reproduces "
        f"{', '.join(SUPPORTED)}."
    )


def _instance_kwargs(optimizer: Any, name: str) -> Kwargs:
    """The hyperparameters of a torch optimizer: those of its param groups, which must
    agree (they start from ``optimizer.defaults``; keys torch does not list in its
    defaults, such as a scheduler's ``initial_lr``, are bookkeeping and skipped)."""
    defaults = dict(getattr(optimizer, "defaults", {}))
    extra = sorted(set(defaults) - set(TORCH_DEFAULTS[name]))
    if extra:
        raise ValueError(
            f"this torch.optim.{name} has options adamx does not know: {', '.join(extra)} "
            f"(a newer torch?); from_torch reads {', '.join(TORCH_DEFAULTS[name])}."
        )
    groups = [
        {k: _plain(k, v) for k, v in g.items() if k in defaults}
        for g in getattr(optimizer, "param_groups", [])
    ]
    if not groups:
        return {k: _plain(k, v) for k, v in defaults.items()}
    differ = sorted(k for k in groups[0] if any(g.get(k) != groups[0][k] for g in groups[1:]))
    if differ:
        values = "; ".join(f"{k}: {[g.get(k) for g in groups]}" for k in differ)
        raise ValueError(
            f"this torch.optim.{name} has {len(groups)} param groups whose hyperparameters "
            f"differ ({values}); one adamx transformation has one set. Build one per group "
            f"with adamx.from_torch({name!r}, **group_hyperparameters) and combine them with "
            f"optax.multi_transform(transforms, param_labels)."
        )
    return groups[0]


def _show(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


# ----------------------------------------------------------------------------- from_torch
def from_torch(name_or_optimizer: Any, /, **torch_kwargs: Any) -> optax.GradientTransformation:
    """The adamx recipe that reproduces a ``torch.optim`` optimizer, from torch's arguments.

    ``name_or_optimizer`` is a class name (``"Adam"``, ``"torch.optim.AdamW"``), the class
    (``torch.optim.Adam``) or an instance, whose hyperparameters (its param groups, which
    start from ``optimizer.defaults``) are read. ``torch_kwargs`` are torch's keyword
    arguments, with torch's names and defaults (not adamx's); with an instance they
    override what it holds. The result reproduces ``torch.optim`` step for step: in
    float64 (``jax_enable_x64``, and torch's default dtype float64) the params after each
    of 80 steps agree to ``rtol=1e-10`` for every configuration of torch's own optimizer
    tests (tests/test_from_torch.py). The state starts fresh: an instance's ``state`` (its
    moments) is not carried over.

    The mapping, with torch's default ``lr`` (its other defaults are listed in the
    README's "Coming from PyTorch")::

        SGD         1e-3  sgd(lr, momentum, dampening=, nesterov=, weight_decay=)
        Adagrad     1e-2  adagrad(lr, lr_decay=, initial_accumulator_value=, eps=, weight_decay=)
        RMSprop     1e-2  rmsprop(lr, decay=alpha, eps, centered=, momentum=, weight_decay=)
        Adadelta    1.0   adadelta(lr, rho, eps, weight_decay=)
        Adam        1e-3  adam(lr, b1, b2, eps, weight_decay=, amsgrad=)
                          adamw(...) with decoupled_weight_decay=True
        AdamW       1e-3  adamw(lr, b1, b2, eps, weight_decay (1e-2), amsgrad=)
        Adamax      2e-3  adamax(lr, b1, b2, eps, weight_decay=)
        NAdam       2e-3  nadam(lr, b1, b2, eps, momentum_decay=, weight_decay=)
                          nadamw(...) with decoupled_weight_decay=True
        RAdam       1e-3  radam(lr, b1, b2, eps, weight_decay=, decoupled_weight_decay=)
        Adafactor   1e-2  adafactor(lr, beta2_decay=, eps=(eps1, eps2), d=, weight_decay=)
        SparseAdam  1e-3  lazy_adam(lr, b1, b2, eps, eps_hat=True)
        Rprop       1e-2  rprop(lr, eta_minus, eta_plus, min_step_size, max_step_size)
        ASGD        1e-2  asgd(lr, lambd, alpha, t0, weight_decay=)

    ``betas=(b1, b2)`` becomes ``b1, b2`` (Rprop's ``etas`` and ``step_sizes`` likewise);
    ``lr`` becomes ``learning_rate`` (a float, a one-element tensor read with ``float``, or
    an optax schedule, adamx's extension: torch's LR schedulers are not translated; Rprop
    takes none, its ``lr`` is the initial step size); ``maximize`` is passed on everywhere.
    ``foreach``, ``fused``, ``capturable`` and ``differentiable`` choose torch's
    implementation, not the rule, and are ignored. Arguments left out take torch's
    defaults, also where adamx's differ (``NAdam(decoupled_weight_decay=True)`` decays by
    0 unless told, ``adamx.nadamw`` by 1e-2).

    ``SparseAdam`` moves rows (the first axis) whose gradient is not all zero, as
    :func:`adamx.lazy_adam` does, with ``eps`` on the root of the raw ``v`` (``eps_hat``);
    for ``nn.Embedding(sparse=True)``, whose sparse gradients list whole rows, the two are
    the same. torch's per-parameter step counts skip steps where ``p.grad is None``;
    adamx's count advances on every update.

    Args:
      name_or_optimizer: a torch.optim class name, class or optimizer instance.
      **torch_kwargs: torch's keyword arguments for that class.

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ValueError: for a class adamx does not reproduce (``LBFGS``, ``Muon``, ...), an
        argument the class does not take (the message lists those it does), a value torch
        accepts but adamx cannot reproduce (naming the option, its value and
        adamx's range), or an instance whose param groups differ.
      TypeError: when ``name_or_optimizer`` is none of the above.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.from_torch("AdamW", lr=1e-2, betas=(0.9, 0.99), amsgrad=True)
      >>> params = {"w": jnp.ones(2)}
      >>> updates, _ = opt.update({"w": jnp.array([1.0, -2.0])}, opt.init(params), params)
      >>> [round(float(u), 4) for u in updates["w"]]  # -lr * sign(g) - lr * wd * p
      [-0.0101, 0.0099]
    """
    name = _class_name(name_or_optimizer)
    accepted = TORCH_DEFAULTS[name]
    unknown = sorted(set(torch_kwargs) - set(accepted))
    if unknown:
        adamx_names = {"learning_rate", "b1", "b2", "decay"} & set(unknown)
        hint = " (torch's names: `lr`, `betas=(b1, b2)`, `alpha`)" if adamx_names else ""
        raise ValueError(
            f"torch.optim.{name} has no argument {', '.join(map(repr, unknown))}; it takes "
            f"{', '.join(accepted)}{hint}."
        )
    held = {} if isinstance(name_or_optimizer, (str, type)) else (
        _instance_kwargs(name_or_optimizer, name)
    )  # fmt: skip
    given = {**held, **{k: _plain(k, v) for k, v in torch_kwargs.items()}}
    full = {**accepted, **given}
    lr = full["lr"]
    if isinstance(lr, bool) or not (callable(lr) or isinstance(lr, (int, float))):
        raise ValueError(f"`lr` must be a number or a schedule, got lr={lr!r}.")
    if isinstance(lr, (int, float)) and not math.isfinite(lr):
        raise ValueError(f"`lr` must be finite, got lr={lr!r}.")
    translate = TRANSLATIONS[name]
    recipe, kwargs = translate(full)
    try:
        return recipe(**kwargs)
    except ValueError as error:
        shown = {k: v for k, v in given.items() if k not in IMPLEMENTATION_SWITCHES}
        raise ValueError(
            f"torch.optim.{name}({_show(shown)}) cannot be reproduced: "
            f"adamx.{recipe.__name__}({_show(kwargs)}) refuses it: {error}"
        ) from error
