"""adamx as a drop-in for optax (issue 14, items 2 and 3).

Item 2: where an adamx alias has an optax namesake, optax's parameters come first with
optax's names, order and kinds; adamx's own options follow, keyword-only; every optax
keyword is accepted with optax's meaning (compared numerically with optax where the two
readings agree), and a value optax would not take is a ``ValueError`` at construction that
names the argument.

Item 3: ``optax.inject_hyperparams(adamx.X)(...)`` keeps ``adamx.X(...)``'s state structure
and works without ``params`` where the plain alias does; the state holds one ``count``.
"""

from __future__ import annotations

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from optax import tree_utils as otu

import adamx

SHARED = {
    name: getattr(optax, name)
    for name in (
        "adabelief adadelta adafactor adagrad adam adamax adamw amsgrad lamb lion nadam "
        "nadamw radam rmsprop sgd yogi"
    ).split()
}
SHARED["adopt"] = optax.contrib.adopt
SHARED["adan"] = optax.adan
SHARED["ademamix"] = optax.contrib.ademamix
SHARED["simplified_ademamix"] = optax.contrib.simplified_ademamix
SHARED |= {name: getattr(optax, name) for name in "adamaxw lars novograd sign_sgd signum".split()}
SHARED["optimistic_adam"] = optax.optimistic_adam_v2  # optax's optimistic_adam is deprecated
SHARED["schedule_free_adamw"] = optax.contrib.schedule_free_adamw
SHARED["schedule_free_sgd"] = optax.contrib.schedule_free_sgd
SHARED["prodigy"] = optax.contrib.prodigy
SHARED["dadapt_adamw"] = optax.contrib.dadapt_adamw
SHARED["galore"] = optax.contrib.galore
SHARED["rprop"] = optax.rprop
SHARED["sm3"] = optax.sm3
SHARED["madgrad"] = optax.contrib.madgrad
SHARED["acprop"] = optax.contrib.acprop

# Defaults that differ from optax's on purpose (README, "differences from optax"): PyTorch's
# defaults, a default learning rate where optax has none, and ``None`` for an option that is
# off by default where optax writes 0.0 (inject_hyperparams turns 0.0 into an array, which
# keeps the block; ``None`` it leaves alone). Every other shared default is optax's.
EMPTY = inspect.Parameter.empty
DEFAULTS_DIFFER = {
    ("adabelief", "learning_rate"): (1e-3, EMPTY),
    ("adabelief", "eps_root"): (None, 1e-16),  # None: eps_root = eps, 1e-16 at the default
    ("adadelta", "learning_rate"): (1.0, None),  # optax's None ascends
    ("adadelta", "weight_decay"): (None, 0.0),
    ("adafactor", "learning_rate"): (1e-2, None),
    ("adafactor", "eps"): (None, 1e-30),  # None: the reading's default
    ("adagrad", "learning_rate"): (1e-2, EMPTY),
    ("adagrad", "initial_accumulator_value"): (0.0, 0.1),
    ("adagrad", "eps"): (1e-10, 1e-7),
    ("adam", "learning_rate"): (1e-3, EMPTY),
    ("adamax", "learning_rate"): (2e-3, EMPTY),
    ("adamw", "learning_rate"): (1e-3, EMPTY),
    ("adamw", "weight_decay"): (1e-2, 1e-4),
    ("amsgrad", "learning_rate"): (1e-3, EMPTY),
    ("lamb", "learning_rate"): (1e-3, EMPTY),
    ("lamb", "weight_decay"): (None, 0.0),
    ("lion", "learning_rate"): (1e-4, EMPTY),
    ("lion", "weight_decay"): (None, 1e-3),
    ("nadam", "learning_rate"): (2e-3, EMPTY),
    ("nadamw", "learning_rate"): (2e-3, EMPTY),
    ("nadamw", "weight_decay"): (1e-2, 1e-4),
    ("radam", "learning_rate"): (1e-3, EMPTY),
    ("rmsprop", "learning_rate"): (1e-2, EMPTY),
    ("rmsprop", "decay"): (0.99, 0.9),
    ("rmsprop", "eps_in_sqrt"): (False, True),
    ("sgd", "learning_rate"): (1e-3, EMPTY),
    ("yogi", "learning_rate"): (1e-2, EMPTY),
    ("adopt", "learning_rate"): (1e-3, EMPTY),
    ("adopt", "clip_value_fn"): (None, "t**0.25"),  # None: t**clip_exponent, 0.25
    ("adan", "learning_rate"): (1e-3, EMPTY),
    ("adan", "weight_decay"): (None, 0.0),
    ("ademamix", "learning_rate"): (1e-3, EMPTY),
    ("ademamix", "weight_decay"): (None, 0.0),
    ("simplified_ademamix", "learning_rate"): (1e-3, EMPTY),
    ("simplified_ademamix", "weight_decay"): (None, 0.0),
    ("adamaxw", "learning_rate"): (2e-3, EMPTY),
    ("lars", "learning_rate"): (0.1, EMPTY),
    ("galore", "learning_rate"): (1e-3, EMPTY),
    ("galore", "weight_decay"): (None, 0.0),
    ("lars", "weight_decay"): (None, 0.0),
    ("novograd", "learning_rate"): (1e-2, EMPTY),
    ("novograd", "weight_decay"): (None, 0.0),
    ("optimistic_adam", "learning_rate"): (1e-3, EMPTY),
    ("schedule_free_adamw", "weight_decay"): (None, 0.0),
    ("sign_sgd", "learning_rate"): (1e-3, EMPTY),
    ("signum", "learning_rate"): (1e-3, EMPTY),
    ("rprop", "learning_rate"): (1e-2, EMPTY),  # torch's; the initial step size
    ("sm3", "learning_rate"): (1e-2, EMPTY),
    ("madgrad", "learning_rate"): (1e-2, EMPTY),
    ("madgrad", "weight_decay"): (None, 0.0),
    ("acprop", "learning_rate"): (1e-3, EMPTY),
    ("acprop", "weight_decay"): (None, 0.0),
}


