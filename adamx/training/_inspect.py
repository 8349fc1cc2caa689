"""Diagnostics: what Adam's per-parameter learning rate does to each leaf of a model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adamx.blocks._base import (
    PyTree,
    ScalarOrSchedule,
    abs_sq,
    check_decay,
    check_learning_rate,
    check_range,
    check_trees_match,
    compute_dtype,
    is_complex,
    real_dtype,
)
from adamx.blocks._correction import bias_correction
from adamx.blocks._moments import MomentsState
from adamx.blocks._rules import MaxNuState
from adamx.storage._flat import FlatMoments

# The hyperparameters `inspect` reads from an `optax.inject_hyperparams` state, by name.
_HYPERPARAMS = ("learning_rate", "b2", "eps", "eps_root")
_INJECTED = (optax.InjectStatefulHyperparamsState, optax.InjectHyperparamsState)


class Diagnostics(NamedTuple):
    """What :func:`adamx.inspect` reports: five trees shaped like the params.

    Each field is a tree with the params' structure (or, without params, the second
    moment's) holding one 0-d array per leaf, so the record is a pytree that a jitted
    function can return.

    Attributes:
      count: int32, the step number ``t`` of the moments that cover the leaf (the number
        of updates taken); ``-1`` for a leaf that no adamx second moment covers (frozen
        by ``optax.masked`` or ``optax.multi_transform``).
      lr_min: the smallest effective learning rate ``lr / (sqrt(v_hat + eps_root) + eps)``
        over the leaf's elements, in the leaf's compute dtype (at least float32).
      lr_median: their median (``jnp.median``: the mean of the two middle values for an
        even number of elements).
      lr_max: their largest.
      update_ratio: ``||u|| / ||p||``, the Euclidean norm of the leaf's update over that of
        the parameter, when :func:`adamx.inspect` was given ``params`` and ``updates``;
        ``None`` otherwise.

    The three rates are NaN for a leaf with no elements, for a leaf no second moment
    covers, and before the first update (``count == 0``, when ``v`` holds no data);
    ``update_ratio`` is NaN when both norms are 0 (a leaf with no elements) and ``inf``
    when only the parameter's is.
    """

    count: PyTree
    lr_min: PyTree
    lr_median: PyTree
    lr_max: PyTree
    update_ratio: PyTree


class _Hyper(NamedTuple):
    learning_rate: Any
    b2: Any
    eps: Any
    eps_root: Any


class _Found(NamedTuple):
    """A `MomentsState` met in the state, the tree of ``v`` its read-out divides by, and
    the hyperparameters injected around it."""

    moments: MomentsState
    nu: PyTree
    injected: dict


def _is_masked(x) -> bool:
    return isinstance(x, optax.MaskedNode)


def _one_level(node) -> tuple[list, Any]:
    """The direct children of a pytree node and its treedef; ``([node], *)`` for a leaf."""
    return jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)


def _find(node, injected: dict, found: list[_Found]) -> None:
    """Collect, depth first, every `MomentsState` with a second moment inside ``node``."""
    if isinstance(node, MomentsState):
        if node.nu is not None:
            found.append(_Found(node, _per_leaf(node.nu), injected))
        return
    if isinstance(node, _INJECTED):
        held = {k: v for k, v in node.hyperparams.items() if k in _HYPERPARAMS and v is not None}
        _find(node.inner_state, {**injected, **held}, found)
        return
    children, treedef = _one_level(node)
    if jax.tree_util.treedef_is_leaf(treedef):
        return
    for i, child in enumerate(children):
        if isinstance(child, MomentsState):
            # AMSGrad: the `keep_max_nu` right after the moments in the same chain divides
            # by its running maximum of v, not by v.
            later = children[i + 1 :]
            stop = next((j for j, c in enumerate(later) if isinstance(c, MomentsState)), None)
            nu_max = [c for c in later[:stop] if isinstance(c, MaxNuState)]
            if nu_max and child.nu is not None:
                found.append(_Found(child, _per_leaf(nu_max[0].nu_max), injected))
                continue
        _find(child, injected, found)


def _per_leaf(nu):
    """A second moment as a tree of leaves (``with_storage(..., nu="flat")`` keeps it flat)."""
    return nu.tree() if isinstance(nu, FlatMoments) else nu


def _overlay(a, b):
    """The union of two moment trees that differ only where one holds a ``MaskedNode``
    (the parts of an ``optax.multi_transform``)."""
    if _is_masked(a):
        return b
    if _is_masked(b):
        return a
    children_a, treedef_a = _one_level(a)
    if jax.tree_util.treedef_is_leaf(treedef_a) or not children_a:
        return a
    children_b, treedef_b = _one_level(b)
    if treedef_a != treedef_b:
        raise ValueError(
            "The optimizer state holds second moments of differently structured trees: "
            f"{treedef_a} vs {treedef_b}. Pass `params` to `adamx.inspect` to fix the tree "
            "of the result, or inspect each part of the state separately."
        )
    return treedef_a.unflatten([_overlay(x, y) for x, y in zip(children_a, children_b)])


def _stat_dtype(dtype) -> jnp.dtype:
    """The dtype a statistic of a leaf is computed and returned in."""
    dtype = jnp.dtype(dtype)
    return compute_dtype(dtype) if jnp.issubdtype(dtype, jnp.floating) else jnp.dtype("float32")


def _rates(v: jax.Array, count: jax.Array, hyper: _Hyper) -> tuple[jax.Array, ...]:
    """``(min, median, max)`` of ``lr / (sqrt(v / (1 - b2**t) + eps_root) + eps)``."""
    dtype = _stat_dtype(v.dtype)
    nan = jnp.full((), jnp.nan, dtype)
    if v.size == 0:
        return nan, nan, nan
    lr = hyper.learning_rate
    if callable(lr):  # the value the last update used: schedules read the earlier updates
        lr = lr(jnp.maximum(count - 1, 0))
    v_hat = v.astype(dtype) / bias_correction(hyper.b2, count).astype(dtype)
    root = jnp.sqrt(v_hat + jnp.asarray(hyper.eps_root, dtype))
    rate = jnp.asarray(lr, dtype) / (root + jnp.asarray(hyper.eps, dtype))
    stats = (jnp.min(rate), jnp.median(rate), jnp.max(rate))
    return tuple(jnp.where(count > 0, s, nan) for s in stats)


def _norm_ratio(u, p) -> jax.Array:
    """``||u|| / ||p||`` of one leaf, in the parameter's compute dtype."""
    dtype = _stat_dtype(real_dtype(jnp.asarray(p).dtype))  # complex leaves: |x|**2, real

    def norm(x):
        x = jnp.asarray(x)
        return jnp.sqrt(
            jnp.sum(abs_sq(x if is_complex(x.dtype) else x.astype(dtype)).astype(dtype))
        )

    return norm(u) / norm(p)


