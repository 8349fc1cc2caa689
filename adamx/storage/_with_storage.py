"""Low-memory optimizer state: any recipe's moments stored through a storage policy.

The algebra of a recipe and the storage of its state are separate: :func:`with_storage`
wraps any optimizer whose state keeps moments (``mu``/``nu`` fields of its NamedTuple
states, as :class:`adamx.MomentsState` has) and stores those leaves in another form
(bfloat16 with stochastic rounding, 8-bit blockwise, factored, ...). Each update decodes
them to their working dtype, runs the inner update unchanged, and encodes the new moments,
all inside the same jitted step.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamx.blocks._base import PyTree
from adamx.storage._flat import Flat, FlatMoments
from adamx.storage._policy import Storage, state_bytes
from adamx.storage._resolve import resolve

# Which NamedTuple fields of a state hold moments, and which policy argument stores them.
FIRST_MOMENT_FIELDS = ("mu", "trace")  # Adam's m, Lion's m, SGD's momentum buffer
SECOND_MOMENT_FIELDS = ("nu", "nu_max", "acc")  # Adam's v, AMSGrad's max, AdaDelta's
_ROLE = {**dict.fromkeys(FIRST_MOMENT_FIELDS, "mu"), **dict.fromkeys(SECOND_MOMENT_FIELDS, "nu")}


class StorageError(NamedTuple):
    """How far the stored moments of one role are from the values the step computed.

    Attributes:
      relative_rms: ``sqrt(sum((stored - x)**2) / sum(x**2))`` over every element of every
        leaf of the role (0 when all ``x`` are 0).
      max_abs: the largest ``|stored - x|``.
    """

    relative_rms: jax.Array
    max_abs: jax.Array


class StoredAdam(NamedTuple):
    """What :func:`adamx.step` needs to run ``with_storage(adam/adamw)`` through the
    stored-moments kernel: the recipe's description and the storage configuration.

    Attributes:
      rule: the inner recipe's :class:`~adamx.optimizers._adam_rule.AdamRule`.
      fused: the inner recipe's ``fused`` choice (None, True or False).
      policies: ``{"mu": policy or None, "nu": policy or None}``.
      track_error: whether the wrapper measures its encoding error (XLA path only).
      stochastic: whether any policy rounds stochastically.
    """

    rule: Any
    fused: bool | None
    policies: dict
    track_error: bool
    stochastic: bool


class StorageState(NamedTuple):
    """State of :func:`with_storage`.

    Attributes:
      inner: the wrapped optimizer's state, its moment leaves in stored form.
      key: a raw ``uint32[2]`` PRNG key for stochastic rounding (advanced every update), or
        an empty array when no policy rounds stochastically.
      error: with ``track_error=True``, a dict from ``"mu"`` / ``"nu"`` (the roles that
        have a policy) to the :class:`StorageError` of the last encode; else ``{}``.
    """

    inner: PyTree
    key: jax.Array
    error: dict


def _is_state(x) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def walk_moments(fn, x, *refs):
    """Rebuild the state tree ``x`` with every moment field ``f`` (of a NamedTuple state,
    at any depth: chains, ``optax.masked``, ``inject_hyperparams``) replaced by
    ``fn(role, value, *ref_values)``; ``refs`` are trees with the same skeleton, read
    alongside."""
    if _is_state(x):
        new = {}
        for f in x._fields:
            value, ref_values = getattr(x, f), [getattr(r, f) for r in refs]
            if f in _ROLE and value is not None:
                new[f] = fn(_ROLE[f], value, *ref_values)
            else:
                new[f] = walk_moments(fn, value, *ref_values)
        return x._replace(**new)
    if isinstance(x, (list, tuple)):
        return type(x)(walk_moments(fn, a, *(r[i] for r in refs)) for i, a in enumerate(x))
    if isinstance(x, dict):
        return {k: walk_moments(fn, v, *(r[k] for r in refs)) for k, v in x.items()}
    return x


def _moment_roles(state) -> set[str]:
    """The roles (``"mu"``, ``"nu"``) of the moment fields found in a state tree."""
    roles: set[str] = set()

    def note(role, value, *_):
        roles.add(role)
        return value

    walk_moments(note, state)
    return roles


def _policies(mu, nu) -> dict[str, Storage | None]:
    """The policies by role, checked against it and given its defaults (8-bit: the signed
    code for ``mu``, the unsigned one for ``nu``)."""
    policies = {}
    for role, spec in (("mu", mu), ("nu", nu)):
        policy = resolve(spec)
        policies[role] = None if policy is None else policy.for_moment(role)
    return policies


def _probe_roles(opt: optax.GradientTransformation) -> set[str] | None:
    """The moment roles an optimizer's state has, from its ``init`` on a small probe tree;
    None when ``init`` cannot run on the probe (a mask or a partition of other params)."""
    probe = {"w": jax.ShapeDtypeStruct((4, 4), jnp.float32)}
    try:
        state = jax.eval_shape(opt.init, probe)
    except Exception:  # noqa: BLE001 - the check moves to init time
        return None
    return _moment_roles(state)


def _check_roles(roles: set[str], policies, who: str) -> None:
    for role, policy in policies.items():
        if policy is not None and role not in roles:
            fields = FIRST_MOMENT_FIELDS if role == "mu" else SECOND_MOMENT_FIELDS
            raise ValueError(
                f"with_storage({role}={policy.name!r}): {who} keeps no "
                f"{'first' if role == 'mu' else 'second'} moment (no state field named "
                f"{' / '.join(fields)}). Pass {role}=None, or wrap an optimizer that has one."
            )


def with_storage(
    optimizer: optax.GradientTransformation,
    *,
    mu: str | Storage | None = None,
    nu: str | Storage | None = None,
    seed: int = 0,
    track_error: bool = False,
) -> optax.GradientTransformation:
    """Store an optimizer's moments through storage policies; the algebra is unchanged.

    Per update::

        m, v = decode(stored_m), decode(stored_v)         # to the state's working dtype
        updates, (m, v) = inner.update(grads, (m, v))     # the recipe, as it is
        stored_m, stored_v = encode(m), encode(v)         # rounding / quantizing here

    ``mu`` applies to first moments (state fields ``mu``, ``trace``), ``nu`` to second
    moments (``nu``, ``nu_max``, ``acc``). A policy is a name or an object from
    ``adamx.storage``:

    * ``"float32"``, ``"bfloat16"``, ``"float16"``: a cast; ``"bfloat16_sr"``,
      ``"float16_sr"``: a cast with stochastic rounding (unbiased; deterministic given the
      key kept in this state, advanced every step, started from ``seed``);
    * ``"8bit"``: blockwise 8-bit quantization (blocks of 256, one float32 absmax per
      block, a signed dynamic code for ``mu`` and an unsigned one for ``nu`` that never
      rounds a non-zero value to zero), codes rounded stochastically with the key kept
      here (``blockwise8(stochastic_rounding=False)`` rounds to nearest: Adam's slow
      ``nu`` then freezes, see :func:`adamx.storage.blockwise8`); leaves under 4,096
      elements stay float32;
    * ``"flat"``: every leaf of the moment in one 1-D buffer per dtype
      (:class:`adamx.storage.FlatMoments`), the same values: for models of many small
      leaves, where passing ~4 arrays per leaf in and out of a jitted step costs more than
      the arithmetic (``mu="flat", nu="flat"`` passes 4 in all);
    * ``"factored"`` (``nu`` only): row and column means of each matrix of at least
      128 x 128 (others stay float32). With Adam's ``v = b2 * v + (1 - b2) * g**2`` the
      stored rows and columns are exactly Adafactor's moving averages of the row and column
      means of ``g**2``; a step uses ``b2 * R C^T / mean(R) + (1 - b2) * g**2``, the
      rebuilt history plus the current gradient at full rank.

    With :func:`adamx.adam` or :func:`adamx.adamw` inside, :func:`adamx.step` runs a
    fused CPU kernel that decodes, updates and encodes each element in one pass, params
    and stored moments in place, for moments stored as float32, ``"bfloat16"``,
    ``"bfloat16_sr"`` or ``"8bit"`` (without ``track_error``), and for ``mu="flat",
    nu="flat"`` (the float32 kernel on the buffers); its state is the one
    ``update`` makes, so the two are interchangeable at any step (``fused=False`` on the
    recipe, or ``ADAMX_FUSED=0``, keeps the XLA path).

    Args:
      optimizer: any optimizer whose state keeps the moments asked for.
      mu: the first moments' policy, or None to keep them as they are.
      nu: the second moments' policy, or None.
      seed: the seed of the stochastic-rounding key.
      track_error: also record, every step, how far the stored moments are from the
        computed ones (:class:`StorageError` in ``state.error``; read it with
        :func:`adamx.storage_error`). Costs a decode per step. Default False.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is :class:`StorageState`;
      extra keyword arguments of ``update`` go on to ``optimizer``.

    Raises:
      ValueError: at construction, for an unknown policy, a policy that does not fit the
        moment (``mu="factored"``), or an optimizer without that moment; at ``init``, for a
        policy asked to store a complex moment (``mu`` of complex params).

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.with_storage(adamx.adam(1e-3), mu="8bit", nu="8bit")
      >>> params = {"w": jnp.zeros((256, 256))}
      >>> state = opt.init(params)
      >>> round(adamx.state_bytes_per_param(state, params), 2)  # float32 Adam: 8.0
      2.03

    References:
      Dettmers et al., "8-bit Optimizers via Block-wise Quantization", ICLR 2022,
      https://arxiv.org/abs/2110.02861; Shazeer & Stern, "Adafactor", ICML 2018,
      https://arxiv.org/abs/1804.04235; Zamirai et al., "Revisiting BFloat16 Training",
      2020, https://arxiv.org/abs/2010.06192 (stochastic rounding of optimizer state).
    """
    policies = _policies(mu, nu)
    who = getattr(optimizer, "__name__", None) or "the optimizer"
    roles = _probe_roles(optimizer)
    if roles is not None:
        _check_roles(roles, policies, who)
    stochastic = any(p is not None and p.stochastic for p in policies.values())
    with_extras = optax.with_extra_args_support(optimizer)  # extras go on to the inner update

    def encode_all(inner, key):
        """Encode every moment leaf (the tree holds them in working form); with
        ``track_error`` also measure what the encoding lost."""
        index = [0]
        sums = {role: [] for role, policy in policies.items() if policy is not None}
        # one seed per moment leaf, drawn in one call (a key per leaf would put one
        # threefry per leaf into the program: 13 s of compile for 100 leaves, measured)
        seeds = rounding_seeds(key, _count_moment_leaves(inner)) if stochastic else None

        def encode(role, value):
            policy = policies[role]
            if isinstance(policy, Flat):  # lossless: the whole tree in one buffer per dtype
                index[0] += len(jax.tree.leaves(value))
                return FlatMoments.of(value)
            if policy is not None:
                _check_real(role, policy, value)
            leaves, treedef = jax.tree.flatten(value)
            out = []
            for x in leaves:
                leaf_key = None
                if policy is not None and policy.stochastic:
                    leaf_key = seeds[index[0]]
                stored = x if policy is None else policy.encode(x, leaf_key)
                if track_error and policy is not None:
                    like = jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))
                    sums[role].append(_error_terms(x, policy.decode(stored, like)))
                out.append(stored)
                index[0] += 1
            return jax.tree.unflatten(treedef, out)

        encoded = walk_moments(encode, inner)
        error = {role: _reduce_error(terms) for role, terms in sums.items()} if track_error else {}
        return encoded, error

    def decode_all(stored, like):
        """Decode every moment leaf to the working shape and dtype given by ``like``."""

        def decode(role, value, like_value):
            policy = policies[role]
            if policy is None:
                return value
            if isinstance(policy, Flat):
                return value.tree()
            shapes, treedef = jax.tree.flatten(like_value)
            parts = treedef.flatten_up_to(value)
            return jax.tree.unflatten(treedef, [policy.decode(v, s) for v, s in zip(parts, shapes)])

        return walk_moments(decode, stored, like)

    # The moments of a fresh state are constants (zeros); under jit XLA would fold the whole
    # encode into the program at compile time (14 s for 7M params in 8 bits, measured). The
    # barrier keeps the encode a computation (0.14 s). Jitted, so that an eager init compiles
    # one program, not each of the encode's operations per leaf shape (three leaves in 8
    # bits: 207 compiles, 7.5 s of CPU, measured); inside a caller's jit it is inlined.
    fresh_encode = jax.jit(lambda inner, key: encode_all(_barrier(inner), key))

    def init(params):
        inner = optimizer.init(params)
        _check_roles(_moment_roles(inner), policies, who)
        key = (
            jax.random.key_data(jax.random.key(seed)) if stochastic else jnp.zeros([0], jnp.uint32)
        )
        encoded, error = fresh_encode(inner, key)
        return StorageState(inner=encoded, key=key, error=error)

    def update(grads, state, params=None, **extra_args):
        # The working shapes and dtypes of the moments: those of a fresh init (the grads
        # have the params' structure, shapes and dtypes).
        like = jax.eval_shape(optimizer.init, grads)
        inner = decode_all(state.inner, like)
        updates, inner = with_extras.update(grads, inner, params, **extra_args)
        key, sub = next_rounding_key(state.key, stochastic)
        encoded, error = encode_all(inner, sub)
        return updates, StorageState(inner=encoded, key=key, error=error)

    rule = getattr(optimizer.update, "adam_rule", None)
    if rule is not None:  # adamx.adam / adamw: adamx.step can take the fused kernel
        fused = getattr(optimizer.update, "fused", None)
        update.stored_adam = StoredAdam(rule, fused, policies, track_error, stochastic)  # type: ignore[attr-defined]
    return optax.GradientTransformationExtraArgs(init, update)


def _check_real(role: str, policy: Storage, value: PyTree) -> None:
    """Raise ``ValueError`` at the first complex leaf of a moment that a policy would store:
    the policies hold real numbers (a complex param's second moment is real and stores
    fine; its first moment is complex)."""
    for path, x in jax.tree_util.tree_flatten_with_path(value)[0]:
        dtype = jnp.result_type(x)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            raise ValueError(
                f"with_storage({role}={policy.name!r}): the {role} leaf of "
                f"params{jax.tree_util.keystr(path)} is {dtype.name}; the storage policies "
                f"hold real moments only. Pass {role}=None (a complex param's second moment, "
                f"`nu`, is real and can be stored), or store the complex leaves' moments as "
                f"they are by leaving them out of this optimizer (`optax.masked`)."
            )


def _count_moment_leaves(inner) -> int:
    """How many array leaves the moment fields of a state hold (the order of ``walk_moments``)."""
    count = [0]

    def note(role, value, *_):
        count[0] += len(jax.tree.leaves(value))
        return value

    walk_moments(note, inner)
    return count[0]


def _barrier(tree):
    """``jax.lax.optimization_barrier`` over the array leaves of ``tree`` (others as they are)."""
    leaves, treedef = jax.tree.flatten(tree)
    at = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array)]
    if at:
        for i, x in zip(at, jax.lax.optimization_barrier([leaves[i] for i in at])):
            leaves[i] = x
    return jax.tree.unflatten(treedef, leaves)


def next_rounding_key(key: jax.Array, stochastic: bool) -> tuple[jax.Array, jax.Array]:
    """``(the state's next key, this update's key)`` from a :class:`StorageState` key (the
    raw ``uint32[2]`` data); both are ``key`` itself when nothing rounds stochastically."""
    if not stochastic:
        return key, key
    new, sub = jax.random.split(jax.random.wrap_key_data(key))
    return jax.random.key_data(new), jax.random.key_data(sub)


def rounding_seeds(key: jax.Array, n: int) -> jax.Array:
    """``uint32[n]``: the stochastic-rounding seeds of moment leaves ``0 .. n-1`` (counted
    over every moment field, in the order ``walk_moments`` visits them) from an update's raw key:
    leaf ``i`` gets ``jax.random.bits(fold_in(key, i))``, drawn for all leaves in one call.
    Both the XLA path and the fused kernel hash each element's index with these."""
    base = jax.random.wrap_key_data(key)
    draw = lambda i: jax.random.bits(jax.random.fold_in(base, i), (), jnp.uint32)  # noqa: E731
    return jax.vmap(draw)(jnp.arange(n, dtype=jnp.uint32))