# ----------------------------------------------------------------------------- signatures
@pytest.mark.parametrize("name", sorted(SHARED))
def test_optax_parameters_first_same_names_order_and_kinds(name):
    ours = list(inspect.signature(getattr(adamx, name)).parameters.values())
    theirs = list(inspect.signature(SHARED[name]).parameters.values())
    positional = [p for p in theirs if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert [(p.name, p.kind) for p in ours[: len(positional)]] == [
        (p.name, p.kind) for p in positional
    ]
    rest = ours[len(positional) :]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in rest), rest
    keyword_only = [p.name for p in theirs if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert [p.name for p in rest[: len(keyword_only)]] == keyword_only


@pytest.mark.parametrize("name", sorted(SHARED))
def test_defaults_are_optax_except_the_documented_ones(name):
    ours = inspect.signature(getattr(adamx, name)).parameters
    for param in inspect.signature(SHARED[name]).parameters.values():
        mine = ours[param.name].default
        if (name, param.name) in DEFAULTS_DIFFER:
            assert mine == DEFAULTS_DIFFER[name, param.name][0], (name, param.name)
            continue
        assert mine is param.default or mine == param.default, (name, param.name, mine)


# ----------------------------------------------------------------------------- numerics
def problem(dtype=jnp.float32):
    rng = np.random.default_rng(0)
    params = {
        "w": jnp.asarray(rng.normal(size=(4, 3)), dtype),
        "b": jnp.asarray(rng.normal(size=(3,)), dtype),
    }
    grads = [
        jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), dtype), params)
        for _ in range(6)
    ]
    return params, grads


def run(opt, params, grads):
    state = opt.init(params)
    steps = []
    for g in grads:
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
        steps.append(updates)
    return steps, state


def assert_close(ours, theirs, rtol, atol):
    for a, b in zip(ours, theirs):
        jax.tree.map(
            lambda x, y: np.testing.assert_allclose(
                np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol
            ),
            a,
            b,
        )


def _mu_dtypes(state):
    """The dtypes of the first-moment leaves (fields ``mu``, ``trace``, ``ema``)."""
    found = [
        value
        for key in ("mu", "trace", "ema")
        for _, value in otu.tree_get_all_with_path(state, key)
        if value is not None
    ]
    return {jnp.dtype(leaf.dtype).name for leaf in jax.tree.leaves(found)}


