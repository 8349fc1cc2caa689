"""Independent NumPy float64 implementations of issue 16's second batch: Schedule-Free SGD
and AdamW, signSGD, Signum, AdamaxW, LARS, NovoGrad and Optimistic Adam, written from the
papers and the update rules optax documents, not from adamx's code.

Each optimizer is a class over a list of leaves: ``step(params, grads) -> new params``,
one call per update, every array float64; ``t`` counts the updates taken. ``decay`` (a
list of bools, one per leaf) says which leaves a ``mask`` decays.
"""

from __future__ import annotations

import math

import numpy as np


def _norm(x):
    return math.sqrt(float(np.sum(x * x)))


class ScheduleFree:
    """Defazio et al. 2024 as optax.contrib writes it. With ``k`` updates taken and
    ``lr(k)`` the (warmed-up) rate: the base step ``u`` (SGD: ``-lr(k) (g + wd y)``;
    AdamW: ``-lr(k) (g / (sqrt(v / (1 - b2**t)) + eps) + wd y)``), then
    ``lr_max = max(lr_max, lr(k + 1))``, ``c = lr_max**P / sum``, ``x = (y - (1-b1) z)/b1``,
    ``z += u``, ``x = (1-c) x + c z``, ``y = b1 x + (1-b1) z``."""

    def __init__(
        self, shapes, lr=1.0, warmup_steps=None, b1=0.9, wd=0.0, weight_lr_power=2.0,
        adam=False, b2=0.999, eps=1e-8,
    ):  # fmt: skip
        self.lr0, self.warmup, self.b1, self.wd = lr, warmup_steps, b1, wd
        self.power, self.adam, self.b2, self.eps = weight_lr_power, adam, b2, eps
        self.z = None
        self.v = [np.zeros(s) for s in shapes]
        self.t = 0
        self.lr_max, self.weight_sum = 0.0, 0.0

    def lr(self, k):
        if self.warmup is None:
            return self.lr0
        return self.lr0 * min(k, self.warmup) / self.warmup

    def eval_params(self, params):
        return [(y - (1 - self.b1) * z) / self.b1 for y, z in zip(params, self.z)]

    def step(self, params, grads):
        if self.z is None:
            self.z = [p.copy() for p in params]
        k = self.t
        self.t += 1
        lr = self.lr(k)
        self.lr_max = max(self.lr_max, self.lr(k + 1))
        w = self.lr_max**self.power
        self.weight_sum += w
        c = w / self.weight_sum if self.weight_sum > 0 else 0.0
        b1, out = self.b1, []
        for i, (y, g) in enumerate(zip(params, grads)):
            if self.adam:
                self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * g * g
                d = g / (np.sqrt(self.v[i] / (1 - self.b2**self.t)) + self.eps) + self.wd * y
            else:
                d = g + self.wd * y
            x = (y - (1 - b1) * self.z[i]) / b1
            self.z[i] = self.z[i] - lr * d
            x = (1 - c) * x + c * self.z[i]
            out.append(b1 * x + (1 - b1) * self.z[i])
        return out


class SignSGD:
    """Bernstein et al. 2018: p -= lr sign(g)."""

    def __init__(self, shapes, lr=1e-3):
        del shapes
        self.lr = lr

    def step(self, params, grads):
        return [p - self.lr * np.sign(g) for p, g in zip(params, grads)]


class Signum:
    """Bernstein et al. 2018: m = beta m + (1 - beta) g; p -= lr sign(m)."""

    def __init__(self, shapes, lr=1e-3, beta=0.9):
        self.lr, self.beta = lr, beta
        self.m = [np.zeros(s) for s in shapes]

    def step(self, params, grads):
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            self.m[i] = self.beta * self.m[i] + (1 - self.beta) * g
            out.append(p - self.lr * np.sign(self.m[i]))
        return out


