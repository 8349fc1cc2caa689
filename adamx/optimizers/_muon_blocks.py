"""Muon's two matrix blocks: the Newton-Schulz orthogonalisation (with its preconditioning)
and the shape factor, and how a leaf of any rank is read as a stack of matrices."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adamx.blocks._base import (
    PyTree,
    as_scalar,
    check_dtype,
    check_flag,
    check_range,
    compute_dtype,
    is_complex,
    is_real_number,
    real_dtype,
    transformation,
)

NS_COEFFS = (3.4445, -4.775, 2.0315)  # Jordan's quintic: torch.optim.Muon's and optax's
# optax.contrib.muon's named coefficient sets (`ns_coeffs="dion"`: Ahn et al. 2025, one
# triple per step, arXiv:2504.05295)
NS_PRESETS = {
    "standard": NS_COEFFS,
    "dion": (
        (4.0848, -6.8946, 2.9270),
        (3.9505, -6.3029, 2.6377),
        (3.7418, -5.5913, 2.3037),
        (2.8769, -3.1427, 1.2046),
        (2.8366, -3.0525, 1.2012),
    ),
}
PRECONDITIONINGS = ("frobenius", "spectral", "aol", "schatten")
# `muon_weight_dimension_numbers`: a spec, a tree of specs (None: not a Muon leaf), or a
# function of the params returning one. A spec is any object with `reduction_axis` and
# `output_axis` (optax.contrib.MuonDimensionNumbers).
DimensionNumbers = Any | Callable[[PyTree], Any] | None


def check_coeffs(ns_coeffs) -> tuple[tuple[float, float, float], ...] | None:
    """``ns_coeffs`` as rows of three floats: ``None`` for one triple (used every step)."""
    if isinstance(ns_coeffs, str):
        if ns_coeffs not in NS_PRESETS:
            raise ValueError(
                f"`ns_coeffs` as a string names one of optax's presets {tuple(NS_PRESETS)}, "
                f"got ns_coeffs={ns_coeffs!r}."
            )
        return check_coeffs(NS_PRESETS[ns_coeffs])
    try:
        rows = [tuple(float(c) for c in row) for row in ns_coeffs]
        if all(len(row) == 3 for row in rows) and rows:
            return tuple((a, b, c) for a, b, c in rows)
    except (TypeError, ValueError):
        pass
    try:
        if len(ns_coeffs) == 3 and all(is_real_number(c) for c in ns_coeffs):
            return None
    except TypeError:
        pass
    raise ValueError(
        f"`ns_coeffs` must be three numbers (a, b, c) of the quintic a X + b (X X^T) X + "
        f"c (X X^T)^2 X, a sequence of such triples (one per Newton-Schulz step), or a "
        f"preset name {tuple(NS_PRESETS)}; got ns_coeffs={ns_coeffs!r}."
    )


def check_steps(ns_steps) -> None:
    """An int ``>= 0``, or an integer array (``optax.inject_hyperparams`` passes one)."""
    is_int = isinstance(ns_steps, int) and not isinstance(ns_steps, bool)
    is_int_array = isinstance(ns_steps, (jax.Array, np.ndarray)) and jnp.issubdtype(
        ns_steps.dtype, jnp.integer
    )
    if not (is_int or is_int_array) or (is_int and ns_steps < 0):
        raise ValueError(f"`ns_steps` must be an int >= 0, got ns_steps={ns_steps!r}.")


# ----------------------------------------------------------------- dimension numbers
def is_spec(x) -> bool:
    """Whether ``x`` is one leaf's dimension numbers (``reduction_axis``, ``output_axis``)."""
    return hasattr(x, "reduction_axis") and hasattr(x, "output_axis")


def _axes(value, name: str) -> tuple[int, ...]:
    axes = (value,) if isinstance(value, int) else value
    try:
        axes = tuple(axes)
    except TypeError:
        axes = (None,)
    if not axes or not all(isinstance(a, int) and not isinstance(a, bool) for a in axes):
        raise ValueError(f"`{name}` must be an int or a non-empty sequence of ints, got {value!r}.")
    return axes


