"""Numerical robustness of every optimizer at the edges of its inputs.

Every row of ``test_contract.OPTIMIZERS`` (which covers every alias of ``adamx.OPTIMIZERS``)
is run where the case means something for its rule:

* step counts past 2**31: the int32 counters saturate and the updates stay those of the
  rule, checked against the independent float64 references of ``tests/reference*.py``;
* decays very close to 1 (``b2`` = 0.99999 and 1 - 1e-7): the float32 updates follow the
  float64 references;
* tiny (down to subnormal) and huge (up to the largest finite) gradients in float32,
  bfloat16 and float16: finite updates, no NaN where the rule has none;
* ``eps = 0`` with zero gradients: zero updates where the rule has no 0/0, and the same NaNs
  as ``torch.optim`` where it has one;
* float16 (and bfloat16) params with a zero gradient: no 0/0 although ``eps=1e-8`` rounds to 0
  in float16; and a float16 state gives the float32 update.

Cases where adamx fails are marked ``xfail(strict=True)`` with the cause.
"""

from __future__ import annotations

import fractions
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference_adam_variants as rav
import reference_fam3 as rf3
import reference_fam4 as rf4
import reference_mixtures as rmix
import reference_other_family as rof
import reference_recent1 as rr1
import reference_recent2 as rr2
import reference_sgd_family as rsgd
import reference_sign_free as rsf
from test_contract import OPTIMIZERS
from test_properties import DECAY, ZERO, ZERO_UPDATES

import adamx

ROWS = sorted(OPTIMIZERS)
INT32_MAX = 2**31 - 1
F32_EPS = float(jnp.finfo(jnp.float32).eps)


def row(name):
    return OPTIMIZERS[name]


def alias(name) -> str:
    return row(name).factory.__name__


def build(name, **overrides) -> optax.GradientTransformation:
    return row(name).factory(**{**row(name).kwargs, **overrides})


def xfail_if(reason: str | None):
    return () if reason is None else pytest.mark.xfail(strict=True, reason=reason)


def sign_tree(dtype):
    """Params of moderate size and a fixed pattern of gradient signs, one 2-D leaf (factored
    by Adafactor), one vector and one scalar."""
    params = {
        "w": jnp.asarray([[1.0, -1.0, 0.5], [0.25, -2.0, 1.5]], dtype),
        "b": jnp.asarray([0.5, -0.75], dtype),
        "s": jnp.asarray(1.25, dtype),
    }
    signs = {
        "w": np.asarray([[1.0, -1.0, 1.0], [-1.0, 1.0, 1.0]]),
        "b": np.asarray([-1.0, 1.0]),
        "s": np.asarray(-1.0),
    }
    return params, signs


def scaled(signs, magnitude, dtype):
    return jax.tree.map(lambda s: jnp.asarray(s * magnitude, dtype), signs)


def floats(tree):
    return [
        np.asarray(x, np.float32)
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.result_type(x), jnp.floating)
    ]


def random_tree(rng, dtype=jnp.float32, scale=1.0):
    return {
        "w": jnp.asarray(rng.standard_normal((2, 3)) * scale, dtype),
        "b": jnp.asarray(rng.standard_normal(4) * scale, dtype),
        "s": jnp.asarray(rng.standard_normal() * scale, dtype),
    }


# ----------------------------------------------------------------------------- references
def _renamed(kwargs: dict, names: dict) -> dict:
    return {names.get(k, k): v for k, v in kwargs.items()}


ADAM_FAMILY = {
    "adam": lambda kw: rav.Adam(**kw),
    "adamw": lambda kw: rav.Adam(decoupled=True, **kw),
    "amsgrad": lambda kw: rav.Adam(amsgrad=True, **kw),
    "adamax": lambda kw: rav.Adamax(**kw),
    "nadam": lambda kw: rav.NAdam(**kw),
    "nadamw": lambda kw: rav.NAdam(decoupled=True, **kw),
    "radam": lambda kw: rav.RAdam(**kw),
    "adabelief": lambda kw: rav.AdaBelief(**kw),
    "yogi": lambda kw: rav.Yogi(**kw),
}
ADAM_NAMES = {
    "learning_rate": "lr",
    "momentum_decay": "psi",
    "decoupled_weight_decay": "decoupled",
    "initial_accumulator_value": "v0",
}
SGD_FAMILY = {
    "sgd": rsgd.SGD,
    "rmsprop": rsgd.RMSprop,
    "adagrad": rsgd.Adagrad,
    "adadelta": rsgd.Adadelta,
}
SGD_NAMES = {"learning_rate": "lr", "decay": "alpha"}
OTHER_FAMILY = {
    "lamb": rof.Lamb,
    "lion": rof.Lion,
    "adafactor": lambda shapes, **kw: rof.Adafactor(shapes, eps1=F32_EPS, **kw),
    "adopt": rof.Adopt,
    "lazy_adam": rof.LazyAdam,
    "adan": rmix.Adan,
    "muon": rmix.Muon,
    "ademamix": rmix.AdEMAMix,
    "simplified_ademamix": rmix.SimplifiedAdEMAMix,
    "adamaxw": rsf.AdamaxW,
    "lars": rsf.Lars,
    "novograd": rsf.NovoGrad,
    "optimistic_adam": rsf.OptimisticAdam,
    "schedule_free_adamw": lambda shapes, **kw: rsf.ScheduleFree(shapes, adam=True, **kw),
    "schedule_free_sgd": rsf.ScheduleFree,
    "sign_sgd": rsf.SignSGD,
    "signum": rsf.Signum,
    "laprop": rr1.LaProp,
    "cautious_adamw": rr1.CautiousAdamW,
    "mars": rr1.MarsAdamW,
    "adam_mini": rr2.AdamMini,  # the robustness trees' names: one block per leaf
    "soap": rr2.Soap,
    "prodigy": rf4.Prodigy,
    "dadapt_adamw": rf4.DAdaptAdamW,
    "galore": rf4.GaLore,
    "rprop": rf3.Rprop,
    "asgd": rf3.ASGD,
    "sm3": rf3.SM3,
    "madgrad": rf3.Madgrad,
    "acprop": rf3.ACProp,
}
OTHER_NAMES = {"learning_rate": "lr", "weight_decay": "wd"}
AVERAGED = {"schedule_free_adamw", "schedule_free_sgd"}  # x recomputed from y and z


