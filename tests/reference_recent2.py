"""Independent NumPy float64 implementations of Adam-mini and SOAP, written from the
papers' equations (Zhang et al. 2024, arXiv:2406.16793, Algorithm 1; Vyas et al. 2024,
arXiv:2409.11321, Algorithms 3 and 4), not from adamx's code.

Each optimizer is a class over a list of leaves: ``step(params, grads) -> new params``, one
call per update, every array float64; ``t`` counts the updates taken (a test may set it to
start elsewhere). Weight decay is AdamW's: ``p - lr (d + wd p)``; eps sits outside the
bias-corrected root, as in adamx's Adam.
"""

from __future__ import annotations

import itertools

import numpy as np


class AdamMini:
    """Adam-mini: ``m`` per element, ``v`` per block ``= b2 v + (1 - b2) mean_B(g**2)``.

    ``blocks`` gives, per leaf, the axes that tell the blocks apart (``()``: the whole leaf
    is one block, the default). The blocks are enumerated one by one here (every index
    along those axes), not by a reduction with ``keepdims``.
    """

    def __init__(self, shapes, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, wd=None, blocks=None):
        self.lr, self.b1, self.b2, self.eps, self.wd = lr, b1, b2, eps, wd or 0.0
        self.shapes = [tuple(s) for s in shapes]
        self.blocks = [()] * len(shapes) if blocks is None else [tuple(b) for b in blocks]
        self.m = [np.zeros(s) for s in self.shapes]
        self.v = [dict() for _ in shapes]  # block index -> its second moment
        self.t = 0

    def _index_sets(self, shape, axes):
        """(block id, the index of its elements) for every block of a leaf."""
        ranges = [range(shape[a]) for a in axes]
        for block in itertools.product(*ranges):
            index = [slice(None)] * len(shape)
            for a, i in zip(axes, block):
                index[a] = i
            yield block, tuple(index)

    def step(self, params, grads):
        self.t += 1
        bc1, bc2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
            step = np.zeros_like(p)
            for block, index in self._index_sets(p.shape, self.blocks[i]):
                gb = np.asarray(g[index])
                mean_sq = float(np.mean(gb * gb)) if gb.size else 0.0
                v = self.b2 * self.v[i].get(block, 0.0) + (1 - self.b2) * mean_sq
                self.v[i][block] = v
                step[index] = (self.m[i][index] / bc1) / (np.sqrt(v / bc2) + self.eps)
            out.append(p - self.lr * (step + self.wd * p))
        return out


def _eigenvectors_descending(p):
    values, vectors = np.linalg.eigh(p)
    order = np.argsort(values)[::-1]
    return vectors[:, order]


class Soap:
    """SOAP (Algorithm 3) for each matrix leaf with both sides ``<= max_precond_dim``;
    AdamW for the others.

    Per matrix: ``L, R`` are EMAs (``shampoo_beta``) of ``G G^T``, ``G^T G``, updated
    before the step; the first update computes the bases ``Q_L, Q_R``, the eigenvectors of
    the first ``L, R`` (largest eigenvalue first) and takes no step but the decay;
    the later ones count ``k`` from 1: ``M`` is an EMA of ``G`` in the params' basis, ``V`` an
    EMA of ``(Q_L^T G Q_R)**2``; the step is ``Q_L N Q_R^T`` with
    ``N = (Q_L^T M Q_R)^ / (sqrt(V^) + eps)`` (bias corrections of ``k``). After the step,
    when ``k`` is a multiple of ``precondition_frequency``, each basis is refreshed by
    Algorithm 4: columns sorted by ``diag(Q^T P Q)`` (largest first, ``V`` permuted with
    them), then one power-iteration step ``Q = QR(P Q)``.
    """

    def __init__(
        self, shapes, lr=3e-3, b1=0.95, b2=0.95, shampoo_beta=None, eps=1e-8, wd=None,
        precondition_frequency=10, max_precond_dim=10000,
    ):  # fmt: skip
        self.lr, self.b1, self.b2, self.eps, self.wd = lr, b1, b2, eps, wd or 0.0
        self.sb = b2 if shampoo_beta is None else shampoo_beta
        self.f = precondition_frequency
        self.matrix = [
            len(s) == 2 and min(s) > 0 and max(s) <= max_precond_dim for s in map(tuple, shapes)
        ]
        self.m = [np.zeros(s) for s in shapes]
        self.v = [np.zeros(s) for s in shapes]
        self.left = [np.zeros((s[0], s[0])) if k else None for s, k in zip(shapes, self.matrix)]
        self.right = [np.zeros((s[1], s[1])) if k else None for s, k in zip(shapes, self.matrix)]
        self.ql = [None] * len(shapes)
        self.qr = [None] * len(shapes)
        self.t = 0  # updates taken (the Adam leaves' step count)
        self.k = 0  # SOAP's Adam steps: the first update sets up the bases only

    def step(self, params, grads):
        self.t += 1
        first = any(self.matrix) and self.ql[self.matrix.index(True)] is None
        if not first:
            self.k += 1
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            if not self.matrix[i]:  # AdamW, its own step count t
                bc1, bc2 = 1 - self.b1**self.t, 1 - self.b2**self.t
                self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
                self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * g * g
                d = (self.m[i] / bc1) / (np.sqrt(self.v[i] / bc2) + self.eps)
                out.append(p - self.lr * (d + self.wd * p))
                continue
            self.left[i] = self.sb * self.left[i] + (1 - self.sb) * (g @ g.T)
            self.right[i] = self.sb * self.right[i] + (1 - self.sb) * (g.T @ g)
            if first:  # the bases only: no moments, the step is the decay alone
                self.ql[i] = _eigenvectors_descending(self.left[i])
                self.qr[i] = _eigenvectors_descending(self.right[i])
                out.append(p - self.lr * self.wd * p)
                continue
            bc1, bc2 = 1 - self.b1**self.k, 1 - self.b2**self.k
            ql, qr = self.ql[i], self.qr[i]
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
            g_rot = ql.T @ g @ qr
            m_rot = ql.T @ self.m[i] @ qr
            self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * g_rot**2
            n_rot = (m_rot / bc1) / (np.sqrt(self.v[i] / bc2) + self.eps)
            out.append(p - self.lr * (ql @ n_rot @ qr.T + self.wd * p))
            if self.k % self.f == 0:
                self.ql[i], self.v[i] = self._power_step(self.left[i], ql, self.v[i], rows=True)
                self.qr[i], self.v[i] = self._power_step(self.right[i], qr, self.v[i], rows=False)
        return out

    @staticmethod
    def _power_step(p, q, v, rows):
        estimates = np.array([q[:, j] @ p @ q[:, j] for j in range(q.shape[1])])
        order = np.argsort(-estimates, kind="stable")
        q = q[:, order]
        v = v[order, :] if rows else v[:, order]
        q_new, _ = np.linalg.qr(p @ q)
        return q_new, v
