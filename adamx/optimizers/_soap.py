"""SOAP: Adam in the eigenbasis of Shampoo's preconditioner for the matrices, Adam for the
other leaves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    Moments,
    PyTree,
    ScalarOrSchedule,
    abstract_or_array,
    as_scalar,
    check_decay,
    check_dtype,
    check_learning_rate,
    check_range,
    check_trees_match,
    compute_dtype,
    cond,
    map_unzip,
    one_minus,
    safe_increment,
    state_dtype,
    transformation,
)
from adamx.blocks._correction import correct_bias
from adamx.blocks._decay import decay_block
from adamx.blocks._moments import ema, ema_square, scale_by_moments, second_moment_dtype
from adamx.blocks._normalize import normalize
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._guard import recipe


class SoapState(NamedTuple):
    """State of ``scale_by_soap`` (the block of ``soap``'s matrices).

    Attributes:
      count: int32 number of updates taken so far (saturates at the int32 maximum).
      mu: the first moment ``M``, in the params' basis, like the params (``mu_dtype``).
      nu: the second moment ``V`` of the rotated gradients, like the params.
      left: ``L``, the average of ``G G^T``, ``(m, m)`` per ``(m, n)`` leaf.
      right: ``R``, the average of ``G^T G``, ``(n, n)``.
      q_left: ``Q_L``, the eigenbasis of ``L`` (columns), zeros before the first update.
      q_right: ``Q_R``, the eigenbasis of ``R``.
      read_out: the state of the read-out run in the eigenbasis.
    """

    count: jax.Array  # type: ignore[assignment]
    mu: PyTree
    nu: PyTree
    left: PyTree
    right: PyTree
    q_left: PyTree
    q_right: PyTree
    read_out: Any


def _eigenbasis(p: jax.Array) -> jax.Array:
    """The eigenvectors of a symmetric ``p``, by decreasing eigenvalue."""
    _, vectors = jnp.linalg.eigh(p)
    return vectors[:, ::-1]


def _refresh(p: jax.Array, q: jax.Array, v: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """One power-iteration step of ``q`` towards the eigenvectors of ``p``: the columns
    sorted by their estimated eigenvalues ``diag(q^T p q)``, largest first (``v``'s
    entries along ``axis`` follow their columns), then ``q = QR(p q)``."""
    estimate = jnp.einsum("ij,ik,kj->j", q, p, q)
    order = jnp.argsort(-estimate)
    q = q[:, order]
    v = jnp.take(v, order, axis=axis)
    refreshed, _ = jnp.linalg.qr(p @ q)
    return _finite_or(refreshed, q), v


def _finite_or(q: jax.Array, fallback: jax.Array) -> jax.Array:
    """``q``, or ``fallback`` where ``q`` has a non-finite entry (a preconditioner whose
    entries overflowed has no eigenbasis to read)."""
    return jnp.where(jnp.all(jnp.isfinite(q)), q, fallback)


def _weighted_outer(g: jax.Array, weight) -> jax.Array:
    """``weight * g g^T`` without ``inf - inf``: ``g`` is scaled by a power of two ``s``
    near ``max |g|`` (exact) before the product, and the weight and ``s**2`` meet the
    product one ``s`` at a time, so an overflowing entry is ``+-inf``, never NaN."""
    top = jnp.max(jnp.abs(g), initial=0.0)
    s = jnp.where(top > 0, jnp.exp2(jnp.floor(jnp.log2(jnp.where(top > 0, top, 1)))), 1)
    s = jnp.where(jnp.isfinite(s), s, 1).astype(g.dtype)
    scaled = g / s
    return (as_scalar(weight, g.dtype) * s) * (s * (scaled @ scaled.T))


def _check_frequency(value) -> None:
    """An int ``>= 1``, or an integer array (``optax.inject_hyperparams`` passes one)."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_int_array = isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jnp.integer)
    if not (is_int or is_int_array) or (is_int and value < 1):
        raise ValueError(
            f"`precondition_frequency` must be an int >= 1, got precondition_frequency={value!r}."
        )


def scale_by_soap(
    b1: float = 0.95,
    b2: float = 0.95,
    shampoo_beta: float | None = None,
    precondition_frequency: int = 10,
    *,
    read_out: optax.GradientTransformation | None = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    """SOAP's moments of each matrix: Adam's, with the second moment in the eigenbasis of
    Shampoo's preconditioner; the read-out (Adam's) runs in that basis.

    Per ``(m, n)`` leaf, with ``t`` the step number and ``sb = shampoo_beta``::

        L = sb * L + (1 - sb) * G G^T            R = sb * R + (1 - sb) * G^T G
        first update: Q_L, Q_R = eigenvectors of L, R (eigh, decreasing eigenvalues);
                      the update is 0, M, V and t stay at 0
        M  = b1 * M + (1 - b1) * G               (in the params' basis)
        G' = Q_L^T G Q_R                         M' = Q_L^T M Q_R
        V  = b2 * V + (1 - b2) * G'**2           (in the eigenbasis)
        N' = read_out(M', V, t)                  (Adam: M'^ / (sqrt(V^) + eps))
        N  = Q_L N' Q_R^T
        t % precondition_frequency == 0, for Q = Q_L and Q_R, P = L and R:
            Q = Q sorted by diag(Q^T P Q), largest first (V's rows / columns follow)
            Q = QR(P Q)                          (one power-iteration step)

    ``M`` stays in the params' basis and is projected at every step; ``V`` stays in the
    eigenbasis it was built in, its entries following their columns when they are
    re-sorted (the paper's Algorithm 3 and 4). The first update moves nothing, as in the
    authors' code: in the eigenbasis of its own ``G G^T`` a gradient is diagonal, and its
    off-diagonal rounding noise (``~1e-7 |G|`` in float32) over ``sqrt(V) + eps`` would
    give steps of order ``lr``. ``L``, ``R`` and the bases are kept and
    computed (``eigh``, ``qr``, the products) in the leaf's compute dtype, float32 for
    bfloat16 and float16 params (float64 for float64); ``M`` is stored in ``mu_dtype``
    (default the params'), ``V`` as Adam's ``v``. The first update is told by the bases
    being zero, not by the step count. ``G G^T`` is formed from ``G`` scaled by a power
    of two, so that entries past the dtype's range are ``+-inf``, not NaN; a basis is
    replaced only by a finite one (the identity before the first), so gradients whose
    squares overflow keep finite steps.

    Args:
      b1: decay of ``M``, ``[0, 1)``. Default 0.95 (the paper's).
      b2: decay of ``V``, ``[0, 1)``. Default 0.95.
      shampoo_beta: decay of ``L`` and ``R``, ``[0, 1)``; ``None``: ``b2``.
      precondition_frequency: refresh the bases every this many steps, an int ``>= 1``.
        Default 10.
      read_out: a transformation of the rotated :class:`adamx.Moments` record (its
        ``grad`` the rotated gradient, in the compute dtype) to a rotated direction.
        Default ``optax.chain(correct_bias(b1, None), normalize(1e-8, b2=b2))``.
      mu_dtype: the dtype ``M`` is stored in, or ``None`` for the params'.

    Returns:
      An ``optax.GradientTransformation`` of 2-D leaves whose state is :class:`SoapState`.

    References:
      Vyas, Morwani, Zhao, Kwun, Shapira, Brandfonbrener, Janson & Kakade, "SOAP:
      Improving and Stabilizing Shampoo using Adam", 2024, https://arxiv.org/abs/2409.11321
    """
    check_decay("b1", b1)
    check_decay("b2", b2)
    sb = b2 if shampoo_beta is None else shampoo_beta
    check_decay("shampoo_beta", sb)
    _check_frequency(precondition_frequency)
    check_dtype("mu_dtype", mu_dtype)
    if read_out is None:
        read_out = optax.chain(correct_bias(b1, None), normalize(1e-8, b2=b2))

    def init(params):
        def square(p, side):
            p = abstract_or_array(p)
            n = p.shape[side]
            return jnp.zeros((n, n), compute_dtype(p.dtype))

        def like(p, dtype):
            p = abstract_or_array(p)
            return jnp.zeros_like(p, dtype=dtype(p.dtype))

        for p in jax.tree.leaves(params):
            if len(jnp.shape(p)) != 2:
                raise ValueError(
                    "scale_by_soap (adamx.soap's matrix block) takes matrices, got an array "
                    f"of shape {jnp.shape(p)}; give soap's other leaves to Adam."
                )
        rotated = jax.tree.map(
            lambda p: jax.ShapeDtypeStruct(jnp.shape(p), compute_dtype(jnp.result_type(p))), params
        )
        return SoapState(
            count=jnp.zeros([], jnp.int32),
            mu=jax.tree.map(lambda p: like(p, lambda d: state_dtype(mu_dtype, d)), params),
            nu=jax.tree.map(lambda p: like(p, second_moment_dtype), params),
            left=jax.tree.map(lambda p: square(p, 0), params),
            right=jax.tree.map(lambda p: square(p, 1), params),
            q_left=jax.tree.map(lambda p: square(p, 0), params),
            q_right=jax.tree.map(lambda p: square(p, 1), params),
            read_out=read_out.init(rotated),
        )

    def update(grads, state, params=None):
        del params
        check_trees_match(grads, state.mu, "grads", "the optimizer state", dtypes=mu_dtype is None)
        # the first update only sets up L, R and the bases: the step count (Adam's t) and
        # the moments start at the second
        zeros = [jnp.all(q == 0) for q in jax.tree.leaves(state.q_left)]
        fresh = jnp.all(jnp.stack(zeros)) if zeros else jnp.asarray(True)
        count = jnp.where(fresh, state.count, safe_increment(state.count))
        refresh = ~fresh & (jnp.mod(count, jnp.asarray(precondition_frequency, jnp.int32)) == 0)

        def moments(g, m, v, left, right, q_left, q_right):
            pd = left.dtype
            g = jnp.asarray(g).astype(pd)
            left = as_scalar(sb, pd) * left + _weighted_outer(g, one_minus(sb))
            right = as_scalar(sb, pd) * right + _weighted_outer(g.T, one_minus(sb))
            eye_l, eye_r = jnp.eye(left.shape[0], dtype=pd), jnp.eye(right.shape[0], dtype=pd)
            q_left, q_right = cond(
                fresh,
                lambda: (
                    _finite_or(_eigenbasis(left), eye_l),
                    _finite_or(_eigenbasis(right), eye_r),
                ),
                lambda: (q_left, q_right),
            )
            m_new = ema(m, g.astype(compute_dtype(m.dtype)), one_minus(b1))
            rotated_g = q_left.T @ g @ q_right
            rotated_m = q_left.T @ m_new.astype(pd) @ q_right
            v_new = ema_square(v, rotated_g.astype(compute_dtype(v.dtype)), b2)
            return m_new, v_new, rotated_g, rotated_m, left, right, q_left, q_right

        out = map_unzip(
            moments,
            8,
            grads,
            state.mu,
            state.nu,
            state.left,
            state.right,
            state.q_left,
            state.q_right,
        )
        mu, nu, rotated_g, rotated_m, left, right, q_left, q_right = out
        # count >= 1 keeps the (discarded) read-out of the first update free of 0 / 0
        record = Moments(grad=rotated_g, mu=rotated_m, nu=nu, count=jnp.maximum(count, 1))
        rotated_d, read_out_state = read_out.update(record, state.read_out)

        def back(g, d, q_left, q_right):
            d = q_left @ d.astype(q_left.dtype) @ q_right.T
            return jnp.where(fresh, jnp.zeros_like(d), d).astype(jnp.result_type(g))

        updates = jax.tree.map(back, grads, rotated_d, q_left, q_right)

        def renew(v, left, right, q_left, q_right):
            def run():
                ql, v1 = _refresh(left, q_left, v, 0)
                qr, v2 = _refresh(right, q_right, v1, 1)
                return ql, qr, v2

            return cond(refresh, run, lambda: (q_left, q_right, v))

        q_left, q_right, nu = map_unzip(renew, 3, nu, left, right, q_left, q_right)

        def store(new, old):
            return jnp.where(fresh, old, new.astype(old.dtype))

        new_state = SoapState(
            count=count,
            mu=jax.tree.map(store, mu, state.mu),
            nu=jax.tree.map(store, nu, state.nu),
            left=left,
            right=right,
            q_left=q_left,
            q_right=q_right,
            read_out=read_out_state,
        )
        return updates, new_state

    return transformation(init, update)


def _labels(max_precond_dim: int):
    def labels(tree):
        def label(x):
            shape = jnp.shape(x)
            ok = len(shape) == 2 and 0 < min(shape) and max(shape) <= max_precond_dim
            return "soap" if ok else "adam"

        return jax.tree.map(label, tree)

    return labels


@recipe
def soap(
    learning_rate: ScalarOrSchedule = 3e-3,
    b1: float = 0.95,
    b2: float = 0.95,
    shampoo_beta: float | None = None,
    eps: float = 1e-8,
    weight_decay: float | None = 0.01,
    precondition_frequency: int = 10,
    *,
    max_precond_dim: int | None = None,
    weight_decay_mask: Any | Callable[[Any], Any] | None = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    """SOAP: Adam run in the eigenbasis of Shampoo's preconditioner for each matrix; Adam
    for every other leaf.

    Per matrix leaf ``(m, n)`` (both sides at most ``max_precond_dim``), with ``t`` the
    step number (``scale_by_soap`` in ``adamx/optimizers/_soap.py`` has the whole rule)::

        L = sb L + (1 - sb) G G^T,   R = sb R + (1 - sb) G^T G      (sb = shampoo_beta)
        M = b1 M + (1 - b1) G,       V = b2 V + (1 - b2) (Q_L^T G Q_R)**2
        p = p - lr * (Q_L (M'^ / (sqrt(V^) + eps)) Q_R^T + wd * p)
                                     (M' = Q_L^T M Q_R; ^: bias-corrected)

    ``Q_L``, ``Q_R`` come from ``eigh`` of ``L``, ``R`` at the first update, whose only
    step for a matrix is the decay (``t`` counts from the second; the other leaves take
    Adam's step from the first), and
    are refreshed every ``precondition_frequency`` steps by one power-iteration step with a QR
    decomposition (``Q = QR(P Q)``, columns first sorted by their eigenvalue estimates,
    ``V`` following them). Vectors, scalars, higher-rank leaves, empty matrices and
    matrices with a side above ``max_precond_dim`` take AdamW's step with the same
    ``b1``, ``b2``, ``eps``, ``weight_decay``. The recipe is an ``optax.partition``::

        "soap": scale_by_soap(b1, b2, shampoo_beta, precondition_frequency,
                              read_out=chain(correct_bias(b1, None), normalize(eps, b2=b2)))
                add_decayed_weights(weight_decay, weight_decay_mask)
                scale_by_learning_rate(learning_rate)
        "adam": AdamW's chain with the same numbers

    Dtypes: ``L``, ``R``, ``Q_L``, ``Q_R`` and the rotations are float32 for bfloat16,
    float16 and float32 params (float64 for float64): ``eigh`` and ``qr`` never run below
    float32. ``M`` is stored in ``mu_dtype`` (default the params'), ``V`` as Adam's ``v``
    (bfloat16 for bfloat16 params, float32 for float16). A matrix ``(m, n)`` keeps
    ``2 m n + m**2 + n**2`` state numbers ``L, R, Q_L, Q_R`` counted: about 4x Adam's
    ``v`` for a square matrix.

    Args:
      learning_rate: a number ``>= 0`` or a schedule. Default 3e-3 (the authors' code).
      b1: decay of ``M``, ``[0, 1)``. Default 0.95.
      b2: decay of ``V``, ``[0, 1)``. Default 0.95.
      shampoo_beta: decay of ``L`` and ``R``, ``[0, 1)``; ``None`` (default): ``b2``.
      eps: added to the root, ``>= 0``. Default 1e-8.
      weight_decay: decoupled decay, ``>= 0``; ``None`` or the Python 0 leave the block
        out. Default 0.01 (the authors' code).
      precondition_frequency: steps between refreshes of the bases, an int ``>= 1``.
        Default 10.
      max_precond_dim: matrices with a side longer than this take Adam's step; a static
        int (under ``optax.inject_hyperparams``, name it in ``static_args``). ``None``
        (default): 10000, the authors'.
      weight_decay_mask: a tree of booleans or a function of the params; only ``True``
        leaves are decayed. Default ``None`` (all).
      mu_dtype: the dtype ``M`` (and Adam's ``m``) is stored in, or ``None``.

    Returns:
      An ``optax.GradientTransformation`` (needs ``params`` in ``update`` when decaying);
      its state is an ``optax.PartitionState`` with one inner state per group.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> params = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}
      >>> opt = adamx.soap(learning_rate=0.1, weight_decay=None)
      >>> grads = {"w": jnp.asarray([[3.0, 0.0], [0.0, 1.0]]), "b": jnp.asarray([1.0, -1.0])}
      >>> updates, state = opt.update(grads, opt.init(params), params)  # sets up the bases
      >>> float(jnp.abs(updates["w"]).max()), [round(float(u), 3) for u in updates["b"]]
      (0.0, [-0.1, 0.1])
      >>> updates, state = opt.update(grads, state, params)  # Adam's first step, rotated
      >>> [round(float(u), 3) for u in jnp.diag(updates["w"])]
      [-0.1, -0.1]

    .. warning::
       The authors' PyTorch code puts eps on the raw root (``lr sqrt(bc2) / bc1`` as
       step size), decays ``p`` after the step and skips the first step for every leaf;
       here eps is outside the bias-corrected root, the decay is AdamW's and the leaves
       that take Adam's step move from the first update. Its ``merge_dims`` and
       ``precondition_1d`` options and one-sided preconditioning of long matrices are
       not provided. Under sharding, each preconditioned matrix is gathered (``L``,
       ``R``, ``eigh`` and ``qr`` need the whole matrix). No anchor in optax or
       torch.optim: tested against a NumPy reference of the paper's Algorithm.

    References:
      Vyas, Morwani, Zhao, Kwun, Shapira, Brandfonbrener, Janson & Kakade, "SOAP:
      Improving and Stabilizing Shampoo using Adam", 2024, https://arxiv.org/abs/2409.11321
    """
    check_learning_rate(learning_rate)
    check_range("eps", eps, low=0.0)
    if max_precond_dim is None:
        max_precond_dim = 10000
    if isinstance(max_precond_dim, bool) or not isinstance(max_precond_dim, int):
        raise ValueError(
            f"`max_precond_dim` must be a Python int >= 1 (it picks the leaves at build "
            f"time; under `optax.inject_hyperparams` pass "
            f'static_args=("max_precond_dim",)), got max_precond_dim={max_precond_dim!r}.'
        )
    check_range("max_precond_dim", max_precond_dim, low=1)
    matrices = optax.chain(
        scale_by_soap(
            b1,
            b2,
            shampoo_beta,
            precondition_frequency,
            read_out=optax.chain(correct_bias(b1, None), normalize(eps, b2=b2)),
            mu_dtype=mu_dtype,
        ),
        *decay_block(weight_decay, weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    )
    others = optax.chain(
        scale_by_moments(b1, b2, mu_dtype=mu_dtype),
        correct_bias(b1, None),
        normalize(eps, b2=b2),
        *decay_block(weight_decay, weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    )
    return optax.partition({"soap": matrices, "adam": others}, _labels(max_precond_dim))