def _clip(t):
    return 0.5 + jnp.sqrt(t.astype(float))


MASK = {"w": True, "b": False}
BF16 = jnp.bfloat16
AGREE = [  # (id, adamx factory call, optax factory call, tolerance): the readings agree
    ("adam-mu_dtype", lambda: adamx.adam(1e-2, mu_dtype=jnp.bfloat16),
     lambda: optax.adam(1e-2, mu_dtype=jnp.bfloat16), 1e-2),
    ("adam-positional", lambda: adamx.adam(1e-2, 0.8, 0.99, 1e-6, 1e-8, jnp.float32),
     lambda: optax.adam(1e-2, 0.8, 0.99, 1e-6, 1e-8, jnp.float32), 1e-5),
    ("adamw-positional", lambda: adamx.adamw(1e-2, 0.9, 0.999, 1e-8, 0.0, None, 0.1),
     lambda: optax.adamw(1e-2, 0.9, 0.999, 1e-8, 0.0, None, 0.1), 1e-5),
    ("adamw-nesterov-mu_dtype", lambda: adamx.adamw(1e-2, mu_dtype=jnp.bfloat16, nesterov=True),
     lambda: optax.adamw(1e-2, mu_dtype=jnp.bfloat16, weight_decay=1e-2, nesterov=True), 1e-2),
    ("amsgrad-no-nu-correction",
     lambda: adamx.amsgrad(1e-2, 0.9, 0.99, 1e-8, 1e-10, BF16, True, False),
     lambda: optax.amsgrad(1e-2, 0.9, 0.99, 1e-8, 1e-10, BF16, True, False), 1e-2),
    ("adamax", lambda: adamx.adamax(1e-2, 0.9, 0.99, 1e-6),
     lambda: optax.adamax(1e-2, 0.9, 0.99, 1e-6), 1e-5),
    ("nadam", lambda: adamx.nadam(1e-2, 0.9, 0.999, 1e-8, 1e-9, momentum_decay=None),
     lambda: optax.nadam(1e-2, 0.9, 0.999, 1e-8, 1e-9), 1e-5),
    ("nadam-not-nesterov", lambda: adamx.nadam(1e-2, nesterov=False),
     lambda: optax.nadam(1e-2, nesterov=False), 1e-5),
    ("nadamw", lambda: adamx.nadamw(1e-2, 0.9, 0.999, 1e-8, 0.0, BF16, 1e-3, momentum_decay=None),
     lambda: optax.nadamw(1e-2, 0.9, 0.999, 1e-8, 0.0, BF16, 1e-3), 1e-2),
    ("radam-eps_root-nesterov",
     lambda: adamx.radam(1e-2, 0.9, 0.9, 0.0, 1e-8, 5.0, nesterov=True),
     lambda: optax.radam(1e-2, 0.9, 0.9, 0.0, 1e-8, 5.0, nesterov=True), 1e-5),
    ("adabelief-nesterov", lambda: adamx.adabelief(1e-2, nesterov=True),
     lambda: optax.adabelief(1e-2, nesterov=True), 1e-5),
    ("adabelief-eps_root", lambda: adamx.adabelief(1e-2, 0.9, 0.999, 1e-8, 1e-16),
     lambda: optax.adabelief(1e-2, 0.9, 0.999, 1e-8, 1e-16), 1e-5),
    ("lamb-positional-eps_root", lambda: adamx.lamb(1e-3, 0.9, 0.999, 1e-6, 1e-8),
     lambda: optax.lamb(1e-3, 0.9, 0.999, 1e-6, 1e-8), 1e-5),
    ("lamb-decay-mask", lambda: adamx.lamb(1e-3, 0.9, 0.999, 1e-6, 0.0, 0.1, MASK),
     lambda: optax.lamb(1e-3, 0.9, 0.999, 1e-6, 0.0, 0.1, MASK), 1e-5),
    ("lion-positional", lambda: adamx.lion(1e-3, 0.9, 0.99, jnp.bfloat16, 1e-3),
     lambda: optax.lion(1e-3, 0.9, 0.99, jnp.bfloat16, 1e-3), 1e-5),
    ("adopt", lambda: adamx.adopt(1e-2, 0.9, 0.999, 1e-6, jnp.bfloat16, nesterov=True),
     lambda: optax.contrib.adopt(1e-2, 0.9, 0.999, 1e-6, jnp.bfloat16, nesterov=True), 1e-2),
    ("adopt-clip_value_fn", lambda: adamx.adopt(1e-2, clip_value_fn=_clip),
     lambda: optax.contrib.adopt(1e-2, clip_value_fn=_clip), 1e-5),
    ("adopt-no-clipping", lambda: adamx.adopt(1e-2, use_clipping=False),
     lambda: optax.contrib.adopt(1e-2, use_clipping=False), 1e-5),
    ("rmsprop-optax-options",
     lambda: adamx.rmsprop(1e-2, 0.9, 1e-8, 0.1, True, True, 0.9, True, True),
     lambda: optax.rmsprop(1e-2, 0.9, 1e-8, 0.1, True, True, 0.9, True, True), 1e-4),
    ("rmsprop-eps-outside",
     lambda: adamx.rmsprop(1e-2, 0.9, 1e-3, 0.0, False, bias_correction=True),
     lambda: optax.rmsprop(1e-2, 0.9, 1e-3, 0.0, False, bias_correction=True), 1e-5),
    ("sgd-positional", lambda: adamx.sgd(1e-2, 0.9, True, jnp.bfloat16),
     lambda: optax.sgd(1e-2, 0.9, True, jnp.bfloat16), 1e-2),
    ("sgd-momentum-None", lambda: adamx.sgd(1e-2, None), lambda: optax.sgd(1e-2, None), 1e-6),
    ("adagrad-optax-reading", lambda: adamx.adagrad(1e-2, 0.1, 1e-7, eps_in_sqrt=True),
     lambda: optax.adagrad(1e-2), 1e-5),
    ("adadelta-lr-None-mask",
     lambda: adamx.adadelta(None, 0.9, 1e-6, 1e-2, MASK),
     lambda: optax.adadelta(None, 0.9, 1e-6, 1e-2, MASK), 1e-5),
    ("adafactor-optax", lambda: adamx.adafactor(1e-2, 2, reading="optax"),
     lambda: optax.adafactor(1e-2, 2), 1e-5),
    ("adafactor-optax-all",
     lambda: adamx.adafactor(None, 2, 0.7, 1, False, None, 0.9, jnp.bfloat16, 1e-3, 1e-20, True,
                             reading="optax"),
     lambda: optax.adafactor(None, 2, 0.7, 1, False, None, 0.9, jnp.bfloat16, 1e-3, 1e-20, True),
     1e-2),
]  # fmt: skip


