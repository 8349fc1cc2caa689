"""Independent NumPy float64 implementations of issue 16's fourth batch: Prodigy and
D-Adaptation AdamW, written from the papers' Adam variants (Mishchenko & Defazio 2023,
Algorithm 4; Defazio & Mishchenko 2023, Algorithm 6) in the form optax.contrib documents
(lr a multiplier of D, bias corrections folded into the step size), not from adamx's code.

Each optimizer is a class over a list of leaves: ``step(params, grads) -> new params``,
one call per update, every array float64; ``t`` counts the updates taken. Sums marked
"over leaves" run over the whole list: the estimate ``D`` is one number per model.
"""

from __future__ import annotations

import math

import numpy as np


def _rate(lr, k):
    return float(lr(k)) if callable(lr) else float(lr)


class Prodigy:
    """Step size ``h = D lr(k) sqrt(1 - b2**t) / (1 - b1**t)``; ``m``, ``v`` are Adam's
    moments of ``D g``; ``r = b3 r + (D / D0) h <g, x0 - x>`` and ``s = b3 s + (h / D0) D g``
    (safeguard: ``D / D0`` in place of ``h / D0``); ``D = max(D, coef r / ||s||_1)``
    (unchanged while ``||s||_1 = 0``); ``x -= h (m / (sqrt(v) + D eps) + wd x)`` with the new
    ``D`` in the eps term."""

    def __init__(
        self, shapes, lr=1.0, betas=(0.9, 0.999), beta3=None, eps=1e-8, estim_lr0=1e-6,
        estim_lr_coef=1.0, wd=0.0, safeguard_warmup=False,
    ):  # fmt: skip
        self.lr, (self.b1, self.b2), self.eps, self.wd = lr, betas, eps, wd
        self.b3 = math.sqrt(self.b2) if beta3 is None else beta3
        self.d0 = self.d = estim_lr0
        self.coef, self.safeguard = estim_lr_coef, safeguard_warmup
        self.m = [np.zeros(s) for s in shapes]
        self.v = [np.zeros(s) for s in shapes]
        self.s = [np.zeros(s) for s in shapes]
        self.r, self.x0, self.t = 0.0, None, 0

    def step(self, params, grads):
        if self.x0 is None:
            self.x0 = [p.copy() for p in params]
        k = self.t
        self.t += 1
        t, d = self.t, self.d
        h = d * _rate(self.lr, k) * math.sqrt(1 - self.b2**t) / (1 - self.b1**t)
        inner = sum(float(np.sum(g * (x0 - p))) for g, x0, p in zip(grads, self.x0, params))
        self.r = self.b3 * self.r + (d / self.d0) * h * inner
        weight = d / self.d0 if self.safeguard else h / self.d0
        for i, g in enumerate(grads):
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * d * g
            self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * (d * g) ** 2
            self.s[i] = self.b3 * self.s[i] + weight * d * g
        l1 = sum(float(np.sum(np.abs(s))) for s in self.s)
        if l1 > 0:
            self.d = max(d, self.coef * self.r / l1)
        return [
            p - h * (m / (np.sqrt(v) + self.d * self.eps) + self.wd * p)
            for p, m, v in zip(params, self.m, self.v)
        ]


class DAdaptAdamW:
    """Step size ``h = D lr(k) sqrt(1 - b2**t) / (1 - b1**t)``, ``b3 = sqrt(b2)``;
    ``r = b3 r + (1 - b3) h <g, s / (sqrt(v) + eps)>`` with the previous ``s``, ``v``;
    ``m = b1 m + (1 - b1) h g``, ``v = b2 v + (1 - b2) g**2``, ``s = b3 s + (1 - b3) h g``;
    ``D = max(D, r / ((1 - b3) ||s||_1))`` (unchanged while ``||s||_1 = 0``);
    ``x -= m / (sqrt(v) + eps) + wd h x``."""

    def __init__(self, shapes, lr=1.0, betas=(0.9, 0.999), eps=1e-8, estim_lr0=1e-6, wd=0.0):
        self.lr, (self.b1, self.b2), self.eps, self.wd = lr, betas, eps, wd
        self.b3 = math.sqrt(self.b2)
        self.d = estim_lr0
        self.m = [np.zeros(s) for s in shapes]
        self.v = [np.zeros(s) for s in shapes]
        self.s = [np.zeros(s) for s in shapes]
        self.r, self.t = 0.0, 0

    def step(self, params, grads):
        k = self.t
        self.t += 1
        t = self.t
        h = self.d * _rate(self.lr, k) * math.sqrt(1 - self.b2**t) / (1 - self.b1**t)
        inner = sum(
            float(np.sum(g * s / (np.sqrt(v) + self.eps))) for g, s, v in zip(grads, self.s, self.v)
        )
        self.r = self.b3 * self.r + (1 - self.b3) * h * inner
        for i, g in enumerate(grads):
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * h * g
            self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * g * g
            self.s[i] = self.b3 * self.s[i] + (1 - self.b3) * h * g
        l1 = sum(float(np.sum(np.abs(s))) for s in self.s)
        if l1 > 0:
            self.d = max(self.d, self.r / ((1 - self.b3) * l1))
        return [
            p - m / (np.sqrt(v) + self.eps) - self.wd * h * p
            for p, m, v in zip(params, self.m, self.v)
        ]


