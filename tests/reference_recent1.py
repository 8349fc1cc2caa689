"""Independent NumPy float64 implementations of issue 18's first relatives: LaProp, the
Cautious forms of AdamW and Lion, and MARS-AdamW, written from the papers' equations (and,
where the papers leave a detail open, from what the authors' published code does, stated
in words in each docstring), not from adamx's code.

Each optimizer is a class over a list of leaves: ``step(params, grads) -> new params``,
one call per update, every array float64; ``t`` counts the updates taken. ``decay`` (a
list of bools, one per leaf) says which leaves a ``mask`` decays.
"""

from __future__ import annotations

import math

import numpy as np


def _flags(decay, shapes):
    return [True] * len(shapes) if decay is None else list(decay)


class LaProp:
    """Ziyin, Wang & Ueda 2020, Algorithm 1: ``v = b2 v + (1-b2) g^2``,
    ``m = b1 m + (1-b1) g / (sqrt(v / (1 - b2^t)) + eps)``, ``p -= lr m / (1 - b1^t)``;
    decoupled decay ``-lr wd p`` (AdamW's).

    ``lr_in_momentum=True`` is the authors' PyTorch reading instead: the momentum sums
    ``lr_k * d`` and is divided by an average of the rates (``A = b1 A + (1-b1) lr_k``,
    step ``-lr_k m / A``); ``lr`` may then be a list, one rate per step."""

    def __init__(self, shapes, lr=4e-4, b1=0.9, b2=0.999, eps=1e-15, wd=0.0, decay=None,
                 lr_in_momentum=False):  # fmt: skip
        self.lr, self.b1, self.b2, self.eps, self.wd = lr, b1, b2, eps, wd
        self.decay = _flags(decay, shapes)
        self.m = [np.zeros(s) for s in shapes]
        self.v = [np.zeros(s) for s in shapes]
        self.t, self.lr_avg, self.authors = 0, 0.0, lr_in_momentum

    def step(self, params, grads):
        lr = self.lr[self.t] if isinstance(self.lr, list) else self.lr
        self.t += 1
        b1, b2, t = self.b1, self.b2, self.t
        self.lr_avg = b1 * self.lr_avg + (1 - b1) * lr
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            d = g / (np.sqrt(self.v[i] / (1 - b2**t)) + self.eps)
            if self.authors:
                self.m[i] = b1 * self.m[i] + (1 - b1) * lr * d
                out.append(p - lr * self.m[i] / self.lr_avg)
                continue
            self.m[i] = b1 * self.m[i] + (1 - b1) * d
            wd = self.wd if self.decay[i] else 0.0
            out.append(p - lr * (self.m[i] / (1 - b1**t) + wd * p))
        return out


def _cautious_scale(keep, eps):
    """Liang et al. 2024: ``d / (nnz + 1)`` (Algorithm 2, C-AdamW), or
    ``1 / (mean + eps)`` (Algorithm 1, the one-line form)."""
    if eps is None:
        return keep.size / (np.sum(keep) + 1.0)
    return 1.0 / (float(np.mean(keep)) + eps)


class CautiousAdamW:
    """Liang et al. 2024, C-AdamW: Adam's direction ``u = m^ / (sqrt(v^) + eps)``, kept
    where ``u g > 0`` (strict, Algorithm 2) and scaled per leaf (``_cautious_scale``); the
    decoupled decay ``-lr wd p`` outside the mask, at the full rate. The paper's Algorithm
    2 decays the weights after the masked step; the authors' code (and this reference)
    decays ``p`` before it, as AdamW does."""

    def __init__(self, shapes, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, decay=None,
                 eps_mask=None):  # fmt: skip
        self.lr, self.b1, self.b2, self.eps, self.wd = lr, b1, b2, eps, wd
        self.eps_mask = eps_mask
        self.decay = _flags(decay, shapes)
        self.m = [np.zeros(s) for s in shapes]
        self.v = [np.zeros(s) for s in shapes]
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        b1, b2, t = self.b1, self.b2, self.t
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            u = (self.m[i] / (1 - b1**t)) / (np.sqrt(self.v[i] / (1 - b2**t)) + self.eps)
            keep = (u * g > 0).astype(np.float64)
            wd = self.wd if self.decay[i] else 0.0
            out.append(p - self.lr * (_cautious_scale(keep, self.eps_mask) * keep * u + wd * p))
        return out


