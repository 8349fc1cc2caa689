"""The JAX contract, checked for every optimizer in one table.

Each row of ``OPTIMIZERS`` builds an optimizer from keyword arguments; every test below runs
over all rows. A new alias joins the suite by adding a row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx


class Row(NamedTuple):
    """One optimizer of the table: ``factory(**kwargs)``.

    ``steps`` and ``cosine`` set the convergence test (a cosine-decayed or constant learning
    rate); ``warmup`` is the number of updates a recipe takes before it moves the params
    (ADOPT's first update is zero by design).
    """

    factory: Callable[..., optax.GradientTransformation]
    kwargs: dict
    steps: int = 2000
    cosine: bool = True
    warmup: int = 0


def cautious_adamw(
    learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4
) -> optax.GradientTransformation:
    """C-AdamW, ``adamx.cautious(adamx.adamw(...))``: the Cautious wrapper's row (its
    arguments named, as ``optax.inject_hyperparams`` reads the factory's signature)."""
    return adamx.cautious(adamx.adamw(learning_rate, b1, b2, eps, weight_decay=weight_decay))


# The factory must accept the kwargs as keywords, so that
# `optax.inject_hyperparams(factory)(**kwargs)` is the same optimizer.
OPTIMIZERS = {
    "adam": Row(adamx.adam, dict(learning_rate=1e-2)),
    "adam_l2": Row(adamx.adam, dict(learning_rate=1e-2, weight_decay=1e-2)),
    "adam_eps_root": Row(adamx.adam, dict(learning_rate=1e-2, eps_root=1e-8)),
    "adamw": Row(adamx.adamw, dict(learning_rate=1e-2, weight_decay=1e-2)),
    "adam_nesterov": Row(adamx.adam, dict(learning_rate=2e-2, nesterov=True)),
    "amsgrad": Row(adamx.amsgrad, dict(learning_rate=5e-2)),
    "adan": Row(adamx.adan, dict(learning_rate=1e-2, weight_decay=1e-2)),
    "ademamix": Row(
        adamx.ademamix, dict(learning_rate=1e-2, b3=0.99, alpha=2.0, weight_decay=1e-2)
    ),
    "simplified_ademamix": Row(
        adamx.simplified_ademamix, dict(learning_rate=1e-3, alpha=1.0, weight_decay=1e-2)
    ),
    "adamax": Row(adamx.adamax, dict(learning_rate=2e-2, b2=0.99)),
    "nadam": Row(adamx.nadam, dict(learning_rate=2e-2)),
    "nadam_scheduleless": Row(adamx.nadam, dict(learning_rate=2e-2, momentum_decay=None)),
    "nadamw": Row(adamx.nadamw, dict(learning_rate=2e-2, weight_decay=1e-2)),
    "radam": Row(adamx.radam, dict(learning_rate=1e-2, b2=0.99)),
    "radam_decoupled": Row(
        adamx.radam,
        dict(learning_rate=1e-2, b2=0.99, weight_decay=1e-2, decoupled_weight_decay=True),
    ),
    "adabelief": Row(adamx.adabelief, dict(learning_rate=1e-2)),
    "yogi": Row(adamx.yogi, dict(learning_rate=5e-2)),
    "sgd": Row(adamx.sgd, dict(learning_rate=2e-3, momentum=0.9)),
    "sgd_nesterov": Row(adamx.sgd, dict(learning_rate=2e-3, momentum=0.9, nesterov=True)),
    "sgd_dampening_l2": Row(
        adamx.sgd, dict(learning_rate=2e-3, momentum=0.9, dampening=0.5, weight_decay=1e-2)
    ),
    # decays exact in float32, so that injected (float32) and plain values are the same
    "rmsprop": Row(adamx.rmsprop, dict(learning_rate=1e-2, decay=0.9921875, momentum=0.875)),
    "rmsprop_centered": Row(
        adamx.rmsprop,
        dict(
            learning_rate=1e-2,
            decay=0.9921875,
            momentum=0.875,
            centered=True,
            eps_in_sqrt=True,
            weight_decay=1e-2,
        ),
    ),
    # AdaGrad, AdaDelta and Adafactor are slow on Rosenbrock: more steps
    "adagrad": Row(
        adamx.adagrad, dict(learning_rate=0.5, lr_decay=1e-4, weight_decay=1e-2), 5000, False
    ),
    "adadelta": Row(adamx.adadelta, dict(learning_rate=1.0, weight_decay=1e-2), 5000),
    "lamb": Row(adamx.lamb, dict(learning_rate=5e-2, weight_decay=1e-2)),
    "lion": Row(adamx.lion, dict(learning_rate=3e-2, weight_decay=1e-2)),
    # the matrices of the contract's trees take Newton-Schulz steps (float32 iteration, so
    # that the float64 references apply), the vectors and scalars AdamW's
    "muon": Row(
        adamx.muon,
        dict(learning_rate=2e-2, weight_decay=1e-2, ns_dtype="float32", adam_weight_decay=1e-2),
    ),
    "adafactor": Row(adamx.adafactor, dict(learning_rate=1e-1, weight_decay=1e-2), 5000),
    "adopt": Row(adamx.adopt, dict(learning_rate=1e-1), warmup=1),
    "lazy_adam": Row(adamx.lazy_adam, dict(learning_rate=5e-2)),
    # issue 16, second batch. Schedule-free methods want a constant rate (the averaging is
    # their decay) and average from the start: more steps; sign steps crawl along Rosenbrock.
    "adamaxw": Row(adamx.adamaxw, dict(learning_rate=2e-2, b2=0.99, weight_decay=1e-2)),
    "lars": Row(adamx.lars, dict(learning_rate=1.0, trust_coefficient=0.02, weight_decay=1e-2)),
    "novograd": Row(adamx.novograd, dict(learning_rate=2e-2, weight_decay=1e-2)),
    "optimistic_adam": Row(adamx.optimistic_adam, dict(learning_rate=1e-2)),
    "schedule_free_adamw": Row(
        adamx.schedule_free_adamw, dict(learning_rate=1e-2, weight_decay=1e-2), 5000, False
    ),
    "schedule_free_sgd": Row(
        adamx.schedule_free_sgd, dict(learning_rate=2e-3, b1=0.5, weight_decay=1e-2), 5000, False
    ),
    "sign_sgd": Row(adamx.sign_sgd, dict(learning_rate=1e-3), 10000),
    "signum": Row(adamx.signum, dict(learning_rate=1e-2)),
    # issue 18, first part. Cautious is a wrapper (not in adamx.OPTIMIZERS): its row is
    # C-AdamW, the paper's main instance
    "cautious_adamw": Row(cautious_adamw, dict(learning_rate=2e-2, weight_decay=1e-2)),
    "laprop": Row(adamx.laprop, dict(learning_rate=1e-2, weight_decay=1e-2)),
    "mars": Row(adamx.mars, dict(learning_rate=1e-2, weight_decay=1e-2)),
    # issue 18, second part. The contract's trees have no transformer names: Adam-mini keeps
    # one block per leaf; SOAP rotates the matrices (its first update sets up their bases
    # and moves them by the decay only; refreshes every 2 steps) and gives the vectors and
    # scalars (so the convergence problems) Adam's step.
    "adam_mini": Row(adamx.adam_mini, dict(learning_rate=1e-2, weight_decay=1e-2)),
    "soap": Row(
        adamx.soap,
        dict(learning_rate=1e-2, weight_decay=1e-2, precondition_frequency=2),
        warmup=1,
    ),
    # issue 16, fourth batch: the learning rate multiplies the estimated step size D, which
    # starts at estim_lr0 (0.1 here: float16 params hold its first steps, 1e-6 ones underflow)
    "prodigy": Row(adamx.prodigy, dict(learning_rate=1.0, estim_lr0=0.1, weight_decay=1e-2)),
    "dadapt_adamw": Row(
        adamx.dadapt_adamw, dict(learning_rate=1.0, estim_lr0=0.1, weight_decay=1e-2)
    ),
    # rank and update_proj_gap set shapes and are left at their defaults (ints would be
    # traced by inject_hyperparams): the contract's small matrices are projected at full rank
    "galore": Row(adamx.galore, dict(learning_rate=1e-2, weight_decay=1e-2)),
    # issue 16, third batch. Rprop's learning_rate is the initial step size (no schedule);
    # ASGD is plain SGD without momentum (a constant rate, more steps), averaging from 100.
    "rprop": Row(adamx.rprop, dict(learning_rate=1e-2), 2000, False),
    "asgd": Row(adamx.asgd, dict(learning_rate=2e-3, t0=100.0, weight_decay=1e-2), 5000, False),
    "sm3": Row(adamx.sm3, dict(learning_rate=0.3)),
    "madgrad": Row(adamx.madgrad, dict(learning_rate=1e-2, weight_decay=1e-2)),
    # ACProp divides g by the spread of g around its average, which vanishes on these
    # deterministic problems: with its eps of 1e-16 it blows up on Rosenbrock (as optax's)
    "acprop": Row(
        adamx.acprop,
        dict(learning_rate=3e-3, eps=1e-4, eps_root=1e-4, weight_decay=1e-2),
        5000,
    ),
}
NAMES = sorted(OPTIMIZERS)
# The structural contracts (pytrees, dtypes, jit and donation, cond / scan, optax wrappers)
# run on one row per distinct chain of blocks. The rows in REPEATS change a number or a
# branch inside a block that a structural row already runs; the numeric contracts
# (inject_hyperparams, traced hyperparameters, convergence) keep every row. A new row is
# structural unless it is added here with the row that already runs its chain.
REPEATS = {
    "adam": "adam_l2 runs Adam's chain, plus L2",
    "adam_eps_root": "adam_l2 runs Adam's chain; eps_root is a number in its read-out",
    "adam_nesterov": "adam_l2 runs Adam's chain; nesterov is a branch of its moments block",
    "nadam_scheduleless": "nadam runs the chain; no momentum schedule is a branch of it",
    "radam": "radam_decoupled runs RAdam's chain, plus the decoupled decay",
    "sgd": "sgd_dampening_l2 runs the momentum trace, plus dampening and L2",
    "sgd_nesterov": "sgd_dampening_l2 runs the momentum trace; nesterov is a branch of it",
    "rmsprop": "rmsprop_centered runs RMSProp's chain, plus centering",
}
STRUCTURAL = [name for name in NAMES if name not in REPEATS]


def make(name: str) -> optax.GradientTransformation:
    return OPTIMIZERS[name].factory(**OPTIMIZERS[name].kwargs)


def float32_kwargs(kwargs: dict) -> dict:
    """The row's numbers rounded to float32, as ``inject_hyperparams`` and tracing see them."""
    return {k: float(np.float32(v)) if isinstance(v, float) else v for k, v in kwargs.items()}


class Pair(NamedTuple):
    a: jax.Array
    b: jax.Array


def messy_tree(dtype=jnp.float32):
    """Every kind of container and leaf a user may hand us."""
    k = iter(jax.random.split(jax.random.key(0), 8))
    r = lambda shape: jax.random.normal(next(k), shape, dtype)  # noqa: E731
    return {
        "dense": {"kernel": r((3, 4)), "bias": r((4,))},
        "layers": [r((2,)), (r((2, 2)), None)],
        "pair": Pair(a=r(()), b=r((5,))),
        "empty": jnp.zeros((0, 3), dtype),
        "scalar": jnp.asarray(0.5, dtype),
    }


def small_tree(dtype=jnp.float32):
    """A matrix and a vector: each leaf kind a recipe treats differently (Newton-Schulz,
    projections and Kronecker factors take matrices), for the contracts that do not depend
    on the container (``messy_tree`` has every container kind)."""
    k1, k2 = jax.random.split(jax.random.key(2))
    return {"w": jax.random.normal(k1, (3, 4), dtype), "b": jax.random.normal(k2, (4,), dtype)}


def grads_like(params, seed=1):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        treedef,
        [jax.random.normal(k, jnp.shape(x), jnp.result_type(x)) for k, x in zip(keys, leaves)],
    )


