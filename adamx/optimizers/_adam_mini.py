"""Adam-mini: Adam's first moment per element, one second moment per block of parameters."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    Moments,
    ScalarOrSchedule,
    abs_sq,
    abstract_or_array,
    check_decay,
    check_dtype,
    check_learning_rate,
    check_range,
    check_trees_match,
    compute_dtype,
    like_grad,
    one_minus,
    safe_increment,
    state_dtype,
    transformation,
)
from adamx.blocks._correction import correct_bias
from adamx.blocks._decay import decay_block
from adamx.blocks._moments import MomentsState, ema, second_moment_dtype
from adamx.blocks._normalize import normalize
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._guard import recipe

Partition = Any | Callable[[Any], Any] | None

# Name tokens of the roles in the paper's partition (Algorithm 3), read from the last
# name in a leaf's path that is not a generic one ("kernel", "weight", ...).
_GENERIC = {"kernel", "weight", "weights", "w", "params", "param"}
_EMBED = {"embed", "embedding", "embeddings", "wte", "wpe", "tok", "embd"}
_OUTPUT = {"unembed", "head", "lm", "logits", "output"}
_QUERY_KEY = {"q", "k", "query", "key", "wq", "wk"}
_ATTN_OUT = {"o", "out", "wo", "proj"}
_NEURONS = {"v", "value", "wv", "qkv", "mlp", "fc", "ffn", "up", "gate", "down", "dense"}
_NEURONS |= {"w1", "w2", "w3", "wi", "c_fc"}


def _role(path) -> str | None:
    names = [
        str(getattr(k, "key", getattr(k, "name", "")))
        for k in path
        if isinstance(k, (jax.tree_util.DictKey, jax.tree_util.GetAttrKey))
    ]
    for name in reversed(names):
        tokens = set(re.split(r"[^0-9a-z]+", name.lower())) - {""}
        if not tokens or tokens <= _GENERIC:
            continue
        for role, words in (
            ("embed", _EMBED),
            ("output", _OUTPUT),
            ("query_key", _QUERY_KEY),
            ("attn_out", _ATTN_OUT),
            ("neurons", _NEURONS),
        ):
            if tokens & words:
                return role
        return None
    return None


def adam_mini_partition(params: Any) -> Any:
    """The blocks of Adam-mini's default partition, as the axes that index them.

    For each leaf, the tuple of axes along which blocks are told apart: every index along
    those axes is one block, and the block's second moment is the mean of ``g**2`` over
    the other axes. ``()`` is one block for the whole leaf. The paper's rule for
    Transformers (Zhang et al. 2024, Algorithm 3), read from the leaf's name (the last
    name in its path other than ``kernel`` / ``weight``) for a leaf of two or more axes
    in JAX's ``(in, ..., out)`` layout:

    * token embeddings (``embed``, ``wte``, ``tok_embeddings``, ...; ``(V, d)``): by
      token, ``(0,)``;
    * output heads (``unembed``, ``lm_head``, ``head``, ``output``; ``(d, V)``): by token,
      ``(-1,)``;
    * query and key (``q``, ``k``, ``query``, ``key``, ``wq``, ``wk``): by head, ``(1,)``
      (a ``(d, heads, d_head)`` kernel; a ``(d, heads * d_head)`` matrix gives one block
      per output neuron, a finer split, since the number of heads is not in its shape);
    * attention output (``o``, ``out``, ``proj``, ``wo``): by output neuron, ``(-1,)``;
    * value, fused ``qkv`` and MLP matrices (``v``, ``value``, ``mlp*``, ``fc``, ``up``,
      ``down``, ``gate``, ...): by output neuron, every axis but the first;
    * everything else (norms, biases, vectors, scalars, unnamed matrices): the whole leaf.

    Args:
      params: a tree of arrays (or ``jax.ShapeDtypeStruct``).

    Returns:
      A tree like ``params`` of tuples of axes (``flatten_up_to`` keeps each tuple whole).

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> adamx.adam_mini_partition({"embed": jnp.zeros((10, 4)), "q": jnp.zeros((4, 2, 2)),
      ...                             "mlp_in": jnp.zeros((4, 16)), "norm": jnp.zeros(4)})
      {'embed': (0,), 'mlp_in': (1,), 'norm': (), 'q': (1,)}
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)

    def axes(path, leaf) -> tuple[int, ...]:
        ndim = len(jnp.shape(leaf))
        role = _role(path) if ndim >= 2 else None
        if role == "embed":
            return (0,)
        if role in ("output", "attn_out"):
            return (ndim - 1,)
        if role == "query_key":
            return (1,)
        if role == "neurons":
            return tuple(range(1, ndim))
        return ()

    return jax.tree.unflatten(treedef, [axes(path, leaf) for path, leaf in leaves])


