"""An independent NumPy complex128 reference of the rules that take complex params.

Written from the formulas (README, "Complex parameters"; optax's ``scale_by_adam`` and
``update_moment_per_elem_norm``), not from adamx's code. A complex leaf keeps a complex
first moment ``m`` and a *real* second moment built from ``|g|**2 = re(g conj(g))``; the
read-outs divide the complex ``m`` by a real root. Each rule's other choices are adamx's
(PyTorch's) reading, as in the real references (``reference_adam_variants.py``, ...).

Every rule is a class over a flat list of leaves: ``step(params, grads) -> new params``,
one call per update; scalars are Python floats (float64), arrays complex128 (moments
``v`` float64).
"""

from __future__ import annotations

import math

import numpy as np


def sq(x: np.ndarray) -> np.ndarray:
    """``|x|**2``, real."""
    return (x * np.conj(x)).real


def _norm(x) -> float:
    return math.sqrt(float(np.sum(sq(x))))


def _rms(x) -> float:
    return math.sqrt(float(np.sum(sq(x))) / max(x.size, 1))


def bc(b: float, t: int) -> float:
    return 1.0 - b**t


class _Rule:
    """Leaves of complex params; ``m`` complex zeros, ``v`` real (``v0``)."""

    v0 = 0.0

    def __init__(self, shapes, **kwargs):
        for k, v in kwargs.items():
            setattr(self, k, v)
        self.m = [np.zeros(s, np.complex128) for s in shapes]
        self.v = [np.full(s, self.v0, np.float64) for s in shapes]
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        return [self.leaf(i, p, g) for i, (p, g) in enumerate(zip(params, grads))]


class Adam(_Rule):
    """Adam (L2 ``wd`` into the gradient, or decoupled ``p -= lr wd p`` with ``decoupled``);
    ``amsgrad`` keeps the max of the raw real ``v``; ``nesterov`` the look-ahead ``m^``."""

    lr, b1, b2, eps, eps_root, wd = 1e-3, 0.9, 0.999, 1e-8, 0.0, 0.0
    decoupled = amsgrad = nesterov = False

    def __init__(self, shapes, **kwargs):
        super().__init__(shapes, **kwargs)
        self.vmax = [np.zeros(s) for s in shapes]

    def leaf(self, i, p, g):
        t, b1, b2 = self.t, self.b1, self.b2
        if self.wd and not self.decoupled:
            g = g + self.wd * p
        self.m[i] = b1 * self.m[i] + (1 - b1) * g
        self.v[i] = b2 * self.v[i] + (1 - b2) * sq(g)
        self.vmax[i] = np.maximum(self.vmax[i], self.v[i])
        v = self.vmax[i] if self.amsgrad else self.v[i]
        if self.nesterov:
            m_hat = b1 * self.m[i] / bc(b1, t + 1) + (1 - b1) * g / bc(b1, t)
        else:
            m_hat = self.m[i] / bc(b1, t)
        d = m_hat / (np.sqrt(v / bc(b2, t) + self.eps_root) + self.eps)
        if self.wd and self.decoupled:
            d = d + self.wd * p
        return p - self.lr * d


class Adamax(_Rule):
    """``u = max(b2 u, |g| + eps)`` (real); ``p -= lr / (1 - b1**t) * m / u``."""

    lr, b1, b2, eps = 2e-3, 0.9, 0.999, 1e-8

    def leaf(self, i, p, g):
        self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
        self.v[i] = np.maximum(self.b2 * self.v[i], np.abs(g) + self.eps)
        return p - self.lr / bc(self.b1, self.t) * self.m[i] / self.v[i]


