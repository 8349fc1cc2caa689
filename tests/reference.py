"""An independent NumPy reference of the update rules in REFERENCE.md, read as PyTorch does.

This module knows nothing of adamx. It follows the single-tensor code paths of
``torch.optim``:

* scalar factors (``b**t``, bias corrections, step sizes, the learning rate) are Python
  floats, i.e. float64 on the host;
* tensor maths runs in the parameter dtype (float64 by default, or ``dtype``) on NumPy
  arrays; scalars are cast to that dtype where they meet a tensor;
* the first moment is a ``lerp`` (``m + (1-b1)*(g - m)``, or torch's mirrored form when the
  weight is at least 1/2); the second is ``b2*v + (1-b2)*g*g``.

Every rule is a small frozen dataclass with

* ``init(params) -> state`` over a flat list of arrays, and
* ``step(params, grads, state, t) -> (params, state)`` with ``t`` the step number, 1 on the
  first update (it is passed in, not kept, so a test may start anywhere: ``t = 2**31 - 1``).

:func:`run_numpy` drives a rule over a pytree (flattened with ``jax.tree_util``) and returns
the trajectory. New relatives (AMSGrad, NAdam, RAdam, ...) are added as further dataclasses
with the same two methods.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import numpy as np

Schedule = Callable[[int], Any]
LearningRate = float | Schedule


# ----------------------------------------------------------------------------- scalars
def learning_rate_at(lr: LearningRate, t: int) -> float:
    """The learning rate of step ``t`` (1-based): a schedule is read at ``k = t - 1``."""
    if callable(lr):
        return float(np.asarray(lr(t - 1)))
    return float(lr)


def bias_correction(b: float, t: int) -> float:
    """``1 - b**t`` as PyTorch computes it: a Python (float64) power and subtraction."""
    return 1.0 - float(b) ** int(t)


# ----------------------------------------------------------------------------- tensors
def lerp(start: np.ndarray, end: np.ndarray, weight: float) -> np.ndarray:
    """``torch.lerp``: ``start + w*(end - start)`` for ``w < 1/2``, else the mirrored
    ``end - (end - start)*(1 - w)`` (so ``w = 1`` gives ``end`` exactly)."""
    dtype = start.dtype
    if weight < 0.5:
        return start + _s(weight, dtype) * (end - start)
    return end - (end - start) * _s(1.0 - weight, dtype)


def _s(x: float, dtype) -> np.ndarray:
    """A host scalar meeting a tensor: cast to the tensor's dtype."""
    return np.asarray(x, dtype)


def _arr(x, dtype) -> np.ndarray:
    return np.asarray(x, dtype=dtype)


# ----------------------------------------------------------------------------- rules
class Rule(Protocol):
    """What every reference optimizer provides."""

    def init(self, params: Sequence[np.ndarray]) -> Any: ...

    def step(
        self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray], state: Any, t: int
    ) -> tuple[list[np.ndarray], Any]: ...


class AdamState(NamedTuple):
    m: list[np.ndarray]
    v: list[np.ndarray]