class Reference:
    """The float64 reference of a row (with ``overrides``), its first update being step
    ``t0``; ``step(params, grads)`` takes and returns flat lists of float64 arrays."""

    def __init__(self, name, params, t0=1, **overrides):
        kwargs = {**row(name).kwargs, **overrides}
        kind, shapes = alias(name), [np.shape(p) for p in params]
        if kind in ADAM_FAMILY:
            self.rule = ADAM_FAMILY[kind](_renamed(kwargs, ADAM_NAMES))
        elif kind in SGD_FAMILY:
            self.rule = SGD_FAMILY[kind](**_renamed(kwargs, SGD_NAMES))
        else:
            self.rule = None
            self.opt = OTHER_FAMILY[kind](shapes, **_renamed(kwargs, OTHER_NAMES))
            for counter in ("t", "k"):  # updates taken before this one
                if hasattr(self.opt, counter):
                    setattr(self.opt, counter, t0 - 1)
        if self.rule is not None:
            self.state = self.rule.init(params)
        self.t = t0

    def step(self, params, grads):
        params = [np.asarray(p, np.float64) for p in params]
        grads = [np.asarray(g, np.float64) for g in grads]
        if self.rule is None:
            new = self.opt.step(params, grads)
        else:
            new, self.state = self.rule.step(params, grads, self.state, self.t)
        self.t += 1
        return [np.asarray(x, np.float64) for x in new]


def test_every_alias_has_a_reference():
    families = set(ADAM_FAMILY) | set(SGD_FAMILY) | set(OTHER_FAMILY)
    assert set(adamx.OPTIMIZERS) <= families


def follow_reference(name, state, grads_seq, params, *, t0, rtol, overrides=None):
    """Run adamx (from ``state``) and the reference (from step ``t0``) on the same float32
    params and gradients; compare each update with the reference's step, leaf by leaf,
    to ``rtol`` of the leaf's largest step. Returns adamx's last state."""
    overrides = overrides or {}
    opt = build(name, **overrides)
    ref = Reference(name, [np.asarray(p) for p in jax.tree.leaves(params)], t0, **overrides)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    for step, grads in enumerate(grads_seq, start=1):
        updates, state = opt.update(grads, state, params)
        before = [np.asarray(p, np.float64) for p in jax.tree.leaves(params)]
        want = [n - b for n, b in zip(ref.step(before, jax.tree.leaves(grads)), before)]
        for path, u, w, b in zip(paths, jax.tree.leaves(updates), want, before):
            got = np.asarray(u, np.float64)
            assert np.all(np.isfinite(got)), f"{name} step {step}: updates{path} = {got}"
            # schedule-free recomputes x from the float32 y and z: y's rounding is in the step
            ulps = 4 * F32_EPS * float(np.max(np.abs(b))) if alias(name) in AVERAGED else 0.0
            np.testing.assert_allclose(
                got,
                w,
                rtol=rtol,
                atol=rtol * float(np.max(np.abs(w))) + ulps,
                err_msg=f"{name} {overrides} step {step}: updates{path}",
            )
        params = optax.apply_updates(params, updates)
    return state


# ----------------------------------------------------------------------------- step counts
def counts(state) -> list[int]:
    """Every int32 scalar step counter (``count``, or ``step`` of adopt / adafactor's
    schedule blocks / novograd, or ``step_count`` of schedule-free) in a (chained) state."""
    found = []

    def visit(path, x):
        if is_count(path, x):
            found.append(int(x))
        return x

    jax.tree_util.tree_map_with_path(visit, state)
    return found


