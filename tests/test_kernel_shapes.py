"""The fused kernels against XLA, bitwise, over awkward leaf shapes.

``adamx.step`` of ``adam``/``adamw`` (csrc/adam_cpu.cc), of ``with_storage(adam, ...)``
(csrc/adam_storage_cpu.cc) and of ``lion`` / ``sgd`` with momentum (csrc/momentum_cpu.cc)
against the same step computed by XLA from the same inputs:
the kernels' documented float32 arithmetic written here in ``jax.numpy`` and jitted, and
for stored moments ``adamx.storage``'s own ``decode`` / ``encode`` (XLA's) with the
stochastic-rounding seeds drawn here from the state's key. Params, moments, bfloat16 bits,
8-bit codes and scales must be equal bit for bit.

The shapes are the ones a vectorised, blocked, threaded loop gets wrong: 0-d, empty (with
and without a zero-length last axis), one element, odd lengths, lengths one off a multiple
of the 16-lane vector width, of the 8-bit blocks (16 and 256 here) and of the kernels'
2048-element segments, more than 2**17 elements in all (the threaded path, several 2**16
chunks), and many tiny leaves (more than one kernel call's ``GROUP`` of leaves). A fixed list
of them runs in a few calls; hypothesis adds a few random lists of lengths.
"""

from __future__ import annotations

import functools
import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_fused_momentum as fm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from test_fused import compile_text, compiler, disabled_in_env, kernel_calls
from test_numerics import set_counts, set_moments

import adamx
from adamx import storage as st
from adamx.kernels import _fused

F32 = jnp.float32
STORAGE_TARGET = "adamx_adam_storage_step_v1"

AWKWARD = [
    (), (0,), (1,), (2, 0, 3), (3, 0), (15,), (16,), (17,), (31,), (33,), (3, 5, 7), (255,),
    (257,), (2, 513), (4, 33, 65), (2047,), (2049,), (1, 1, 17), (401, 333),
]  # fmt: skip
TINY_MANY = [((i % 5) + 1,) if i % 3 else () for i in range(41)]
SHAPE_SETS = {"awkward": AWKWARD, "tiny-many": TINY_MANY}


@pytest.fixture(scope="module")
def kernel():
    if compiler() is None:
        pytest.skip("no C++ compiler on PATH")
    if disabled_in_env():
        pytest.skip("ADAMX_FUSED=0 is set in the environment")
    info = adamx.kernel_info()
    assert info.available, info
    return info


def random_leaves(shapes, seed, n=4):
    """``n`` lists of float32 arrays: p, g (some zeros, a few large), m, v >= 0 (some 0)."""
    rng = np.random.default_rng(seed)
    out = []
    for shape in shapes:
        p = rng.normal(size=shape)
        g = rng.normal(size=shape) * 10.0 ** rng.uniform(-4, 2, size=shape)
        g = np.where(rng.uniform(size=shape) < 0.1, 0.0, g)
        m = rng.normal(size=shape) * 0.1
        v = np.abs(rng.normal(size=shape)) * 1e-2
        v = np.where(g == 0, 0.0, v)
        out.append(tuple(np.asarray(x, np.float32) for x in (p, g, m, v)[:n]))
    return [list(x) for x in zip(*out)] if out else [[] for _ in range(n)]


# ----------------------------------------------------------------------- XLA's step


def xla_adam(p, g, m, v, s, decay: int, maximize: bool):
    """One vector of the kernels' documented arithmetic (csrc/adam_cpu.cc, the header
    comment): the new p, m, v. Called outside ``jit``, each operation is an XLA computation
    of its own, on whole arrays (the scalars made full arrays first), so that XLA rounds
    it as the kernel does. Inside one jitted program XLA's CPU backend rewrites the
    arithmetic: it contracts ``a * b + c`` into fused multiply-adds and divides by a
    broadcast scalar as a multiplication by its reciprocal, so its own step is within 2
    ulp of the kernel (test_fused.py). ``decay``: 0 none, 1 coupled (L2), 2 decoupled."""
    neg_lr, w1, b2, w2, bc1, er_bc2, sq_bc2, eps, wd = (jnp.full(p.shape, s[i]) for i in range(9))
    if maximize:
        g = -g
    if decay == 1:
        g = g + wd * p
    m = m + w1 * (g - m)
    v = b2 * v + (w2 * g) * g
    d = (m / bc1) / (jnp.sqrt(v + er_bc2) / sq_bc2 + eps)
    if decay == 2:
        d = d + wd * p
    return p + neg_lr * d, m, v


