"""Independent NumPy float64 implementations of Adan, AdEMAMix (with the paper's warm-up of
``alpha`` and ``beta_3``), Simplified AdEMAMix and Muon, written from the papers' formulas
(and ``shared/REFERENCE.md``), not from adamx's code.

Each optimizer is a class over a list of leaves: ``step(params, grads) -> new params``,
one call per update, every array float64.
"""

from __future__ import annotations

import math

import numpy as np


class Adan:
    """Xie et al. 2022, Algorithm 1 with optax's conventions (b's weight the old average,
    bias-corrected averages, d = 0 on the first step, decay -lr*wd*p); with ``proximal``
    the paper's decay, ``p = (p - lr * step) / (1 + lr * wd)``."""

    def __init__(
        self, shapes, lr, b1=0.98, b2=0.92, b3=0.99, eps=1e-8, eps_root=1e-8, wd=0.0,
        proximal=False,
    ):  # fmt: skip
        self.lr, self.b, self.eps, self.eps_root, self.wd = lr, (b1, b2, b3), eps, eps_root, wd
        self.proximal = proximal
        self.m = [np.zeros(s) for s in shapes]
        self.v = [np.zeros(s) for s in shapes]
        self.n = [np.zeros(s) for s in shapes]
        self.prev = [np.zeros(s) for s in shapes]
        self.t = 0

    def step(self, params, grads, lr=None):
        lr = self.lr if lr is None else lr  # a schedule's value at this step
        self.t += 1
        b1, b2, b3 = self.b
        t, out = self.t, []
        for i, (p, g) in enumerate(zip(params, grads)):
            d = g - self.prev[i] if t > 1 else np.zeros_like(g)
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * d
            self.n[i] = b3 * self.n[i] + (1 - b3) * (g + (1 - b2) * d) ** 2
            mix = self.m[i] / (1 - b1**t) + (1 - b2) * self.v[i] / (1 - b2**t)
            denom = np.sqrt(self.n[i] / (1 - b3**t) + self.eps_root) + self.eps
            if self.proximal:  # the authors' default: p = (p - lr * step) / (1 + lr * wd)
                out.append((p - lr * mix / denom) / (1 + lr * self.wd))
            else:
                out.append(p - lr * (mix / denom + self.wd * p))
        self.prev = [np.array(g) for g in grads]
        return out


def ademamix_alpha(t, alpha, warmup):
    """The paper's alpha scheduler: linear from 0 to ``alpha`` over ``warmup`` steps."""
    return alpha * min(t / warmup, 1.0)


def ademamix_beta3(t, b3, b1, warmup):
    """The paper's beta_3 scheduler: from ``b1`` to ``b3``, half-life linear in ``t``."""
    u = min(t / warmup, 1.0)
    lb1, lb3 = math.log(b1), math.log(b3)
    return min(math.exp(lb1 * lb3 / ((1 - u) * lb3 + u * lb1)), b3)


class AdEMAMix:
    """Pagliardini, Ablin & Grangier 2024, Algorithm 1 (decay -lr*wd*p); with ``warmup``
    the schedulers above, read at the step ``t`` (1 on the first update)."""

    def __init__(
        self, shapes, lr, b1=0.9, b2=0.999, b3=0.9999, alpha=5.0, eps=1e-8, wd=0.0, warmup=None
    ):
        self.lr, self.b1, self.b2, self.b3, self.alpha = lr, b1, b2, b3, alpha
        self.eps, self.wd, self.warmup = eps, wd, warmup
        self.m1 = [np.zeros(s) for s in shapes]
        self.m2 = [np.zeros(s) for s in shapes]
        self.v = [np.zeros(s) for s in shapes]
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        t, b1, b2 = self.t, self.b1, self.b2
        if self.warmup is None:
            alpha, b3 = self.alpha, self.b3
        else:
            alpha = ademamix_alpha(t, self.alpha, self.warmup)
            b3 = ademamix_beta3(t, self.b3, b1, self.warmup)
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            self.m1[i] = b1 * self.m1[i] + (1 - b1) * g
            self.m2[i] = b3 * self.m2[i] + (1 - b3) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            num = self.m1[i] / (1 - b1**t) + alpha * self.m2[i]
            denom = np.sqrt(self.v[i] / (1 - b2**t)) + self.eps
            out.append(p - self.lr * (num / denom + self.wd * p))
        return out