def is_count(path, x) -> bool:
    last = path[-1] if path else None
    return (
        isinstance(last, jax.tree_util.GetAttrKey)
        and last.name in ("count", "step", "step_count")
        and jnp.result_type(x) == jnp.int32
        and jnp.ndim(x) == 0
    )


def set_counts(state, value: int):
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.asarray(value, jnp.int32) if is_count(path, x) else x, state
    )


# signSGD keeps no state, Rprop no count (its sizes and last gradient are all it needs)
@pytest.mark.parametrize("name", [n for n in ROWS if alias(n) not in ("sign_sgd", "rprop")])
def test_counts_saturate_past_int32_max(name):
    rng = np.random.default_rng(0)
    params = random_tree(rng)
    state = set_counts(build(name).init(params), INT32_MAX - 2)
    assert counts(state) and set(counts(state)) == {INT32_MAX - 2}
    grads = [random_tree(rng) for _ in range(4)]
    # The reference counts on past 2**31 - 1 (Python ints); every factor of t it reads (b**t,
    # t**-0.8, 1/sqrt(t), t**0.25, 1/(1 + t*lr_decay)) moves by < 1e-9 over those steps.
    state = follow_reference(name, state, grads, params, t0=INT32_MAX - 1, rtol=1e-4)
    assert set(counts(state)) == {INT32_MAX}
    assert all(np.all(np.isfinite(x)) for x in floats(state))


# ----------------------------------------------------------------------------- b2 close to 1
# The decay that plays b2's part, per alias; None where the rule has none.
SLOW_DECAY = {
    "adam": "b2", "adamw": "b2", "amsgrad": "b2", "adamax": "b2", "nadam": "b2",
    "nadamw": "b2", "radam": "b2", "adabelief": "b2", "yogi": "b2", "lamb": "b2",
    "lion": "b2", "lazy_adam": "b2", "adopt": "b2", "rmsprop": "decay", "adadelta": "rho",
    "adan": "b3", "ademamix": "b2", "simplified_ademamix": "b2", "muon": "adam_b2",
    "sgd": None,  # momentum near 1 is another question (the buffer grows as 1/(1 - mu))
    "adagrad": None,  # a plain sum, no decay
    "adafactor": None,  # its weight is t**beta2_decay, no b2
    "adamaxw": "b2", "novograd": "b2", "optimistic_adam": "b2", "schedule_free_adamw": "b2",
    "signum": "beta",
    "lars": None, "schedule_free_sgd": None, "sign_sgd": None,  # momentum or nothing
    "laprop": "b2", "mars": "b2", "cautious_adamw": "b2",
    "adam_mini": "b2", "soap": "b2",  # soap: shampoo_beta follows b2
    "prodigy": None, "dadapt_adamw": None,  # b2 is inside the pair `betas`
    "galore": None,  # b2 is the base optimizer's
    "rprop": None, "asgd": None,  # sign comparisons; a step-size decay and a plain average
    "acprop": "b2", "sm3": "b2", "madgrad": None,  # SM3's b2 (1, a sum, by default); MADGRAD sums
}  # fmt: skip
NEAR_ONE = (0.99999, 1 - 1e-7)


def test_slow_decay_table_covers_every_alias():
    assert set(SLOW_DECAY) == set(adamx.OPTIMIZERS) | {"cautious_adamw"}


# The float64 textbook rho_t = rho_inf - 2 t b2**t / (1 - b2**t) of the RAdam reference (and of
# torch.optim.RAdam) is off by 2e-4 at b2 = 1 - 1e-7: 1 - b2**t ~ 7e-7 carries the 1e-16 rounding
# of b2 (1.6e-10 relatively), times rho_inf ~ 2e7. adamx's is exact there (see
# test_radam_rectification_is_exact_at_b2_close_to_one), so the comparison allows for it.
REFERENCE_RTOL = {("radam", 1 - 1e-7): 2e-3}


@pytest.mark.parametrize("b2", NEAR_ONE, ids=["0.99999", "1-1e-7"])
@pytest.mark.parametrize("name", [n for n in ROWS if SLOW_DECAY[alias(n)]])
def test_decay_close_to_one_follows_the_reference(name, b2):
    rng = np.random.default_rng(1)
    params = random_tree(rng)
    grads = [random_tree(rng) for _ in range(8)]  # RAdam rectifies from step 6
    over = {SLOW_DECAY[alias(name)]: b2}
    rtol = REFERENCE_RTOL.get((alias(name), b2), 1e-4)
    state = build(name, **over).init(params)
    follow_reference(name, state, grads, params, t0=1, rtol=rtol, overrides=over)


def exact_rectification(b2: float, t: int) -> float:
    """RAdam's r_t for the double ``b2``, in exact rational arithmetic."""
    b = fractions.Fraction(b2)
    rho_inf = 2 / (1 - b) - 1
    rho = rho_inf - 2 * t * b**t / (1 - b**t)
    return math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))


