"""SGD, AdaGrad, RMSProp and AdaDelta against an independent NumPy reference
(tests/reference_sgd_family.py), against torch.optim (where installed) and against optax.

Every trajectory runs 100 steps in float64 on a small pytree whose gradients depend on the
params (a quadratic plus a sine), with one jitted step per case, and is compared after
every step.
"""

from __future__ import annotations

import functools
import inspect
import zlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference_sgd_family as ref
from reference import run_numpy
from trajectories import assert_trajectories_close as _assert_close
from trajectories import max_rel_error as _max_rel_error

from adamx.optimizers._adagrad import adadelta, adagrad
from adamx.optimizers._rmsprop import rmsprop
from adamx.optimizers._sgd import sgd, trace_momentum

STEPS = 100
RTOL, ATOL = 1e-10, 1e-13
assert_trajectories_close = functools.partial(_assert_close, rtol=RTOL, atol=ATOL)
max_rel_error = functools.partial(_max_rel_error, atol=ATOL)
SINE = 0.3
ALIASES = {"sgd": sgd, "adagrad": adagrad, "rmsprop": rmsprop, "adadelta": adadelta}


def schedule(k):
    """A float64 learning-rate schedule that JAX (int32 count), NumPy and torch all read."""
    return 0.05 / (1 + 0.05 * jnp.asarray(k, jnp.float64))


def half(k):
    """``schedule`` scaled to RMSProp's size of learning rate."""
    return 0.2 * schedule(k)


# (alias, case id, keyword arguments of the alias). ``maximize`` cases ascend minus the loss.
CASES = [
    ("sgd", "plain", dict(learning_rate=0.05)),
    ("sgd", "momentum", dict(learning_rate=0.02, momentum=0.9)),
    ("sgd", "dampening", dict(learning_rate=0.02, momentum=0.8, dampening=0.3)),
    ("sgd", "nesterov", dict(learning_rate=0.02, momentum=0.9, nesterov=True)),
    ("sgd", "l2", dict(learning_rate=0.05, weight_decay=0.1)),
    ("sgd", "maximize", dict(learning_rate=0.05, maximize=True)),
    (
        "sgd",
        "schedule+nesterov+l2+maximize",
        dict(learning_rate=schedule, momentum=0.5, nesterov=True, weight_decay=0.05, maximize=True),
    ),
    (
        "sgd",
        "schedule+dampening+l2",
        dict(learning_rate=schedule, momentum=0.7, dampening=0.9, weight_decay=0.02),
    ),
    ("adagrad", "defaults", dict(learning_rate=0.2)),
    ("adagrad", "lr_decay", dict(learning_rate=0.5, lr_decay=0.05)),
    ("adagrad", "initial_accumulator", dict(learning_rate=0.2, initial_accumulator_value=2.0)),
    ("adagrad", "eps", dict(learning_rate=0.2, eps=0.5)),
    ("adagrad", "eps_in_sqrt", dict(learning_rate=0.2, eps=0.5, eps_in_sqrt=True)),
    ("adagrad", "l2+maximize", dict(learning_rate=0.2, weight_decay=0.1, maximize=True)),
    ("adagrad", "schedule+lr_decay", dict(learning_rate=schedule, lr_decay=0.1)),
    ("rmsprop", "defaults", dict()),
    ("rmsprop", "decay=0.9+eps", dict(decay=0.9, eps=1e-2)),
    ("rmsprop", "centered", dict(centered=True)),
    ("rmsprop", "momentum", dict(learning_rate=2e-3, momentum=0.9)),
    ("rmsprop", "centered+momentum", dict(learning_rate=2e-3, centered=True, momentum=0.5)),
    ("rmsprop", "eps_in_sqrt", dict(decay=0.9, eps=1e-2, eps_in_sqrt=True)),
    ("rmsprop", "centered+eps_in_sqrt", dict(centered=True, eps=1e-2, eps_in_sqrt=True)),
    ("rmsprop", "l2+maximize", dict(weight_decay=0.1, maximize=True)),
    (
        "rmsprop",
        "schedule+momentum+centered",
        dict(learning_rate=half, momentum=0.8, centered=True, decay=0.95),
    ),
    ("adadelta", "defaults", dict()),
    ("adadelta", "rho+eps", dict(rho=0.5, eps=1e-3)),
    ("adadelta", "rho=0", dict(rho=0.0, eps=1e-4)),
    ("adadelta", "lr", dict(learning_rate=3.0, eps=1e-4)),
    ("adadelta", "l2+maximize", dict(weight_decay=0.1, maximize=True, eps=1e-4)),
    ("adadelta", "schedule", dict(learning_rate=lambda k: 20 * schedule(k), rho=0.95)),
]
CASE_IDS = [f"{name}-{case}" for name, case, _ in CASES]
# torch.optim has no eps_in_sqrt.
TORCH_CASES = [c for c in CASES if not c[2].get("eps_in_sqrt", False)]
TORCH_IDS = [f"{name}-{case}" for name, case, _ in TORCH_CASES]