class SimplifiedAdEMAMix:
    """Morwani et al. 2025: m = b1 m + g (undamped), v an EMA of g^2 bias-corrected,
    step (m + alpha g) / (sqrt(v^) + eps), decay -lr*wd*p."""

    def __init__(self, shapes, lr, b1=0.99, b2=0.95, alpha=0.0, eps=1e-8, wd=0.0):
        self.lr, self.b1, self.b2, self.alpha, self.eps, self.wd = lr, b1, b2, alpha, eps, wd
        self.m = [np.zeros(s) for s in shapes]
        self.v = [np.zeros(s) for s in shapes]
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            self.m[i] = self.b1 * self.m[i] + g
            self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * g * g
            denom = np.sqrt(self.v[i] / (1 - self.b2**self.t)) + self.eps
            out.append(p - self.lr * ((self.m[i] + self.alpha * g) / denom + self.wd * p))
        return out


def newton_schulz(x, coeffs=(3.4445, -4.775, 2.0315), steps=5, eps=1e-7):
    """Jordan's quintic iteration as torch.optim.Muon writes it, in float64."""
    y = x.T if x.shape[0] > x.shape[1] else x
    norm = math.sqrt(float(np.sum(y * y)))
    y = y / max(norm, eps) if norm > 0 else y
    a, b, c = coeffs
    for _ in range(steps):
        gram = y @ y.T
        y = a * y + (b * gram + c * gram @ gram) @ y
    return y.T if x.shape[0] > x.shape[1] else y


class Muon:
    """torch.optim.Muon's rule (Jordan et al. 2024) for the 2-D leaves, in float64; AdamW
    (Loshchilov & Hutter 2019) for the others, as the recipe partitions them."""

    def __init__(
        self, shapes, lr=1e-3, wd=0.1, beta=0.95, nesterov=True, eps=1e-7, ns_steps=5,
        ns_coeffs=(3.4445, -4.775, 2.0315), adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8,
        adam_weight_decay=0.0, matrices=None, **ignored,
    ):  # fmt: skip
        del ignored  # ns_dtype: the reference runs in float64
        self.lr, self.wd, self.beta, self.nesterov, self.eps = lr, wd, beta, nesterov, eps
        self.ns = (tuple(ns_coeffs), ns_steps)
        self.adam = (adam_b1, adam_b2, adam_eps, adam_weight_decay)
        self.matrices = matrices or [len(s) == 2 for s in shapes]
        self.m = [np.zeros(s) for s in shapes]
        self.v = [np.zeros(s) for s in shapes]
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        t, out = self.t, []
        b1, b2, adam_eps, adam_wd = self.adam
        for i, (p, g) in enumerate(zip(params, grads)):
            if self.matrices[i]:
                self.m[i] = self.beta * self.m[i] + (1 - self.beta) * g
                d = self.beta * self.m[i] + (1 - self.beta) * g if self.nesterov else self.m[i]
                o = newton_schulz(d, *self.ns, eps=self.eps)
                rows, cols = p.shape
                scale = math.sqrt(max(1.0, rows / cols)) if cols else 1.0
                out.append(p - self.lr * self.wd * p - self.lr * scale * o)
            else:
                self.m[i] = b1 * self.m[i] + (1 - b1) * g
                self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
                denom = np.sqrt(self.v[i] / (1 - b2**t)) + adam_eps
                step = self.m[i] / (1 - b1**t) / denom
                out.append(p - self.lr * (step + adam_wd * p))
        return out
