"""Issue 16's second batch against optax 0.2.8 step for step (float32 and float64) and
against independent NumPy float64 references (tests/reference_sign_free.py) for the options
optax has no twin of: schedule_free_adamw / schedule_free_sgd (optax.contrib) with
schedule_free_eval_params, sign_sgd, signum, adamaxw, lars, novograd and optimistic_adam
(optax.optimistic_adam_v2).

Every trajectory is 100 steps of a quadratic + sine loss whose gradient is computed in
NumPy from the current params (so the runs differ only in the optimizers' arithmetic), on a
tree with a matrix, a 3-D block, a vector starting at zero and a scalar.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
import reference_sign_free as ref

import adamx

STEPS = 100
SHAPES = {"b": (4,), "k": (2, 3, 4), "s": (), "w": (5, 4)}  # sorted: the leaf order
MASK = {"b": False, "k": True, "s": False, "w": True}
FLAGS = [MASK[n] for n in sorted(SHAPES)]


def make_problem(seed=0, shapes=SHAPES, steps=STEPS, zeros=("b",)):
    """Params (the leaves in ``zeros`` start at 0), per-leaf constants ``(a, c, w)`` of the
    loss ``a/2 (p - c)**2 + 0.3 sin(w p)`` and ``steps`` noise factors per leaf."""
    rng = np.random.default_rng(seed)
    params, consts = {}, {}
    for name, shape in shapes.items():
        p = np.zeros(shape) if name in zeros else rng.normal(size=shape)
        c = p + rng.choice([-1.0, 1.0], size=shape) * rng.uniform(1.0, 3.0, size=shape)
        consts[name] = (rng.uniform(0.5, 2.0, size=shape), c, rng.uniform(0.5, 2.0, size=shape))
        params[name] = p
    # gradient noise that flips the sign a quarter of the time, so momentum matters
    noise = [{n: rng.uniform(-1.0, 3.0, size=s) for n, s in shapes.items()} for _ in range(steps)]
    return params, consts, noise


def np_grad(consts, params, noise):
    return {
        k: (a * (params[k] - c) + 0.3 * w * np.cos(w * params[k])) * noise[k]
        for k, (a, c, w) in consts.items()
    }


def run_jax(opt, dtype, *, eval_params=False, promotion=None):
    """Params after every step (float64 NumPy dicts); with ``eval_params``, the
    schedule-free evaluation params instead (adamx's or optax's, by ``eval_params``)."""
    params, consts, noise = make_problem()

    @jax.jit
    def step(p, s, g):
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    p = {k: jnp.asarray(v, dtype) for k, v in params.items()}
    s = opt.init(p)
    out = []
    for k in range(STEPS):
        g = np_grad(consts, {n: np.asarray(x, np.float64) for n, x in p.items()}, noise[k])
        p, s = step(p, s, {n: jnp.asarray(x, dtype) for n, x in g.items()})
        shown = eval_params(s, p) if eval_params else p
        out.append({n: np.asarray(x, np.float64) for n, x in shown.items()})
    return out


def run_ref(ref_cls, ref_kwargs, *, eval_params=False):
    params, consts, noise = make_problem()
    names = sorted(params)
    opt = ref_cls([params[n].shape for n in names], **ref_kwargs)
    p = {k: v.copy() for k, v in params.items()}
    out = []
    for k in range(STEPS):
        g = np_grad(consts, p, noise[k])
        p = dict(zip(names, opt.step([p[n] for n in names], [g[n] for n in names])))
        shown = dict(zip(names, opt.eval_params([p[n] for n in names]))) if eval_params else p
        out.append(shown)
    return out


def assert_close(got, want, rtol, atol):
    """Every step, every leaf: ``|got - want| <= atol * scale + rtol * |want|``, ``scale``
    the largest ``|want|`` of that leaf over the run (or 1)."""
    assert len(got) == len(want) == STEPS
    for n in want[0]:
        scale = max(1.0, max(float(np.max(np.abs(w[n]), initial=0.0)) for w in want))
        for k, (g, w) in enumerate(zip(got, want)):
            np.testing.assert_allclose(
                g[n], w[n], rtol=rtol, atol=atol * scale, err_msg=f"leaf {n!r} after step {k + 1}"
            )


def optax_run(theirs, dtype, **kw):
    with jax.numpy_dtype_promotion("standard"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # optax.optimistic_adam (v1)
        return run_jax(theirs(), dtype, **kw)


# (id, adamx call, optax call, float32 tolerance): optax 0.2.8 has the same rule
SF, SF_EVAL = optax.contrib, optax.contrib.schedule_free_eval_params
OPTAX = [
    ("schedule_free_adamw", lambda: adamx.schedule_free_adamw(0.05),
     lambda: SF.schedule_free_adamw(0.05), 1e-5),
    ("schedule_free_adamw-all", lambda: adamx.schedule_free_adamw(0.05, None, 0.8, 0.99, 1e-6,
                                                                 0.01, 1.5),
     lambda: SF.schedule_free_adamw(0.05, None, 0.8, 0.99, 1e-6, 0.01, 1.5), 1e-5),
    ("schedule_free_sgd", lambda: adamx.schedule_free_sgd(0.02),
     lambda: SF.schedule_free_sgd(0.02), 1e-6),
    ("schedule_free_sgd-all", lambda: adamx.schedule_free_sgd(0.02, None, 0.7, 0.01, 3.0),
     lambda: SF.schedule_free_sgd(0.02, None, 0.7, 0.01, 3.0), 1e-6),
    ("sign_sgd", lambda: adamx.sign_sgd(0.01), lambda: optax.sign_sgd(0.01), 0.0),
    ("signum", lambda: adamx.signum(0.01, 0.8), lambda: optax.signum(0.01, 0.8), 0.0),
    ("adamaxw", lambda: adamx.adamaxw(0.02), lambda: optax.adamaxw(0.02), 1e-6),
    ("adamaxw-all", lambda: adamx.adamaxw(0.02, 0.8, 0.99, 1e-3, 0.1, MASK),
     lambda: optax.adamaxw(0.02, 0.8, 0.99, 1e-3, 0.1, MASK), 1e-6),
    ("lars", lambda: adamx.lars(0.5), lambda: optax.lars(0.5), 1e-6),
    ("lars-all", lambda: adamx.lars(0.5, 0.01, MASK, 0.02, 1e-3, MASK, 0.8, True),
     lambda: optax.lars(0.5, 0.01, MASK, 0.02, 1e-3, MASK, 0.8, True), 1e-6),
    ("novograd", lambda: adamx.novograd(0.01), lambda: optax.novograd(0.01), 1e-6),
    ("novograd-all", lambda: adamx.novograd(0.01, 0.8, 0.5, 1e-3, 1e-4, 0.01),
     lambda: optax.novograd(0.01, 0.8, 0.5, 1e-3, 1e-4, 0.01), 1e-6),
    ("optimistic_adam", lambda: adamx.optimistic_adam(0.01),
     lambda: optax.optimistic_adam_v2(0.01), 1e-5),
    ("optimistic_adam-all", lambda: adamx.optimistic_adam(
        0.01, alpha=0.5, beta=2.0, b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-8, nesterov=False),
     lambda: optax.optimistic_adam_v2(
        0.01, alpha=0.5, beta=2.0, b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-8, nesterov=False),
     1e-5),
    ("optimistic_adam-v1", lambda: adamx.optimistic_adam(0.01, alpha=1.0, beta=0.5),
     lambda: optax.optimistic_adam(0.01, 0.005), 1e-5),
]  # fmt: skip
IDS = [c[0] for c in OPTAX]
DECAY = optax.exponential_decay(0.02, 5, 0.8)


def WARM_DECAY(count):  # noqa: N802 (a schedule, named as the constant above)
    return DECAY(count) * jnp.minimum(count, 10) / 10


# float32 runs: the warmup too (optax's warmup schedule is float32 even under x64, so the
# float64 warmup runs are checked against the NumPy reference below instead)
WARMUP = [
    ("schedule_free_adamw-warmup", lambda: adamx.schedule_free_adamw(0.05, 10, weight_decay=0.01),
     lambda: SF.schedule_free_adamw(0.05, 10, weight_decay=0.01), 1e-5),
    ("schedule_free_sgd-warmup", lambda: adamx.schedule_free_sgd(0.02, 10, weight_decay=0.01),
     lambda: SF.schedule_free_sgd(0.02, 10, weight_decay=0.01), 1e-6),
    # a schedule, warmed up (optax's schedule_free_sgd takes numbers only: its wrapper, given
    # the warmed-up schedule lr(c) * min(c, W) / W for both the SGD step and the averaging)
    ("schedule_free_sgd-schedule-warmup", lambda: adamx.schedule_free_sgd(DECAY, 10, 0.8),
     lambda: SF.schedule_free(optax.sgd(WARM_DECAY), WARM_DECAY, 0.8), 1e-6),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "ours", "theirs", "tol"), OPTAX + WARMUP, ids=IDS + [c[0] for c in WARMUP]
)
def test_float32_trajectory_matches_optax(case, ours, theirs, tol):
    assert_close(run_jax(ours(), jnp.float32), optax_run(theirs, jnp.float32), tol, tol)


@pytest.mark.parametrize(("case", "ours", "theirs", "tol"), OPTAX, ids=IDS)
def test_float64_trajectory_matches_optax(case, ours, theirs, tol, x64):
    del tol
    assert_close(run_jax(ours(), jnp.float64), optax_run(theirs, jnp.float64), 1e-10, 1e-12)


@pytest.mark.parametrize("name", ["schedule_free_adamw", "schedule_free_sgd"])
def test_eval_params_match_optax(name):
    ours = run_jax(getattr(adamx, name)(0.05, 5), jnp.float32,
                   eval_params=adamx.schedule_free_eval_params)  # fmt: skip
    theirs = optax_run(lambda: getattr(SF, name)(0.05, 5), jnp.float32, eval_params=SF_EVAL)
    assert_close(ours, theirs, 1e-5, 1e-5)
    # optax's function reads adamx's state: it holds optax's fields (b1, z) at the top
    ours_by_optax = run_jax(getattr(adamx, name)(0.05, 5), jnp.float32, eval_params=SF_EVAL)
    assert_close(ours_by_optax, theirs, 1e-5, 1e-5)


# ------------------------------------------------------------------- NumPy references
SFR = functools.partial(ref.ScheduleFree, adam=True)
REFERENCE = [  # (id, adamx call, reference class, its kwargs)
    ("schedule_free_adamw-warmup", lambda: adamx.schedule_free_adamw(0.05, 10, 0.8, 0.99, 1e-6,
                                                                    0.01, 1.5),
     SFR, dict(lr=0.05, warmup_steps=10, b1=0.8, b2=0.99, eps=1e-6, wd=0.01, weight_lr_power=1.5)),
    ("schedule_free_sgd-warmup", lambda: adamx.schedule_free_sgd(0.02, 7, 0.9, 0.01),
     ref.ScheduleFree, dict(lr=0.02, warmup_steps=7, b1=0.9, wd=0.01)),
    ("schedule_free_sgd-b1-1", lambda: adamx.schedule_free_sgd(0.02, b1=1.0),
     ref.ScheduleFree, dict(lr=0.02, b1=1.0)),
    ("sign_sgd", lambda: adamx.sign_sgd(0.01), ref.SignSGD, dict(lr=0.01)),
    ("signum", lambda: adamx.signum(0.01, 0.7), ref.Signum, dict(lr=0.01, beta=0.7)),
    ("adamaxw-mask", lambda: adamx.adamaxw(0.02, 0.8, 0.99, 1e-3, 0.1, MASK),
     ref.AdamaxW, dict(lr=0.02, b1=0.8, b2=0.99, eps=1e-3, wd=0.1, decay=FLAGS)),
    ("lars-masks-nesterov", lambda: adamx.lars(0.5, 0.01, MASK, 0.02, 1e-3, MASK, 0.8, True),
     ref.Lars, dict(lr=0.5, wd=0.01, trust_coefficient=0.02, eps=1e-3, momentum=0.8,
                    nesterov=True, decay=FLAGS, trust=FLAGS)),
    ("lars-no-momentum", lambda: adamx.lars(0.5, trust_coefficient=0.05, momentum=None),
     ref.Lars, dict(lr=0.5, trust_coefficient=0.05, momentum=0.0)),
    ("novograd", lambda: adamx.novograd(0.01, 0.8, 0.5, 1e-3, 1e-4, 0.01),
     ref.NovoGrad, dict(lr=0.01, b1=0.8, b2=0.5, eps=1e-3, eps_root=1e-4, wd=0.01)),
    ("optimistic_adam", lambda: adamx.optimistic_adam(0.01, alpha=0.5, beta=2.0),
     ref.OptimisticAdam, dict(lr=0.01, alpha=0.5, beta=2.0)),
    ("optimistic_adam-not-nesterov", lambda: adamx.optimistic_adam(0.01, nesterov=False),
     ref.OptimisticAdam, dict(lr=0.01, nesterov=False)),
]  # fmt: skip


@pytest.mark.parametrize(("case", "ours", "cls", "kw"), REFERENCE, ids=[c[0] for c in REFERENCE])
def test_float64_trajectory_matches_numpy_reference(case, ours, cls, kw, x64):
    assert_close(run_jax(ours(), jnp.float64), run_ref(cls, kw), 1e-10, 1e-12)


@pytest.mark.parametrize(("case", "ours", "cls", "kw"), REFERENCE, ids=[c[0] for c in REFERENCE])
def test_float32_trajectory_near_numpy_reference(case, ours, cls, kw):
    tol = 0.0 if case.startswith("sign") else 2e-4  # sign steps: exact lr multiples
    assert_close(run_jax(ours(), jnp.float32), run_ref(cls, kw), tol, max(tol, 1e-6))


def test_eval_params_match_the_reference(x64):
    ours = run_jax(adamx.schedule_free_sgd(0.02, 7, 0.8), jnp.float64,
                   eval_params=adamx.schedule_free_eval_params)  # fmt: skip
    want = run_ref(ref.ScheduleFree, dict(lr=0.02, warmup_steps=7, b1=0.8), eval_params=True)
    assert_close(ours, want, 1e-10, 1e-12)


# The tests above can fail: one option changed gives another trajectory.
@pytest.mark.parametrize(
    ("ours", "cls", "kw"),
    [
        (lambda: adamx.schedule_free_adamw(0.05, 5, weight_lr_power=1.0), SFR,
         dict(lr=0.05, warmup_steps=5)),
        (lambda: adamx.schedule_free_sgd(0.02, 3), ref.ScheduleFree, dict(lr=0.02)),
        (lambda: adamx.signum(0.01, 0.9), ref.Signum, dict(lr=0.01, beta=0.5)),
        (lambda: adamx.adamaxw(0.02, weight_decay=0.1), ref.AdamaxW,
         dict(lr=0.02, wd=0.1, decay=FLAGS)),
        (lambda: adamx.lars(0.5, nesterov=True), ref.Lars, dict(lr=0.5)),
        (lambda: adamx.novograd(0.01, b2=0.3), ref.NovoGrad, dict(lr=0.01)),
        (lambda: adamx.optimistic_adam(0.01, beta=0.9), ref.OptimisticAdam, dict(lr=0.01)),
    ],
    ids=["sf-adamw-power", "sf-sgd-warmup", "signum-beta", "adamaxw-mask", "lars-nesterov",
         "novograd-b2", "optimistic-beta"],
)  # fmt: skip
def test_a_changed_option_is_caught(ours, cls, kw, x64):
    with pytest.raises(AssertionError):
        assert_close(run_jax(ours(), jnp.float64), run_ref(cls, kw), 1e-6, 1e-6)


# ------------------------------------------------------------------- schedule-free
def test_eval_params_through_optax_wrappers():
    params = {"w": jnp.asarray([1.0, -2.0]), "b": jnp.asarray(0.5)}
    grads = {"w": jnp.asarray([0.3, 1.0]), "b": jnp.asarray(-2.0)}
    plain = adamx.schedule_free_adamw(0.1)
    injected = optax.inject_hyperparams(adamx.schedule_free_adamw)(learning_rate=0.1)
    multi = optax.MultiSteps(adamx.schedule_free_adamw(0.1), every_k_schedule=1)
    results = []
    for opt in (plain, injected, multi):
        p, s = params, opt.init(params)
        for _ in range(3):
            with jax.numpy_dtype_promotion("standard"):  # MultiSteps mixes int32 and float
                u, s = opt.update(grads, s, p)
            p = optax.apply_updates(p, u)
        results.append(adamx.schedule_free_eval_params(s, p))
    for r in results[1:]:
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), r, results[0])
    # x is not y: evaluating at the training params would be another point
    assert not np.allclose(results[0]["w"], p["w"])


def test_eval_params_refuse_a_state_without_schedule_free():
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="found 0 ScheduleFreeState"):
        adamx.schedule_free_eval_params(adamx.adam().init(params), params)
    state = adamx.schedule_free_sgd().init(params)
    with pytest.raises(ValueError, match="shape"):
        adamx.schedule_free_eval_params(state, {"w": jnp.ones(3)})


def test_schedule_free_state_as_optax_names_it():
    state = adamx.schedule_free_adamw().init({"w": jnp.ones(3, jnp.bfloat16)})
    sf = optax.tree_utils.tree_get(state, "z")
    assert sf["w"].dtype == jnp.bfloat16
    assert optax.tree_utils.tree_get(state, "b1").dtype == jnp.bfloat16  # the lowest dtype
    assert int(optax.tree_utils.tree_get(state, "step_count")) == 1
    z = adamx.schedule_free_sgd(state_dtype=jnp.float32).init({"w": jnp.ones(3, jnp.bfloat16)})
    assert optax.tree_utils.tree_get(z, "z")["w"].dtype == jnp.float32


# ------------------------------------------------------------------- construction errors
BAD = [
    (lambda: adamx.schedule_free_sgd(b1=0.0), "b1", "(0, 1]"),
    (lambda: adamx.schedule_free_adamw(b1=1.5), "b1", "1.5"),
    (lambda: adamx.schedule_free_adamw(warmup_steps=0), "warmup_steps", "positive int"),
    (lambda: adamx.schedule_free_sgd(warmup_steps=2.5), "warmup_steps", "2.5"),
    (lambda: adamx.schedule_free_sgd(weight_lr_power=-1.0), "weight_lr_power", "-1.0"),
    (lambda: adamx.schedule_free_adamw(state_dtype="int8"), "state_dtype", "'int8'"),
    (lambda: adamx.schedule_free_adamw(b2=1.0), "b2", "1.0"),
    (lambda: adamx.sign_sgd("0.1"), "learning_rate", "'0.1'"),
    (lambda: adamx.signum(beta=1.0), "beta", "1.0"),
    (lambda: adamx.signum(accumulator_dtype="int32"), "accumulator_dtype", "'int32'"),
    (lambda: adamx.adamaxw(weight_decay=-0.1), "weight_decay", "-0.1"),
    (lambda: adamx.lars(trust_coefficient=-1.0), "trust_coefficient", "-1.0"),
    (lambda: adamx.lars(eps=-1.0), "eps", "-1.0"),
    (lambda: adamx.lars(trust_ratio_mask=None), "trust_ratio_mask", "None"),
    (lambda: adamx.lars(weight_decay_mask=1), "weight_decay_mask", "1"),
    (lambda: adamx.lars(momentum=1.0), "momentum", "1.0"),
    (lambda: adamx.lars(nesterov="yes"), "nesterov", "'yes'"),
    (lambda: adamx.novograd(b1=1.0), "b1", "1.0"),
    (lambda: adamx.novograd(b2=-0.5), "b2", "-0.5"),
    (lambda: adamx.optimistic_adam(alpha=-1.0), "alpha", "-1.0"),
    (lambda: adamx.optimistic_adam(beta="1"), "beta", "'1'"),
    (lambda: adamx.optimistic_adam(nesterov=1), "nesterov", "1"),
]


@pytest.mark.parametrize(("make", "arg", "shown"), BAD, ids=[f"{a}-{i}" for i, (_, a, _) in
                                                             enumerate(BAD)])  # fmt: skip
def test_bad_values_raise_at_construction_naming_the_argument(make, arg, shown):
    with pytest.raises(ValueError) as info:
        make()
    assert f"`{arg}`" in str(info.value)
    assert shown in str(info.value)