# ----------------------------------------------------------------------------- problem
class Problem(NamedTuple):
    params: Any  # tree of float64 NumPy arrays
    consts: Any  # tree of (a, c, w): loss = a/2 (p - c)^2 + SINE sin(w p)


SHAPES = {"kernel": (4, 3), "bias": (3,), "blocks": [(2, 2, 2), ()]}


def make_problem(seed: int) -> Problem:
    rng = np.random.default_rng(seed)

    def leaf(shape):
        p = rng.normal(size=shape)
        a = rng.uniform(0.5, 2.0, size=shape)
        c = p + rng.choice([-1.0, 1.0], size=shape) * rng.uniform(1.0, 3.0, size=shape)
        w = rng.uniform(0.5, 2.0, size=shape)
        return p, (a, c, w)

    pairs = jax.tree.map(leaf, SHAPES, is_leaf=lambda s: isinstance(s, tuple))
    is_pair = lambda x: isinstance(x, tuple) and len(x) == 2  # noqa: E731
    params = jax.tree.map(lambda x: x[0], pairs, is_leaf=is_pair)
    consts = jax.tree.map(lambda x: x[1], pairs, is_leaf=is_pair)
    return Problem(params, consts)


def is_const(x):
    return isinstance(x, tuple) and len(x) == 3


def grad_fn(consts, xp, sign):
    """The loss gradient in ``xp`` (NumPy or jax.numpy), times ``sign``."""

    def grad(params):
        return jax.tree.map(
            lambda k, p: sign * (k[0] * (p - k[1]) + SINE * k[2] * xp.cos(k[2] * p)),
            consts,
            params,
            is_leaf=is_const,
        )

    return grad


def problem_for(case_id):
    return make_problem(zlib.crc32(case_id.encode()))


def sign_of(kw):
    """Maximize cases ascend ``-loss``: the same valley, reached the other way round."""
    return -1.0 if kw.get("maximize", False) else 1.0


# ----------------------------------------------------------------------------- runners
def run_adamx(opt, prob, sign, steps=STEPS):
    consts = jax.tree.map(jnp.asarray, prob.consts)
    grad = grad_fn(consts, jnp, sign)

    @jax.jit
    def step(p, s):
        updates, s = opt.update(grad(p), s, p)
        return optax.apply_updates(p, updates), s

    params = jax.tree.map(jnp.asarray, prob.params)
    state = opt.init(params)
    trajectory = []
    for _ in range(steps):
        params, state = step(params, state)
        trajectory.append(params)
    return [jax.tree.map(np.asarray, p) for p in jax.device_get(trajectory)]


def reference_rule(name, kw):
    kw = dict(kw)
    if "learning_rate" in kw:
        kw["lr"] = kw.pop("learning_rate")
    if name == "sgd":
        return ref.SGD(**kw)
    if name == "adagrad":
        return ref.Adagrad(**kw)
    if name == "rmsprop":
        if "decay" in kw:
            kw["alpha"] = kw.pop("decay")
        return ref.RMSprop(**kw)
    return ref.Adadelta(**kw)


