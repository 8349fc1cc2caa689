"""PyTorch's argument names on adamx's recipes: the error that names adamx's spelling.

adamx uses optax's names (``learning_rate``, ``b1``, ``b2``); a recipe called with
``torch.optim``'s (``lr``, ``betas``, ``alpha``, ``amsgrad``, ...) is told what to write
instead, or to build the optimizer with :func:`adamx.from_torch`. Pure data and strings:
no import of torch, of jax or of the recipes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

# The torch.optim class each recipe reproduces (for the hint to use adamx.from_torch).
TORCH_TWIN: Mapping[str, str] = {
    "sgd": "SGD",
    "adagrad": "Adagrad",
    "rmsprop": "RMSprop",
    "adadelta": "Adadelta",
    "adam": "Adam",
    "adamw": "AdamW",
    "amsgrad": "Adam",
    "adamax": "Adamax",
    "nadam": "NAdam",
    "nadamw": "NAdam",
    "radam": "RAdam",
    "adafactor": "Adafactor",
    "lazy_adam": "SparseAdam",
    "rprop": "Rprop",
    "asgd": "ASGD",
}

# torch.optim's keyword arguments and their defaults (torch 2.13), per class adamx reproduces.
# tests/test_from_torch.py checks the table against the installed torch's signatures.
IMPLEMENTATION_SWITCHES = frozenset({"foreach", "fused", "capturable", "differentiable"})
_BETAS = (0.9, 0.999)
TORCH_DEFAULTS: Mapping[str, Mapping[str, object]] = {
    "SGD": dict(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                maximize=False, foreach=None, differentiable=False, fused=None),
    "Adagrad": dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                    eps=1e-10, foreach=None, maximize=False, differentiable=False, fused=None),
    "RMSprop": dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                    centered=False, capturable=False, foreach=None, maximize=False,
                    differentiable=False),
    "Adadelta": dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, foreach=None, capturable=False,
                     maximize=False, differentiable=False),
    "Adam": dict(lr=1e-3, betas=_BETAS, eps=1e-8, weight_decay=0.0, amsgrad=False, foreach=None,
                 maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False),
    # AdamW's constructor takes no decoupled_weight_decay; its instances' defaults hold True.
    "AdamW": dict(lr=1e-3, betas=_BETAS, eps=1e-8, weight_decay=1e-2, amsgrad=False,
                  maximize=False, foreach=None, capturable=False, differentiable=False,
                  fused=None, decoupled_weight_decay=True),
    "Adamax": dict(lr=2e-3, betas=_BETAS, eps=1e-8, weight_decay=0.0, foreach=None,
                   maximize=False, differentiable=False, capturable=False),
    "NAdam": dict(lr=2e-3, betas=_BETAS, eps=1e-8, weight_decay=0.0, momentum_decay=4e-3,
                  decoupled_weight_decay=False, foreach=None, maximize=False, capturable=False,
                  differentiable=False),
    "RAdam": dict(lr=1e-3, betas=_BETAS, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
                  foreach=None, maximize=False, capturable=False, differentiable=False),
    "Adafactor": dict(lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0,
                      foreach=None, maximize=False),
    "SparseAdam": dict(lr=1e-3, betas=_BETAS, eps=1e-8, maximize=False),
    "Rprop": dict(lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), foreach=None, maximize=False,
                  differentiable=False, capturable=False),
    "ASGD": dict(lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0, foreach=None,
                 maximize=False, differentiable=False, capturable=False),
}  # fmt: skip

_IMPLEMENTATION = (
    "it chooses torch's implementation, not the rule; adamx has no such switch (only "
    "adamx.adam, adamw, lion and sgd take `fused=`, for their CPU kernels): leave it out"
)

# torch.optim's argument name -> how adamx spells it (a sentence fragment).
TORCH_SPELLINGS: Mapping[str, str] = {
    "lr": "adamx uses optax's names: `learning_rate=`",
    "betas": "torch's `betas=(b1, b2)` is `b1=, b2=` here",
    "alpha": "RMSprop's `alpha` is `decay=` in adamx.rmsprop",
    "amsgrad": (
        "AMSGrad is `adamx.adam(..., amsgrad=True)`, `adamx.adamw(..., amsgrad=True)` or "
        "`adamx.amsgrad(...)`"
    ),
    "decoupled_weight_decay": (
        "decoupled decay is `adamx.adamw` (torch's Adam), `adamx.nadamw` (NAdam) or "
        "`adamx.radam(..., decoupled_weight_decay=True)`"
    ),
    "momentum_decay": "NAdam's `momentum_decay` is an argument of `adamx.nadam` / `adamx.nadamw`",
    "lr_decay": "Adagrad's `lr_decay` is an argument of `adamx.adagrad`",
    "initial_accumulator_value": "an argument of `adamx.adagrad` (and `adamx.yogi`)",
    "rho": "Adadelta's `rho` is an argument of `adamx.adadelta`",
    "centered": "RMSprop's `centered` is an argument of `adamx.rmsprop`",
    "dampening": "SGD's `dampening` is an argument of `adamx.sgd`",
    "momentum": "SGD's and RMSprop's `momentum` is an argument of `adamx.sgd` / `adamx.rmsprop`",
    "beta2_decay": "Adafactor's `beta2_decay` is an argument of `adamx.adafactor`",
    "etas": "Rprop's `etas=(minus, plus)` is `eta_minus=, eta_plus=` in adamx.rprop",
    "step_sizes": "Rprop's `step_sizes=(min, max)` is `min_step_size=, max_step_size=`",
    "foreach": _IMPLEMENTATION,
    "fused": _IMPLEMENTATION,
    "capturable": _IMPLEMENTATION,
    "differentiable": (
        "adamx's updates are always differentiable with jax.grad (`eps_root > 0` keeps "
        "them finite): leave it out"
    ),
    "params": (
        "an optax transformation takes no params when built: pass them to `opt.init(params)`"
    ),
}


def misspelt_torch_names(
    who: str, kwargs: Collection[str], accepted: Collection[str]
) -> str | None:
    """The message for a call of ``adamx.<who>`` with torch's argument names among
    ``kwargs`` (those not in ``accepted``), or ``None`` when there are none."""
    torch_names = [k for k in kwargs if k not in accepted and k in TORCH_SPELLINGS]
    if not torch_names:
        return None
    hints = "; ".join(f"`{k}`: {TORCH_SPELLINGS[k]}" for k in torch_names)
    listed = ", ".join(f"`{k}`" for k in torch_names)
    plural = "s" if len(torch_names) > 1 else ""
    message = (
        f"adamx.{who} has no argument{plural} {listed} (torch.optim's spelling{plural}): {hints}."
    )
    twin = TORCH_TWIN.get(who)
    theirs = [k for k in torch_names if twin is not None and k in TORCH_DEFAULTS.get(twin, ())]
    if theirs:
        example = ", ".join(f"{k}=..." for k in theirs)
        message += (
            f" Or build it from torch's arguments, adamx.from_torch({twin!r}, {example}), "
            f"which reproduces torch.optim.{twin} step for step."
        )
    return message