def _block_axes(spec, shape: tuple[int, ...], where: str) -> tuple[int, ...]:
    """One leaf's spec (``"leaf"``, ``"full"``, an axis or a tuple of axes) as a sorted
    tuple of non-negative axes."""
    ndim = len(shape)
    if spec == "leaf":
        return ()
    if spec == "full":
        return tuple(range(ndim))
    raw = (spec,) if isinstance(spec, int) else spec
    try:
        ok = all(isinstance(a, int) and not isinstance(a, bool) and -ndim <= a < ndim for a in raw)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(
            f"`partition` gives {where} (shape {shape}) the spec {spec!r}: a spec is "
            f'"leaf" (one block), "full" (one per element), or an axis or tuple of axes '
            f"in [-{ndim}, {ndim}) along which the blocks are told apart."
        )
    return tuple(sorted({a % ndim for a in raw}))


def _block_shapes(partition: Partition, params) -> list[tuple[int, ...]]:
    """The shape of each leaf's second moment: the leaf's shape with 1 on every axis that
    a block spans (a block's mean broadcasts back over it)."""
    specs = adam_mini_partition(params) if partition is None else partition
    if callable(specs):
        specs = specs(params)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    try:
        flat = treedef.flatten_up_to(specs)  # type: ignore[attr-defined]
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"`partition` must be a tree like the params (one spec per leaf) or a function "
            f"of the params returning one: {err}"
        ) from None
    shapes = []
    for (path, leaf), spec in zip(leaves, flat):
        shape = tuple(jnp.shape(leaf))
        kept = _block_axes(spec, shape, f"params{jax.tree_util.keystr(path)}")
        shapes.append(tuple(n if i in kept else 1 for i, n in enumerate(shape)))
    return shapes