def check_dimension_numbers(name: str, dims) -> None:
    """A spec, a tree of specs and ``None``s, a function, or ``None``; each spec's axes ints."""
    if dims is None or callable(dims) and not is_spec(dims):
        return
    stop = lambda x: x is None or is_spec(x)  # noqa: E731
    for leaf in jax.tree.leaves(dims, is_leaf=stop):
        if not stop(leaf):
            raise ValueError(
                f"`{name}` must hold dimension numbers (with `reduction_axis` and "
                f"`output_axis`, e.g. optax.contrib.MuonDimensionNumbers) or None, got a "
                f"leaf {leaf!r}."
            )
        if leaf is not None:
            _axes(leaf.reduction_axis, f"{name}.reduction_axis")
            _axes(leaf.output_axis, f"{name}.output_axis")


def specs_per_leaf(dims: DimensionNumbers, tree: PyTree) -> list:
    """One spec (or ``None``) per leaf of ``tree``: ``dims`` called on ``tree`` when a
    function, one spec for every leaf, or a tree of specs that is a prefix of ``tree``
    (a spec or ``None`` covers a whole subtree; masked leaves, ``optax.MaskedNode``, are
    skipped as they have no leaves)."""
    if callable(dims) and not is_spec(dims):
        dims = dims(tree)
    count = len(jax.tree.leaves(tree))
    if dims is None or is_spec(dims):
        return [dims] * count
    stop = lambda x: x is None or is_spec(x) or isinstance(x, optax.MaskedNode)  # noqa: E731
    full = jax.tree.map(lambda d, sub: jax.tree.map(lambda _: d, sub), dims, tree, is_leaf=stop)
    return jax.tree.leaves(full, is_leaf=lambda x: x is None or is_spec(x))


def matrix_axes(spec, shape: tuple, where: str) -> tuple[tuple[int, ...], ...]:
    """``(batch, reduction, output)`` axes of a leaf of ``shape`` (``spec`` None: a matrix).

    Raises ``ValueError`` naming ``where`` when the leaf cannot be read that way."""
    ndim = len(shape)
    if spec is None:
        if ndim != 2:
            raise ValueError(
                f"{where} has shape {shape}: the Newton-Schulz step takes matrices, or "
                f"arrays of rank >= 2 with dimension numbers (`muon_weight_dimension_numbers`)."
            )
        return (), (0,), (1,)
    red, out = _axes(spec.reduction_axis, "reduction_axis"), _axes(spec.output_axis, "output_axis")
    if ndim < 2 or any(not -ndim <= a < ndim for a in red + out):
        raise ValueError(
            f"{where} has shape {shape}, which dimension numbers {spec!r} do not fit (rank "
            f">= 2 and axes in [-{ndim}, {ndim}) needed)."
        )
    red, out = tuple(a % ndim for a in red), tuple(a % ndim for a in out)
    if set(red) & set(out) or len(set(red)) < len(red) or len(set(out)) < len(out):
        raise ValueError(f"{where}: dimension numbers {spec!r} name an axis twice (shape {shape}).")
    batch = tuple(a for a in range(ndim) if a not in red + out)
    return batch, red, out


def as_matrices(f: Callable[[jax.Array], jax.Array], x: jax.Array, spec, where: str) -> jax.Array:
    """``f`` (a function of one matrix) applied to each matrix of ``x``: ``x`` transposed to
    ``(batch..., reduction..., output...)``, flattened to ``(B, R, O)``, mapped over ``B``,
    and put back in its shape."""
    batch, red, out = matrix_axes(spec, x.shape, where)
    if not batch and red == (0,) and out == (1,):
        return f(x)
    order = batch + red + out
    size = lambda axes: math.prod(x.shape[a] for a in axes)  # noqa: E731
    y = jnp.transpose(x, order).reshape(size(batch), size(red), size(out))
    y = jax.vmap(f)(y).reshape(tuple(x.shape[a] for a in order))
    return jnp.transpose(y, tuple(int(a) for a in np.argsort(order)))