@dataclasses.dataclass(frozen=True)
class Adam:
    """``torch.optim.Adam`` (coupled L2 ``weight_decay``), plus optax's ``eps_root``.

    Per element, with ``bc1 = 1 - b1**t``, ``bc2 = 1 - b2**t``::

        g = g + wd*p                                   (coupled L2, if wd != 0)
        m = m + (1-b1)*(g - m)
        v = b2*v + (1-b2)*g*g
        p = p - (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)             (eps_root == 0)
        p = p - (lr/bc1) * m / (sqrt(v/bc2 + eps_root) + eps)        (eps_root > 0)
    """

    lr: LearningRate = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    eps_root: float = 0.0
    weight_decay: float = 0.0
    dtype: Any = np.float64

    def init(self, params: Sequence[np.ndarray]) -> AdamState:
        zeros = [np.zeros(np.shape(p), self.dtype) for p in params]
        return AdamState(m=zeros, v=[z.copy() for z in zeros])

    def _l2(self) -> float:
        """The coupled (L2) coefficient added to the gradient."""
        return self.weight_decay

    def _decay_params(self, params, lr):
        """Hook for decoupled decay (AdamW); Adam leaves the params alone."""
        return params

    def step(self, params, grads, state: AdamState, t: int):
        dt = self.dtype
        lr = learning_rate_at(self.lr, t)
        bc1 = bias_correction(self.b1, t)
        bc2 = bias_correction(self.b2, t)
        step_size = lr / bc1
        bc2_sqrt = bc2**0.5

        params = [_arr(p, dt) for p in params]
        params = self._decay_params(params, lr)
        new_params, new_m, new_v = [], [], []
        for p, g, m, v in zip(params, grads, state.m, state.v):
            g = _arr(g, dt)
            if self._l2() != 0:
                g = g + _s(self._l2(), dt) * p
            m = lerp(m, g, 1.0 - self.b1)
            v = v * _s(self.b2, dt) + _s(1.0 - self.b2, dt) * (g * g)
            if self.eps_root == 0:
                denom = np.sqrt(v) / _s(bc2_sqrt, dt) + _s(self.eps, dt)
            else:
                denom = np.sqrt(v / _s(bc2, dt) + _s(self.eps_root, dt)) + _s(self.eps, dt)
            p = p - _s(step_size, dt) * (m / denom)
            new_params.append(_arr(p, dt))
            new_m.append(_arr(m, dt))
            new_v.append(_arr(v, dt))
        return new_params, AdamState(m=new_m, v=new_v)


@dataclasses.dataclass(frozen=True)
class AdamW(Adam):
    """``torch.optim.AdamW``: ``p = p * (1 - lr*wd)`` first, then the Adam step without L2.

    ``mask`` (a flat sequence of booleans, one per leaf, or ``None`` for all) selects the
    leaves that are decayed.
    """

    weight_decay: float = 1e-2
    mask: Sequence[bool] | None = None

    def _decay_params(self, params, lr):
        mask = self.mask if self.mask is not None else [True] * len(params)
        if len(mask) != len(params):
            raise ValueError(f"mask has {len(mask)} entries for {len(params)} leaves")
        shrink = _s(1.0 - lr * self.weight_decay, self.dtype)
        return [p * shrink if keep else p for p, keep in zip(params, mask)]

    def _l2(self) -> float:
        return 0.0  # decoupled: the decay never enters the gradient


# ----------------------------------------------------------------------------- driver
GradSource = Callable[[Any], Any] | Sequence[Any]


def run_numpy(
    rule: Rule,
    params_tree: Any,
    grads: GradSource,
    steps: int,
    *,
    state: Any = None,
    first_step: int = 1,
) -> list[Any]:
    """Run ``rule`` for ``steps`` updates from ``params_tree``; return the params tree after
    every update (``steps`` entries).

    ``grads`` is either a function of the current params tree returning a gradient tree, or
    a sequence of gradient trees (entry ``i`` is used on update ``i``). Leaves are converted
    to ``rule.dtype`` (default float64). ``state`` and ``first_step`` (the ``t`` of the first
    update) let a run resume mid-way.
    """
    dtype = getattr(rule, "dtype", np.float64)
    leaves, treedef = jax.tree_util.tree_flatten(params_tree)
    params = [np.asarray(x, dtype) for x in leaves]
    if state is None:
        state = rule.init(params)
    trajectory = []
    for i in range(steps):
        if callable(grads):
            g_tree = grads(jax.tree_util.tree_unflatten(treedef, params))
        else:
            g_tree = grads[i]
        g_leaves, g_def = jax.tree_util.tree_flatten(g_tree)
        if g_def != treedef:
            raise ValueError(f"gradient tree {g_def} does not match params {treedef}")
        g_leaves = [np.asarray(g, dtype) for g in g_leaves]
        params, state = rule.step(params, g_leaves, state, first_step + i)
        trajectory.append(jax.tree_util.tree_unflatten(treedef, params))
    return trajectory