@pytest.mark.parametrize(("case", "ours", "theirs", "rtol"), AGREE, ids=[a[0] for a in AGREE])
def test_optax_keywords_mean_what_optax_means(case, ours, theirs, rtol):
    params, grads = problem()
    # adafactor(reading="optax") is optax's own blocks, whose arithmetic mixes dtypes
    promotion = (
        "standard" if case.startswith("adafactor-optax") else jax.config.jax_numpy_dtype_promotion
    )
    with jax.numpy_dtype_promotion(promotion):
        got, state = run(ours(), params, grads)
    with jax.numpy_dtype_promotion("standard"):
        want, optax_state = run(theirs(), params, grads)
    assert_close(got, want, rtol=rtol, atol=rtol * 1e-2)
    assert _mu_dtypes(state) == _mu_dtypes(optax_state)


def test_mu_dtype_stores_the_first_moment_in_that_dtype():
    params, grads = problem()
    for name in ("adam", "adamw", "amsgrad", "nadam", "nadamw", "radam", "lamb", "adabelief",
                 "yogi", "adamax", "lion", "adopt"):  # fmt: skip
        _, state = run(getattr(adamx, name)(1e-3, mu_dtype=jnp.bfloat16), params, grads[:2])
        assert _mu_dtypes(state) == {"bfloat16"}, name
        nu = [v for _, v in otu.tree_get_all_with_path(state, "nu")]
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nu)), name
    _, state = run(adamx.sgd(1e-3, 0.9, accumulator_dtype=jnp.bfloat16), params, grads[:2])
    assert {x.dtype for x in jax.tree.leaves(otu.tree_get(state, "trace"))} == {
        jnp.dtype(jnp.bfloat16)
    }