def inspect(
    state: PyTree,
    params: PyTree | None = None,
    updates: PyTree | None = None,
    *,
    learning_rate: ScalarOrSchedule = 1e-3,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
) -> Diagnostics:
    """Per leaf: the step count, Adam's effective per-parameter learning rate (min, median,
    max) and the update-to-parameter norm ratio.

    Adam divides the learning rate of every parameter by the root of its own second
    moment. For each element of a leaf, with ``t`` the step count held in the state::

        v_hat = v / (1 - b2**t)                       (adamx.bias_correction)
        rate  = lr / (sqrt(v_hat + eps_root) + eps)   (the step is rate * m_hat)

    and per leaf ``lr_min``, ``lr_median`` and ``lr_max`` are the minimum, median and
    maximum of ``rate`` over its elements; with ``params`` and ``updates`` also
    ``update_ratio = ||u|| / ||p||`` (Euclidean norms of the whole leaf). A median far
    below ``lr`` means large gradients (small steps); ``lr_max`` near ``lr / eps``
    means parameters whose gradient has been zero (a dead unit or an unused embedding row).
    The ratio is the relative size of the last step; a common rule of thumb puts healthy
    training near 1e-3, and much larger values signal instability.

    The state is searched depth first for :class:`adamx.MomentsState` records (those with
    a second moment) through any nesting of ``optax.chain`` tuples,
    ``optax.inject_hyperparams``, ``optax.MultiSteps``, ``optax.masked``,
    ``optax.multi_transform``, ``optax.apply_if_finite``, :func:`adamx.skip_nonfinite` and
    any other wrapper whose state is a pytree. Each leaf takes its ``t`` from the record
    that covers it, so parts of a ``multi_transform`` may report different counts.

    Hyperparameters are read from the state where it holds them: the ``learning_rate``,
    ``b2``, ``eps`` and ``eps_root`` that an enclosing ``optax.inject_hyperparams`` records
    (the innermost wins; for a schedule, the value the last update used). The keyword
    arguments fill in the others and default to :func:`adamx.adam`'s. Pass the optimizer's
    own values where they differ: the state of ``adamx.adam(learning_rate=0.1)`` does not
    know its learning rate. A schedule is evaluated at ``count - 1``, the number of updates
    before the last one, which is where adamx and optax read it for that update.

    The numbers describe the update that produced ``state`` (the one ``updates`` is):
    ``v`` and ``t`` after it, ``lr`` it used. They are Adam's rate exactly for
    :func:`adamx.adam`, :func:`adamx.adamw`, :func:`adamx.nadam`, :func:`adamx.nadamw`,
    :func:`adamx.yogi` and :func:`adamx.lazy_adam` (for the rows that moved). For
    :func:`adamx.amsgrad` they are read from the running maximum ``v_max`` that its
    denominator uses (the :class:`adamx.MaxNuState` after the moments in the same chain),
    not from the plain ``v``. For :func:`adamx.adabelief` ``v`` is the belief ``s``
    (exact if ``eps_root`` is not passed). For the other holders of a ``MomentsState``
    (``adamax``, ``radam``, ``lamb``, ``rmsprop``, ``adagrad``, ``adadelta``) they are
    Adam's reading of that second moment, not the recipe's own step size.

    Everything runs as traced array operations: no host synchronisation, and a jitted
    call is traced once for a given state structure.

    Args:
      state: the optimizer state, as returned by ``opt.init`` or ``opt.update``.
      params: optional; the parameters (for example those the updates were computed
        from). When given, the result trees have their structure, and leaves no second
        moment covers report ``count = -1`` and NaN rates.
      updates: optional; the last updates, a tree like ``params`` (which are then
        required), for ``update_ratio``.
      learning_rate: a number ``>= 0`` or a schedule of the step count, used where the
        state holds none. Default 1e-3.
      b2: the second moment's decay, ``[0, 1)``. Default 0.999.
      eps: added to the root, ``>= 0``. Default 1e-8.
      eps_root: added inside the root, ``>= 0``. Default 0.

    Returns:
      A :class:`adamx.Diagnostics` of trees, one 0-d array per leaf.

    Raises:
      ValueError: when the state holds no second moment, when two records cover the same
        leaf, or when ``params`` or ``updates`` do not match the state (naming the path).

    Example:
      >>> import jax, jax.numpy as jnp, adamx
      >>> params = {"w": jnp.array([1.0, 2.0, 3.0]), "b": jnp.array(0.5)}
      >>> opt = adamx.adam(learning_rate=0.1)
      >>> state = opt.init(params)
      >>> grads = {"w": jnp.array([1.0, 0.01, 0.0]), "b": jnp.array(1.0)}
      >>> updates, state = opt.update(grads, state, params)
      >>> d = jax.jit(lambda s, p, u: adamx.inspect(s, p, u, learning_rate=0.1))(
      ...     state, params, updates)
      >>> # after one step v_hat = g**2, so the rates are 0.1 / |g|
      >>> int(d.count["w"]), round(float(d.lr_min["w"]), 4), round(float(d.lr_median["w"]), 4)
      (1, 0.1, 10.0)
      >>> float(d.lr_max["w"]) > 1e6  # a zero gradient: lr / eps
      True
      >>> round(float(d.update_ratio["b"]), 3)  # |-0.1| / |0.5|
      0.2
    """
    check_learning_rate(learning_rate)
    check_decay("b2", b2)
    check_range("eps", eps, low=0.0)
    check_range("eps_root", eps_root, low=0.0)
    if updates is not None and params is None:
        raise ValueError(
            "`update_ratio` compares the updates with the parameters: pass `params` along "
            "with `updates`, as in `adamx.inspect(state, params, updates)`."
        )
    found: list[_Found] = []
    _find(state, {}, found)
    if not found:
        raise ValueError(
            f"`adamx.inspect` found no second moment in the optimizer state (a "
            f"{type(state).__name__}). It reads the `adamx.MomentsState` (count, mu, nu) of "
            f"adamx's Adam-style optimizers: adam, adamw, amsgrad, nadam, nadamw, lazy_adam, "
            f"yogi and adabelief (and, read as Adam would, adamax, radam, lamb, rmsprop, "
            f"adagrad, adadelta), nested in chains, inject_hyperparams, MultiSteps, masked, "
            f"multi_transform or other wrappers. sgd, lion, adafactor, adopt and optax's own "
            f"optimizers keep no such state. Pass the state of one of the former."
        )

    # Which record covers each leaf, by path.
    covering: dict[str, tuple[jax.Array, jax.Array, _Hyper]] = {}
    for record, nu, injected in found:
        given = (learning_rate, b2, eps, eps_root)
        hyper = _Hyper(*(injected.get(k, v) for k, v in zip(_HYPERPARAMS, given)))
        for path, v in jax.tree_util.tree_flatten_with_path(nu)[0]:
            key = jax.tree_util.keystr(path)
            if key in covering:
                raise ValueError(
                    f"Two second moments in the optimizer state cover the leaf {key}, so its "
                    f"learning rate is ambiguous. Inspect the part of the state that holds "
                    f"the optimizer you mean, e.g. `adamx.inspect(state[i])`."
                )
            covering[key] = (v, record.count, hyper)

    if params is None:
        template = found[0].nu
        for extra in found[1:]:
            template = _overlay(template, extra.nu)
    else:
        template = params
        if updates is not None:
            check_trees_match(updates, params, "updates", "params")
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)

    seen = set()
    fields = ([], [], [], [], [])
    for path, leaf in leaves:
        key = jax.tree_util.keystr(path)
        if key not in covering:
            dtype = _stat_dtype(jnp.asarray(leaf).dtype)
            nan = jnp.full((), jnp.nan, dtype)
            stats = (jnp.asarray(-1, jnp.int32), nan, nan, nan)
        else:
            seen.add(key)
            v, count, hyper = covering[key]
            if jnp.shape(v) != jnp.shape(leaf):
                raise ValueError(
                    f"params{key} has shape {jnp.shape(leaf)} but the optimizer state "
                    f"expects {jnp.shape(v)}. Pass the params the optimizer was "
                    f"initialised with."
                )
            stats = (count, *_rates(jnp.asarray(v), count, hyper))  # type: ignore[assignment]
        for field, stat in zip(fields, stats):
            field.append(stat)
    missing = [k for k in covering if k not in seen]
    if missing:
        raise ValueError(
            f"The optimizer state has a second moment at {missing[0]} but params has no leaf "
            f"there. Pass the params the optimizer was initialised with."
        )

    ratio = None
    if updates is not None:
        ratio = jax.tree.map(_norm_ratio, updates, params)
    count, lr_min, lr_median, lr_max = (treedef.unflatten(f) for f in fields[:4])  # type: ignore[attr-defined]
    return Diagnostics(count, lr_min, lr_median, lr_max, ratio)