def xla_adam_leaves(p, g, m, v, s, decays, maximize: bool):
    """:func:`xla_adam` over lists of leaves (``decays``: each leaf's mode), run on all of
    them ravelled into one vector (the arithmetic is per element) and cut back."""
    shapes = [jnp.shape(x) for x in p]
    flat = [
        jnp.concatenate([jnp.ravel(x) for x in xs] + [jnp.zeros([0], F32)]) for xs in (p, g, m, v)
    ]
    by_decay = {d: xla_adam(*flat, s, d, maximize) for d in set(decays)}
    out: tuple[list, list, list] = ([], [], [])
    at = 0
    for shape, d in zip(shapes, decays):
        size = math.prod(shape)
        for k in range(3):
            out[k].append(by_decay[d][k][at : at + size].reshape(shape))
        at += size
    return out


def scalars_for(opt, state, adam_rule=None):
    """The kernels' float32 scalars for the next step of ``opt`` from ``state`` (made by
    ``_fused.scalars``, checked against float64 maths in test_fused.py)."""
    rule = adam_rule or opt.update.adam_rule
    inner = state if adam_rule is None else state.inner
    count = inner[rule.moments_at].count + 1
    return _fused.scalars(rule, count, rule.learning_rate)


def expected_calls(shapes, grouped: bool) -> int:
    """Kernel calls in the compiled step: one per ``GROUP`` of leaves. The float32 kernel
    is given every leaf, and XLA drops a call whose leaves are all empty (``grouped``); the
    stored-moments kernel is given the non-empty leaves only."""
    sizes = [math.prod(shape) for shape in shapes]
    if not grouped:
        return math.ceil(sum(1 for x in sizes if x) / _fused.GROUP)
    return sum(1 for lo in range(0, len(sizes), _fused.GROUP) if any(sizes[lo : lo + _fused.GROUP]))


# ------------------------------------------------------------------ float32 Adam

FLOAT_CASES = {  # name: (recipe, keyword arguments, decay mode)
    "adam": ("adam", {"learning_rate": 1e-2}, 0),
    "adam-l2-maximize": (
        "adam",
        {"learning_rate": 3e-2, "weight_decay": 0.1, "maximize": True, "eps_root": 1e-6},
        1,
    ),
    "adamw-mask": ("adamw", {"learning_rate": 1e-2, "b1": 0.5, "weight_decay": 0.3}, 2),
}


def check_float_kernel(case: str, shapes, seed: int) -> None:
    name, kw, decay = FLOAT_CASES[case]
    n = len(shapes)
    mask = [i % 3 != 1 for i in range(n)] if name == "adamw" else None
    opt = getattr(adamx, name)(**kw, **({"mask": mask} if mask is not None else {}))
    p, g, m, v = random_leaves(shapes, seed)
    state = set_counts(set_moments(opt.init(p), m, v), 6)
    s = scalars_for(opt, state)
    flags = mask or [True] * n
    maximize = kw.get("maximize", False)

    decays = [decay if f else 0 for f in flags]
    want = xla_adam_leaves(*(list(map(jnp.asarray, x)) for x in (p, g, m, v)), s, decays, maximize)
    step = lambda p, s, g: adamx.step(opt, g, s, p)  # noqa: E731
    assert kernel_calls(compile_text(step, p, state, g)) == expected_calls(shapes, grouped=True)
    new_p, new_state = jax.jit(step)(p, state, g)
    moments = new_state[opt.update.adam_rule.moments_at]
    assert int(moments.count) == 7
    for what, got, w in (
        ("p", new_p, want[0]),
        ("m", moments.mu, want[1]),
        ("v", moments.nu, want[2]),
    ):
        for i, (a, b) in enumerate(zip(got, w)):
            a, b = np.asarray(a), np.asarray(b)
            assert a.dtype == np.float32 and a.shape == shapes[i], (what, i, a.dtype, a.shape)
            np.testing.assert_array_equal(a, b, err_msg=f"{case}: {what}[{i}] of shape {shapes[i]}")


@pytest.mark.parametrize("shapes", list(SHAPE_SETS))
@pytest.mark.parametrize("case", list(FLOAT_CASES))
def test_float32_kernel_equals_xla_bitwise(kernel, case, shapes):
    check_float_kernel(case, SHAPE_SETS[shapes], zlib.crc32(f"{case}{shapes}".encode()))


# -------------------------------------------------------------- stored moments