def run_torch(name, kw, prob, sign, steps=STEPS):
    torch = pytest.importorskip("torch")
    kw = dict(kw)
    default_lr = inspect.signature(ALIASES[name]).parameters["learning_rate"].default
    lr = kw.pop("learning_rate", default_lr)
    if name == "rmsprop" and "decay" in kw:
        kw["alpha"] = kw.pop("decay")
    lr_at = lr if callable(lr) else (lambda k: lr)
    leaves, treedef = jax.tree.flatten(prob.params)
    tensors = [torch.tensor(np.array(x), dtype=torch.float64, requires_grad=True) for x in leaves]
    cls = {
        "sgd": torch.optim.SGD,
        "adagrad": torch.optim.Adagrad,
        "rmsprop": torch.optim.RMSprop,
        "adadelta": torch.optim.Adadelta,
    }[name]
    opt = cls(tensors, lr=float(lr_at(0)), foreach=False, **kw)
    grad = grad_fn(prob.consts, np, sign)
    trajectory = []
    for k in range(steps):
        current = jax.tree.unflatten(treedef, [t.detach().numpy().copy() for t in tensors])
        for t, g in zip(tensors, jax.tree.leaves(grad(current))):
            t.grad = torch.tensor(np.array(g), dtype=torch.float64)
        for group in opt.param_groups:
            group["lr"] = float(lr_at(k))
        opt.step()
        trajectory.append(jax.tree.unflatten(treedef, [t.detach().numpy().copy() for t in tensors]))
    return trajectory


_ADAMX_RUNS: dict[str, list] = {}


def adamx_trajectory(name, case, kw):
    """The adamx trajectory of a case, computed once (float64) and shared by the tests."""
    key = f"{name}-{case}"
    if key not in _ADAMX_RUNS:
        _ADAMX_RUNS[key] = run_adamx(ALIASES[name](**kw), problem_for(key), sign_of(kw))
    return _ADAMX_RUNS[key]


# ----------------------------------------------------------------------------- trajectories
@pytest.mark.parametrize(("name", "case", "kw"), CASES, ids=CASE_IDS)
def test_trajectory_matches_numpy_reference(name, case, kw, x64):
    prob = problem_for(f"{name}-{case}")
    got = adamx_trajectory(name, case, kw)
    want = run_numpy(
        reference_rule(name, kw), prob.params, grad_fn(prob.consts, np, sign_of(kw)), STEPS
    )
    assert all(x.dtype == np.float64 for x in jax.tree.leaves(got[-1]))
    moved = max_rel_error([prob.params], [want[-1]])
    assert moved > 1e-2, f"the params barely moved ({moved:.1e}): the comparison proves little"
    assert_trajectories_close(got, want)


@pytest.mark.parametrize(("name", "case", "kw"), TORCH_CASES, ids=TORCH_IDS)
def test_trajectory_matches_torch(name, case, kw, x64):
    prob = problem_for(f"{name}-{case}")
    want = run_torch(name, kw, prob, sign_of(kw))
    assert_trajectories_close(adamx_trajectory(name, case, kw), want)


# Each pair: the case, and a reading of it that must NOT match (the tests above can fail).
WRONG_READINGS = [
    ("sgd", "dampening", dict(dampening=0.0)),
    ("sgd", "nesterov", dict(nesterov=False)),
    ("sgd", "l2", dict(weight_decay=0.0)),
    ("sgd", "maximize", dict(maximize=False)),
    ("adagrad", "lr_decay", dict(lr_decay=0.0)),
    ("adagrad", "eps_in_sqrt", dict(eps_in_sqrt=False)),
    ("adagrad", "initial_accumulator", dict(initial_accumulator_value=0.0)),
    ("rmsprop", "centered", dict(centered=False)),
    ("rmsprop", "momentum", dict(momentum=0.0)),
    ("rmsprop", "eps_in_sqrt", dict(eps_in_sqrt=False)),
    ("adadelta", "rho+eps", dict(rho=0.9)),
    ("adadelta", "l2+maximize", dict(weight_decay=0.0)),
]


@pytest.mark.parametrize(
    ("name", "case", "wrong"), WRONG_READINGS, ids=[f"{n}-{c}" for n, c, _ in WRONG_READINGS]
)
def test_a_wrong_reading_fails_the_comparison(name, case, wrong, x64):
    kw = next(k for n, c, k in CASES if (n, c) == (name, case))
    prob = problem_for(f"{name}-{case}")
    rule = reference_rule(name, dict(kw, **wrong))
    # ``maximize`` flipped in the rule only: the gradients fed stay those of the case.
    want = run_numpy(rule, prob.params, grad_fn(prob.consts, np, sign_of(kw)), STEPS)
    with pytest.raises(AssertionError):
        assert_trajectories_close(adamx_trajectory(name, case, kw), want)


