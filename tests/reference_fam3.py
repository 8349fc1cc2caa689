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
    ``eta = lr(k) / (1 + lambd lr(k) k)**alpha`` (``lr`` a number or a function of ``k``), ``p = p (1 - lambd eta) - eta (g + wd p)``, and
    the average ``ax`` of the iterates from update ``t0 + 2`` on (``ax = p`` before)."""

    def __init__(
        self, shapes, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, wd=None, maximize=False
    ):
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