def test_adafactor_pytorch_reading_maps_optax_names():
    params, grads = problem()
    mapped = adamx.adafactor(1e-2, decay_rate=0.5, clipping_threshold=2.0)
    torch_names = adamx.adafactor(1e-2, beta2_decay=-0.5, d=2.0)
    assert_close(run(mapped, params, grads)[0], run(torch_names, params, grads)[0], 1e-7, 0)
    plain = adamx.adafactor(1e-2, multiply_by_parameter_scale=False, clipping_threshold=None)
    assert len(plain.init(params)) == 2  # factored moments + relative step
    full = adamx.adafactor(1e-2, factored=False).init(params)
    assert full[0].full["w"].shape == (4, 3)


# ----------------------------------------------------------------------------- errors
BAD = [
    (lambda: adamx.adam("1e-3"), "learning_rate", "'1e-3'"),
    (lambda: adamx.adam(None), "learning_rate", "None"),
    (lambda: adamx.sgd(learning_rate=None), "learning_rate", "None"),
    (lambda: adamx.adamw(jnp.ones(2)), "learning_rate", "shape (2,)"),
    (lambda: adamx.lamb(1e-3, "0.9"), "b1", "'0.9'"),
    (lambda: adamx.adam(1e-3, eps=None), "eps", "None"),
    (lambda: adamx.adam(1e-3, mu_dtype="int32"), "mu_dtype", "'int32'"),
    (lambda: adamx.sgd(1e-3, 0.9, accumulator_dtype=3), "accumulator_dtype", "3"),
    (lambda: adamx.sgd(1e-3, "0.9"), "momentum", "'0.9'"),
    (lambda: adamx.rmsprop(1e-3, initial_scale=-1.0), "initial_scale", "-1.0"),
    (lambda: adamx.adamw(1e-3, weight_decay=lambda t: 0.1), "weight_decay", "function"),
    (lambda: adamx.adafactor(momentum=0.9), "momentum", 'reading="optax"'),
    (lambda: adamx.adafactor(min_dim_size_to_factor=2), "min_dim_size_to_factor", "optax"),
    (lambda: adamx.adafactor(eps=1e-30), "eps", 'reading="optax"'),
    (lambda: adamx.adafactor(reading="optax", d=2.0), "d", "PyTorch"),
    (lambda: adamx.adafactor(reading="keras"), "reading", "'keras'"),
    (lambda: adamx.adafactor(beta2_decay=-0.5, decay_rate=0.7), "beta2_decay", "decay_rate"),
    (lambda: adamx.adopt(clip_value_fn=0.25), "clip_value_fn", "0.25"),
    (lambda: adamx.nadam(nesterov=1), "nesterov", "1"),
]


@pytest.mark.parametrize(
    ("make", "arg", "shown"), BAD, ids=[f"{a}-{i}" for i, (_, a, _) in enumerate(BAD)]
)
def test_bad_values_raise_at_construction_naming_the_argument(make, arg, shown):
    with pytest.raises(ValueError) as info:
        make()
    assert f"`{arg}`" in str(info.value)
    assert shown in str(info.value)


def test_none_learning_rate_where_optax_takes_it():
    params, grads = problem()
    for opt, ref in (
        (adamx.adadelta(None), optax.adadelta(None)),
        (adamx.adafactor(None, reading="optax"), optax.adafactor(None)),
    ):
        with jax.numpy_dtype_promotion("standard"):  # optax's arithmetic mixes dtypes
            assert_close(run(opt, params, grads)[0], run(ref, params, grads)[0], 1e-5, 1e-9)