def dtypes(tree):
    return jax.tree.map(lambda x: jnp.result_type(x), tree)


def train_step(opt):
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


# Rows whose step leaves some components of a leaf where they are by design.
MAY_HOLD = {"rprop": "a component whose gradient changed sign takes no step (torch, optax)"}


def stack(trees):
    """A list of trees as one tree of stacked leaves: the xs of a ``lax.scan``."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


@pytest.mark.parametrize("name", STRUCTURAL)
def test_any_pytree_under_jit_scan_cond_and_donation(name):
    """Every kind of container and leaf, stepped eagerly and as a jitted ``lax.scan`` whose
    body takes the step under ``lax.cond`` (both branches must agree in type), params and
    state donated, called twice: traced once, the same numbers as the eager steps, and the
    structure, shapes and dtypes of updates and state kept."""
    opt = make(name)
    params = messy_tree()
    state = opt.init(params)
    half = OPTIMIZERS[name].warmup + 2
    grads = [grads_like(params, seed=i) for i in range(2 * half)]

    eager = (params, state)
    for g in grads:
        updates, new_state = opt.update(g, eager[1], eager[0])
        eager = (optax.apply_updates(eager[0], updates), new_state)
    chex.assert_trees_all_equal_structs(updates, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
    chex.assert_tree_all_finite(updates)
    # a non-zero gradient moves every element of every non-empty leaf (for MAY_HOLD's rows,
    # some elements)
    leaves = [np.asarray(u) for u in jax.tree.leaves(updates) if u.size]
    if name in MAY_HOLD:
        assert any(np.any(u != 0) for u in leaves), leaves
    else:
        assert all(np.all(u != 0) for u in leaves), leaves

    traces = []

    def run(params, state, grads):
        traces.append(1)

        def body(carry, g):
            new = train_step(opt)(*carry, g)
            return jax.lax.cond(all_finite(g), lambda: new, lambda: carry), None

        return jax.lax.scan(body, (params, state), grads)[0]

    jitted = jax.jit(run, donate_argnums=(0, 1))
    out = jitted(*jax.tree.map(jnp.copy, (params, state)), stack(grads[:half]))
    out = jitted(*out, stack(grads[half:]))
    assert len(traces) == 1, "the jitted step was traced more than once"
    chex.assert_trees_all_close(out, eager, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_equal_shapes_and_dtypes(out[1], state)


def low_precision_tree():
    """bfloat16 and float16 leaves mixed in one tree, each dtype with a matrix, a vector or
    a scalar."""
    bf16, f16 = small_tree(jnp.bfloat16), small_tree(jnp.float16)
    return {"bf16": bf16, "f16": {"w": f16["w"], "s": f16["b"][0]}}


@pytest.mark.parametrize("name", STRUCTURAL)
def test_low_precision_params_give_low_precision_updates(name):
    """bfloat16 and float16 params: updates, new params (and so the state the next update
    reads) keep each leaf's dtype. Eager: dtypes are decided when the update is traced,
    the same under ``jit`` (test_any_pytree_under_jit_scan_cond_and_donation)."""
    opt = make(name)
    params = low_precision_tree()
    state = opt.init(params)
    for seed in range(3):
        updates, state = opt.update(grads_like(params, seed=seed), state, params)
        params = optax.apply_updates(params, updates)
        assert dtypes(params) == dtypes(updates) == dtypes(low_precision_tree())
    chex.assert_tree_all_finite(updates)


@pytest.mark.parametrize("name", STRUCTURAL)
def test_chains_with_optax_wrappers(name):
    params = small_tree()
    grads, g2 = grads_like(params), grads_like(params, seed=7)
    mask = {"w": True, "b": False}

    def updates(opt, grads, state=None):
        return opt.update(grads, opt.init(params) if state is None else state, params)

    def run(grads, g2):
        inner = make(name)
        # clipping in front of it
        chained = updates(optax.chain(optax.clip_by_global_norm(1e-3), make(name)), grads)[0]
        clipped = optax.clip_by_global_norm(1e-3).update(grads, optax.EmptyState())[0]
        # MultiSteps: k micro-batches average into one step of the inner optimizer
        multi = optax.MultiSteps(make(name), every_k_schedule=2)
        with jax.numpy_dtype_promotion("standard"):  # optax.MultiSteps divides f32 by int32
            u_a, state = updates(multi, grads)
            u_b, _ = updates(multi, g2, state)
        mean = jax.tree.map(lambda a, b: (a + b) / 2, grads, g2)
        return dict(
            chained=chained,
            clipped=updates(inner, clipped)[0],
            u_a=u_a,
            u_b=u_b,
            mean=updates(inner, mean)[0],
            # frozen leaves pass their input through; the others step as without the mask
            masked=updates(optax.masked(make(name), mask), clipped)[0],
            clipped_grads=clipped,
        )

    out = jax.jit(run)(grads, g2)
    chex.assert_trees_all_close(out["chained"], out["clipped"], rtol=1e-6, atol=1e-9)
    chex.assert_trees_all_close(out["u_a"], jax.tree.map(jnp.zeros_like, params))
    chex.assert_trees_all_close(out["u_b"], out["mean"], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(
        np.asarray(out["masked"]["b"]), np.asarray(out["clipped_grads"]["b"])
    )
    chex.assert_trees_all_close(out["masked"]["w"], out["clipped"]["w"], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_matches_plain(name):
    """``optax.inject_hyperparams(factory)`` steps as the plain optimizer does, and its
    ``inner_state`` has the plain state's structure (optax code reads it)."""
    factory, kwargs = OPTIMIZERS[name].factory, OPTIMIZERS[name].kwargs
    plain = factory(**float32_kwargs(kwargs))
    injected = optax.inject_hyperparams(factory)(**kwargs)
    params = small_tree()
    s1, s2 = plain.init(params), injected.init(params)
    assert jax.tree.structure(s2.inner_state) == jax.tree.structure(s1)
    p1 = p2 = params
    for seed in range(5):  # eager: the jitted injected step is checked by the next tests
        g = grads_like(params, seed=seed)
        p1, s1 = train_step(plain)(p1, s1, g)
        p2, s2 = train_step(injected)(p2, s2, g)
    assert jax.tree.structure(s2.inner_state) == jax.tree.structure(s1)
    chex.assert_trees_all_close(p1, p2, rtol=1e-6, atol=1e-7)


