"""Independent NumPy float64 implementations of issue 16's third batch: Rprop and ASGD,
written from the papers and the rules torch.optim documents, not from adamx's code.

Each optimizer is a class over a list of leaves: ``step(params, grads) -> new params``,
one call per update, every array float64; ``t`` counts the updates taken.
"""

from __future__ import annotations

import numpy as np


class Rprop:
    """Riedmiller & Braun 1993 as torch.optim.Rprop reads it: a size per element that is
    multiplied by ``eta_plus`` while ``g * g_prev > 0``, by ``eta_minus`` when it is below 0
    (and that element then skips its step and forgets its gradient), clipped to
    ``[min_step_size, max_step_size]``; the step is ``-size * sign(g)``."""

    def __init__(
        self, shapes, lr=1e-2, eta_minus=0.5, eta_plus=1.2, min_step_size=1e-6,
        max_step_size=50.0, maximize=False, reading="torch",
    ):  # fmt: skip
        assert reading == "torch"
        self.size = [np.full(s, float(lr)) for s in shapes]
        self.prev = [np.zeros(s) for s in shapes]
        self.eta = (eta_minus, eta_plus)
        self.bounds = (min_step_size, max_step_size)
        self.maximize = maximize
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            g = -g if self.maximize else g
            new_size, new_prev = self.size[i].copy(), np.array(g, np.float64)
            new_p = np.array(p, np.float64)
            for j in np.ndindex(np.shape(p)):
                c = g[j] * self.prev[i][j]
                factor = self.eta[1] if c > 0 else self.eta[0] if c < 0 else 1.0
                new_size[j] = min(max(self.size[i][j] * factor, self.bounds[0]), self.bounds[1])
                if c < 0:
                    new_prev[j] = 0.0
                new_p[j] = p[j] - new_size[j] * np.sign(new_prev[j])
            self.size[i], self.prev[i] = new_size, new_prev
            out.append(new_p)
        return out


class ASGD:
    """Averaged SGD as torch.optim.ASGD reads it: with ``k`` updates taken,
    ``eta = lr(k) / (1 + lambd lr(k) k)**alpha`` (``lr`` a number or a function of ``k``),
    ``p = p (1 - lambd eta) - eta (g + wd p)``, and the average ``ax`` of the iterates from
    update ``t0 + 2`` on (``ax = p`` before)."""

    def __init__(self, shapes, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, wd=None, maximize=False):
        self.lr, self.lambd, self.alpha, self.t0 = lr, lambd, alpha, t0
        self.wd, self.maximize = wd or 0.0, maximize
        self.ax = [np.zeros(s) for s in shapes]
        self.t = 0

    def step(self, params, grads):
        k = self.t
        self.t += 1
        lr = self.lr(k) if callable(self.lr) else self.lr
        eta = lr / (1 + self.lambd * lr * k) ** self.alpha
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            g = (-g if self.maximize else g) + self.wd * p
            new = p * (1 - self.lambd * eta) - eta * g
            if k - self.t0 <= 1:
                self.ax[i] = new.copy()
            else:
                self.ax[i] = self.ax[i] + (new - self.ax[i]) / (k - self.t0)
            out.append(new)
        return out


