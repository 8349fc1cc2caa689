"""Independent NumPy references of SGD, AdaGrad, RMSProp and AdaDelta, read as PyTorch does.

Written from ``shared/REFERENCE.md`` and the single-tensor code paths of ``torch.optim``;
knows nothing of adamx. Each rule is a frozen dataclass with the two methods of
``reference.Rule`` (``init(params)`` and ``step(params, grads, state, t)``, ``t`` = 1 on the
first update), so ``reference.run_numpy`` drives it. Host scalars (the learning rate,
``1 - alpha``, AdaGrad's ``clr``) are Python floats; tensor maths runs in ``dtype``
(float64) in PyTorch's order of operations.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np
from reference import LearningRate, learning_rate_at


def _s(x: float, dtype) -> np.ndarray:
    return np.asarray(x, dtype)


def _prepare(rule, params, grads):
    """PyTorch's common prologue: ``g = -g`` (maximize), then ``g = g + wd * p``."""
    dt = rule.dtype
    params = [np.asarray(p, dt) for p in params]
    out = []
    for p, g in zip(params, grads):
        g = np.asarray(g, dt)
        if rule.maximize:
            g = -g
        if rule.weight_decay != 0:
            g = g + _s(rule.weight_decay, dt) * p
        out.append(g)
    return params, out


class BufferState(NamedTuple):
    buf: list[np.ndarray]


@dataclasses.dataclass(frozen=True)
class SGD:
    """``torch.optim.SGD``::

    buf = g (t = 1);  buf = mu*buf + (1-dampening)*g (t > 1)      (if mu != 0)
    d = g + mu*buf (nesterov) | buf (momentum) | g (mu = 0);  p = p - lr*d
    """

    lr: LearningRate = 1e-3
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    maximize: bool = False
    dtype: Any = np.float64

    def init(self, params) -> BufferState:
        return BufferState(buf=[np.zeros(np.shape(p), self.dtype) for p in params])

    def step(self, params, grads, state: BufferState, t: int):
        dt, mu = self.dtype, self.momentum
        lr = learning_rate_at(self.lr, t)
        params, grads = _prepare(self, params, grads)
        new_p, new_buf = [], []
        for p, g, buf in zip(params, grads, state.buf):
            if mu != 0:
                if t == 1:
                    buf = g.copy()
                else:
                    buf = buf * _s(mu, dt) + _s(1.0 - self.dampening, dt) * g
                d = g + _s(mu, dt) * buf if self.nesterov else buf
            else:
                d = g
            new_p.append(p - _s(lr, dt) * d)
            new_buf.append(buf)
        return new_p, BufferState(buf=new_buf)


class SumState(NamedTuple):
    s: list[np.ndarray]


@dataclasses.dataclass(frozen=True)
class Adagrad:
    """``torch.optim.Adagrad``::

    clr = lr / (1 + (t-1)*lr_decay);  s = s + g*g;  p = p - clr * g / (sqrt(s) + eps)

    ``eps_in_sqrt`` gives optax's / Keras' ``g / sqrt(s + eps)``.
    """

    lr: LearningRate = 1e-2
    lr_decay: float = 0.0
    initial_accumulator_value: float = 0.0
    eps: float = 1e-10
    eps_in_sqrt: bool = False
    weight_decay: float = 0.0
    maximize: bool = False
    dtype: Any = np.float64

    def init(self, params) -> SumState:
        return SumState(
            s=[np.full(np.shape(p), self.initial_accumulator_value, self.dtype) for p in params]
        )

    def step(self, params, grads, state: SumState, t: int):
        dt = self.dtype
        clr = learning_rate_at(self.lr, t) / (1 + (t - 1) * self.lr_decay)
        params, grads = _prepare(self, params, grads)
        new_p, new_s = [], []
        for p, g, s in zip(params, grads, state.s):
            s = s + g * g
            if self.eps_in_sqrt:
                std = np.sqrt(s + _s(self.eps, dt))
            else:
                std = np.sqrt(s) + _s(self.eps, dt)
            new_p.append(p - _s(clr, dt) * (g / std))
            new_s.append(s)
        return new_p, SumState(s=new_s)


