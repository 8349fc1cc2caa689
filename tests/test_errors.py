"""Bad input fails loudly, at construction or at the first update, naming what is wrong."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
import pytest

import adamx

BAD_HYPERPARAMETERS = [
    # (factory, keyword, bad value, text the message must contain)
    (adamx.adam, "b1", 1.0, "[0.0, 1.0)"),
    (adamx.adam, "b1", -0.1, "[0.0, 1.0)"),
    (adamx.adam, "b2", 1.5, "[0.0, 1.0)"),
    (adamx.adam, "b2", math.nan, "[0.0, 1.0)"),
    (adamx.adam, "eps", -1e-8, "[0.0, inf)"),
    (adamx.adam, "eps_root", -1.0, "[0.0, inf)"),
    (adamx.adam, "weight_decay", -0.1, "[0.0, inf)"),
    (adamx.adam, "learning_rate", math.inf, "[0.0, inf)"),
    (adamx.adam, "learning_rate", math.nan, "[0.0, inf)"),
    (adamx.adam, "learning_rate", -1e-3, "[0.0, inf)"),
    (adamx.adamw, "weight_decay", -1e-2, "[0.0, inf)"),
    (adamx.adam, "learning_rate", True, "must be a number"),
    (adamx.adam, "b1", False, "must be a number"),
    (adamx.adamw, "b2", 1.0, "[0.0, 1.0)"),
    (adamx.adamw, "learning_rate", jnp.asarray(jnp.inf), "[0.0, inf)"),
    (adamx.scale_by_moments, "b1", 2.0, "[0.0, 1.0)"),
    (adamx.correct_bias, "b2", -0.5, "[0.0, 1.0)"),
    (adamx.normalize, "eps", -1.0, "[0.0, inf)"),
    (adamx.normalize, "b2", 1.0, "[0.0, 1.0)"),
    (adamx.scale_by_learning_rate, "learning_rate", math.nan, "[0.0, inf)"),
    (adamx.add_decayed_weights, "weight_decay", -2.0, "[0.0, inf)"),
]


@pytest.mark.parametrize(("factory", "name", "value", "allowed"), BAD_HYPERPARAMETERS)
def test_invalid_hyperparameter_names_argument_value_and_range(factory, name, value, allowed):
    with pytest.raises(ValueError) as info:
        factory(**{name: value})
    message = str(info.value)
    assert f"`{name}`" in message
    assert allowed in message
    assert f"{name}={value!r}" in message


def test_traced_hyperparameters_are_not_validated():
    # inside jit the values are unknown: construction must not fail or force a host sync
    def build(b1):
        return adamx.adam(learning_rate=1e-3, b1=b1).init(jnp.zeros(2))

    jax.jit(build)(jnp.asarray(0.9, jnp.float32))


def test_low_precision_decay_from_inject_hyperparams_is_rejected():
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    opt = optax.inject_hyperparams(adamx.adam)(learning_rate=1e-3)
    with pytest.raises(ValueError, match="hyperparam_dtype=jnp.float32"):
        opt.init(params)
    # the documented fix works
    opt = optax.inject_hyperparams(adamx.adam, hyperparam_dtype=jnp.float32)(learning_rate=1e-3)
    opt.update({"w": jnp.ones(3, jnp.bfloat16)}, opt.init(params), params)


@pytest.mark.parametrize(
    ("grads", "expected"),
    [
        (
            {"dense": {"kernel": jnp.ones((3, 4))}, "bias": jnp.ones(4)},
            "grads['dense']['kernel'] has shape (3, 4) but params['dense']['kernel'] has (4, 3)",
        ),
        (
            {"dense": {"W": jnp.ones((4, 3))}, "bias": jnp.ones(4)},
            "params['dense']['kernel'] is missing from grads; grads has grads['dense']['W'], "
            "which params lacks",
        ),
        ({"dense": {"kernel": jnp.ones((4, 3))}}, "params['bias'] is missing from grads."),
        (
            {"dense": {"kernel": jnp.ones((4, 3))}, "bias": jnp.ones(4), "b2": jnp.ones(4)},
            "grads has grads['b2'], which params lacks",
        ),
    ],
)
def test_mismatched_grads_name_first_offending_path(grads, expected):
    params = {"dense": {"kernel": jnp.ones((4, 3))}, "bias": jnp.ones(4)}
    opt = adamx.adam()
    state = opt.init(params)
    with pytest.raises(ValueError) as info:
        opt.update(grads, state, params)
    assert expected in str(info.value)


def test_a_list_where_params_have_a_tuple_says_which_tree_is_which_and_how_to_fix_it():
    params = (jnp.ones(3), jnp.ones(2))
    opt = adamx.adam()
    with pytest.raises(ValueError) as info:
        opt.update([jnp.ones(3), jnp.ones(2)], opt.init(params), params)
    message = str(info.value)
    assert "grads is PyTreeDef([*, *]), params is PyTreeDef((*, *))" in message
    assert "jax.tree.unflatten(jax.tree.structure(params), jax.tree.leaves(grads))" in message


def test_every_name_an_error_message_suggests_exists():
    """A message that says "use adamx.x" names something that is there: every ``adamx.*``
    in a string of the package's code (docstrings aside) resolves."""
    import ast
    import importlib
    import pathlib
    import re

    root = pathlib.Path(adamx.__file__).parent
    named, missing = set(), []
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) not in docstrings:
                    named.update(re.findall(r"\badamx(?:\.\w+)+", node.value))
    for name in sorted(named):
        obj = adamx
        for part in name.split(".")[1:]:
            if hasattr(obj, part):
                obj = getattr(obj, part)
                continue
            try:
                obj = importlib.import_module(f"{obj.__name__}.{part}")
            except (ImportError, AttributeError):
                missing.append(name)
                break
    assert len(named) > 20, sorted(named)  # the scan sees the messages
    assert missing == []