Q8_16 = st.blockwise8(block_size=16, min_size=0)  # blocks the size of the vector width
Q8_256 = st.blockwise8(block_size=256, min_size=0)

STORAGE_CASES = {  # name: (mu, nu, adamw with a mask?)
    "bf16sr-q8": ("bfloat16_sr", Q8_256, False),
    "q8-bf16sr": (Q8_16, "bfloat16_sr", True),
    "q8-q8": (Q8_16, Q8_16, True),
    "q8default-bf16": ("8bit", "bfloat16", False),  # min_size 4096: small leaves float32
}
# Each case once on the awkward shapes or the tiny leaves, the cheap one on both (an 8-bit
# encode under jit costs a second or two of compile per shape set).
STORAGE_RUNS = [
    ("bf16sr-q8", "awkward"),
    ("q8-bf16sr", "tiny-many"),
    ("q8-q8", "awkward"),
    ("q8default-bf16", "awkward"),
    ("q8default-bf16", "tiny-many"),
]


@functools.partial(jax.jit, static_argnums=0)
def encode_moments(policies, mu, nu, seeds):
    """The stored form of the float32 moments ``mu`` and ``nu`` (lists of leaves) through
    ``policies`` (``(mu's, nu's)``, None: kept as they are); ``seeds``: ``uint32[2n]``, mu's
    leaves' then nu's (used by stochastic rounding only)."""
    n = len(mu)
    return tuple(
        [x if policy is None else policy.encode(x, seeds[at + i]) for i, x in enumerate(xs)]
        for policy, xs, at in ((policies[0], mu, 0), (policies[1], nu, n))
    )


@functools.partial(jax.jit, static_argnums=(0, 3))
def decode_moments(policies, mu, nu, like):
    """The float32 moments of stored ``mu`` and ``nu`` (``like``: the leaves' shapes)."""
    return tuple(
        [x if policy is None else policy.decode(x, y) for x, y in zip(xs, like)]
        for policy, xs in ((policies[0], mu), (policies[1], nu))
    )


def stored_start(opt, policies, params, seed: int):
    """A state of ``opt`` (``with_storage(adam/adamw)``, constant learning rate) at step 6:
    its tree from ``init`` (traced, not run), the stored moments encoding random m and v,
    a rounding key from ``seed``, every other leaf 0."""
    rule = opt.update.stored_adam.rule
    state = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(opt.init, params))
    _, _, m, v = random_leaves([jnp.shape(x) for x in params], seed)
    mu, nu = encode_moments(policies, m, v, jnp.full([2 * len(m)], 7, jnp.uint32))
    inner = list(state.inner)
    inner[rule.moments_at] = adamx.MomentsState(count=jnp.asarray(6, jnp.int32), mu=mu, nu=nu)
    if opt.update.stored_adam.stochastic:
        state = state._replace(key=jax.random.key_data(jax.random.key(seed)))
    return state._replace(inner=tuple(inner))


def rounding_seeds(key, n: int) -> jax.Array:
    """``uint32[n]``: what ``with_storage`` draws for moment leaf ``i`` of an update from
    the state's ``key``: the update's key is the second of ``split(key)``, the seed of
    leaf ``i`` is ``bits(fold_in(that, i))`` (drawn one by one, outside ``jit``)."""
    sub = jax.random.split(jax.random.wrap_key_data(key))[1]
    return jnp.stack(
        [jax.random.bits(jax.random.fold_in(sub, i), (), jnp.uint32) for i in range(n)]
    )


def xla_storage_step(opt, policies, state, params, grads):
    """The step ``adamx.step`` takes for ``with_storage(adam/adamw)``, by XLA: each stored
    moment decoded by its policy, Adam's float32 arithmetic (:func:`xla_adam`), the new
    moments encoded by the policy with the seeds ``with_storage`` draws."""
    stored = opt.update.stored_adam
    rule = stored.rule
    n = len(params)
    flags = rule.mask if rule.mask is not None else [True] * n
    moments = state.inner[rule.moments_at]
    like = tuple(jax.ShapeDtypeStruct(jnp.shape(x), F32) for x in params)
    m, v = decode_moments(policies, moments.mu, moments.nu, like)
    decays = [rule.decay if f else 0 for f in flags]
    s = scalars_for(None, state, rule)
    out, m, v = xla_adam_leaves(params, grads, m, v, s, decays, rule.maximize)
    if stored.stochastic:
        seeds = rounding_seeds(state.key, 2 * n)
    else:
        seeds = jnp.zeros([2 * n], jnp.uint32)
    return (out, *encode_moments(policies, m, v, seeds))