@pytest.mark.parametrize("b2", NEAR_ONE, ids=["0.99999", "1-1e-7"])
def test_radam_rectification_is_exact_at_b2_close_to_one(b2):
    """With a constant gradient and eps = 0, m^ = g and sqrt(v) = sqrt(1 - b2**t) |g|, so
    the rectified update is exactly -lr * r_t * sign(g)."""
    opt = adamx.radam(learning_rate=1.0, b2=b2, eps=0.0)
    g = jnp.asarray([2.0, -0.5], F32)
    state = opt.init(g)
    for t in range(1, 11):
        u, state = opt.update(g, state)
        if t >= 6:  # rho_t ~ t for b2 close to 1: rectified from t = 6
            want = -exact_rectification(b2, t) * np.sign(np.asarray(g))
            np.testing.assert_allclose(np.asarray(u), want, rtol=2e-6, err_msg=f"t={t}")


# ----------------------------------------------------------------------------- magnitudes
F32, BF16, F16 = jnp.float32, jnp.bfloat16, jnp.float16
# tiny, down to subnormal (float32 below 1.2e-38, bfloat16 below 1.2e-38, float16 below 6.1e-5)
TINY = {F32: (1e-20, 1e-30, 1e-40), BF16: (1e-20, 1e-30, 1e-39), F16: (1e-4, 1e-6, 6e-8)}
# huge, up to the largest finite (float32 3.4e38, bfloat16 3.39e38, float16 65504); float32
# and bfloat16 (computed in float32) run together
HUGE = {(F32, BF16): (1e20, 3e38), (F16,): (1e4, 6e4)}
STEPS = 3
SGD_ROWS = {n for n in ROWS if alias(n) == "sgd"}


def run_constant(name, dtypes, magnitude, steps=STEPS):
    """Updates and states of ``steps`` updates with the same gradient of ``magnitude``, for
    a tree with a ``sign_tree`` per dtype."""
    opt = build(name)
    params, grads, signs = {}, {}, {}
    for dtype in dtypes:
        key = jnp.dtype(dtype).name
        params[key], signs[key] = sign_tree(dtype)
        grads[key] = scaled(signs[key], magnitude, dtype)
    state, out = opt.init(params), []
    for _ in range(steps):
        updates, state = opt.update(grads, state, params)
        out.append((updates, state))
    return signs, out


@pytest.mark.parametrize("name", ROWS)
def test_tiny_gradients_give_finite_bounded_updates(name):
    """Jitted, as training runs: eager dispatch flushes subnormals to zero, jit keeps them."""
    opt = build(name)
    params, grads = {}, {}
    for dtype, mags in TINY.items():
        for mag in mags:
            key = f"{jnp.dtype(dtype).name}_{mag:g}"
            p, signs = sign_tree(dtype)
            params[key], grads[key] = p["w"], scaled(signs, mag, dtype)["w"]

    @jax.jit
    def run(params, grads):
        def body(state, _):
            updates, state = opt.update(grads, state, params)
            return state, updates

        state, out = jax.lax.scan(body, opt.init(params), None, length=STEPS)  # one body
        return out, state

    out, state = run(params, grads)
    # No rule steps further than a few learning rates times the params' scale (LAMB and
    # Adafactor scale by ||p|| or RMS(p); |p| <= 2 over 6 elements here).
    bound = 10 * row(name).kwargs["learning_rate"] * 2.0 * np.sqrt(6)
    assert all(np.all(np.isfinite(x)) for x in floats(state))
    for step in range(1, STEPS + 1):
        updates = jax.tree.map(lambda u, i=step - 1: u[i], out)
        for path, u in jax.tree_util.tree_leaves_with_path(updates):
            u = np.asarray(u, np.float32)
            where = f"{name} step {step}: updates{jax.tree_util.keystr(path)} = {u}"
            assert np.all(np.isfinite(u)), where
            assert np.all(np.abs(u) <= bound), where


def overflowing_rule(name, dtypes, magnitude) -> str | None:
    """Where the rule itself leaves the dtype's range: Inf allowed, NaN still not."""
    top = min(float(jnp.finfo(dtype).max) for dtype in dtypes)
    if name in SGD_ROWS and magnitude * 1.9 > top:
        return "the momentum buffer mu*b + g (or Nesterov's g + mu*b) exceeds the largest finite"
    if alias(name) == "simplified_ademamix" and magnitude * 1.9 > top:
        return "its momentum b1*m + g is undamped like SGD's buffer: 1.99 g at step 2"
    return None


def dtype_names(dtypes) -> str:
    return "+".join(jnp.dtype(d).name for d in dtypes)


# Rules whose own arithmetic meets NaN at the largest magnitudes (optax's as well).
NAN_AT_THE_LARGEST = {
    "galore": "the projected gradient P^T G sums the gradient's elements: at 3e38 (float32) "
    "and 6e4 (float16) it overflows to inf (the SVD's norms too), and the base Adam's m / "
    "sqrt(v) is inf / inf = NaN, as in optax.contrib.galore",
}