def test_positional_calls_mean_what_optax_means():
    # optax's 5th positional of lamb is eps_root, the 6th of adamw mu_dtype, the 4th of lion
    # mu_dtype: each is accepted with that meaning (compared numerically above)
    for factory, args, name in (
        (adamx.lamb, (1e-3, 0.9, 0.999, 1e-6, 1e-8), "eps_root"),
        (adamx.adamw, (1e-3, 0.9, 0.999, 1e-8, 0.0, jnp.bfloat16), "mu_dtype"),
        (adamx.lion, (1e-3, 0.9, 0.99, jnp.bfloat16), "mu_dtype"),
        (adamx.rmsprop, (1e-3, 0.9, 1e-8, 0.1), "initial_scale"),
        (adamx.sgd, (1e-3, 0.9, True), "nesterov"),
    ):
        bound = inspect.signature(factory).bind(*args)
        assert bound.arguments[name] == args[-1]
        factory(*args)


# ----------------------------------------------------------------------------- item 3
# inject_hyperparams keeps the plain state's structure: test_contract.py's
# test_inject_hyperparams_matches_plain checks it on every row, after init and after steps.


@pytest.mark.parametrize("name", adamx.OPTIMIZERS)
def test_inject_hyperparams_updates_without_params_where_plain_does(name):
    factory = getattr(adamx, name)
    params, grads = problem()
    plain = factory(learning_rate=0.1)
    injected = optax.inject_hyperparams(factory)(learning_rate=0.1)
    try:
        plain.update(grads[0], plain.init(params))
    except ValueError as error:
        assert "without them" in str(error)  # the alias reads params (decay, trust ratio)
        return
    updates, _ = jax.jit(injected.update)(grads[0], injected.init(params))
    assert jax.tree.structure(updates) == jax.tree.structure(params)


@pytest.mark.parametrize("name", adamx.OPTIMIZERS)
def test_tree_get_finds_one_count(name):
    kw = {"momentum": 0.9} if name == "sgd" else {}  # plain SGD keeps no state at all
    state = getattr(adamx, name)(learning_rate=0.1, **kw).init(problem()[0])
    # no count, as optax's (step_count; rprop's sizes and last gradient are all it keeps)
    if name in ("sign_sgd", "schedule_free_sgd", "rprop"):
        assert otu.tree_get_all_with_path(state, "count") == []
        return
    # muon and soap are partitions of two chains (Newton-Schulz or the eigenbasis, and
    # AdamW), each with its own count, as optax.contrib.muon's state is; galore counts its
    # projector refreshes and holds its base optimizer's state with that one's count, as
    # optax.contrib.galore's state does
    two = name in ("muon", "soap", "galore")
    assert len(otu.tree_get_all_with_path(state, "count")) == (2 if two else 1)
    assert all(int(c) == 0 for _, c in otu.tree_get_all_with_path(state, "count"))
    assert otu.tree_get_all_with_path(adamx.sgd(0.1).init(problem()[0]), "count") == []


@pytest.mark.parametrize(
    "name, option",
    [("adam", "weight_decay"), ("adamw", "weight_decay"), ("lion", "weight_decay"),
     ("nadam", "weight_decay"), ("sgd", "momentum"), ("sgd", "weight_decay"),
     ("rmsprop", "momentum")],
)  # fmt: skip
def test_a_zero_option_has_the_state_structure_that_inject_hyperparams_gives(name, option):
    """``None`` leaves a block out; any number, the Python 0 included, keeps its slot, so
    the structure does not depend on whether the value is concrete or an array (as
    ``optax.inject_hyperparams`` passes every number), and the 0 changes nothing."""
    params, grads = problem()
    factory = getattr(adamx, name)
    zero = factory(0.1, **{option: 0.0})
    structure = lambda tx: jax.tree.structure(tx.init(params))  # noqa: E731
    assert structure(zero) == structure(factory(0.1, **{option: jnp.asarray(0.0)}))
    injected = optax.inject_hyperparams(factory)(0.1, **{option: 0.0})
    assert jax.tree.structure(injected.init(params).inner_state) == structure(zero)
    assert structure(factory(0.1, **{option: None})) != structure(zero)
    # the 0 changes nothing: the updates are those of the option left out (None)
    for tx in (zero, injected):
        u0, _ = tx.update(grads[0], tx.init(params), params)
        off = factory(0.1, **{option: None})
        u1, _ = off.update(grads[0], off.init(params), params)
        chex.assert_trees_all_close(u0, u1, rtol=1e-6, atol=0)