def bits(x) -> np.ndarray:
    x = np.asarray(x)
    return x.view(np.uint16) if x.dtype == jnp.bfloat16 else x


def check_storage_kernel(case: str, shapes, seed: int) -> None:
    mu_spec, nu_spec, decoupled = STORAGE_CASES[case]
    n = len(shapes)
    if decoupled:
        inner = adamx.adamw(1e-2, weight_decay=0.2, mask=[i % 4 != 2 for i in range(n)])
    else:
        inner = adamx.adam(2e-2, b2=0.99)
    opt = adamx.with_storage(inner, mu=mu_spec, nu=nu_spec, seed=seed % 1000)
    policies = tuple(
        None if spec is None else st.resolve(spec).for_moment(role)
        for role, spec in (("mu", mu_spec), ("nu", nu_spec))
    )
    p, g = random_leaves(shapes, seed, 2)
    state = stored_start(opt, policies, p, seed + 1)

    p, g = list(map(jnp.asarray, p)), list(map(jnp.asarray, g))
    want = xla_storage_step(opt, policies, state, p, g)
    step = lambda p, s, g: adamx.step(opt, g, s, p)  # noqa: E731
    new_p, new_state = jax.jit(step)(p, state, g)
    moments = new_state.inner[opt.update.stored_adam.rule.moments_at]
    assert int(moments.count) == 7
    for what, got, w in (
        ("p", new_p, want[0]),
        ("mu", moments.mu, want[1]),
        ("nu", moments.nu, want[2]),
    ):
        for i, (a, b) in enumerate(zip(got, w)):
            assert jax.tree.structure(a) == jax.tree.structure(b), (what, i)
            for part_a, part_b in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
                part_a, part_b = bits(part_a), bits(part_b)
                assert (part_a.dtype, part_a.shape) == (part_b.dtype, part_b.shape), (what, i)
                np.testing.assert_array_equal(
                    part_a, part_b, err_msg=f"{case}: {what}[{i}] of shape {shapes[i]}"
                )
    hlo = compile_text(step, p, state, g)
    calls = hlo.count(f'custom_call_target="{STORAGE_TARGET}"')
    assert calls == expected_calls(shapes, grouped=False)


@pytest.mark.parametrize(
    ("case", "shapes"), STORAGE_RUNS, ids=[f"{c}-{s}" for c, s in STORAGE_RUNS]
)
def test_storage_kernel_equals_xla_bitwise(kernel, case, shapes):
    check_storage_kernel(case, SHAPE_SETS[shapes], zlib.crc32(f"{case}{shapes}".encode()))


# ---------------------------------------------------------- Lion, SGD with momentum


def xla_lion(p, g, m, s, decayed: bool):
    """Lion's documented float32 arithmetic (csrc/momentum_cpu.cc), one XLA computation
    per operation on whole arrays, as :func:`xla_adam`: the new p and m."""
    neg_lr, w1, w2, wd = (jnp.full(p.shape, x) for x in s)
    c = m + w1 * (g - m)
    d = jnp.where(c > 0, jnp.ones_like(c), jnp.where(c < 0, -jnp.ones_like(c), c))
    if decayed:
        d = d + wd * p
    return p + neg_lr * d, m + w2 * (g - m)


def xla_sgd(p, g, b, s, decayed: bool, *, maximize: bool, nesterov: bool):
    """SGD with momentum's documented float32 arithmetic, the same way: the new p and
    buffer (the first step, ``s[4] == 1``, starts the buffer at ``g``)."""
    neg_lr, mu, w, wd = (jnp.full(p.shape, x) for x in s[:4])
    if maximize:
        g = -g
    if decayed:
        g = g + wd * p
    b = g if s[4] == 1 else b * mu + w * g
    d = g + mu * b if nesterov else b
    return p + neg_lr * d, b


def xla_leaves(fn, arrays, decays):
    """``fn(*flat, decayed)`` over lists of leaves, on all of them ravelled into one
    vector (the arithmetic is per element) and cut back: each output a list of leaves."""
    shapes = [jnp.shape(x) for x in arrays[0]]
    flat = [jnp.concatenate([jnp.ravel(x) for x in xs] + [jnp.zeros([0], F32)]) for xs in arrays]
    by_decay = {d: fn(*flat, d) for d in set(decays)}
    out: list[list] = [[] for _ in by_decay[decays[0]]] if decays else []
    at = 0
    for shape, d in zip(shapes, decays):
        size = math.prod(shape)
        for k, whole in enumerate(by_decay[d]):
            out[k].append(whole[at : at + size].reshape(shape))
        at += size
    return out