def huge_cases():
    for name in ROWS:
        for dtypes, mags in HUGE.items():
            for mag in mags:
                nan = NAN_AT_THE_LARGEST.get(alias(name)) if mag == max(mags) else None
                yield pytest.param(
                    name,
                    dtypes,
                    mag,
                    id=f"{name}-{dtype_names(dtypes)}-{mag:g}",
                    marks=xfail_if(nan),
                )


@pytest.mark.parametrize(("name", "dtypes", "magnitude"), list(huge_cases()))
def test_huge_gradients_give_finite_updates_and_no_nan(name, dtypes, magnitude):
    _, out = run_constant(name, dtypes, magnitude)
    rule_overflows = overflowing_rule(name, dtypes, magnitude)
    for step, (updates, state) in enumerate(out, start=1):
        where = f"{name} step {step}"
        for x in floats(updates):
            assert not np.any(np.isnan(x)), f"{where}: NaN update {x}"
            assert rule_overflows or np.all(np.isfinite(x)), f"{where}: non-finite update {x}"
        for x in floats(state):
            # an overflowed square (inf) in the state is the rule's own; NaN never is
            assert not np.any(np.isnan(x)), f"{where}: NaN in the state"


# Level 2: where every quantity the rule keeps fits the dtype, a huge gradient must still move
# every parameter against it. Excluded: the rules whose own state overflows at |g| = 1e20.
OWN_OVERFLOW_AT_1E20 = {
    "adagrad": "s = sum of g**2 = 3e40",
    "adadelta": "v = (1 - rho)*g**2 = 1e39",
    "adopt": "v = g**2 = 1e40",
    "adafactor": "R = mean(g**2) = 1e40 (saturated at 2**126)",
    "simplified_ademamix": "v = (1 - b2)*g**2 = 5e38 with its default b2 = 0.95",
    "lars": "||u||**2 = 6e40: the ratio is c ||p|| / inf = 0 (as in optax)",
    "novograd": "n = ||g||**2 = 6e40: the step g / sqrt(n) is 0 (as in optax)",
    "soap": "L = (1 - sb) G G^T = 5e38 per term: the matrices keep the identity basis",
    "sm3": "nu = g**2 = 1e40 (a sum, b2 = 1): the step g / sqrt(nu) is 0 (as in optax)",
    "madgrad": "v = lam * g**2, g**2 = 1e40: s / cbrt(inf) = 0, so z = x0 (as in optax)",
}


# Rows whose second moment overflows within the 7 steps, in torch.optim as in adamx: no NaN,
# but v = inf, and the steps it divides are 0 from then on. (RMSProp's v = (1 - 0.992**t) g**2
# overflows at t = 5 as well, but its momentum buffer keeps moving the params, as in torch.)
V_OVERFLOWS_BY_STEP_7 = {
    "radam": "b2 = 0.99: v = (1 - 0.99**t) * g**2 passes float32's largest finite at t = 4 "
    "(3.9e38), so v = inf and the rectified steps (from t = 6) are 0, as in torch.optim.RAdam; "
    "the warm-up steps -lr*m^ before it do move against the gradient",
    "radam_decoupled": "b2 = 0.99: v = (1 - 0.99**t) * g**2 passes float32's largest finite at "
    "t = 4 (3.9e38), so v = inf and from t = 6 the rectified step is 0, leaving only the "
    "decay term -lr*wd*p, as in torch.optim.RAdam(decoupled_weight_decay=True)",
    "adan": "b3 = 0.99: n = (1 - 0.99**t) * g**2 passes float32's largest finite at t = 4 "
    "(3.9e38), so n = inf and from then on the step is the decay term -lr*wd*p alone",
}


def moving_cases():
    for name in ROWS:
        if alias(name) not in OWN_OVERFLOW_AT_1E20:
            yield pytest.param(name, id=name, marks=xfail_if(V_OVERFLOWS_BY_STEP_7.get(name)))


@pytest.mark.parametrize("name", list(moving_cases()))
def test_huge_gradients_still_move_every_parameter_against_the_gradient(name):
    """float32 and bfloat16 params, |g| = 1e20."""
    signs, out = run_constant(name, (F32, BF16), 1e20, steps=7)  # RAdam rectifies at 6
    for step, (updates, _) in enumerate(out, start=1):
        if step <= row(name).warmup:
            continue
        for path, u in jax.tree_util.tree_leaves_with_path(updates):
            u = np.asarray(u, np.float32)
            s = np.asarray(_at(signs, path))
            assert np.all(np.isfinite(u) & (u * s < 0)), (
                f"{name} step {step}: updates{jax.tree_util.keystr(path)} = {u} for g = {s}e20"
            )


# Level 3: and those steps are the rule's own. At |g| = 1e20, g**2 = 1e40 does not fit float32
# but (1 - b2) * g**2 does: the float32 updates follow the float64 references for three steps
# (RAdam's v, with b2 = 0.99, fits until t = 3; RMSProp's until t = 4).
@pytest.mark.parametrize("name", [n for n in ROWS if alias(n) not in OWN_OVERFLOW_AT_1E20])
def test_huge_gradients_follow_the_float64_reference(name):
    params, signs = sign_tree(F32)
    grads = scaled(signs, 1e20, F32)
    follow_reference(name, build(name).init(params), [grads] * STEPS, params, t0=1, rtol=1e-5)