def summarize(diagnostics: Diagnostics, *, precision: int = 3) -> str:
    """A plain-text table of :func:`adamx.inspect`'s result, one row per leaf.

    Columns: the leaf's path, the step count, the effective learning rate's minimum,
    median and maximum, and ``||u|| / ||p||`` (``-`` without updates; ``-`` in the count
    column for a leaf no second moment covers). Values are fetched to the host, so call it
    outside jitted code, for example every few hundred steps.

    Args:
      diagnostics: what :func:`adamx.inspect` returned.
      precision: significant digits of the numbers. Default 3.

    Returns:
      The table, lines joined by newlines, with a header.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> params = {"w": jnp.array([1.0, 2.0])}
      >>> opt = adamx.adam(learning_rate=0.1)
      >>> grads = {"w": jnp.array([1.0, 4.0])}
      >>> updates, state = opt.update(grads, opt.init(params), params)
      >>> print(adamx.summarize(adamx.inspect(state, params, updates, learning_rate=0.1)))
      leaf     count  lr min  lr median  lr max  |u|/|p|
      ['w']        1   0.025     0.0625     0.1   0.0632
    """
    host = jax.device_get(diagnostics)
    paths = jax.tree_util.tree_flatten_with_path(host.count)[0]
    ratio = [None] * len(paths) if host.update_ratio is None else jax.tree.leaves(host.update_ratio)
    number: Callable[[Any], str] = lambda x: f"{float(x):.{precision}g}"  # noqa: E731
    rows = [("leaf", "count", "lr min", "lr median", "lr max", "|u|/|p|")]
    columns = zip(
        paths,
        jax.tree.leaves(host.lr_min),
        jax.tree.leaves(host.lr_median),
        jax.tree.leaves(host.lr_max),
        ratio,
    )
    for (path, count), low, mid, high, r in columns:
        count = int(np.asarray(count))
        rows.append(
            (
                jax.tree_util.keystr(path) or "(root)",
                "-" if count < 0 else str(count),
                number(low),
                number(mid),
                number(high),
                "-" if r is None else number(r),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths))
        ).rstrip()
        for row in rows
    ]
    return "\n".join(lines)
