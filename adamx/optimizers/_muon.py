"""Muon: momentum orthogonalised by a Newton-Schulz iteration for the matrices, AdamW for
the other leaves."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adamx.blocks._base import (
    ScalarOrSchedule,
    as_scalar,
    check_decay,
    check_dtype,
    check_flag,
    check_learning_rate,
    check_range,
    compute_dtype,
    is_real_number,
    transformation,
)
from adamx.blocks._correction import correct_bias
from adamx.blocks._decay import decay_block
from adamx.blocks._moments import scale_by_moments
from adamx.blocks._normalize import normalize
from adamx.blocks._rules import correct_bias_nesterov
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._adopt import read_momentum
from adamx.optimizers._guard import recipe

Mask = Any | Callable[[Any], Any] | None

NS_COEFFS = (3.4445, -4.775, 2.0315)  # Jordan's quintic: torch.optim.Muon's and optax's
READINGS = ("torch", "optax")
ADJUST_LR_FNS = ("original", "match_rms_adamw")


def _check_coeffs(ns_coeffs) -> tuple[tuple[float, float, float], ...] | None:
    """``ns_coeffs`` as rows of three floats: ``None`` for one triple (used every step)."""
    try:
        rows = [tuple(float(c) for c in row) for row in ns_coeffs]
        if all(len(row) == 3 for row in rows) and rows:
            return tuple((a, b, c) for a, b, c in rows)
    except TypeError:
        pass
    try:
        if len(ns_coeffs) == 3 and all(is_real_number(c) for c in ns_coeffs):
            return None
    except TypeError:
        pass
    raise ValueError(
        f"`ns_coeffs` must be three numbers (a, b, c) of the quintic a X + b (X X^T) X + "
        f"c (X X^T)^2 X, or a sequence of such triples, one per Newton-Schulz step; got "
        f"ns_coeffs={ns_coeffs!r}."
    )


def _check_steps(ns_steps) -> None:
    """An int ``>= 0``, or an integer array (``optax.inject_hyperparams`` passes one)."""
    is_int = isinstance(ns_steps, int) and not isinstance(ns_steps, bool)
    is_int_array = isinstance(ns_steps, (jax.Array, np.ndarray)) and jnp.issubdtype(
        ns_steps.dtype, jnp.integer
    )
    if not (is_int or is_int_array) or (is_int and ns_steps < 0):
        raise ValueError(f"`ns_steps` must be an int >= 0, got ns_steps={ns_steps!r}.")


def orthogonalize(
    ns_coeffs: Any = NS_COEFFS,
    ns_steps: int = 5,
    eps: float = 1e-7,
    *,
    ns_dtype: Any = None,
    eps_outside: bool = False,
    adaptive: bool = False,
) -> optax.GradientTransformation:
    """Replace each matrix by (approximately) the orthogonal factor of its polar
    decomposition, ``U V^T`` for ``X = U S V^T``, with a quintic Newton-Schulz iteration.

    Per leaf (a 2-D array; ``X^T`` when it has more rows than columns)::

        X = X / max(||X||_F, eps)             (eps_outside: X / (||X||_F + eps))
        repeat ns_steps times:
            A = X X^T
            X = a X + (b A + c A A) X

    The coefficients of Jordan's iteration push every singular value into about
    ``[0.7, 1.2]`` in five steps rather than to 1 exactly; that is what Muon uses. The
    iteration runs in ``ns_dtype`` (PyTorch runs it in bfloat16), each product accumulated
    in float32 (float64 for a float64 iteration) and rounded once to ``ns_dtype``, where
    torch rounds; the result is cast to the leaf's dtype. The Frobenius norm is formed in
    float32 (or float64) with a rescaling by ``max |X|``, so that gradients whose squares
    overflow are still normalised; a zero matrix stays zero (no ``0 / 0`` at
    ``eps = 0``).

    Args:
      ns_coeffs: ``(a, b, c)``, or a sequence of triples used one per step (then
        ``ns_steps`` is their number). Default ``(3.4445, -4.775, 2.0315)``.
      ns_steps: the number of steps, an int ``>= 0``. Default 5.
      eps: floor of the norm, ``>= 0``. Default 1e-7 (PyTorch's).
      ns_dtype: the dtype of the iteration, or ``None`` for the leaf's compute dtype.
      eps_outside: add ``eps`` to the norm (optax) instead of flooring it (PyTorch).
      adaptive: scale the result ``O`` by ``<D, O>``, the dual norm of the input ``D``
        (optax's ``adaptive``; Bernstein & Newhouse 2024, arXiv:2409.20325).

    Returns:
      A stateless ``optax.GradientTransformation`` of 2-D leaves.

    References:
      Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024,
      https://kellerjordan.github.io/posts/muon/
    """
    rows = _check_coeffs(ns_coeffs)
    if rows is None:
        _check_steps(ns_steps)
    check_range("eps", eps, low=0.0)
    check_dtype("ns_dtype", ns_dtype)
    check_flag("eps_outside", eps_outside)
    check_flag("adaptive", adaptive)

    def leaf(u):
        u = jnp.asarray(u)
        if u.ndim != 2:
            raise ValueError(
                f"adamx.orthogonalize takes matrices, got an array of shape {u.shape}; give "
                f"muon's other leaves to AdamW (its `muon_mask`)."
            )
        dtype = jnp.dtype(ns_dtype) if ns_dtype is not None else jnp.dtype(compute_dtype(u.dtype))
        wide = jnp.dtype(jnp.float64 if dtype.itemsize >= 8 else jnp.float32)  # accumulation
        y = u.astype(dtype)
        x = y.astype(wide)
        top = jnp.max(jnp.abs(x), initial=0.0)
        safe_top = jnp.where(top > 0, top, 1)
        norm = safe_top * jnp.sqrt(jnp.sum(jnp.square(x / safe_top)))
        floor = as_scalar(eps, wide)
        denom = norm + floor if eps_outside else jnp.maximum(norm, floor)
        denom = jnp.where(norm > 0, denom, 1)
        transposed = u.shape[0] > u.shape[1]
        y = y.T if transposed else y
        y = y / denom.astype(dtype)

        def mm(p, q):
            return jnp.matmul(p, q, preferred_element_type=wide)

        def step(y, abc):  # each product accumulated in `wide`, rounded once, as torch's
            a, b, c = (as_scalar(v, wide) for v in abc)
            gram = mm(y, y.T).astype(dtype)
            update = (b * gram.astype(wide) + c * mm(gram, gram)).astype(dtype)
            return (a * y.astype(wide) + mm(update, y)).astype(dtype)

        # loops, not unrolled: XLA would fuse across steps and skip torch's roundings
        if rows is not None:
            y, _ = jax.lax.scan(lambda y, abc: (step(y, abc), None), y, jnp.asarray(rows, wide))
        else:
            y = jax.lax.fori_loop(0, ns_steps, lambda i, y: step(y, ns_coeffs), y)
        y = y.T if transposed else y
        if adaptive:
            y = y.astype(wide)
            y = jnp.sum(u.astype(wide) * y) * y
        return y.astype(u.dtype)

    def update(updates, state, params=None):
        del params
        return jax.tree.map(leaf, updates), state

    return transformation(lambda params: optax.EmptyState(), update)


def scale_by_shape(kind: str = "rows_over_cols", rms: float = 0.2) -> optax.GradientTransformation:
    """Scale each matrix's update by a factor of its shape ``(A, B)``.

    Per leaf::

        kind="rows_over_cols":  u = sqrt(max(1, A / B)) * u    (PyTorch's "original")
        kind="cols_over_rows":  u = sqrt(max(1, B / A)) * u    (optax's width scaling)
        kind="match_rms":       u = rms * sqrt(max(A, B)) * u  (PyTorch's "match_rms_adamw",
                                                                optax's consistent_rms)

    PyTorch stores a linear layer as ``(out, in)``, JAX libraries as ``(in, out)``: both
    readings scale by ``sqrt(max(1, fan_out / fan_in))``. The result is cast to the
    update's dtype.

    Args:
      kind: one of the three above. Default ``"rows_over_cols"``.
      rms: the target RMS of ``"match_rms"``, ``>= 0``. Default 0.2.

    Returns:
      A stateless ``optax.GradientTransformation`` of 2-D leaves.

    References:
      Liu et al., "Muon is Scalable for LLM Training", 2025, https://arxiv.org/abs/2502.16982
    """
    kinds = ("rows_over_cols", "cols_over_rows", "match_rms")
    if kind not in kinds:
        raise ValueError(f"`kind` must be one of {kinds}, got kind={kind!r}.")
    check_range("rms", rms, low=0.0)

    def leaf(u):
        u = jnp.asarray(u)
        rows, cols = u.shape
        if kind == "rows_over_cols":
            factor = math.sqrt(max(1.0, rows / cols)) if cols else 1.0
        elif kind == "cols_over_rows":
            factor = math.sqrt(max(1.0, cols / rows)) if rows else 1.0
        else:
            factor = as_scalar(rms, compute_dtype(u.dtype)) * math.sqrt(max(rows, cols))
        dtype = compute_dtype(u.dtype)
        return (u.astype(dtype) * as_scalar(factor, dtype)).astype(u.dtype)

    def update(updates, state, params=None):
        del params
        return jax.tree.map(leaf, updates), state

    return transformation(lambda params: optax.EmptyState(), update)


def _labels(muon_mask):
    """The partition's label function: ``"muon"`` where the mask says so (default: the
    2-D leaves), ``"adam"`` elsewhere; a muon leaf must be a matrix."""

    def labels(tree):
        mask = muon_mask(tree) if callable(muon_mask) else muon_mask
        if mask is None:
            mask = jax.tree.map(lambda x: jnp.ndim(x) == 2, tree)
        flags = jax.tree.map(lambda m, x: jax.tree.map(lambda _: bool(m), x), mask, tree)
        for path, (flag, x) in zip(
            [p for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]],
            zip(jax.tree.leaves(flags), jax.tree.leaves(tree)),
        ):
            if flag and jnp.ndim(x) != 2:
                raise ValueError(
                    f"`muon_mask` marks params{jax.tree_util.keystr(path)} (shape "
                    f"{jnp.shape(x)}) for the Newton-Schulz step, which needs a matrix: "
                    f"reshape it, or leave it to AdamW (mask False there)."
                )
        return jax.tree.map(lambda f: "muon" if f else "adam", flags)

    return labels


@recipe
def muon(
    learning_rate: ScalarOrSchedule = 1e-3,
    ns_coeffs: Any = NS_COEFFS,
    ns_steps: int = 5,
    beta: float = 0.95,
    eps: float | None = None,
    weight_decay: float | None = 0.1,
    weight_decay_mask: Mask = None,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    reading: str = "torch",
    ns_dtype: Any | None = None,
    adjust_lr_fn: str | None = None,
    consistent_rms: float | None = None,
    muon_mask: Mask = None,
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_eps: float | None = None,
    adam_eps_root: float = 0.0,
    adam_weight_decay: float | None = None,
    adam_learning_rate: ScalarOrSchedule | None = None,
) -> optax.GradientTransformation:
    """Muon: the momentum of each matrix, orthogonalised; AdamW for every other leaf.

    Per matrix leaf ``(A, B)`` (``reading="torch"``, ``torch.optim.Muon``)::

        m = beta * m + (1 - beta) * g
        d = beta * m + (1 - beta) * g         (nesterov; else d = m)
        O = NS(d)                             (Newton-Schulz in ns_dtype: bfloat16)
        p = p - lr * (sqrt(max(1, A / B)) * O + wd * p)

    ``reading="optax"`` (``optax.contrib.muon``) bias-corrects the momentum,
    ``d = beta m / (1 - beta**(t+1)) + (1 - beta) g / (1 - beta**t)`` (nesterov) or
    ``m / (1 - beta**t)``, adds ``eps`` to the norm, runs the iteration in the leaf's
    dtype and scales by ``sqrt(max(1, B / A))`` (JAX's ``(in, out)`` layout). Every other
    leaf (vectors, scalars, and matrices ``muon_mask`` leaves out) takes an AdamW step
    with the ``adam_*`` hyperparameters. The recipe is an ``optax.partition`` of two
    chains by the labels of ``muon_mask``::

        "muon": scale_by_moments(beta, None, mu_dtype=mu_dtype)
                read_momentum(beta)            # optax: correct_bias_nesterov(beta, None)
                                               #        then read_momentum()
                orthogonalize(ns_coeffs, ns_steps, eps, ns_dtype=ns_dtype)
                scale_by_shape(kind)           # the shape factor above
                add_decayed_weights(weight_decay, weight_decay_mask)
                scale_by_learning_rate(learning_rate)
        "adam": AdamW's chain (adam_b1, adam_b2, adam_eps, adam_eps_root,
                adam_weight_decay, adam_learning_rate or learning_rate)

    Args:
      learning_rate: a number ``>= 0`` or a schedule. Default 1e-3 (PyTorch's).
      ns_coeffs: ``(a, b, c)`` of the quintic iteration, or a sequence of triples, one
        per step. Default ``(3.4445, -4.775, 2.0315)``.
      ns_steps: Newton-Schulz steps, an int ``>= 0``. Default 5.
      beta: the momentum, ``[0, 1)`` (PyTorch's ``momentum``). Default 0.95.
      eps: the norm's floor (torch) or addend (optax), ``>= 0``; ``None``: the reading's,
        1e-7 (torch) or 1e-8 (optax).
      weight_decay: decoupled decay of the matrices, ``>= 0``, ``-lr * wd * p``; ``None``
        or the Python 0 leave the block out. Default 0.1 (PyTorch's; optax's is 0).
      weight_decay_mask: a tree of booleans or a function of the params; only ``True``
        matrices are decayed. Default ``None`` (all).
      mu_dtype: the dtype the momenta (Muon's and Adam's ``m``) are stored in, or
        ``None`` for the params'. Default None.
      nesterov: the look-ahead read of the momentum. Default True.
      adaptive: scale each orthogonalised ``O`` by ``<d, O>`` (optax's ``adaptive``).
        Default False.
      reading: ``"torch"`` (default) or ``"optax"``, as above.
      ns_dtype: the dtype of the iteration; ``None``: the reading's, bfloat16 (torch) or
        the leaf's (optax). ``jnp.float32`` costs little on CPU and follows the exact
        iteration more closely.
      adjust_lr_fn: PyTorch's shape factor: ``"original"`` (the default,
        ``sqrt(max(1, fan_out / fan_in))``) or ``"match_rms_adamw"``
        (``0.2 * sqrt(max(A, B))``, AdamW's update RMS).
      consistent_rms: optax's ``consistent_rms``: the factor ``consistent_rms *
        sqrt(max(A, B))``; overrides ``adjust_lr_fn``. Default None.
      muon_mask: a tree of booleans like the params, or a function of the params (or
        of the updates: it is called with either) returning one; ``True`` leaves take
        the Newton-Schulz step and must be matrices. Default ``None``: the 2-D leaves.
        Under ``optax.inject_hyperparams`` a function needs ``static_args``.
      adam_b1, adam_b2: AdamW's decays for the other leaves. Defaults 0.9, 0.999.
      adam_eps: AdamW's eps; ``None``: 1e-8 (torch), or ``eps`` (optax, which shares it).
      adam_eps_root: AdamW's eps inside the root. Default 0.
      adam_weight_decay: AdamW's decoupled decay; ``None`` (default) or 0: none.
      adam_learning_rate: AdamW's learning rate, or ``None`` for ``learning_rate``.

    Returns:
      An ``optax.GradientTransformation`` (needs ``params`` in ``update`` when decaying);
      its state is an ``optax.PartitionState`` with one inner state per group.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> params = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}
      >>> opt = adamx.muon(learning_rate=0.1, weight_decay=None, ns_dtype=jnp.float32)
      >>> grads = {"w": jnp.asarray([[3.0, 0.0], [0.0, 1.0]]), "b": jnp.asarray([1.0, -1.0])}
      >>> updates, _ = opt.update(grads, opt.init(params), params)
      >>> [round(float(u), 2) for u in jnp.diag(updates["w"])]  # both directions ~ -lr
      [-0.08, -0.11]
      >>> [round(float(u), 4) for u in updates["b"]]  # AdamW: -lr * sign(g) on step 1
      [-0.1, 0.1]

    .. warning::
       ``torch.optim.Muon`` takes 2-D params only and leaves the rest to another
       optimizer (AdamW in its example); here that AdamW is built in. It runs the
       iteration in bfloat16, the default here: compare with it in float64 by passing
       ``ns_dtype=jnp.float64``. ``optax.contrib.muon`` (``reading="optax"``) shares
       ``eps`` between the iteration and Adam and defaults to ``weight_decay=0``.
       The state holds two step counts (one per group), as optax's muon does.

    References:
      Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024,
      https://kellerjordan.github.io/posts/muon/;
      Liu et al., "Muon is Scalable for LLM Training", 2025, https://arxiv.org/abs/2502.16982
    """
    check_learning_rate(learning_rate)
    if adam_learning_rate is not None:
        check_learning_rate(adam_learning_rate)
    if reading not in READINGS:
        raise ValueError(f"`reading` must be one of {READINGS}, got reading={reading!r}.")
    if adjust_lr_fn is not None and adjust_lr_fn not in ADJUST_LR_FNS:
        raise ValueError(
            f"`adjust_lr_fn` must be None or one of {ADJUST_LR_FNS}, got "
            f"adjust_lr_fn={adjust_lr_fn!r}."
        )
    check_flag("nesterov", nesterov)
    check_decay("beta", beta)
    torch_reading = reading == "torch"
    if eps is None:
        eps = 1e-7 if torch_reading else 1e-8
    if adam_eps is None:
        adam_eps = 1e-8 if torch_reading else eps
    if ns_dtype is None and torch_reading:
        ns_dtype = jnp.bfloat16
    if consistent_rms is not None:
        check_range("consistent_rms", consistent_rms, low=0.0)
        shape = scale_by_shape("match_rms", consistent_rms)
    elif adjust_lr_fn == "match_rms_adamw":
        shape = scale_by_shape("match_rms", 0.2)
    else:
        shape = scale_by_shape("rows_over_cols" if torch_reading else "cols_over_rows")
    if torch_reading:
        read = [read_momentum(beta if nesterov else None)]
    else:
        correction = correct_bias_nesterov(beta, None) if nesterov else correct_bias(beta, None)
        read = [correction, read_momentum()]
    matrices = optax.chain(
        scale_by_moments(beta, None, mu_dtype=mu_dtype),
        *read,
        orthogonalize(
            ns_coeffs,
            ns_steps,
            eps,
            ns_dtype=ns_dtype,
            eps_outside=not torch_reading,
            adaptive=adaptive,
        ),
        shape,
        *decay_block(weight_decay, weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    )
    adam_nesterov = nesterov and not torch_reading
    others = optax.chain(
        scale_by_moments(adam_b1, adam_b2, mu_dtype=mu_dtype),
        correct_bias_nesterov(adam_b1, None) if adam_nesterov else correct_bias(adam_b1, None),
        normalize(adam_eps, adam_eps_root, b2=adam_b2),
        *decay_block(adam_weight_decay),
        scale_by_learning_rate(learning_rate if adam_learning_rate is None else adam_learning_rate),
    )
    return optax.partition({"muon": matrices, "adam": others}, _labels(muon_mask))