def fans(spec, shape: tuple, where: str) -> tuple[int, int]:
    """The matrix shape ``(R, O)`` a leaf is read as (its rows and columns for a matrix)."""
    _, red, out = matrix_axes(spec, shape, where)
    return math.prod(shape[a] for a in red), math.prod(shape[a] for a in out)


def _map_leaves(f, tree: PyTree, dims: DimensionNumbers, who: str) -> PyTree:
    """``f(leaf, spec, where)`` over ``tree``'s leaves."""
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    specs = specs_per_leaf(dims, tree)
    out = [
        f(jnp.asarray(x), spec, f"{who}: updates{jax.tree_util.keystr(path)}")
        for (path, x), spec in zip(paths_leaves, specs)
    ]
    return jax.tree.unflatten(treedef, out)


# ----------------------------------------------------------------------------- blocks
def orthogonalize(
    ns_coeffs: Any = NS_COEFFS,
    ns_steps: int = 5,
    eps: float = 1e-7,
    *,
    ns_dtype: Any = None,
    eps_outside: bool = False,
    adaptive: bool = False,
    preconditioning: str = "frobenius",
    dimension_numbers: DimensionNumbers = None,
) -> optax.GradientTransformation:
    """Replace each matrix by (approximately) the orthogonal factor of its polar
    decomposition, ``U V^H`` for ``X = U S V^H``, with a quintic Newton-Schulz iteration.

    Per matrix (``X^H`` when it has more rows than columns, so that ``X X^H`` is small)::

        X = P(X)                              (the preconditioning, below)
        repeat ns_steps times:
            A = X X^H
            X = a X + (b A + c A A) X

    ``P`` scales ``X`` so that its singular values are at most about 1:

    - ``"frobenius"``: ``X / max(||X||_F, eps)`` (``eps_outside``: ``X / (||X||_F + eps)``);
    - ``"spectral"``: the same with the largest singular value ``||X||_2`` (an SVD);
    - ``"aol"``: ``D X`` with ``D_ii = 1 / sqrt(max(sum_j |(X X^H)_ij|, eps))``, the
      "almost orthogonal layer" row scaling (Boissin et al. 2025, arXiv:2512.04632);
    - ``"schatten"``: ``X / sqrt(max(||X X^H||_F, eps))``, the Schatten-4 norm
      (Grishina et al. 2025, arXiv:2506.10935).

    Jordan's coefficients push every singular value into about ``[0.7, 1.2]`` in five
    steps rather than to 1 exactly; that is what Muon uses. The iteration runs in
    ``ns_dtype`` (PyTorch runs it in bfloat16), each product accumulated in float32
    (float64 for a float64 iteration) and rounded once to ``ns_dtype``, where torch rounds;
    the result is cast to the leaf's dtype. Norms are formed in float32 (or float64) with a
    rescaling by ``max |X|``, so that gradients whose squares overflow are still
    normalised; a zero matrix stays zero. A complex matrix iterates in complex64
    (complex128 when ``ns_dtype`` or the leaf is 64-bit: there is no complex bfloat16).

    Args:
      ns_coeffs: ``(a, b, c)``, a sequence of triples used one per step (then ``ns_steps``
        is their number), or optax's preset ``"standard"`` or ``"dion"``. Default
        ``(3.4445, -4.775, 2.0315)``.
      ns_steps: the number of steps, an int ``>= 0``. Default 5.
      eps: floor of the norm, ``>= 0``. Default 1e-7 (PyTorch's).
      ns_dtype: the dtype of the iteration, or ``None`` for the leaf's compute dtype.
      eps_outside: add ``eps`` to the norm (optax) instead of flooring it (PyTorch); the
        ``"aol"`` and ``"schatten"`` scalings floor it either way.
      adaptive: scale the result ``O`` by ``<D, O> = sum(conj(D) O)`` over the leaf, the
        dual norm of the input ``D`` (optax's ``adaptive``; Bernstein & Newhouse 2024,
        arXiv:2409.20325).
      preconditioning: ``P`` above, one of ``"frobenius"`` (default), ``"spectral"``,
        ``"aol"``, ``"schatten"`` (optax.contrib.muon's names and scalings).
      dimension_numbers: how a leaf is read as matrices: ``None`` (default: every leaf is
        a matrix), or dimension numbers (``optax.contrib.MuonDimensionNumbers``: the
        ``reduction_axis`` and ``output_axis``, ints or sequences; the other axes are a
        batch of independent matrices ``(prod reduction, prod output)``), a tree of them
        (a prefix of the updates), or a function of the updates returning one.

    Returns:
      A stateless ``optax.GradientTransformation``.

    .. note::
       optax folds ``"aol"`` and ``"schatten"`` into the first Newton-Schulz step (reusing
       its ``X X^H``) and floors them at a fixed 1e-8; here they are a scaling before the
       iteration (one more product) floored at ``eps``, the same maths for ``ns_steps >= 1``
       (with ``ns_steps=0`` optax leaves ``X`` unscaled).

    References:
      Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024,
      https://kellerjordan.github.io/posts/muon/
    """
    rows = check_coeffs(ns_coeffs)
    if isinstance(ns_coeffs, str):
        ns_coeffs = rows
    if rows is None:
        check_steps(ns_steps)
    check_range("eps", eps, low=0.0)
    check_dtype("ns_dtype", ns_dtype)
    check_flag("eps_outside", eps_outside)
    check_flag("adaptive", adaptive)
    if preconditioning not in PRECONDITIONINGS:
        raise ValueError(
            f"`preconditioning` must be one of {PRECONDITIONINGS}, got "
            f"preconditioning={preconditioning!r}."
        )
    check_dimension_numbers("dimension_numbers", dimension_numbers)

    def scaled_norm(x, top, p):  # ||x||_p of x / top, times top (no overflow)
        if p == "spectral":
            return top * jnp.linalg.norm(x / top.astype(x.dtype), ord=2)
        return top * jnp.sqrt(jnp.sum(jnp.square(jnp.abs(x) / top)))

    def matrix(u, dtype, wide):
        """One matrix, already with rows <= cols, in the iteration's dtypes."""

        def mm(p, q):
            return jnp.matmul(p, q, preferred_element_type=wide)

        def gram(y):
            return mm(y, y.conj().T if is_complex(y.dtype) else y.T)

        y = u.astype(dtype)  # rounded to the iteration's dtype first, as torch does
        x = y.astype(wide)
        real = real_dtype(wide)
        top = jnp.max(jnp.abs(x), initial=0.0).astype(real)
        safe_top = jnp.where(top > 0, top, 1)
        floor = as_scalar(eps, real)
        if preconditioning in ("frobenius", "spectral"):
            norm = scaled_norm(x, safe_top, preconditioning)
            denom = norm + floor if eps_outside else jnp.maximum(norm, floor)
            y = y / jnp.where(norm > 0, denom, 1).astype(dtype)
        else:  # of x / 2**k (exact): s(x) = s(x / 2**k) / 2**k, floored at eps / 4**k
            power = jnp.exp2(jnp.floor(jnp.log2(safe_top)))
            unit = (x / power.astype(x.dtype)).astype(dtype)
            a = jnp.abs(gram(unit))
            if preconditioning == "aol":
                r = jnp.sum(a, axis=-1, keepdims=True)
            else:
                r = jnp.sqrt(jnp.sum(jnp.square(a)))
            r = jnp.maximum(r, floor / jnp.square(power))
            y = (unit.astype(wide) * jax.lax.rsqrt(r).astype(wide)).astype(dtype)

        def step(y, abc):  # each product accumulated in `wide`, rounded once, as torch's
            a, b, c = (as_scalar(v, wide) for v in abc)
            g = gram(y).astype(dtype)
            update = (b * g.astype(wide) + c * mm(g, g)).astype(dtype)
            return (a * y.astype(wide) + mm(update, y)).astype(dtype)

        if not isinstance(y, jax.core.Tracer):  # eager: each op rounds, as in the loop
            # (an eager loop of closures compiles at every call)
            for abc in rows if rows is not None else [ns_coeffs] * int(ns_steps):
                y = step(y, abc)
            return y
        # loops, not unrolled: XLA would fuse across steps and skip torch's roundings
        if rows is not None:
            y, _ = jax.lax.scan(lambda y, abc: (step(y, abc), None), y, jnp.asarray(rows, real))
        else:
            y = jax.lax.fori_loop(0, ns_steps, lambda i, y: step(y, ns_coeffs), y)
        return y

    def leaf(u, spec, where):
        dtype = jnp.dtype(ns_dtype) if ns_dtype is not None else jnp.dtype(compute_dtype(u.dtype))
        big = real_dtype(dtype).itemsize >= 8
        wide = jnp.dtype(jnp.float64 if big else jnp.float32)  # accumulation
        if is_complex(u.dtype):
            dtype = wide = jnp.dtype(jnp.complex128 if big else jnp.complex64)

        def one(m):
            if m.shape[0] > m.shape[1]:
                return matrix(m.T, dtype, wide).T
            return matrix(m, dtype, wide)

        y = as_matrices(one, u, spec, where)
        if adaptive:
            y = y.astype(wide)
            y = jnp.sum(u.astype(wide).conj() * y) * y
        return y.astype(u.dtype)

    def update(updates, state, params=None):
        del params
        return _map_leaves(leaf, updates, dimension_numbers, "adamx.orthogonalize"), state

    return transformation(lambda params: optax.EmptyState(), update)