# Rows whose step at learning rate 0 is not 0: a momentum buffer after the learning rate
# (optax's LARS), or the interpolation of y towards the average x (schedule-free).
MOVES_AT_LR_ZERO = {
    "lars": "the buffer holds lr-scaled steps and keeps moving p",
    "schedule_free_adamw": "z stays, but y = b1 x + (1 - b1) z moves towards the average x",
    "schedule_free_sgd": "z stays, but y = b1 x + (1 - b1) z moves towards the average x",
    "dadapt_adamw": "m holds the past steps with their rates (as optax's) and keeps moving p",
    "madgrad": "the rate weights the sums; at 0, p still moves towards z (as optax's)",
}
# Rows whose learning rate is only read at init (rprop's initial step sizes, which then adapt
# on their own, as torch's and optax's): a new rate changes nothing, and recompiles nothing.
RATE_READ_AT_INIT = {"rprop": "the step sizes start at the rate, then adapt by sign"}


@pytest.mark.parametrize("name", NAMES)
def test_injected_learning_rate_changes_without_recompiling(name):
    factory, kwargs = OPTIMIZERS[name].factory, OPTIMIZERS[name].kwargs
    opt = optax.inject_hyperparams(factory)(**kwargs)
    params = {"w": jnp.ones(4)}
    state = opt.init(params)
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(1)
        updates, state = opt.update({"w": jnp.ones(4)}, state, params)
        return updates, state

    for _ in range(OPTIMIZERS[name].warmup):
        _, state = step(params, state)
    u1, state = step(params, state)
    state.hyperparams["learning_rate"] = jnp.asarray(0.0, jnp.float32)
    u2, state = step(params, state)
    assert len(traces) == 1
    assert jnp.all(u1["w"] < 0)
    if name in RATE_READ_AT_INIT:
        return
    if name in MOVES_AT_LR_ZERO:  # the new rate still reaches the step
        _, state = step(params, state)
        state.hyperparams["learning_rate"] = jnp.asarray(1.0, jnp.float32)
        u3, _ = step(params, state)
        assert len(traces) == 1 and jnp.all(jnp.abs(u3["w"]) > jnp.abs(u2["w"]))
        return
    np.testing.assert_array_equal(np.asarray(u2["w"]), 0.0)