# ----------------------------------------------------------------------------- optax
def run_optax(opt, prob, steps=STEPS):
    with jax.numpy_dtype_promotion("standard"):  # optax mixes int32 counts and floats
        return run_adamx(opt, prob, 1.0, steps)


def constant_or(lr):
    return lr if callable(lr) else float(lr)


SGD_OPTAX = [
    ("plain", dict(learning_rate=0.05), lambda: optax.sgd(0.05)),
    ("momentum", dict(learning_rate=0.02, momentum=0.9), lambda: optax.sgd(0.02, 0.9)),
    (
        "nesterov",
        dict(learning_rate=0.02, momentum=0.9, nesterov=True),
        lambda: optax.sgd(0.02, 0.9, nesterov=True),
    ),
    (
        "schedule+momentum+l2",
        dict(learning_rate=schedule, momentum=0.8, weight_decay=0.1),
        lambda: optax.chain(optax.add_decayed_weights(0.1), optax.sgd(schedule, 0.8)),
    ),
]


@pytest.mark.parametrize(("case", "kw", "make"), SGD_OPTAX, ids=[c[0] for c in SGD_OPTAX])
def test_sgd_equals_optax_sgd(case, kw, make, x64):
    prob = problem_for(f"optax-sgd-{case}")
    got = run_adamx(sgd(**kw), prob, 1.0)
    assert_trajectories_close(got, run_optax(make(), prob), rtol=1e-13, atol=1e-15)


def test_sgd_dampening_differs_from_optax_only_after_the_first_step(x64):
    """optax has no dampening; PyTorch's first step ignores it (``b = g``)."""
    prob = problem_for("optax-sgd-dampening")
    got = run_adamx(sgd(0.02, 0.9, dampening=0.5), prob, 1.0, steps=3)
    want = run_optax(optax.sgd(0.02, 0.9), prob, steps=3)
    assert_trajectories_close(got[:1], want[:1], rtol=1e-15, atol=0)
    with pytest.raises(AssertionError):
        assert_trajectories_close(got[1:], want[1:])


RMSPROP_OPTAX = [
    ("plain", dict(decay=0.9, eps=1e-3), {}),
    ("centered", dict(decay=0.9, eps=1e-3, centered=True), dict(centered=True)),
    ("momentum", dict(learning_rate=2e-3, decay=0.9, momentum=0.9), dict(momentum=0.9)),
    (
        "centered+momentum",
        dict(learning_rate=2e-3, decay=0.9, centered=True, momentum=0.5),
        dict(centered=True, momentum=0.5),
    ),
]


@pytest.mark.parametrize(("case", "kw", "extra"), RMSPROP_OPTAX, ids=[c[0] for c in RMSPROP_OPTAX])
def test_rmsprop_eps_in_sqrt_equals_optax_rmsprop(case, kw, extra, x64):
    prob = problem_for(f"optax-rmsprop-{case}")
    lr, eps = kw.get("learning_rate", 1e-2), kw.get("eps", 1e-8)
    got = run_adamx(rmsprop(**dict(kw, eps_in_sqrt=True)), prob, 1.0)
    want = run_optax(optax.rmsprop(lr, decay=0.9, eps=eps, **extra), prob)
    assert_trajectories_close(got, want)
    # PyTorch's default reading (eps outside the root) is another optimizer.
    if "momentum" not in kw:
        with pytest.raises(AssertionError):
            assert_trajectories_close(run_adamx(rmsprop(**kw), prob, 1.0), want)


def test_rmsprop_momentum_differs_from_optax_under_a_schedule(x64):
    """optax's trace holds ``lr``-scaled steps, adamx's buffer (PyTorch's) does not."""
    prob = problem_for("optax-rmsprop-schedule")
    got = run_adamx(rmsprop(half, decay=0.9, momentum=0.9, eps_in_sqrt=True), prob, 1.0)
    want = run_optax(optax.rmsprop(half, decay=0.9, momentum=0.9), prob)
    assert_trajectories_close(got[:1], want[:1])  # one step: no history yet
    with pytest.raises(AssertionError):
        assert_trajectories_close(got, want)