def _at(tree, path):
    """The subtree of a tree of dicts at ``path``."""
    for key in path:
        tree = tree[key.key]
    return tree


# ----------------------------------------------------------------------------- float16 state
# A float16 state must not change the update beyond float16 rounding: the float16 run is
# compared with the float32 run of the same (float16-representable) params and gradients.
# 1e3: g**2 = 1e6 overflows float16; 1e-2: (1 - b2)*g**2 ~ 1e-7 underflows it. Two large
# gradients, then ten times smaller ones, so that AMSGrad's maximum and v's decay matter.
F16_STATE_SKIP = {
    "lion": "sign(c) flips where c is within float16 rounding of 0: a float16 m legitimately "
    "moves such an element by 2*lr",
    "signum": "sign(m) flips where m is within float16 rounding of 0, as Lion's",
    "optimistic_adam": "beta * (r - r_prev) differences Adam's direction r, which reaches the "
    "block in the params' dtype: float16's rounding of |r| ~ 1 (5e-4) is most of a small change",
    "schedule_free_adamw": "y and z are float16: c * (z - y) carries their rounding (5e-4 of "
    "|y| ~ 1), far above a small step",
    "schedule_free_sgd": "y and z are float16: c * (z - y) carries their rounding (5e-4 of "
    "|y| ~ 1), far above a small step",
}
F16_RTOL = 1e-2
F16_ULP = 2 * float(jnp.finfo(F16).smallest_subnormal)  # updates below 6e-5 are subnormal


def float16_state_cases():
    for name in ROWS:
        if alias(name) in F16_STATE_SKIP:
            continue
        for mag in (1e-2, 1e3):
            yield pytest.param(name, mag, id=f"{name}-{mag:g}")


@pytest.mark.parametrize(("name", "magnitude"), list(float16_state_cases()))
def test_float16_state_gives_the_float32_update(name, magnitude):
    overrides = {"eps": (F32_EPS, 1e-3)} if alias(name) == "adafactor" else {}  # eps1 per dtype
    rng = np.random.default_rng(2)
    params16 = random_tree(rng, F16)
    grads16 = [random_tree(rng, F16, magnitude * (1 if i < 2 else 0.1)) for i in range(10)]
    as32 = lambda t: jax.tree.map(lambda x: x.astype(F32), t)  # noqa: E731
    runs = []
    for params, grads in ((params16, grads16), (as32(params16), [as32(g) for g in grads16])):
        opt = build(name, **overrides)
        state, out = opt.init(params), []
        for g in grads:
            u, state = opt.update(g, state, params)
            out.append(u)
        runs.append(out)
    for step, (u16, u32) in enumerate(zip(*runs), start=1):
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(u16), jax.tree.leaves(u32)):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            atol = F16_RTOL * float(np.max(np.abs(b))) + F16_ULP
            where = f"{name} |g|~{magnitude:g} step {step}: updates{jax.tree_util.keystr(path)}"
            np.testing.assert_allclose(a, b, rtol=F16_RTOL, atol=atol, err_msg=where)


# ----------------------------------------------------------------------------- eps = 0
EPS_ZERO = {  # the rows' eps set to 0
    n: {"eps": (0.0, 1e-3) if alias(n) == "adafactor" else 0.0}
    for n in ROWS
    if "eps" in inspect.signature(row(n).factory).parameters
}
# Zero gradients with eps = 0, where the rule has no 0/0: (overrides, steps, why).
NO_NAN_AT_EPS_ZERO = {
    "adam_eps_root": ({"eps": 0.0}, 8, "0 / sqrt(0 + eps_root), eps_root > 0"),
    "yogi": ({"eps": 0.0}, 8, "v stays at initial_accumulator_value > 0"),
    "lazy_adam": ({"eps": 0.0}, 8, "rows with an all-zero gradient are left alone"),
    "radam": ({"eps": 0.0}, 5, "the five warm-up steps are -lr*m^, no division"),
    "adopt": ({"eps": 0.0}, 1, "the first update is 0 by design, no division"),
    "adagrad": (  # and no coupled decay, which would make the gradient non-zero
        {"eps": 0.0, "initial_accumulator_value": 0.1, "weight_decay": 0.0},
        8,
        "the sum starts at initial_accumulator_value > 0",
    ),
    "lion": ({"weight_decay": 0.0}, 8, "no eps: sign(0) = 0"),  # and no decay
    "adan": ({"eps": 0.0, "weight_decay": 0.0}, 8, "0 / sqrt(0 + eps_root), eps_root > 0"),
    "muon": (
        {"eps": 0.0, "weight_decay": 0.0, "adam_weight_decay": 0.0},
        8,
        "a zero matrix orthogonalises to zero (no 0/0); AdamW's 0 / adam_eps, adam_eps > 0",
    ),
    "sgd": ({}, 8, "no eps, no division"),
    "sgd_nesterov": ({}, 8, "no eps, no division"),
    "lars": ({"eps": 0.0, "weight_decay": 0.0}, 8, "||u|| = 0: the ratio is 1, no division"),
    "sign_sgd": ({}, 8, "no eps: sign(0) = 0"),
    "signum": ({}, 8, "no eps: m = 0 and sign(0) = 0"),
    "galore": ({"weight_decay": 0.0}, 8, "no eps of its own: the base Adam's 1e-8 stays"),
    "rprop": ({}, 8, "no eps: sign(0) = 0, and g * prev = 0 leaves the sizes alone"),
    "sm3": ({"eps": 0.0}, 8, "nu = 0 gives d = 0 (the rule's where, as optax's), no 0/0"),
    "acprop": (
        {"eps": 0.0, "weight_decay": 0.0},
        8,
        "the first step divides by 1; s then grows by eps_root > 0 at every update",
    ),
}


