"""LazyAdam: Adam whose rows without gradient keep their moments and parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import (
    ScalarOrSchedule,
    check_decay,
    check_flag,
    check_learning_rate,
    check_moments,
    transformation,
)
from adamx.blocks._correction import bias_correction, correct_bias
from adamx.blocks._decay import maximize_block
from adamx.blocks._moments import MomentsState, scale_by_moments
from adamx.blocks._normalize import normalize
from adamx.blocks._schedule import scale_by_learning_rate
from adamx.optimizers._guard import recipe


def _live_rows(g: jax.Array) -> jax.Array:
    """True for each row (index of the first axis) holding a non-zero gradient element,
    shaped to broadcast against the leaf; a 0-d leaf is one row."""
    if g.ndim == 0:
        return g != 0
    return jnp.any(g != 0, axis=tuple(range(1, g.ndim)), keepdims=True)


def scale_by_lazy_moments(b1: float = 0.9, b2: float = 0.999) -> optax.GradientTransformation:
    """Adam's moments, moved only in the rows where the gradient is not all zero.

    Per leaf, for each row ``i`` (an index of the first axis; a vector's rows are its
    elements, a 0-d leaf is one row)::

        if any(g[i] != 0):  m[i] = b1 * m[i] + (1 - b1) * g[i]
                            v[i] = b2 * v[i] + (1 - b2) * g[i]**2
        else:               m[i], v[i] kept

    The step count ``t`` advances on every update, as one global count. The output is a
    :class:`adamx.Moments` record like :func:`adamx.scale_by_moments`' except in the rows
    left alone, where it carries ``mu = 0`` and ``nu = 1``: any read-out of the record
    (bias correction, then :func:`adamx.normalize`) then gives exactly 0 there, whatever
    ``eps``, while the stored moments keep their values. Embeddings, where a batch
    touches few rows, are the use.

    Args:
      b1: decay of the first moment, ``[0, 1)``. Default 0.9.
      b2: decay of the second moment, ``[0, 1)``. Default 0.999.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`adamx.MomentsState`.
    """
    dense = scale_by_moments(b1, b2)

    def update(grads, state, params=None):
        rec, new = dense.update(grads, state, params)
        live = jax.tree.map(_live_rows, rec.grad)

        def keep(new_tree, old_tree):
            return jax.tree.map(lambda ok, n, o: jnp.where(ok, n, o), live, new_tree, old_tree)

        def read(tree, value):
            return jax.tree.map(lambda ok, x: jnp.where(ok, x, jnp.full_like(x, value)), live, tree)

        kept = MomentsState(count=new.count, mu=keep(new.mu, state.mu), nu=keep(new.nu, state.nu))
        return rec._replace(mu=read(rec.mu, 0), nu=read(rec.nu, 1)), kept

    return transformation(dense.init, update)


def _scale_mu_by_root_bias_correction(b2: float) -> optax.GradientTransformation:
    """Multiply the first moment of a :class:`adamx.Moments` record by ``sqrt(1 - b2**t)``.

    Followed by ``normalize(eps)`` on the raw ``v`` this is the "epsilon-hat" read-out
    ``sqrt(1 - b2**t) * m^ / (sqrt(v) + eps)``: ``eps`` on the root of the raw ``v``, as in
    ``torch.optim.SparseAdam``. Stateless.
    """
    check_decay("b2", b2)

    def update(updates, state, params=None):
        del params
        rec = check_moments(updates, "lazy_adam(eps_hat=True)")
        root = jnp.sqrt(bias_correction(b2, rec.count))
        return rec._replace(mu=jax.tree.map(lambda m: m * root.astype(m.dtype), rec.mu)), state

    return transformation(lambda params: optax.EmptyState(), update)


@recipe
def lazy_adam(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    maximize: bool = False,
    eps_hat: bool = False,
) -> optax.GradientTransformation:
    """LazyAdam: Adam on the rows that have a gradient; the other rows are left alone.

    Per leaf, for each row ``i`` (an index of the first axis), with ``t`` the global step
    number (1 on the first update, advancing whether or not the row moves)::

        if any(g[i] != 0):   m[i], v[i] as in Adam
                             p[i] = p[i] - lr * m^[i] / (sqrt(v^[i]) + eps)
        else:                m[i], v[i], p[i] unchanged (the update is exactly 0)

    With no all-zero row it is :func:`adamx.adam`, bit for bit. Meant for embedding
    tables, where a row that was not looked up should neither decay its moments nor
    drift on stale momentum. The recipe is Adam's with the moment block swapped::

        negate()                          # only if maximize
        scale_by_lazy_moments(b1, b2)     # instead of scale_by_moments
        correct_bias(b1, None)
        normalize(eps, b2=b2)
        scale_by_learning_rate(learning_rate)

    With ``eps_hat=True``, ``eps`` sits on the root of the raw ``v`` ("epsilon hat"),
    ``torch.optim.SparseAdam``'s reading (and TF-Addons' ``LazyAdam``'s)::

        p[i] = p[i] - lr * sqrt(1 - b2**t) / (1 - b1**t) * m[i] / (sqrt(v[i]) + eps)

    and the chain reads the raw ``v``::

        correct_bias(b1, None)
        (m^ <- sqrt(1 - b2**t) * m^)      # eps_hat only
        normalize(eps)                    # instead of normalize(eps, b2=b2)

    Args:
      learning_rate: a number ``>= 0`` or a schedule of the step count. Default 1e-3.
      b1: decay of the first moment, ``[0, 1)``. Default 0.9.
      b2: decay of the second moment, ``[0, 1)``. Default 0.999.
      eps: added to the root of the bias-corrected ``v``, ``>= 0`` (of the raw ``v`` with
        ``eps_hat``). Default 1e-8.
      maximize: ascend instead of descend. Default False.
      eps_hat: put ``eps`` on the root of the raw ``v``, as ``torch.optim.SparseAdam``
        does (``adamx.from_torch("SparseAdam", ...)`` sets it). Default False.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> params = {"emb": jnp.zeros((3, 2))}
      >>> opt = adamx.lazy_adam(learning_rate=0.1)
      >>> g = {"emb": jnp.asarray([[1.0, -1.0], [0.0, 0.0], [0.0, 2.0]])}
      >>> updates, state = opt.update(g, opt.init(params), params)
      >>> [[round(float(u), 4) for u in row] for row in updates["emb"]]  # row 1 is left alone
      [[-0.1, 0.1], [-0.0, -0.0], [-0.0, -0.1]]

    .. warning::
       ``torch.optim.SparseAdam`` (sparse gradients only) and TF-Addons' ``LazyAdam``
       use the "epsilon-hat" form ``lr * sqrt(1 - b2**t) / (1 - b1**t) * m / (sqrt(v) +
       eps)``: ``eps_hat=True``. Without it the two agree for ``eps = 0`` and otherwise
       with ``eps_here = eps_there / sqrt(1 - b2**t)``. SparseAdam moves the elements its
       sparse gradient lists (rows, for ``nn.Embedding(sparse=True)``), here a whole row
       moves when any of its elements is non-zero; and an explicitly stored all-zero row
       moves there, not here. Rows are told apart by their values: a dense row whose gradient
       happens to be exactly zero is treated as absent. optax has no lazy Adam.

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015,
      https://arxiv.org/abs/1412.6980
    """
    check_learning_rate(learning_rate)
    check_flag("eps_hat", eps_hat)
    read_out = (
        [_scale_mu_by_root_bias_correction(b2), normalize(eps)]
        if eps_hat
        else [normalize(eps, b2=b2)]
    )
    return optax.chain(
        *maximize_block(maximize),
        scale_by_lazy_moments(b1, b2),
        correct_bias(b1, None),
        *read_out,
        scale_by_learning_rate(learning_rate),
    )
