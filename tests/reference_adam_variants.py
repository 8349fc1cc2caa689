"""An independent NumPy float64 reference of Adam's relatives, written from REFERENCE.md.

It knows nothing of adamx and reads the rules as PyTorch's single-tensor code paths do:
scalar factors (``b**t``, bias corrections, NAdam's ``mu_t``, RAdam's ``rho_t``) are Python
floats, tensor maths runs in float64 NumPy.

Every rule is a frozen dataclass with ``init(params) -> state`` and
``step(params, grads, state, t) -> (params, state)`` over flat lists of arrays, ``t`` the
step number (1 on the first update). They share the gradient preprocessing of
:class:`Rule`: ``maximize`` negates ``g``, then coupled weight decay adds ``wd * p`` or
decoupled weight decay multiplies ``p`` by ``1 - lr*wd`` (on the leaves of ``mask``).
:func:`run` drives a rule over a pytree.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

LearningRate = float | Callable[[int], Any]


def bc(b: float, t: int) -> float:
    """``1 - b**t`` on the host."""
    return 1.0 - float(b) ** int(t)


@dataclasses.dataclass(frozen=True)
class Rule:
    """Shared hyperparameters and the gradient preprocessing of every rule."""

    lr: LearningRate = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = False
    mask: Sequence[bool] | None = None
    maximize: bool = False

    def lr_at(self, t: int) -> float:
        """A schedule is read at ``k = t - 1``."""
        return float(np.asarray(self.lr(t - 1))) if callable(self.lr) else float(self.lr)

    def prepare(self, params, grads, t):
        """``(params, grads)`` after maximize and weight decay."""
        lr = self.lr_at(t)
        mask = self.mask if self.mask is not None else [True] * len(params)
        new_p, new_g = [], []
        for p, g, keep in zip(params, grads, mask):
            p, g = np.array(p, np.float64), np.array(g, np.float64)
            if self.maximize:
                g = -g
            if self.weight_decay != 0 and keep:
                if self.decoupled:
                    p = p * (1.0 - lr * self.weight_decay)
                else:
                    g = g + self.weight_decay * p
            new_p.append(p)
            new_g.append(g)
        return new_p, new_g

    def init(self, params):
        zeros = lambda: [np.zeros(np.shape(p)) for p in params]  # noqa: E731
        return {"m": zeros(), "v": zeros()}


def _ema(m, g, b):
    return b * m + (1.0 - b) * g


@dataclasses.dataclass(frozen=True)
class Adam(Rule):
    """Adam; ``amsgrad`` keeps the max of the raw ``v``; ``nesterov`` is optax's look-ahead
    ``m^ = b1 m / (1 - b1**(t+1)) + (1 - b1) g / (1 - b1**t)`` with ``eps_root``."""

    amsgrad: bool = False
    nesterov: bool = False
    eps_root: float = 0.0

    def init(self, params):
        state = super().init(params)
        state["vmax"] = [np.zeros(np.shape(p)) for p in params]
        return state

    def step(self, params, grads, state, t):
        params, grads = self.prepare(params, grads, t)
        lr, b1, b2 = self.lr_at(t), self.b1, self.b2
        out = {"m": [], "v": [], "vmax": []}
        new_params = []
        for p, g, m, v, vmax in zip(params, grads, state["m"], state["v"], state["vmax"]):
            m = _ema(m, g, b1)
            v = _ema(v, g * g, b2)
            vmax = np.maximum(vmax, v)
            second = vmax if self.amsgrad else v
            denom = np.sqrt(second / bc(b2, t) + self.eps_root) + self.eps
            if self.nesterov:
                m_hat = b1 * m / bc(b1, t + 1) + (1.0 - b1) * g / bc(b1, t)
            else:
                m_hat = m / bc(b1, t)
            new_params.append(p - lr * m_hat / denom)
            for k, x in (("m", m), ("v", v), ("vmax", vmax)):
                out[k].append(x)
        return new_params, out


@dataclasses.dataclass(frozen=True)
class Adamax(Rule):
    """``u = max(b2 u, |g| + eps)``; ``p -= lr/(1 - b1**t) * m / u``."""

    lr: LearningRate = 2e-3

    def step(self, params, grads, state, t):
        params, grads = self.prepare(params, grads, t)
        lr = self.lr_at(t)
        out, new_params = {"m": [], "v": []}, []
        for p, g, m, u in zip(params, grads, state["m"], state["v"]):
            m = _ema(m, g, self.b1)
            u = np.maximum(self.b2 * u, np.abs(g) + self.eps)
            new_params.append(p - lr / bc(self.b1, t) * m / u)
            out["m"].append(m)
            out["v"].append(u)
        return new_params, out


@dataclasses.dataclass(frozen=True)
class NAdam(Rule):
    """PyTorch's NAdam with Dozat's schedule (``psi``), or optax's without (``psi=None``)."""

    lr: LearningRate = 2e-3
    psi: float | None = 4e-3

    def init(self, params):
        state = super().init(params)
        state["P"] = 1.0
        return state

    def mu(self, t):
        return self.b1 * (1.0 - 0.5 * 0.96 ** (t * self.psi))

    def step(self, params, grads, state, t):
        params, grads = self.prepare(params, grads, t)
        lr, b1 = self.lr_at(t), self.b1
        if self.psi is None:
            c_g, c_m, P = (1.0 - b1) / bc(b1, t), b1 / bc(b1, t + 1), state["P"]
        else:
            mu, mu_next = self.mu(t), self.mu(t + 1)
            P = state["P"] * mu
            c_g, c_m = (1.0 - mu) / (1.0 - P), mu_next / (1.0 - P * mu_next)
        out, new_params = {"m": [], "v": [], "P": P}, []
        for p, g, m, v in zip(params, grads, state["m"], state["v"]):
            m = _ema(m, g, b1)
            v = _ema(v, g * g, self.b2)
            denom = np.sqrt(v / bc(self.b2, t)) + self.eps
            new_params.append(p - lr * c_g * g / denom - lr * c_m * m / denom)
            out["m"].append(m)
            out["v"].append(v)
        return new_params, out