def test_adagrad_with_optax_conventions_equals_optax_adagrad(x64):
    prob = problem_for("optax-adagrad")
    got = run_adamx(
        adagrad(0.2, initial_accumulator_value=0.1, eps=1e-7, eps_in_sqrt=True), prob, 1.0
    )
    want = run_optax(optax.adagrad(0.2), prob)
    assert_trajectories_close(got, want)
    with pytest.raises(AssertionError):  # PyTorch's defaults are another optimizer
        assert_trajectories_close(run_adamx(adagrad(0.2), prob, 1.0), want)


def test_adadelta_equals_optax_adadelta_with_a_learning_rate(x64):
    prob = problem_for("optax-adadelta")
    got = run_adamx(adadelta(2.0, rho=0.8, eps=1e-4, weight_decay=0.1), prob, 1.0)
    want = run_optax(optax.adadelta(2.0, rho=0.8, eps=1e-4, weight_decay=0.1), prob)
    assert_trajectories_close(got, want)


def test_optax_adadelta_default_learning_rate_ascends():
    """The trap the docstring warns about: optax.adadelta() returns ``+d``."""
    params = {"w": jnp.asarray([1.0, -2.0])}
    grads = {"w": jnp.asarray([0.5, -3.0])}
    ours, theirs = adadelta(), optax.adadelta()
    u, _ = ours.update(grads, ours.init(params), params)
    v, _ = theirs.update(grads, theirs.init(params), params)
    assert jnp.all(u["w"] * grads["w"] < 0)  # descends
    np.testing.assert_allclose(np.asarray(v["w"]), -np.asarray(u["w"]), rtol=1e-6)


# ----------------------------------------------------------------------------- hyperparameters
def test_adadelta_rho_one_is_plain_sgd(x64):
    """``rho = 1`` is allowed ([0, 1]): ``v`` and ``acc`` stay 0 and ``d = g``."""
    prob = problem_for("adadelta-rho1")
    got = run_adamx(adadelta(0.05, rho=1.0), prob, 1.0, steps=20)
    assert_trajectories_close(got, run_adamx(sgd(0.05), prob, 1.0, steps=20), rtol=1e-15, atol=0)


INJECTED = [
    ("sgd", dict(learning_rate=0.02, momentum=0.9, dampening=0.3, weight_decay=0.1)),
    # a traced momentum of 0 ignores dampening, as PyTorch's momentum=0 does
    ("sgd", dict(learning_rate=0.05, momentum=0.0, dampening=0.5)),
    ("adagrad", dict(learning_rate=0.2, lr_decay=0.1, initial_accumulator_value=0.5)),
    ("rmsprop", dict(momentum=0.5, centered=True)),
    ("adadelta", dict(rho=0.8, eps=1e-3, weight_decay=0.1)),
]


@pytest.mark.parametrize(
    ("name", "kw"), INJECTED, ids=[f"{n}-{i}" for i, (n, _) in enumerate(INJECTED)]
)
def test_inject_hyperparams_matches_plain(name, kw, x64):
    prob = problem_for(f"inject-{name}")
    injected = optax.inject_hyperparams(ALIASES[name], hyperparam_dtype=jnp.float64)(**kw)
    got = run_adamx(injected, prob, 1.0, steps=20)
    assert_trajectories_close(got, run_adamx(ALIASES[name](**kw), prob, 1.0, steps=20))


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_bfloat16_params_keep_bfloat16_updates_and_state(name):
    opt = ALIASES[name](**({"momentum": 0.9} if name in ("sgd", "rmsprop") else {}))
    params = {"a": jnp.ones((3, 2), jnp.bfloat16), "b": jnp.asarray(-0.5, jnp.bfloat16)}
    grads = jax.tree.map(lambda p: p * 0.5 + 0.25, params)
    state = opt.init(params)
    for _ in range(2):
        updates, state = jax.jit(opt.update)(grads, state, params)
    floats = [x for x in jax.tree.leaves((updates, state)) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.bfloat16 for x in floats)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in floats)