# Schedule-free methods recompute the average x from y and z at every step, so a last-bit
# difference in y (|y| ~ 1: 1.2e-7) reaches the update itself, whatever the update's size.
# Centered RMSProp divides by sqrt(v - m**2), whose cancellation turns a last-bit
# difference in v into ~2e-6 of the update.
TRACED_ATOL = {"schedule_free_adamw": 1.2e-7, "schedule_free_sgd": 1.2e-7, "rmsprop_centered": 1e-7}


@pytest.mark.parametrize("name", NAMES)
def test_traced_hyperparameters_equal_concrete(name):
    factory, kwargs = OPTIMIZERS[name].factory, OPTIMIZERS[name].kwargs
    params = small_tree()
    grads = [grads_like(params, seed=i) for i in range(2)]
    hyper = float32_kwargs(kwargs)

    def updates_with(**hp):
        opt = factory(**hp)
        state = opt.init(params)
        for g in grads:  # two gradients: a repeated one is a degenerate case (SOAP's basis)
            u, state = opt.update(g, state, params)
        return u

    expected = updates_with(**hyper)
    static = {k: v for k, v in hyper.items() if not isinstance(v, float)}
    traced = jax.jit(lambda hp: updates_with(**hp, **static))(
        {k: jnp.asarray(v, jnp.float32) for k, v in hyper.items() if isinstance(v, float)}
    )
    chex.assert_trees_all_close(traced, expected, rtol=1e-6, atol=TRACED_ATOL.get(name, 1e-8))