class Sophia:
    """Liu et al. 2023 (Algorithm 1) in optax's form: ``m = b1 m + (1 - b1) g``,
    ``u = clip(m / (1 - b1**t) / max(gamma h, eps), +-clip)`` with the ``h`` from before this
    step, ``x -= lr (u + wd x)``; then, when ``(t - 1) % interval == 0``,
    ``h = b2 h + (1 - b2) e`` for the estimate ``e`` passed to ``step``."""

    def __init__(
        self, shapes, lr, b1=0.965, b2=0.99, eps=1e-8, wd=1e-4, gamma=0.01, clip_threshold=1.0,
        update_interval=10,
    ):  # fmt: skip
        self.lr, self.b1, self.b2, self.eps, self.wd = lr, b1, b2, eps, wd
        self.gamma, self.clip, self.interval = gamma, clip_threshold, update_interval
        self.m = [np.zeros(s) for s in shapes]
        self.h = [np.zeros(s) for s in shapes]
        self.t = 0

    def step(self, params, grads, estimate):
        self.t += 1
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
            u = self.m[i] / (1 - self.b1**self.t) / np.maximum(self.gamma * self.h[i], self.eps)
            if self.clip is not None:
                u = np.clip(u, -self.clip, self.clip)
            out.append(p - self.lr * (u + self.wd * p))
        if (self.t - 1) % self.interval == 0:
            self.h = [self.b2 * h + (1 - self.b2) * e for h, e in zip(self.h, estimate)]
        return out


class GaLore:
    """Zhao et al. 2024 (Algorithm 2) with optax's Adam as the base: for an ``m x n``
    matrix, every ``update_proj_gap`` updates ``P`` = the first ``r`` left (``m >= n``) or
    right singular vectors of ``G``; ``R = P^T G`` (or ``G P``); Adam on ``R`` (``b1`` 0.9,
    ``b2`` 0.999, eps 1e-8 outside the root of the corrected ``v``); ``x -= lr (scale P D``
    (or ``D P^T``) ``+ wd x)``. Other leaves: ``x -= lr (Adam(g) + wd x)``. The singular
    vectors' signs do not matter: ``P`` and ``Adam(R)`` flip together."""

    def __init__(self, shapes, lr=1e-3, rank=128, update_proj_gap=200, scale=1.0, wd=0.0):
        self.lr, self.rank, self.gap, self.scale, self.wd = lr, rank, update_proj_gap, scale, wd
        self.shapes = shapes
        self.p = [None] * len(shapes)
        self.m, self.v = [None] * len(shapes), [None] * len(shapes)
        self.t = 0

    def _low_shape(self, shape):
        if len(shape) != 2:
            return shape
        m, n = shape
        r = min(self.rank, m, n)
        return (r, n) if m >= n else (m, r)

    def step(self, params, grads):
        k = self.t
        self.t += 1
        t = self.t
        out = []
        for i, (x, g) in enumerate(zip(params, grads)):
            shape = self.shapes[i]
            if self.m[i] is None:
                self.m[i] = np.zeros(self._low_shape(shape))
                self.v[i] = np.zeros(self._low_shape(shape))
                if len(shape) == 2:
                    m, n = shape
                    r = min(self.rank, m, n)
                    self.p[i] = np.zeros((m, r) if m >= n else (n, r))
            matrix = len(shape) == 2
            left = matrix and shape[0] >= shape[1]
            if matrix and k % self.gap == 0:
                u, _, vt = np.linalg.svd(g, full_matrices=False)
                r = self.p[i].shape[1]
                self.p[i] = u[:, :r] if left else vt[:r, :].T
            low = (self.p[i].T @ g if left else g @ self.p[i]) if matrix else g
            self.m[i] = 0.9 * self.m[i] + 0.1 * low
            self.v[i] = 0.999 * self.v[i] + 0.001 * low * low
            d = self.m[i] / (1 - 0.9**t) / (np.sqrt(self.v[i] / (1 - 0.999**t)) + 1e-8)
            if matrix:
                d = self.scale * (self.p[i] @ d if left else d @ self.p[i].T)
            out.append(x - self.lr * (d + self.wd * x))
        return out