class AdamaxW:
    """Kingma & Ba 2015 §7.1 with decoupled decay: m = b1 m + (1-b1) g,
    u = max(b2 u, |g| + eps), p -= lr (m / (1 - b1**t) / u + wd p)."""

    def __init__(self, shapes, lr=2e-3, b1=0.9, b2=0.999, eps=1e-8, wd=1e-4, decay=None):
        self.lr, self.b1, self.b2, self.eps, self.wd = lr, b1, b2, eps, wd
        self.decay = decay or [True] * len(shapes)
        self.m = [np.zeros(s) for s in shapes]
        self.u = [np.zeros(s) for s in shapes]
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
            self.u[i] = np.maximum(self.b2 * self.u[i], np.abs(g) + self.eps)
            d = self.m[i] / (1 - self.b1**self.t) / self.u[i]
            out.append(p - self.lr * (d + (self.wd * p if self.decay[i] else 0.0)))
        return out


class Lars:
    """You et al. 2017 as optax writes it: u = g + wd p; u *= c ||p|| / (||u|| + eps)
    (1 where a norm is 0); b = mu b - lr u; p += b (nesterov: p += mu b - lr u)."""

    def __init__(
        self, shapes, lr=0.1, wd=0.0, trust_coefficient=1e-3, eps=0.0, momentum=0.9,
        nesterov=False, decay=None, trust=None,
    ):  # fmt: skip
        self.lr, self.wd, self.c, self.eps = lr, wd, trust_coefficient, eps
        self.mu, self.nesterov = momentum, nesterov
        self.decay = decay or [True] * len(shapes)
        self.trust = trust or [True] * len(shapes)
        self.b = [np.zeros(s) for s in shapes]

    def step(self, params, grads):
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            u = g + (self.wd * p if self.decay[i] else 0.0)
            pn, un = _norm(p), _norm(u)
            if self.trust[i] and pn > 0 and un > 0:
                u = u * (self.c * pn / (un + self.eps))
            step = -self.lr * u
            self.b[i] = self.mu * self.b[i] + step
            out.append(p + (self.mu * self.b[i] + step if self.nesterov else self.b[i]))
        return out


class NovoGrad:
    """Ginsburg et al. 2019 as optax writes it: n = ||g||^2 on the first step, then
    b2 n + (1-b2) ||g||^2; u = g / (sqrt(n + eps_root) + eps) + wd p; m = b1 m + u
    (m = u first); p -= lr m."""

    def __init__(self, shapes, lr=1e-2, b1=0.9, b2=0.25, eps=1e-6, eps_root=0.0, wd=0.0):
        self.lr, self.b1, self.b2, self.eps, self.eps_root, self.wd = lr, b1, b2, eps, eps_root, wd
        self.n = [0.0] * len(shapes)
        self.m = [np.zeros(s) for s in shapes]
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            sq = float(np.sum(g * g))
            self.n[i] = sq if self.t == 1 else self.b2 * self.n[i] + (1 - self.b2) * sq
            u = g / (math.sqrt(self.n[i] + self.eps_root) + self.eps) + self.wd * p
            self.m[i] = u if self.t == 1 else self.b1 * self.m[i] + u
            out.append(p - self.lr * self.m[i])
        return out


class OptimisticAdam:
    """Daskalakis et al. 2018 on Adam's direction r (optax's optimistic_adam_v2):
    p -= lr ((alpha + beta) r - beta r_prev), r_prev = r on the first step; r uses the
    Nesterov read-out b1 m / (1 - b1**(t+1)) + (1-b1) g / (1 - b1**t) when ``nesterov``."""

    def __init__(
        self, shapes, lr=1e-3, alpha=1.0, beta=1.0, b1=0.9, b2=0.999, eps=1e-8,
        eps_root=0.0, nesterov=True,
    ):  # fmt: skip
        self.lr, self.alpha, self.beta, self.b1, self.b2 = lr, alpha, beta, b1, b2
        self.eps, self.eps_root, self.nesterov = eps, eps_root, nesterov
        self.m = [np.zeros(s) for s in shapes]
        self.v = [np.zeros(s) for s in shapes]
        self.r = [None] * len(shapes)
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        t, b1, b2 = self.t, self.b1, self.b2
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            if self.nesterov:
                m_hat = b1 * self.m[i] / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
            else:
                m_hat = self.m[i] / (1 - b1**t)
            r = m_hat / (np.sqrt(self.v[i] / (1 - b2**t) + self.eps_root) + self.eps)
            prev = r if self.r[i] is None else self.r[i]
            self.r[i] = r
            out.append(p - self.lr * ((self.alpha + self.beta) * r - self.beta * prev))
        return out