class RMSpropState(NamedTuple):
    sq: list[np.ndarray]
    ga: list[np.ndarray]
    buf: list[np.ndarray]


@dataclasses.dataclass(frozen=True)
class RMSprop:
    """``torch.optim.RMSprop`` (``alpha`` is adamx's ``decay``)::

    sq = alpha*sq + (1-alpha)*g*g
    ga = ga + (1-alpha)*(g - ga);  avg = sqrt(sq - ga*ga) + eps      (centered)
    avg = sqrt(sq) + eps                                            (otherwise)
    buf = mu*buf + g/avg;  p = p - lr*buf     (mu > 0)    p = p - lr*g/avg  (mu = 0)

    ``eps_in_sqrt`` gives optax's ``sqrt(sq [- ga*ga] + eps)``.
    """

    lr: LearningRate = 1e-2
    alpha: float = 0.99
    eps: float = 1e-8
    centered: bool = False
    momentum: float = 0.0
    eps_in_sqrt: bool = False
    weight_decay: float = 0.0
    maximize: bool = False
    dtype: Any = np.float64

    def init(self, params) -> RMSpropState:
        z = [np.zeros(np.shape(p), self.dtype) for p in params]
        return RMSpropState(sq=z, ga=[x.copy() for x in z], buf=[x.copy() for x in z])

    def step(self, params, grads, state: RMSpropState, t: int):
        dt, a, e = self.dtype, self.alpha, self.eps
        lr = learning_rate_at(self.lr, t)
        params, grads = _prepare(self, params, grads)
        new_p, new_sq, new_ga, new_buf = [], [], [], []
        for p, g, sq, ga, buf in zip(params, grads, state.sq, state.ga, state.buf):
            sq = sq * _s(a, dt) + _s(1.0 - a, dt) * (g * g)
            var = sq
            if self.centered:
                ga = ga + _s(1.0 - a, dt) * (g - ga)
                var = sq - ga * ga
            avg = np.sqrt(var + _s(e, dt)) if self.eps_in_sqrt else np.sqrt(var) + _s(e, dt)
            if self.momentum > 0:
                buf = buf * _s(self.momentum, dt) + g / avg
                p = p - _s(lr, dt) * buf
            else:
                p = p - _s(lr, dt) * (g / avg)
            new_p.append(p)
            new_sq.append(sq)
            new_ga.append(ga)
            new_buf.append(buf)
        return new_p, RMSpropState(sq=new_sq, ga=new_ga, buf=new_buf)


class AdadeltaState(NamedTuple):
    sq: list[np.ndarray]
    acc: list[np.ndarray]


@dataclasses.dataclass(frozen=True)
class Adadelta:
    """``torch.optim.Adadelta``::

    sq = rho*sq + (1-rho)*g*g;  delta = sqrt(acc + eps) / sqrt(sq + eps) * g
    acc = rho*acc + (1-rho)*delta*delta;  p = p - lr*delta
    """

    lr: LearningRate = 1.0
    rho: float = 0.9
    eps: float = 1e-6
    weight_decay: float = 0.0
    maximize: bool = False
    dtype: Any = np.float64

    def init(self, params) -> AdadeltaState:
        z = [np.zeros(np.shape(p), self.dtype) for p in params]
        return AdadeltaState(sq=z, acc=[x.copy() for x in z])

    def step(self, params, grads, state: AdadeltaState, t: int):
        dt, rho, e = self.dtype, self.rho, self.eps
        lr = learning_rate_at(self.lr, t)
        params, grads = _prepare(self, params, grads)
        new_p, new_sq, new_acc = [], [], []
        for p, g, sq, acc in zip(params, grads, state.sq, state.acc):
            sq = sq * _s(rho, dt) + _s(1.0 - rho, dt) * (g * g)
            delta = np.sqrt(acc + _s(e, dt)) / np.sqrt(sq + _s(e, dt)) * g
            acc = acc * _s(rho, dt) + _s(1.0 - rho, dt) * (delta * delta)
            new_p.append(p - _s(lr, dt) * delta)
            new_sq.append(sq)
            new_acc.append(acc)
        return new_p, AdadeltaState(sq=new_sq, acc=new_acc)