class CautiousLion:
    """Liang et al. 2024, C-Lion: Lion's ``u = sign(b1 m + (1-b1) g)``, kept where
    ``u g > 0`` and scaled per leaf; ``m = b2 m + (1-b2) g``; decay outside the mask."""

    def __init__(self, shapes, lr=1e-4, b1=0.9, b2=0.99, wd=0.0, decay=None, eps_mask=None):
        self.lr, self.b1, self.b2, self.wd, self.eps_mask = lr, b1, b2, wd, eps_mask
        self.decay = _flags(decay, shapes)
        self.m = [np.zeros(s) for s in shapes]

    def step(self, params, grads):
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            u = np.sign(self.b1 * self.m[i] + (1 - self.b1) * g)
            keep = (u * g > 0).astype(np.float64)
            self.m[i] = self.b2 * self.m[i] + (1 - self.b2) * g
            wd = self.wd if self.decay[i] else 0.0
            out.append(p - self.lr * (_cautious_scale(keep, self.eps_mask) * keep * u + wd * p))
        return out


class MarsAdamW:
    """Yuan et al. 2024, MARS-AdamW (Algorithm 2), approximate variant:
    ``c = g + gamma b1/(1-b1) (g - g_prev)`` with ``g_prev`` the previous step's gradient
    (zero before the first, as the authors' code starts it), ``c`` scaled to ``max_norm``
    when its 2-norm (per leaf, as the authors' code takes it) exceeds it; then AdamW on
    ``c``: ``m``, ``v`` averages of ``c`` and ``c^2``,
    ``p -= lr (m / (1-b1^t) / (sqrt(v / (1-b2^t)) + eps) + wd p)``."""

    def __init__(self, shapes, lr=3e-3, b1=0.95, b2=0.99, eps=1e-8, gamma=0.025, wd=0.0,
                 decay=None, max_norm=1.0):  # fmt: skip
        self.lr, self.b1, self.b2, self.eps, self.gamma = lr, b1, b2, eps, gamma
        self.wd, self.max_norm = wd, max_norm
        self.decay = _flags(decay, shapes)
        self.m = [np.zeros(s) for s in shapes]
        self.v = [np.zeros(s) for s in shapes]
        self.prev = [np.zeros(s) for s in shapes]
        self.t = 0
        self.clipped = 0  # how many leaf-steps were clipped (the test checks both branches)

    def step(self, params, grads):
        self.t += 1
        b1, b2, t = self.b1, self.b2, self.t
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            c = g + self.gamma * b1 / (1 - b1) * (g - self.prev[i])
            self.prev[i] = g.copy()
            norm = math.sqrt(float(np.sum(c * c)))
            if self.max_norm is not None and norm > self.max_norm:
                c = c * (self.max_norm / norm)
                self.clipped += 1
            self.m[i] = b1 * self.m[i] + (1 - b1) * c
            self.v[i] = b2 * self.v[i] + (1 - b2) * c * c
            u = (self.m[i] / (1 - b1**t)) / (np.sqrt(self.v[i] / (1 - b2**t)) + self.eps)
            wd = self.wd if self.decay[i] else 0.0
            out.append(p - self.lr * (u + wd * p))
        return out


class MarsLion(MarsAdamW):
    """Yuan et al. 2024, MARS-Lion: the corrected, clipped ``c`` of :class:`MarsAdamW`,
    ``m = b1 m + (1-b1) c``, ``p -= lr (sign(m) + wd p)`` (no second moment)."""

    def step(self, params, grads):
        self.t += 1
        b1 = self.b1
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            c = g + self.gamma * b1 / (1 - b1) * (g - self.prev[i])
            self.prev[i] = g.copy()
            norm = math.sqrt(float(np.sum(c * c)))
            if self.max_norm is not None and norm > self.max_norm:
                c = c * (self.max_norm / norm)
            self.m[i] = b1 * self.m[i] + (1 - b1) * c
            wd = self.wd if self.decay[i] else 0.0
            out.append(p - self.lr * (np.sign(self.m[i]) + wd * p))
        return out