def scale_by_shape(
    kind: str = "rows_over_cols",
    rms: float = 0.2,
    *,
    dimension_numbers: DimensionNumbers = None,
) -> optax.GradientTransformation:
    """Scale each matrix's update by a factor of its shape ``(A, B)``.

    Per leaf::

        kind="rows_over_cols":  u = sqrt(max(1, A / B)) * u    (PyTorch's "original")
        kind="cols_over_rows":  u = sqrt(max(1, B / A)) * u    (optax's width scaling)
        kind="match_rms":       u = rms * sqrt(max(A, B)) * u  (PyTorch's "match_rms_adamw",
                                                                optax's consistent_rms)

    PyTorch stores a linear layer as ``(out, in)``, JAX libraries as ``(in, out)``: both
    readings scale by ``sqrt(max(1, fan_out / fan_in))``. A leaf read through dimension
    numbers has ``A`` = the product of its reduction axes, ``B`` of its output axes. The
    result is cast to the update's dtype.

    Args:
      kind: one of the three above. Default ``"rows_over_cols"``.
      rms: the target RMS of ``"match_rms"``, ``>= 0``. Default 0.2.
      dimension_numbers: as :func:`orthogonalize`'s. Default ``None`` (matrices).

    Returns:
      A stateless ``optax.GradientTransformation``.

    References:
      Liu et al., "Muon is Scalable for LLM Training", 2025, https://arxiv.org/abs/2502.16982
    """
    kinds = ("rows_over_cols", "cols_over_rows", "match_rms")
    if kind not in kinds:
        raise ValueError(f"`kind` must be one of {kinds}, got kind={kind!r}.")
    check_range("rms", rms, low=0.0)
    check_dimension_numbers("dimension_numbers", dimension_numbers)

    def leaf(u, spec, where):
        rows, cols = fans(spec, u.shape, where)
        if kind == "rows_over_cols":
            factor = math.sqrt(max(1.0, rows / cols)) if cols else 1.0
        elif kind == "cols_over_rows":
            factor = math.sqrt(max(1.0, cols / rows)) if rows else 1.0
        else:
            factor = as_scalar(rms, real_dtype(compute_dtype(u.dtype))) * math.sqrt(max(rows, cols))
        dtype = compute_dtype(u.dtype)
        scale = as_scalar(factor, real_dtype(dtype)).astype(dtype)
        return (u.astype(dtype) * scale).astype(u.dtype)

    def update(updates, state, params=None):
        del params
        return _map_leaves(leaf, updates, dimension_numbers, "adamx.scale_by_shape"), state

    return transformation(lambda params: optax.EmptyState(), update)