@dataclasses.dataclass(frozen=True)
class RAdam(Rule):
    """PyTorch's RAdam, with the rectification threshold as an option."""

    threshold: float = 5.0

    def step(self, params, grads, state, t):
        params, grads = self.prepare(params, grads, t)
        lr, b2 = self.lr_at(t), self.b2
        rho_inf = 2.0 / (1.0 - b2) - 1.0
        rho_t = rho_inf - 2.0 * t * b2**t / bc(b2, t)
        out, new_params = {"m": [], "v": []}, []
        for p, g, m, v in zip(params, grads, state["m"], state["v"]):
            m = _ema(m, g, self.b1)
            v = _ema(v, g * g, b2)
            m_hat = m / bc(self.b1, t)
            if rho_t > self.threshold:
                r = math.sqrt(
                    (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
                )
                p = p - lr * m_hat * r * math.sqrt(bc(b2, t)) / (np.sqrt(v) + self.eps)
            else:
                p = p - lr * m_hat
            new_params.append(p)
            out["m"].append(m)
            out["v"].append(v)
        return new_params, out


@dataclasses.dataclass(frozen=True)
class AdaBelief(Rule):
    """``s = b2 s + (1-b2)(g - m)**2 + eps_s`` with the new ``m``; ``eps_s = eps`` (the
    paper) unless ``eps_root`` is given (optax)."""

    eps: float = 1e-16
    eps_root: float | None = None

    def step(self, params, grads, state, t):
        params, grads = self.prepare(params, grads, t)
        lr = self.lr_at(t)
        eps_s = self.eps if self.eps_root is None else self.eps_root
        out, new_params = {"m": [], "v": []}, []
        for p, g, m, s in zip(params, grads, state["m"], state["v"]):
            m = _ema(m, g, self.b1)
            s = self.b2 * s + (1.0 - self.b2) * (g - m) ** 2 + eps_s
            d = (m / bc(self.b1, t)) / (np.sqrt(s / bc(self.b2, t)) + self.eps)
            new_params.append(p - lr * d)
            out["m"].append(m)
            out["v"].append(s)
        return new_params, out


@dataclasses.dataclass(frozen=True)
class Yogi(Rule):
    """``v = v - (1-b2) sign(v - g**2) g**2`` from ``v0``; otherwise Adam (``m`` from 0)."""

    lr: LearningRate = 1e-2
    eps: float = 1e-3
    v0: float = 1e-6

    def init(self, params):
        return {
            "m": [np.zeros(np.shape(p)) for p in params],
            "v": [np.full(np.shape(p), self.v0) for p in params],
        }

    def step(self, params, grads, state, t):
        params, grads = self.prepare(params, grads, t)
        lr = self.lr_at(t)
        out, new_params = {"m": [], "v": []}, []
        for p, g, m, v in zip(params, grads, state["m"], state["v"]):
            m = _ema(m, g, self.b1)
            v = v - (1.0 - self.b2) * np.sign(v - g * g) * g * g
            d = (m / bc(self.b1, t)) / (np.sqrt(v / bc(self.b2, t)) + self.eps)
            new_params.append(p - lr * d)
            out["m"].append(m)
            out["v"].append(v)
        return new_params, out


def run(rule, params_tree, grad_fn, steps: int) -> list[Any]:
    """Run ``rule`` from ``params_tree`` for ``steps`` updates with ``grad_fn(params_tree)``;
    return the params tree after every update."""
    leaves, treedef = jax.tree_util.tree_flatten(params_tree)
    params = [np.asarray(x, np.float64) for x in leaves]
    state = rule.init(params)
    trajectory = []
    for t in range(1, steps + 1):
        grads = jax.tree_util.tree_leaves(grad_fn(jax.tree_util.tree_unflatten(treedef, params)))
        params, state = rule.step(params, grads, state, t)
        trajectory.append(jax.tree_util.tree_unflatten(treedef, params))
    return trajectory
