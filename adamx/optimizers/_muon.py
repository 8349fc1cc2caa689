"""Muon: momentum orthogonalised by a Newton-Schulz iteration for the matrices, AdamW for
the other leaves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    ScalarOrSchedule,
    check_decay,
    check_flag,
    check_learning_rate,
    check_range,
)
from adamx.blocks._correction import correct_bias
from adamx.blocks._decay import decay_block
from adamx.blocks._moments import scale_by_moments
from adamx.blocks._normalize import normalize
from adamx.blocks._rules import correct_bias_nesterov
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._adopt import read_momentum
from adamx.optimizers._guard import recipe
from adamx.optimizers._muon_blocks import (
    NS_COEFFS,
    PRECONDITIONINGS,
    DimensionNumbers,
    check_dimension_numbers,
    matrix_axes,
    orthogonalize,
    scale_by_shape,
    specs_per_leaf,
)

__all__ = ["muon", "orthogonalize", "scale_by_shape"]

Mask = Any | Callable[[Any], Any] | None

READINGS = ("torch", "optax")
ADJUST_LR_FNS = ("original", "match_rms_adamw")


def _labels(muon_mask, dims):
    """The partition's label function: ``"muon"`` where the mask says so (default: the
    2-D leaves), or where ``dims`` holds dimension numbers (``None``: ``"adam"``), and
    ``"adam"`` elsewhere; a muon leaf must be a matrix, or fit its dimension numbers."""

    def labels(tree):
        paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
        leaves, treedef = jax.tree.flatten(tree)
        if dims is not None:
            specs = specs_per_leaf(dims, tree)
            for path, spec, x in zip(paths, specs, leaves):
                if spec is not None:  # raises on a leaf the spec does not fit
                    where = f"`muon_weight_dimension_numbers`: params{jax.tree_util.keystr(path)}"
                    matrix_axes(spec, jnp.shape(x), where)
            return jax.tree.unflatten(treedef, ["adam" if s is None else "muon" for s in specs])
        mask = muon_mask(tree) if callable(muon_mask) else muon_mask
        if mask is None:
            mask = jax.tree.map(lambda x: jnp.ndim(x) == 2, tree)
        flags = jax.tree.map(lambda m, x: jax.tree.map(lambda _: bool(m), x), mask, tree)
        for path, flag, x in zip(paths, jax.tree.leaves(flags), leaves):
            if flag and jnp.ndim(x) != 2:
                raise ValueError(
                    f"`muon_mask` marks params{jax.tree_util.keystr(path)} (shape "
                    f"{jnp.shape(x)}) for the Newton-Schulz step, which needs a matrix: "
                    f"reshape it, give it dimension numbers "
                    f"(`muon_weight_dimension_numbers`), or leave it to AdamW (mask False there)."
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
    preconditioning: str = "frobenius",
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
    muon_weight_dimension_numbers: DimensionNumbers = None,
) -> optax.GradientTransformation:
    """Muon: the momentum of each matrix, orthogonalised; AdamW for every other leaf.

    Per matrix leaf ``(A, B)`` (``reading="torch"``, ``torch.optim.Muon``)::

        m = beta * m + (1 - beta) * g
        d = beta * m + (1 - beta) * g         (nesterov; else d = m)
        O = NS(P(d))                          (Newton-Schulz in ns_dtype: bfloat16,
                                               P: d / max(||d||_F, eps))
        p = p - lr * (sqrt(max(1, A / B)) * O + wd * p)

    ``reading="optax"`` (``optax.contrib.muon``) bias-corrects the momentum,
    ``d = beta m / (1 - beta**(t+1)) + (1 - beta) g / (1 - beta**t)`` (nesterov) or
    ``m / (1 - beta**t)``, adds ``eps`` to the norm, runs the iteration in the leaf's
    dtype and scales by ``sqrt(max(1, B / A))`` (JAX's ``(in, out)`` layout). Every other
    leaf (vectors, scalars, and matrices ``muon_mask`` leaves out) takes an AdamW step
    with the ``adam_*`` hyperparameters. A leaf of rank > 2 takes Muon's step as a batch
    of matrices when ``muon_weight_dimension_numbers`` says how (optax's option). Complex
    matrices iterate with ``X X^H`` (optax's reading; PyTorch refuses them). The recipe is
    an ``optax.partition`` of two chains by the labels of ``muon_mask`` (or of
    ``muon_weight_dimension_numbers``)::

        "muon": scale_by_moments(beta, None, mu_dtype=mu_dtype)
                read_momentum(beta)            # optax: correct_bias_nesterov(beta, None)
                                               #        then read_momentum()
                orthogonalize(ns_coeffs, ns_steps, eps, ns_dtype=ns_dtype,
                              preconditioning=..., dimension_numbers=...)
                scale_by_shape(kind, dimension_numbers=...)  # the shape factor above
                add_decayed_weights(weight_decay, weight_decay_mask)
                scale_by_learning_rate(learning_rate)
        "adam": AdamW's chain (adam_b1, adam_b2, adam_eps, adam_eps_root,
                adam_weight_decay, adam_learning_rate or learning_rate)

    Args:
      learning_rate: a number ``>= 0`` or a schedule. Default 1e-3 (PyTorch's).
      ns_coeffs: ``(a, b, c)`` of the quintic iteration, a sequence of triples, one per
        step, or optax's preset ``"standard"`` or ``"dion"`` (five triples, Ahn et al.
        2025, arXiv:2504.05295). Default ``(3.4445, -4.775, 2.0315)``.
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
      preconditioning: how ``d`` is scaled before the iteration (optax's names):
        ``"frobenius"`` (default; ``d / ||d||_F``), ``"spectral"`` (``d / ||d||_2``, an
        SVD per matrix), ``"aol"`` (each row ``i`` by ``1 / sqrt(sum_j |(d d^H)_ij|)``;
        Boissin et al. 2025, "Turbo-Muon", arXiv:2512.04632) or ``"schatten"``
        (``d / sqrt(||d d^H||_F)``; Grishina et al. 2025, arXiv:2506.10935). See
        :func:`adamx.orthogonalize`.
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
      muon_weight_dimension_numbers: optax's option, in place of ``muon_mask``: a tree
        (a prefix of the params) of dimension numbers (``optax.contrib.
        MuonDimensionNumbers(reduction_axis, output_axis)``, ints or sequences of ints;
        the other axes are a batch of independent matrices) and ``None`` (that leaf, or
        subtree, to AdamW), or a function of the params (or updates) returning one; the
        shape factor reads ``A`` and ``B`` as the products of the reduction and output
        axes. Default ``None``: the 2-D leaves, as matrices.

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
    if preconditioning not in PRECONDITIONINGS:
        raise ValueError(
            f"`preconditioning` must be one of {PRECONDITIONINGS}, got "
            f"preconditioning={preconditioning!r}."
        )
    dims = muon_weight_dimension_numbers
    check_dimension_numbers("muon_weight_dimension_numbers", dims)
    if dims is not None and muon_mask is not None:
        raise ValueError(
            "`muon_mask` and `muon_weight_dimension_numbers` both say which leaves take "
            "Muon's step: give one (None in the dimension numbers leaves a leaf to AdamW)."
        )
    if consistent_rms is not None:
        check_range("consistent_rms", consistent_rms, low=0.0)
        shape = scale_by_shape("match_rms", consistent_rms, dimension_numbers=dims)
    elif adjust_lr_fn == "match_rms_adamw":
        shape = scale_by_shape("match_rms", 0.2, dimension_numbers=dims)
    else:
        kind = "rows_over_cols" if torch_reading else "cols_over_rows"
        shape = scale_by_shape(kind, dimension_numbers=dims)
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
            preconditioning=preconditioning,
            dimension_numbers=dims,
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
    return optax.partition({"muon": matrices, "adam": others}, _labels(muon_mask, dims))