@pytest.mark.parametrize("name", sorted(NO_NAN_AT_EPS_ZERO))
def test_eps_zero_with_zero_gradients_where_the_rule_has_no_nan(name):
    overrides, steps, why = NO_NAN_AT_EPS_ZERO[name]
    opt = build(name, **overrides)
    params = random_tree(np.random.default_rng(3))
    zeros = jax.tree.map(jnp.zeros_like, params)
    state = opt.init(params)
    for step in range(1, steps + 1):
        updates, state = opt.update(zeros, state, params)
        for x in floats(updates):
            assert np.all(x == 0), f"{name} step {step} ({why}): {x}"
        assert all(np.all(np.isfinite(x)) for x in floats(state)), f"{name} step {step}"


# The rules' own 0/0 (every other row): adamx gives NaN exactly where torch.optim does.
TORCH_TWINS = {  # row: (torch.optim class, extra arguments)
    "adam": ("Adam", {}),
    "adam_l2": ("Adam", {}),
    "adamw": ("AdamW", {}),
    "amsgrad": ("Adam", {"amsgrad": True}),
    "adamax": ("Adamax", {}),
    "nadam": ("NAdam", {}),
    "nadamw": ("NAdam", {"decoupled_weight_decay": True}),
    "radam": ("RAdam", {}),
    "radam_decoupled": ("RAdam", {}),
    "rmsprop": ("RMSprop", {}),
    "rmsprop_centered": ("RMSprop", {}),
    "adagrad": ("Adagrad", {}),
    "adadelta": ("Adadelta", {}),
    "adafactor": ("Adafactor", {}),
}


def torch_kwargs(name) -> dict:
    kw = dict(row(name).kwargs)
    kw.pop("eps_in_sqrt", None)  # the same at eps = 0
    kw["lr"] = kw.pop("learning_rate")
    if "b2" in kw:
        kw["betas"] = (0.9, kw.pop("b2"))
    if "decay" in kw:
        kw["alpha"] = kw.pop("decay")
    if kw.pop("decoupled_weight_decay", False):
        kw["decoupled_weight_decay"] = True
    return kw


# The rules' own 0/0 without a twin in torch.optim: every element is NaN on every step.
NAN_WITHOUT_TWIN = {
    "adam_nesterov": "0/0 in m^/(sqrt(v^) + 0); torch.optim.Adam has no Nesterov option",
    "nadam_scheduleless": "0/0 as in Adam; torch.optim.NAdam always schedules the momentum",
    "adabelief": "s = 0 (its eps term is 0 too): 0/0",
    "lamb": "0/0 in Adam's direction; the trust ratio keeps the NaN",
    "ademamix": "0/0 in (m^ + alpha*s)/(sqrt(v^) + 0); torch.optim has no AdEMAMix",
    "simplified_ademamix": "0/0 in (m + alpha*g)/(sqrt(v^) + 0); torch.optim has none",
    "adamaxw": "u = max(b2*0, |0| + 0) = 0: 0/0 (torch.optim.Adamax has no decoupled decay)",
    "novograd": "n = ||0||**2 = 0: 0/0, and the momentum keeps the NaN",
    "optimistic_adam": "0/0 in Adam's direction; the extrapolation keeps the NaN",
    "schedule_free_adamw": "0/0 in the RMS step; z, hence y, carries the NaN",
    "laprop": "d = 0 / (sqrt(0) + 0) before the average; the momentum keeps the NaN",
    "mars": "c = 0: 0/0 in AdamW's direction on c",
    "cautious_adamw": "0/0 in AdamW's direction; the mask multiplies it (0 * NaN = NaN)",
    "adam_mini": "v_B = mean(0**2) = 0: 0/0 in m^/(sqrt(v_B^) + 0)",
    "soap": "0/0 in Adam's direction (in the identity basis of L = R = 0); the matrices' "
    "first update sets up the bases and is the decay alone (the row's warmup)",
    "prodigy": "0/0 in m/(sqrt(v) + D*0); torch.optim has no Prodigy",
    "dadapt_adamw": "0/0 in m/(sqrt(v) + 0) and in D's numerator; torch.optim has none",
}
NO_EPS_WITH_DECAY = {
    "sgd_dampening_l2": "no eps and no division; the coupled decay moves p",
    "schedule_free_sgd": "no eps and no division; the coupled decay moves z, hence y",
    "asgd": "no eps and no division; the coupled decay and lambd move p",
    "madgrad": "the coupled decay makes g = wd*p non-zero, so v > 0: no 0/0 where p != 0",
}