def _minimise(opt, loss, x0, steps):
    def body(carry, _):
        x, state = carry
        g = jax.grad(loss)(x)
        u, state = opt.update(g, state, x)
        return (optax.apply_updates(x, u), state), None

    (x, _), _ = jax.jit(lambda c: jax.lax.scan(body, c, None, length=steps))((x0, opt.init(x0)))
    return x


@pytest.mark.parametrize("name", NAMES)
def test_converges_on_parabola_and_rosenbrock(name):
    factory, kwargs, steps, use_cosine, _ = OPTIMIZERS[name]
    # a cosine decay written out: optax's schedules mix int32 and float under strict promotion
    lr0 = kwargs["learning_rate"]
    cosine = lambda t: lr0 / 2 * (1 + jnp.cos(jnp.pi * t.astype(jnp.float32) / steps))  # noqa: E731
    hp = dict(kwargs, learning_rate=cosine) if use_cosine else dict(kwargs)
    for key in [k for k in hp if k.endswith("weight_decay") and not isinstance(hp[k], bool)]:
        hp[key] = 0.0  # muon's adam_weight_decay too; radam's decoupled_weight_decay is a flag
    parabola = lambda x: jnp.sum(jnp.square(x - jnp.asarray([1.0, -2.0, 3.0])))  # noqa: E731
    x = _minimise(factory(**hp), parabola, jnp.zeros(3), steps)
    np.testing.assert_allclose(np.asarray(x), [1.0, -2.0, 3.0], atol=1e-3)

    rosenbrock = lambda x: (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2  # noqa: E731
    x = _minimise(factory(**hp), rosenbrock, jnp.asarray([-1.0, 1.0]), steps)
    assert float(rosenbrock(x)) < 1e-3, x


def control_flow(jaxpr) -> set[str]:
    """The control-flow primitives (cond, scan, while) anywhere in a closed jaxpr."""
    found = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("cond", "scan", "while"):
            found.add(eqn.primitive.name)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found |= control_flow(sub)
    return found


def test_eager_updates_compile_nothing_after_the_first():
    """Eager code (no ``jit``) pays XLA compilation once per primitive and shape: a later
    update compiles nothing. An eager ``lax.cond`` or loop of closures compiles at every
    call (~35 ms each, seconds per step for a recipe with one per leaf), so every row whose
    update holds one is stepped eagerly here; the others run no such primitive."""
    params = small_tree()
    compiles = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    checked, failed = [], {}
    for name in STRUCTURAL:
        opt = make(name)
        state = opt.init(params)
        jaxpr = jax.make_jaxpr(opt.update)(grads_like(params), state, params).jaxpr
        if not control_flow(jaxpr):
            continue
        checked.append(name)
        for step in range(OPTIMIZERS[name].warmup + 3):
            grads = grads_like(params, seed=step)
            compiles.clear()
            jax.monitoring.register_event_duration_secs_listener(listen)
            try:
                _, state = opt.update(grads, state, params)
            finally:
                jax.monitoring.unregister_event_duration_listener(listen)
        if compiles:
            failed[name] = len(compiles)
    assert {"galore", "mars", "muon", "soap"} <= set(checked), checked
    assert not failed, f"XLA programs compiled by the last eager update: {failed}"