def scale_by_block_moments(
    b1: float = 0.9,
    b2: float = 0.999,
    partition: Partition = None,
    *,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    """Adam's first moment per element and one second moment per block (Adam-mini's).

    Per leaf, for each block ``B`` of the partition, with ``t`` the step number::

        m   = b1 * m + (1 - b1) * g                         (every element)
        v_B = b2 * v_B + (1 - b2) * mean_{i in B}(g_i**2)   (one number per block)

    The record it hands on carries ``v_B`` broadcast over each block's elements (a view
    the next blocks fuse, not stored), so :func:`adamx.correct_bias` and
    :func:`adamx.normalize` read it as Adam's ``v``. The state stores ``v`` with the
    leaf's shape reduced to 1 along every axis a block spans (one block per leaf:
    shape ``(1, ..., 1)``); the update reads the blocks from those shapes, so it needs
    no partition. ``(1 - b2) / |B|`` meets each ``g`` before its square (a mean of
    squares up to ``|g| ~ 5.8e20`` fits float32 for ``b2 = 0.999``). A complex leaf
    averages ``|g|**2``.

    Args:
      b1: decay of the first moment, in ``[0, 1)``. Default 0.9.
      b2: decay of the blocks' second moments, in ``[0, 1)``. Default 0.999.
      partition: the blocks: ``None`` for :func:`adamx.adam_mini_partition`, a tree like
        the params of per-leaf specs, or a function of the params returning one. A spec
        is ``"leaf"`` (one block), ``"full"`` (one per element: Adam's ``v``), an axis or
        a tuple of axes (one block per index along them). Read at ``init`` only.
      mu_dtype: the dtype ``m`` is stored in, or ``None`` for the params'. Default None.

    Returns:
      An ``optax.GradientTransformation`` whose state is a :class:`adamx.MomentsState`
      (``nu`` of the reduced shapes) and whose output is a :class:`adamx.Moments` record.

    References:
      Zhang et al., "Adam-mini: Use Fewer Learning Rates To Gain More", 2024,
      https://arxiv.org/abs/2406.16793
    """
    check_decay("b1", b1)
    check_decay("b2", b2)
    check_dtype("mu_dtype", mu_dtype, complex_ok=True)

    def init(params):
        leaves, treedef = jax.tree.flatten(params)
        leaves = [abstract_or_array(p) for p in leaves]
        shapes = _block_shapes(partition, jax.tree.unflatten(treedef, leaves))
        mu = [jnp.zeros_like(p, dtype=state_dtype(mu_dtype, p.dtype)) for p in leaves]
        nu = [jnp.zeros(s, second_moment_dtype(p.dtype)) for p, s in zip(leaves, shapes)]
        return MomentsState(
            count=jnp.zeros([], jnp.int32),
            mu=jax.tree.unflatten(treedef, mu),
            nu=jax.tree.unflatten(treedef, nu),
        )

    def leaf_nu(g, v):
        dtype = compute_dtype(v.dtype)
        axes = tuple(i for i, (n, k) in enumerate(zip(g.shape, v.shape)) if k != n)
        size = 1
        for i in axes:
            size *= g.shape[i]
        w = jnp.asarray(one_minus(b2), dtype) / max(size, 1)
        work = g if jnp.iscomplexobj(g) else g.astype(dtype)
        mean = jnp.sum(abs_sq(work, w).astype(dtype), axis=axes, keepdims=True)
        new = jnp.asarray(b2, dtype) * v.astype(dtype) + mean.reshape(v.shape)
        return new

    def update(grads, state, params=None):
        del params
        check_trees_match(grads, state.mu, "grads", "the optimizer state", dtypes=mu_dtype is None)
        grads = jax.tree.map(jnp.asarray, grads)
        mu = jax.tree.map(
            lambda g, m: like_grad(ema(m, g.astype(compute_dtype(m.dtype)), one_minus(b1)), g),
            grads,
            state.mu,
        )
        nu = jax.tree.map(leaf_nu, grads, state.nu)
        count = safe_increment(state.count)
        store = lambda new, old: new.astype(old.dtype)  # noqa: E731
        new_state = MomentsState(
            count=count, mu=jax.tree.map(store, mu, state.mu), nu=jax.tree.map(store, nu, state.nu)
        )
        wide = jax.tree.map(lambda v, g: jnp.broadcast_to(v, g.shape), nu, grads)
        return Moments(grad=grads, mu=mu, nu=wide, count=count), new_state

    return transformation(init, update)


@recipe
def adam_mini(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float | None = 0.1,
    *,
    partition: Partition = None,
    weight_decay_mask: Any | Callable[[Any], Any] | None = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    """Adam-mini: AdamW with one second moment (one learning rate) per block of parameters.

    Per leaf, for each block ``B`` of the partition, with ``t`` the step number::

        m   = b1 * m + (1 - b1) * g
        v_B = b2 * v_B + (1 - b2) * mean_{i in B}(g_i**2)
        p   = p - lr * (m / (1 - b1**t) / (sqrt(v_B / (1 - b2**t)) + eps) + wd * p)

    The blocks follow the paper's partition for Transformers
    (:func:`adamx.adam_mini_partition`: embeddings and output heads by token, query and
    key by head, value, attention output and MLP matrices by output neuron, everything
    else one block per leaf), read from the leaves' names; ``partition`` replaces it.
    The state keeps ``m`` per element and ``v`` per block: about half of AdamW's bytes.
    The recipe is AdamW's chain with the moment block swapped::

        scale_by_block_moments(b1, b2, partition, mu_dtype=mu_dtype)
        correct_bias(b1, None)
        normalize(eps, b2=b2)
        add_decayed_weights(weight_decay, weight_decay_mask)
        scale_by_learning_rate(learning_rate)

    Args:
      learning_rate: a number ``>= 0`` or a schedule. Default 1e-3.
      b1: decay of the first moment, ``[0, 1)``. Default 0.9.
      b2: decay of the blocks' second moments, ``[0, 1)``. Default 0.999 (the paper's
        LLM runs use 0.95).
      eps: added to the root, ``>= 0``. Default 1e-8.
      weight_decay: decoupled decay, ``>= 0``; ``None`` or the Python 0 leave the block
        out. Default 0.1 (the authors' code).
      partition: the blocks (see :func:`adamx.scale_by_block_moments`): ``None`` for the
        paper's rule, a tree of per-leaf specs (``"leaf"``, ``"full"``, an axis or a
        tuple of axes), or a function of the params returning one. Under
        ``optax.inject_hyperparams`` a function needs ``static_args``.
      weight_decay_mask: a tree of booleans or a function of the params; only ``True``
        leaves are decayed. Default ``None`` (all; the authors' code leaves norms out).
      mu_dtype: the dtype ``m`` is stored in, or ``None`` for the params'. Default None.

    Returns:
      An ``optax.GradientTransformation`` (needs ``params`` in ``update`` when decaying).

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> params = {"mlp": jnp.zeros((2, 2))}
      >>> opt = adamx.adam_mini(learning_rate=0.1, weight_decay=None)
      >>> grads = {"mlp": jnp.asarray([[3.0, 4.0], [1.0, 2.0]])}  # a block per column
      >>> updates, _ = opt.update(grads, opt.init(params), params)
      >>> [[round(float(u), 3) for u in row] for row in updates["mlp"]]  # -lr g / rms(column)
      [[-0.134, -0.126], [-0.045, -0.063]]

    .. warning::
       The default partition reads names and assumes JAX's ``(in, out)`` layout; a tree
       whose names it does not know gets one block per leaf, the coarsest split. Version 1
       of the paper kept value, attention-output and MLP matrices whole; later versions
       (and this default) split them by output neuron. The authors' PyTorch code gives
       embeddings and output heads Adam's per-element ``v`` (spec ``"full"``) and no
       decay to norms; eps here is outside the bias-corrected root, as in adamx's Adam.
       No anchor in optax or torch.optim: tested against a NumPy reference of the paper's
       equations.

    References:
      Zhang, Chen, Li, Ding, Wu, Kingma, Ye, Luo & Sun, "Adam-mini: Use Fewer Learning
      Rates To Gain More", 2024, https://arxiv.org/abs/2406.16793
    """
    check_learning_rate(learning_rate)
    check_range("eps", eps, low=0.0)
    return optax.chain(
        scale_by_block_moments(b1, b2, partition, mu_dtype=mu_dtype),
        correct_bias(b1, None),
        normalize(eps, b2=b2),
        *decay_block(weight_decay, weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    )