class NAdam(_Rule):
    """PyTorch's NAdam with Dozat's momentum schedule (``psi``); ``wd`` decoupled
    (NAdamW: ``p -= lr wd p``)."""

    lr, b1, b2, eps, psi, wd = 2e-3, 0.9, 0.999, 1e-8, 4e-3, 0.0

    def __init__(self, shapes, **kwargs):
        super().__init__(shapes, **kwargs)
        self.P = 1.0

    def step(self, params, grads):
        t, b1 = self.t + 1, self.b1
        mu = b1 * (1 - 0.5 * 0.96 ** (t * self.psi))
        mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * self.psi))
        self.P *= mu
        self.c_g, self.c_m = (1 - mu) / (1 - self.P), mu_next / (1 - self.P * mu_next)
        return super().step(params, grads)

    def leaf(self, i, p, g):
        self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
        self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * sq(g)
        denom = np.sqrt(self.v[i] / bc(self.b2, self.t)) + self.eps
        return p - self.lr * ((self.c_g * g + self.c_m * self.m[i]) / denom + self.wd * p)


class RAdam(_Rule):
    """PyTorch's RAdam: the rectified step once ``rho_t > 5``, plain momentum before."""

    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-8

    def leaf(self, i, p, g):
        t, b2 = self.t, self.b2
        rho_inf = 2 / (1 - b2) - 1
        rho_t = rho_inf - 2 * t * b2**t / bc(b2, t)
        self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
        self.v[i] = b2 * self.v[i] + (1 - b2) * sq(g)
        m_hat = self.m[i] / bc(self.b1, t)
        if rho_t > 5:
            r = math.sqrt(
                (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
            )
            return p - self.lr * m_hat * r * math.sqrt(bc(b2, t)) / (np.sqrt(self.v[i]) + self.eps)
        return p - self.lr * m_hat


class AdaBelief(_Rule):
    """``s = b2 s + (1-b2) |g - m|**2 + eps`` with the new ``m``."""

    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-16

    def leaf(self, i, p, g):
        t = self.t
        self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
        self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * sq(g - self.m[i]) + self.eps
        d = (self.m[i] / bc(self.b1, t)) / (np.sqrt(self.v[i] / bc(self.b2, t)) + self.eps)
        return p - self.lr * d


class Yogi(_Rule):
    """``v = v - (1-b2) sign(v - |g|**2) |g|**2`` from ``v0``."""

    lr, b1, b2, eps, v0 = 1e-2, 0.9, 0.999, 1e-3, 1e-6

    def leaf(self, i, p, g):
        t, g2 = self.t, sq(g)
        self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
        self.v[i] = self.v[i] - (1 - self.b2) * np.sign(self.v[i] - g2) * g2
        d = (self.m[i] / bc(self.b1, t)) / (np.sqrt(self.v[i] / bc(self.b2, t)) + self.eps)
        return p - self.lr * d


class Lamb(_Rule):
    """Adam's direction plus decoupled decay, scaled by ``||p|| / ||r||`` (Euclidean norms
    of complex tensors: ``sqrt(sum |x|**2)``)."""

    lr, b1, b2, eps, wd = 1e-3, 0.9, 0.999, 1e-6, 0.0

    def leaf(self, i, p, g):
        t = self.t
        self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
        self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * sq(g)
        r = (self.m[i] / bc(self.b1, t)) / (np.sqrt(self.v[i] / bc(self.b2, t)) + self.eps)
        r = r + self.wd * p
        pn, rn = _norm(p), _norm(r)
        return p - self.lr * (pn / rn if pn > 0 and rn > 0 else 1.0) * r


class SGD(_Rule):
    """PyTorch's SGD: ``buf = g`` (t = 1), ``mu buf + g`` after; nesterov ``g + mu buf``."""

    lr, momentum, nesterov = 1e-3, 0.0, False

    def leaf(self, i, p, g):
        mu = self.momentum
        if mu == 0:
            return p - self.lr * g
        self.m[i] = g.copy() if self.t == 1 else mu * self.m[i] + g
        return p - self.lr * (g + mu * self.m[i] if self.nesterov else self.m[i])


class RMSprop(_Rule):
    """PyTorch's RMSprop: ``sq = a sq + (1-a) |g|**2``; centered ``sq - |ga|**2``;
    ``buf = mu buf + g / avg`` with momentum."""

    lr, decay, eps, centered, momentum = 1e-2, 0.99, 1e-8, False, 0.0

    def __init__(self, shapes, **kwargs):
        super().__init__(shapes, **kwargs)
        self.ga = [np.zeros(s, np.complex128) for s in shapes]

    def leaf(self, i, p, g):
        a = self.decay
        self.v[i] = a * self.v[i] + (1 - a) * sq(g)
        var = self.v[i]
        if self.centered:
            self.ga[i] = self.ga[i] + (1 - a) * (g - self.ga[i])
            var = var - sq(self.ga[i])
        d = g / (np.sqrt(var) + self.eps)
        if self.momentum > 0:
            self.m[i] = self.momentum * self.m[i] + d
            d = self.m[i]
        return p - self.lr * d


class Adagrad(_Rule):
    """PyTorch's Adagrad: ``s = s + |g|**2``; ``p -= lr / (1 + (t-1) lr_decay) g / (sqrt(s)
    + eps)``."""

    lr, lr_decay, eps = 1e-2, 0.0, 1e-10

    def leaf(self, i, p, g):
        self.v[i] = self.v[i] + sq(g)
        clr = self.lr / (1 + (self.t - 1) * self.lr_decay)
        return p - clr * g / (np.sqrt(self.v[i]) + self.eps)


class Adafactor:
    """PyTorch's Adafactor (as ``reference_other_family.Adafactor``) with the factored
    statistics of ``|g|**2`` (real) and RMS of complex tensors ``sqrt(mean |x|**2)``."""

    def __init__(self, shapes, lr=1e-2, beta2_decay=-0.8, eps2=1e-3, d=1.0, wd=0.0):
        self.lr, self.beta2_decay, self.eps2, self.d, self.wd = lr, beta2_decay, eps2, d, wd
        self.eps1 = np.finfo(np.float64).eps
        self.R = [np.zeros(s[:-1] + (1,)) if len(s) >= 2 else None for s in shapes]
        self.C = [np.zeros(s[:-2] + (1, s[-1])) if len(s) >= 2 else None for s in shapes]
        self.V = [np.zeros(s) if len(s) < 2 else None for s in shapes]
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        t = float(self.t)
        w, rho, eps1 = t**self.beta2_decay, min(self.lr, 1 / math.sqrt(t)), self.eps1
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            alpha = max(self.eps2, _rms(p)) * rho
            g2 = sq(g)
            if g.ndim >= 2:
                self.R[i] = self.R[i] + w * (g2.mean(axis=-1, keepdims=True) - self.R[i])
                self.C[i] = self.C[i] + w * (g2.mean(axis=-2, keepdims=True) - self.C[i])
                row_mean = self.R[i].mean(axis=-2, keepdims=True)
                V = self.R[i] * self.C[i] / np.maximum(row_mean, eps1)
            else:
                self.V[i] = self.V[i] + w * (g2 - self.V[i])
                V = self.V[i]
            U = g / np.sqrt(np.maximum(V, eps1 * eps1))
            out.append(p * (1 - self.lr * self.wd) - alpha / max(1.0, _rms(U) / self.d) * U)
        return out


class LazyAdam(_Rule):
    """Adam row by row; a row whose gradient is all zero keeps its ``m``, ``v`` and ``p``."""

    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-8

    def leaf(self, i, p, g):
        t, shape = self.t, p.shape
        p, m, v, g = p.reshape(1, -1) if p.ndim == 0 else p.copy(), self.m[i], self.v[i], g
        m, v, g = (x.reshape(p.shape) for x in (m, v, g))
        for r in range(p.shape[0]):
            if not np.any(g[r] != 0):
                continue
            m[r] = self.b1 * m[r] + (1 - self.b1) * g[r]
            v[r] = self.b2 * v[r] + (1 - self.b2) * sq(g[r])
            p[r] = p[r] - self.lr * (m[r] / bc(self.b1, t)) / (
                np.sqrt(v[r] / bc(self.b2, t)) + self.eps
            )
        self.m[i], self.v[i] = m.reshape(shape), v.reshape(shape)
        return p.reshape(shape)