@pytest.mark.parametrize(
    "opt", [adamx.adamw(), adamx.adam(weight_decay=1e-2)], ids=["adamw", "adam_l2"]
)
def test_weight_decay_without_params_says_so(opt):
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    with pytest.raises(ValueError, match=r"opt.update\(grads, state, params\)"):
        opt.update({"w": jnp.ones(3)}, state)


def test_adam_without_weight_decay_needs_no_params():
    opt = adamx.adam()
    updates, _ = opt.update({"w": jnp.ones(3)}, opt.init({"w": jnp.ones(3)}))
    assert updates["w"].shape == (3,)


def test_read_out_block_without_moments_explains_the_order():
    with pytest.raises(TypeError, match="after a moment block"):
        adamx.normalize().update({"w": jnp.ones(3)}, optax.EmptyState())


ALIASES = [getattr(adamx, name) for name in adamx.OPTIMIZERS]
ALIAS_IDS = list(adamx.OPTIMIZERS)


@pytest.mark.parametrize("alias", ALIASES, ids=ALIAS_IDS)
@pytest.mark.parametrize(
    ("leaf", "kind"),
    [(jnp.arange(3), "int32"), (jnp.ones(3, bool), "bool")],
    ids=["int", "bool"],
)
def test_non_float_params_rejected_at_init_with_path(alias, leaf, kind):
    params = {"w": jnp.ones(3), "extra": {"step": leaf}}
    with pytest.raises(ValueError) as info:
        alias().init(params)
    message = str(info.value)
    assert "params['extra']['step']" in message
    assert kind in message
    assert "optax.masked" in message


REAL_ONLY = (
    "adadelta",
    "adopt",
    "lion",
    "sign_sgd",
    "signum",
    "soap",
    "prodigy",
    "dadapt_adamw",
    "galore",
    "sm3",
    "madgrad",
)  # the rest take complex params (test_complex.py)


@pytest.mark.parametrize("alias", ALIASES, ids=ALIAS_IDS)
def test_complex_params_taken_or_refused_with_path_and_reason(alias):
    params = {"w": jnp.ones(3), "extra": {"z": jnp.ones(2, jnp.complex64)}}
    if alias.__name__ not in REAL_ONLY:
        alias().init(params)
        return
    with pytest.raises(ValueError) as info:
        alias().init(params)
    message = str(info.value)
    assert "params['extra']['z']" in message
    assert "complex" in message
    assert "optax.masked" in message
    assert "real and imaginary parts" in message


@pytest.mark.parametrize("alias", ALIASES, ids=ALIAS_IDS)
def test_non_float_leaves_pass_through_optax_masked(alias):
    params = {"w": jnp.linspace(0.5, 1.0, 3), "step": jnp.asarray(7)}
    opt = optax.masked(alias(), {"w": True, "step": False})
    state = opt.init(params)
    grads = {"w": jnp.ones(3), "step": jnp.asarray(0)}
    for _ in range(2):  # ADOPT's first update is zero by design
        updates, state = opt.update(grads, state, params)
    assert updates["step"] == 0
    assert jnp.all(jnp.isfinite(updates["w"])) and jnp.any(updates["w"] != 0)


@pytest.mark.parametrize("alias", ALIASES, ids=ALIAS_IDS)
def test_grads_of_another_dtype_name_the_path(alias):
    params = {"a": jnp.ones(2), "b": {"c": jnp.ones(3)}}
    opt = alias()
    state = opt.init(params)
    grads = {"a": jnp.ones(2), "b": {"c": jnp.ones(3, jnp.bfloat16)}}
    with pytest.raises(ValueError, match=r"grads\['b'\]\['c'\] has dtype bfloat16"):
        opt.update(grads, state, params)


@pytest.mark.parametrize("alias", ALIASES, ids=ALIAS_IDS)
def test_grads_of_another_shape_name_the_path(alias):
    params = {"a": jnp.ones(2), "b": {"c": jnp.ones((3, 2))}}
    opt = alias()
    state = opt.init(params)
    grads = {"a": jnp.ones(2), "b": {"c": jnp.ones((2, 3))}}
    with pytest.raises(ValueError, match=r"grads\['b'\]\['c'\] has shape \(2, 3\)"):
        opt.update(grads, state, params)


def test_grads_dtype_checked_against_state_without_params():
    opt = adamx.adam()
    state = opt.init({"w": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"grads\['w'\] has dtype bfloat16"):
        opt.update({"w": jnp.ones(3, jnp.bfloat16)}, state)


def test_mismatched_grads_without_params_checked_against_state():
    opt = adamx.adam()
    state = opt.init({"dense": {"kernel": jnp.ones((4, 3))}})
    with pytest.raises(ValueError) as info:
        opt.update({"dense": {"kernel": jnp.ones((3, 4))}}, state)
    expected = "grads['dense']['kernel'] has shape (3, 4) but the optimizer state expects (4, 3)"
    assert expected in str(info.value)