MOMENTUM_CASES = ["lion", "lion-decay-mask", "sgd", "sgd-first-step", "sgd-nesterov",
                  "sgd-maximize-l2-dampening"]  # fmt: skip


def check_momentum_kernel(case: str, shapes, seed: int) -> None:
    """``adamx.step`` of ``lion`` / ``sgd`` (the kernels of csrc/momentum_cpu.cc) against
    XLA's evaluation of the same arithmetic, with the scalars of test_fused_momentum.py."""
    lion = case.startswith("lion")
    kw, count = (fm.LION_CASES if lion else fm.SGD_CASES)[case]
    n = len(shapes)
    mask = [i % 3 != 1 for i in range(n)] if "mask" in case else None
    opt = adamx.lion(**kw, mask=mask) if lion else adamx.sgd(**kw)
    p, g, m = random_leaves(shapes, seed, n=3)
    state = fm.with_buffer(opt.init(p), m, count)
    s = [jnp.asarray(x) for x in fm.numpy_scalars(case, kw, count)]
    decays = [bool(kw.get("weight_decay")) and (mask is None or mask[i]) for i in range(n)]
    if lion:
        fn = functools.partial(xla_lion, s=s)
    else:
        flags = {"maximize": kw.get("maximize", False), "nesterov": kw.get("nesterov", False)}
        fn = functools.partial(xla_sgd, s=s, **flags)
    want = xla_leaves(
        lambda *a: fn(*a[:3], decayed=a[3]), [list(map(jnp.asarray, x)) for x in (p, g, m)], decays
    )

    step = lambda p, s, g: adamx.step(opt, g, s, p)  # noqa: E731
    hlo = compile_text(step, p, state, g)
    assert fm.calls(hlo, fm.LION if lion else fm.SGD) == expected_calls(shapes, grouped=True)
    new_p, new_state = jax.jit(step)(p, state, g)
    assert int(fm.buffer_state(new_state).count) == min(count + 1, fm.INT32_MAX)
    for what, got, w in (("p", new_p, want[0]), ("buffer", fm.buffer_of(new_state), want[1])):
        for i, (a, b) in enumerate(zip(got, w)):
            a, b = np.asarray(a), np.asarray(b)
            assert a.dtype == np.float32 and a.shape == shapes[i], (what, i, a.dtype, a.shape)
            np.testing.assert_array_equal(a, b, err_msg=f"{case}: {what}[{i}] of shape {shapes[i]}")


@pytest.mark.parametrize("shapes", list(SHAPE_SETS))
@pytest.mark.parametrize("case", MOMENTUM_CASES)
def test_momentum_kernels_equal_xla_bitwise(kernel, case, shapes):
    check_momentum_kernel(case, SHAPE_SETS[shapes], zlib.crc32(f"{case}{shapes}".encode()))


# ------------------------------------------------------------------------ random

# Lengths around the vector width, the 8-bit blocks and the 2048-element segments.
LENGTHS = hs.one_of(
    hs.integers(0, 40),
    hs.sampled_from([15, 16, 17, 255, 256, 257, 2047, 2048, 2049]),
    hs.integers(41, 5000),
)
SHAPE = hs.one_of(
    hs.builds(lambda n: (n,), LENGTHS),
    hs.builds(lambda r, n: (r, n), hs.integers(0, 4), LENGTHS),
    hs.just(()),
)
SHAPES = hs.lists(SHAPE, min_size=1, max_size=10)
RANDOM = settings(
    max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@RANDOM
@given(shapes=SHAPES, case=hs.sampled_from(list(FLOAT_CASES)), seed=hs.integers(0, 2**16))
def test_float32_kernel_equals_xla_on_random_shapes(kernel, shapes, case, seed):
    check_float_kernel(case, shapes, seed)


@RANDOM
@given(shapes=SHAPES, case=hs.sampled_from(list(STORAGE_CASES)), seed=hs.integers(0, 2**16))
def test_storage_kernel_equals_xla_on_random_shapes(kernel, shapes, case, seed):
    check_storage_kernel(case, shapes, seed)


@RANDOM
@given(shapes=SHAPES, case=hs.sampled_from(MOMENTUM_CASES), seed=hs.integers(0, 2**16))
def test_momentum_kernels_equal_xla_on_random_shapes(kernel, shapes, case, seed):
    check_momentum_kernel(case, shapes, seed)