# ----------------------------------------------------------------------------- bad input
BAD = [
    (lambda: sgd(momentum=0.0, nesterov=True), r"`nesterov=True` needs `momentum`.*momentum=0\.0"),
    (lambda: sgd(momentum=0.9, nesterov=True, dampening=0.1), r"dampening=0\.1"),
    (lambda: sgd(momentum=-0.1), r"`momentum` must lie in \[0\.0, 1\.0\).*momentum=-0\.1"),
    (lambda: sgd(momentum=1.0), r"`momentum` must lie in \[0\.0, 1\.0\)"),
    (lambda: sgd(momentum=0.9, dampening=1.5), r"`dampening` must lie in \[0\.0, 1\.0\]"),
    (lambda: sgd(learning_rate=-1.0), r"`learning_rate` must lie in \[0\.0, inf\)"),
    (lambda: sgd(weight_decay=-1e-3), r"`weight_decay` must lie in"),
    (lambda: sgd(maximize=1), r"`maximize` must be True or False"),
    (lambda: sgd(momentum=0.9, nesterov="yes"), r"`nesterov` must be True or False"),
    (lambda: adagrad(lr_decay=-0.1), r"`lr_decay` must lie in \[0\.0, inf\).*lr_decay=-0\.1"),
    (lambda: adagrad(initial_accumulator_value=-1.0), r"`initial_accumulator_value` must lie"),
    (lambda: adagrad(eps=-1e-10), r"`eps` must lie in \[0\.0, inf\)"),
    (lambda: adagrad(eps_in_sqrt=1), r"`eps_in_sqrt` must be True or False"),
    (lambda: rmsprop(decay=1.0), r"`decay` must lie in \[0\.0, 1\.0\).*decay=1\.0"),
    (lambda: rmsprop(decay=-0.5), r"`decay` must lie in"),
    (lambda: rmsprop(eps=float("nan")), r"`eps` must lie in"),
    (lambda: rmsprop(momentum=-0.5), r"`momentum` must lie in \[0\.0, 1\.0\)"),
    (lambda: rmsprop(centered="no"), r"`centered` must be True or False"),
    (lambda: rmsprop(weight_decay=-1.0), r"`weight_decay` must lie in"),
    (lambda: adadelta(rho=1.5), r"`rho` must lie in \[0\.0, 1\.0\].*rho=1\.5"),
    (lambda: adadelta(rho=-0.1), r"`rho` must lie in \[0\.0, 1\.0\]"),
    (lambda: adadelta(eps=-1.0), r"`eps` must lie in"),
    (lambda: adadelta(learning_rate=float("inf")), r"`learning_rate` must lie in"),
]


@pytest.mark.parametrize(("build", "match"), BAD, ids=[m for _, m in BAD])
def test_bad_hyperparameters_are_refused(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_traced_hyperparameters_are_not_validated():
    """Under jit the values are unknown: construction must not raise (nor concretize)."""

    @jax.jit
    def first_update(momentum, dampening, rho):
        params = {"w": jnp.ones(2)}
        out = []
        for opt in (
            sgd(0.1, momentum, nesterov=True, dampening=dampening),
            rmsprop(0.1, momentum=momentum),
            adadelta(1.0, rho=rho),
            adagrad(0.1, lr_decay=dampening, initial_accumulator_value=rho),
        ):
            out.append(opt.update({"w": jnp.ones(2)}, opt.init(params), params)[0]["w"])
        return out

    for u in first_update(jnp.float32(0.9), jnp.float32(0.0), jnp.float32(0.9)):
        assert jnp.all(u < 0)


def test_trace_momentum_state_and_first_step():
    opt = trace_momentum(0.9, dampening=0.5)
    state = opt.init({"w": jnp.zeros(2)})
    g = {"w": jnp.asarray([1.0, -1.0])}
    u1, state = opt.update(g, state)
    u2, state = opt.update(g, state)
    np.testing.assert_allclose(np.asarray(u1["w"]), [1.0, -1.0])  # b = g
    np.testing.assert_allclose(np.asarray(u2["w"]), [1.4, -1.4])  # 0.9 g + 0.5 g
    assert int(state.count) == 2