class SM3:
    """Anil et al. 2019, SM3-II with momentum, as optax.sm3 writes it. Per leaf with one
    accumulator per index of every axis (a scalar: one): ``nu[j] = c g[j]**2 + b2 min over
    the axes i of acc_i[j_i]`` (``c = 1`` for ``b2 = 1``, else ``1 - b2``), then
    ``acc_i[k] = max of nu over the elements whose i-th index is k``,
    ``d = g / sqrt(nu + eps)`` (0 where nu = 0), ``m = momentum m + (1 - momentum) d``,
    ``p -= lr m``. Written with explicit loops over the elements."""

    def __init__(self, shapes, lr=1e-2, momentum=0.9, b2=1.0, eps=1e-8):
        self.lr, self.momentum, self.b2, self.eps = lr, momentum, b2, eps
        self.acc = [[np.zeros(n) for n in s] if s else [np.zeros(1)] for s in shapes]
        self.m = [np.zeros(s) for s in shapes]
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        c = 1.0 if self.b2 == 1 else 1 - self.b2
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            g = np.asarray(g, np.float64)
            acc = self.acc[i]
            nu, d = np.zeros(g.shape), np.zeros(g.shape)
            for j in np.ndindex(g.shape):
                index = j if j else (0,)
                smallest = min(a[k] for a, k in zip(acc, index))
                nu[j] = c * g[j] ** 2 + self.b2 * smallest
                d[j] = g[j] / np.sqrt(nu[j] + self.eps) if nu[j] > 0 else 0.0
            new = [np.zeros(len(a)) for a in acc]
            for j in np.ndindex(g.shape):
                for axis, k in enumerate(j if j else (0,)):
                    new[axis][k] = max(new[axis][k], nu[j]) if j else nu[j]
            self.acc[i] = new
            self.m[i] = self.momentum * self.m[i] + (1 - self.momentum) * d
            out.append(p - self.lr * self.m[i])
        return out


class Madgrad:
    """Defazio & Jelassi 2022 as optax.contrib.madgrad writes it: with ``k`` updates taken,
    ``lam = (lr(k) + eps) sqrt(k + 1)``, ``s += lam (g + wd p)``, ``v += lam (g + wd p)**2``,
    ``z = x0 - s / (cbrt(v) + eps)``, ``p = momentum p + (1 - momentum) z``."""

    def __init__(self, shapes, lr=1e-2, momentum=0.9, wd=None, eps=1e-6):
        self.lr, self.momentum, self.wd, self.eps = lr, momentum, wd or 0.0, eps
        self.s = [np.zeros(s) for s in shapes]
        self.v = [np.zeros(s) for s in shapes]
        self.x0 = None
        self.t = 0

    def step(self, params, grads):
        if self.x0 is None:
            self.x0 = [np.array(p, np.float64) for p in params]
        lr = self.lr(self.t) if callable(self.lr) else self.lr
        lam = (lr + self.eps) * np.sqrt(self.t + 1)
        self.t += 1
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            g = g + self.wd * p
            self.s[i] = self.s[i] + lam * g
            self.v[i] = self.v[i] + lam * g * g
            z = self.x0[i] - self.s[i] / (np.cbrt(self.v[i]) + self.eps)
            out.append(self.momentum * p + (1 - self.momentum) * z)
        return out


class ACProp:
    """Zhuang et al. 2021 as optax.contrib.acprop writes it: with ``t`` the step number,
    ``u = g / (sqrt(s / (1 - b2**(t-1))) + eps)`` (``g / (1 + eps)`` at ``t = 1``), then
    ``s = b2 s + (1 - b2) (g - m)**2 + eps_root`` with the old ``m``,
    ``m = b1 m + (1 - b1) g``, ``p -= lr (u + wd p)``."""

    def __init__(
        self, shapes, lr=1e-3, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16, wd=None, mask=None
    ):
        assert mask is None
        self.lr, self.b1, self.b2, self.eps, self.eps_root = lr, b1, b2, eps, eps_root
        self.wd = wd or 0.0
        self.m = [np.zeros(s) for s in shapes]
        self.s = [np.zeros(s) for s in shapes]
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        lr = self.lr(self.t - 1) if callable(self.lr) else self.lr
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            if self.t == 1:
                root = 1.0
            else:
                root = np.sqrt(self.s[i] / (1 - self.b2 ** (self.t - 1)))
            u = g / (root + self.eps)
            self.s[i] = self.b2 * self.s[i] + (1 - self.b2) * (g - self.m[i]) ** 2 + self.eps_root
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
            out.append(p - lr * (u + self.wd * p))
        return out