def _error_terms(x, stored) -> tuple[jax.Array, jax.Array, jax.Array]:
    x = jnp.asarray(x, jnp.float32)
    diff = jnp.asarray(stored, jnp.float32) - x
    return jnp.sum(diff * diff), jnp.sum(x * x), jnp.max(jnp.abs(diff), initial=0.0)


def _reduce_error(terms) -> StorageError:
    if not terms:
        zero = jnp.zeros([], jnp.float32)
        return StorageError(zero, zero)
    err2 = sum(t[0] for t in terms)
    ref2 = sum(t[1] for t in terms)
    rel = jnp.where(ref2 > 0, jnp.sqrt(err2 / jnp.where(ref2 > 0, ref2, 1.0)), 0.0)
    return StorageError(rel, jnp.max(jnp.stack([t[2] for t in terms])))


def storage_error(state: PyTree) -> dict:
    """The :class:`StorageError` of every role, from the first :class:`StorageState` found
    in ``state`` (a :func:`with_storage` state, alone or inside chains and wrappers).

    Returns ``{}`` when the state was made without ``track_error=True``.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.with_storage(adamx.adam(0.1), mu="8bit", nu="8bit", track_error=True)
      >>> params = {"w": jnp.linspace(-1.0, 1.0, 8192)}
      >>> state = opt.init(params)
      >>> _, state = opt.update(params, state, params)
      >>> err = adamx.storage_error(state)
      >>> sorted(err), bool(err["mu"].relative_rms < 0.02)
      (['mu', 'nu'], True)
    """
    found = []

    def visit(x):
        if isinstance(x, StorageState):
            found.append(x)
        return x

    jax.tree.map(visit, state, is_leaf=lambda x: isinstance(x, StorageState))
    if not found:
        raise ValueError("storage_error: no with_storage state (StorageState) in `state`.")
    return found[0].error


def state_bytes_per_param(state: PyTree, params: PyTree) -> float:
    """Bytes of every array in an optimizer state over the number of parameters, measured
    from the arrays themselves (:func:`adamx.storage.state_bytes`; float32 Adam: 8 plus a
    few bytes for counters)."""
    n = sum(math.prod(jnp.shape(x)) for x in jax.tree.leaves(params))
    return state_bytes(state) / max(n, 1)
