"""Independent NumPy float64 implementations of LAMB, Lion, Adafactor, ADOPT and LazyAdam,
written from the rules in ``shared/REFERENCE.md`` (and the papers), not from adamx's code.

Each optimizer is a class over a list of leaves: ``step(params, grads) -> new params``,
one call per update, every array float64. Scalars are Python floats (float64).
"""

from __future__ import annotations

import math

import numpy as np


def _norm(x):
    return math.sqrt(float(np.sum(x * x)))


def _rms(x):
    return math.sqrt(float(np.sum(x * x)) / max(x.size, 1))


class Lamb:
    """You et al. 2020: Adam's bias-corrected direction plus decoupled decay, scaled per
    tensor by ||p|| / ||r|| (1 when either norm is 0)."""

    def __init__(self, shapes, lr=1e-3, b1=0.9, b2=0.999, eps=1e-6, wd=0.0, decay=None):
        self.lr, self.b1, self.b2, self.eps, self.wd = lr, b1, b2, eps, wd
        self.decay = decay or [True] * len(shapes)
        self.m = [np.zeros(s) for s in shapes]
        self.v = [np.zeros(s) for s in shapes]
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        t, b1, b2 = self.t, self.b1, self.b2
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            m_hat = self.m[i] / (1 - b1**t)
            v_hat = self.v[i] / (1 - b2**t)
            r = m_hat / (np.sqrt(v_hat) + self.eps)
            if self.decay[i]:
                r = r + self.wd * p
            pn, rn = _norm(p), _norm(r)
            ratio = pn / rn if pn > 0 and rn > 0 else 1.0
            out.append(p - self.lr * ratio * r)
        return out


class Lion:
    """Chen et al. 2023: c = b1 m + (1-b1) g; p -= lr (sign(c) + wd p); m = b2 m + (1-b2) g."""

    def __init__(self, shapes, lr=1e-4, b1=0.9, b2=0.99, wd=0.0, decay=None):
        self.lr, self.b1, self.b2, self.wd = lr, b1, b2, wd
        self.decay = decay or [True] * len(shapes)
        self.m = [np.zeros(s) for s in shapes]

    def step(self, params, grads):
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            c = self.b1 * self.m[i] + (1 - self.b1) * g
            direction = np.sign(c) + (self.wd * p if self.decay[i] else 0.0)
            out.append(p - self.lr * direction)
            self.m[i] = self.b2 * self.m[i] + (1 - self.b2) * g
        return out


class Adafactor:
    """torch.optim.Adafactor's reading of Shazeer & Stern 2018 (REFERENCE.md):
    w = t^beta2_decay, rho = min(lr, 1/sqrt(t)), alpha = max(eps2, RMS(p)) rho;
    row/column means of g^2 for >= 2-D (last two axes), full V otherwise;
    U = g / sqrt(max(V, eps1^2)); p <- p (1 - lr wd) - alpha / max(1, RMS(U)/d) U."""

    def __init__(
        self, shapes, lr=1e-2, beta2_decay=-0.8, eps1=None, eps2=1e-3, d=1.0, wd=0.0,
        maximize=False,
    ):  # fmt: skip
        self.lr, self.beta2_decay, self.eps2, self.d, self.wd = lr, beta2_decay, eps2, d, wd
        self.eps1 = np.finfo(np.float64).eps if eps1 is None else eps1
        self.maximize = maximize
        self.R = [np.zeros(s[:-1] + (1,)) if len(s) >= 2 else None for s in shapes]
        self.C = [np.zeros(s[:-2] + (1, s[-1])) if len(s) >= 2 else None for s in shapes]
        self.V = [np.zeros(s) if len(s) < 2 else None for s in shapes]
        self.t = 0

    def step(self, params, grads, lr=None):
        self.t += 1
        t = float(self.t)
        lr = self.lr if lr is None else lr
        w = t**self.beta2_decay
        rho = min(lr, 1 / math.sqrt(t))
        eps1 = self.eps1
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            if self.maximize:
                g = -g
            alpha = max(self.eps2, _rms(p)) * rho
            g2 = g * g
            if g.ndim >= 2:
                self.R[i] = self.R[i] + w * (g2.mean(axis=-1, keepdims=True) - self.R[i])
                self.C[i] = self.C[i] + w * (g2.mean(axis=-2, keepdims=True) - self.C[i])
                row_mean = self.R[i].mean(axis=-2, keepdims=True)
                V = self.R[i] * self.C[i] / np.maximum(row_mean, eps1)
            else:
                self.V[i] = self.V[i] + w * (g2 - self.V[i])
                V = self.V[i]
            U = g / np.sqrt(np.maximum(V, eps1 * eps1))
            denom = max(1.0, _rms(U) / self.d)
            out.append(p * (1 - lr * self.wd) - alpha / denom * U)
        return out


class Adopt:
    """Taniguchi et al. 2024: v_0 = g_0^2, no step at t = 0; afterwards
    m = b1 m + (1-b1) clip(g / max(sqrt(v), eps), t^a); p -= lr m; v = b2 v + (1-b2) g^2."""

    def __init__(self, shapes, lr=1e-3, b1=0.9, b2=0.9999, eps=1e-6, clip_exponent=0.25):
        self.lr, self.b1, self.b2, self.eps, self.a = lr, b1, b2, eps, clip_exponent
        self.m = [np.zeros(s) for s in shapes]
        self.v = [np.zeros(s) for s in shapes]
        self.k = 0  # number of earlier calls

    def step(self, params, grads):
        k = self.k
        self.k += 1
        if k == 0:
            self.v = [g * g for g in grads]
            return [p.copy() for p in params]
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            x = g / np.maximum(np.sqrt(self.v[i]), self.eps)
            if self.a is not None:
                bound = float(k) ** self.a
                x = np.clip(x, -bound, bound)
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * x
            out.append(p - self.lr * self.m[i])
            self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * g * g
        return out


class LazyAdam:
    """Adam (eps outside the root of the bias-corrected v, global t) applied row by row;
    a row (index of the first axis; 0-d: the whole leaf) whose gradient is all zero is
    skipped: its m, v and p stay as they are."""

    def __init__(self, shapes, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, maximize=False):
        self.lr, self.b1, self.b2, self.eps, self.maximize = lr, b1, b2, eps, maximize
        self.m = [np.zeros(s) for s in shapes]
        self.v = [np.zeros(s) for s in shapes]
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        bc1, bc2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            if self.maximize:
                g = -g
            p = p.copy()
            m, v = self.m[i], self.v[i]
            if p.ndim == 0:
                p, m, v, g = p.reshape(1), m.reshape(1), v.reshape(1), g.reshape(1)
            for r in range(p.shape[0]):
                if not np.any(g[r] != 0):
                    continue
                m[r] = self.b1 * m[r] + (1 - self.b1) * g[r]
                v[r] = self.b2 * v[r] + (1 - self.b2) * g[r] ** 2
                p[r] = p[r] - self.lr * (m[r] / bc1) / (np.sqrt(v[r] / bc2) + self.eps)
            shape = params[i].shape
            self.m[i], self.v[i] = m.reshape(shape), v.reshape(shape)
            out.append(p.reshape(shape))
        return out