def test_eps_zero_tables_cover_every_row():
    tables = (NO_NAN_AT_EPS_ZERO, TORCH_TWINS, NAN_WITHOUT_TWIN, NO_EPS_WITH_DECAY)
    assert set().union(*tables) == set(ROWS)


@pytest.mark.parametrize("name", sorted(NAN_WITHOUT_TWIN))
def test_eps_zero_nan_without_a_torch_twin(name):
    opt = build(name, eps=0.0)
    params = random_tree(np.random.default_rng(3))
    state = opt.init(params)
    for step in range(1, 4):
        updates, state = opt.update(jax.tree.map(jnp.zeros_like, params), state, params)
        for x in floats(updates):
            if step <= row(name).warmup and x.ndim == 2:  # soap: a matrix's bases set up,
                assert np.all(np.isfinite(x)), f"{name} step {step}: {x}"  # the decay only
                continue
            assert np.all(np.isnan(x)), f"{name} step {step} ({NAN_WITHOUT_TWIN[name]}): {x}"


@pytest.mark.parametrize("name", sorted(TORCH_TWINS))
def test_eps_zero_nan_is_the_rules_own_as_in_torch(name):
    torch = pytest.importorskip("torch")
    params = {"w": jnp.asarray([[1.0, 0.0, 0.5], [0.0, -2.0, 1.5]], F32)}  # zeros: L2 adds 0
    opt = build(name, **EPS_ZERO[name])
    state = opt.init(params)
    w = torch.tensor(np.asarray(params["w"]), requires_grad=True)
    cls, extra = TORCH_TWINS[name]
    twin = getattr(torch.optim, cls)([w], **extra, **torch_kwargs(name), **EPS_ZERO[name])
    for step in range(1, 9):  # RAdam's NaN starts with its rectified steps, from step 6
        updates, state = opt.update(jax.tree.map(jnp.zeros_like, params), state, params)
        before = w.detach().clone()
        w.grad = torch.zeros_like(w)
        twin.step()
        theirs = np.isnan((w.detach() - before).numpy())
        with torch.no_grad():
            w.copy_(before)  # both keep the same params
        ours = np.isnan(np.asarray(updates["w"]))
        assert np.array_equal(ours, theirs), f"{name} step {step}: NaN {ours} vs torch {theirs}"


# ----------------------------------------------------------------------------- float16 zero grads
def default_kind(name) -> str:
    """ZERO or DECAY for an alias built with its defaults."""
    parameters = inspect.signature(getattr(adamx, name)).parameters
    decays = [parameters.get(k) for k in ("weight_decay", "lambd")]  # lambd: ASGD's decay
    return DECAY if any(d is not None and d.default for d in decays) else ZERO


def zero_gradient_cases():
    for dtype in (F16, BF16):
        for name in ROWS:
            yield pytest.param(
                lambda n=name: build(n),
                ZERO_UPDATES[name][0],
                dtype,
                id=f"{name}-{jnp.dtype(dtype).name}",
            )
        for name in adamx.OPTIMIZERS:
            yield pytest.param(
                getattr(adamx, name),
                default_kind(name),
                dtype,
                id=f"default-{name}-{jnp.dtype(dtype).name}",
            )


@pytest.mark.parametrize(("make", "kind", "dtype"), list(zero_gradient_cases()))
def test_low_precision_zero_gradients_do_not_divide_zero_by_zero(make, kind, dtype):
    """eps = 1e-8 rounds to 0 in float16: the denominators must be formed in float32."""
    assert float(jnp.asarray(1e-8, F16)) == 0.0
    opt = make()
    params = {
        "w": jnp.asarray([[1.0, 0.0, 0.5], [0.0, -2.0, 1.5]], dtype),
        "s": jnp.asarray(0.0, dtype),
    }
    zeros = jax.tree.map(jnp.zeros_like, params)
    state = opt.init(params)
    for step in range(1, 5):
        updates, state = opt.update(zeros, state, params)
        for path, u in jax.tree_util.tree_leaves_with_path(updates):
            u = np.asarray(u, np.float32)
            p = np.asarray(_at(params, path), np.float32)
            where = f"step {step}: updates{jax.tree_util.keystr(path)} = {u}"
            assert np.all(np.isfinite(u)), where
            assert np.all(u == 0) if kind == ZERO else np.all((u == 0) == (p == 0)), where
        assert jax.tree.map(jnp.result_type, updates) == jax.tree.map(jnp.result_type, params)
