"""Drop-in for optax users (issue #14, items 1, 4a, 5): every public transformation takes
extra keyword arguments of ``update``, every optimizer initialises from abstract params,
and every public callable's annotations resolve."""

from __future__ import annotations

import inspect
import typing

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

import adamx
import adamx.storage

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.asarray([0.5, -0.25])}
GRADS = jax.tree.map(lambda p: jnp.cos(3 * p) + 0.1, PARAMS)
EXTRA = {"value": jnp.asarray(1.0), "anything_else": "ignored"}


def _moments_record():
    """A :class:`adamx.Moments` record of one Adam step, the input of the read-out blocks."""
    moments = adamx.scale_by_moments(0.9, 0.999)
    record, _ = moments.update(GRADS, moments.init(PARAMS))
    return record


def _with_objective(tx):
    """``tx`` with Sophia's ``obj_fn`` supplied (a fixed quadratic of the params), so that the
    table's plain ``update(updates, state, params)`` calls drive it; other extras go on."""

    def update(updates, state, params=None, **extra):
        objective = lambda q: sum(jnp.sum(x * x) for x in jax.tree.leaves(q))  # noqa: E731
        return tx.update(updates, state, params, obj_fn=objective, **extra)

    return optax.GradientTransformationExtraArgs(tx.init, update)


MESH = Mesh(np.array(jax.devices()[:1]), ("data",))

# Every public factory of a transformation (adamx.__all__), and what its update reads:
# "grads" (a tree like the params), "matrices" (its 2-D leaves) or "moments" (a Moments
# record).
TRANSFORMATIONS = {
    **{name: (lambda name=name: getattr(adamx, name)(), "grads") for name in adamx.OPTIMIZERS},
    "optimistic_adam_v2": (adamx.optimistic_adam_v2, "grads"),  # optax's name, same function
    "add_decayed_weights": (lambda: adamx.add_decayed_weights(0.1), "grads"),
    "add_decayed_weights_masked": (
        lambda: adamx.add_decayed_weights(0.1, mask={"w": True, "b": False}),
        "grads",
    ),
    "negate": (adamx.negate, "grads"),
    "scale_by_learning_rate": (lambda: adamx.scale_by_learning_rate(0.1), "grads"),
    "scale_by_learning_rate_schedule": (
        lambda: adamx.scale_by_learning_rate(optax.linear_schedule(0.1, 0.0, 10)),
        "grads",
    ),
    "scale_by_moments": (adamx.scale_by_moments, "grads"),
    "scale_by_lion_moments": (adamx.scale_by_lion_moments, "grads"),
    "scale_by_lazy_moments": (adamx.scale_by_lazy_moments, "grads"),
    "scale_by_adan_moments": (adamx.scale_by_adan_moments, "grads"),
    "scale_by_block_moments": (adamx.scale_by_block_moments, "grads"),
    "sophia": (lambda: _with_objective(adamx.sophia(0.1, update_interval=1)), "grads"),
    "hutchinson_diagonal": (lambda: _with_objective(adamx.hutchinson_diagonal()), "grads"),
    "normalize_by_hessian": (lambda: _with_objective(adamx.normalize_by_hessian()), "moments"),
    "scale_by_prodigy": (adamx.scale_by_prodigy, "grads"),
    "scale_by_galore": (lambda: adamx.scale_by_galore(rank=1), "grads"),
    "scale_by_dadapt_adamw": (adamx.scale_by_dadapt_adamw, "grads"),
    "shrink_proximal": (lambda: adamx.shrink_proximal(0.1, 0.1), "grads"),
    "trace_momentum": (lambda: adamx.trace_momentum(momentum=0.9), "grads"),
    "scale_by_factored_rms": (adamx.scale_by_factored_rms, "grads"),
    "clip_by_block_rms": (adamx.clip_by_block_rms, "grads"),
    "scale_by_param_block_rms": (adamx.scale_by_param_block_rms, "grads"),
    "scale_by_relative_step": (adamx.scale_by_relative_step, "grads"),
    "scale_by_trust_ratio": (adamx.scale_by_trust_ratio, "grads"),
    "scale_by_sign": (adamx.scale_by_sign, "grads"),
    "scale_by_layerwise_moment": (adamx.scale_by_layerwise_moment, "grads"),
    "scale_by_optimistic_gradient": (adamx.scale_by_optimistic_gradient, "grads"),
    "scale_by_schedule_free": (lambda: adamx.scale_by_schedule_free(0.1), "grads"),
    "scale_by_rprop": (adamx.scale_by_rprop, "grads"),
    "average_params": (adamx.average_params, "grads"),
    "normalize_by_cover_maxima": (adamx.normalize_by_cover_maxima, "grads"),
    "scale_by_madgrad": (adamx.scale_by_madgrad, "grads"),
    "normalize_by_previous_belief": (adamx.normalize_by_previous_belief, "grads"),
    "normalize_by_previous_rms": (adamx.normalize_by_previous_rms, "grads"),
    "normalize_by_rms": (adamx.normalize_by_rms, "grads"),
    "scale_by_mars_correction": (adamx.scale_by_mars_correction, "grads"),
    "shrink_weights": (lambda: adamx.shrink_weights(0.1, 0.1)[0], "grads"),
    "correct_bias": (adamx.correct_bias, "moments"),
    "correct_bias_nesterov": (adamx.correct_bias_nesterov, "moments"),
    "correct_bias_nesterov_schedule": (
        lambda: adamx.correct_bias_nesterov(momentum_decay=4e-3),
        "moments",
    ),
    "keep_max_nu": (adamx.keep_max_nu, "moments"),
    "normalize": (adamx.normalize, "moments"),
    "normalize_inf": (adamx.normalize_inf, "moments"),
    "normalize_rectified": (adamx.normalize_rectified, "moments"),
    "read_momentum": (adamx.read_momentum, "moments"),
    "read_sign": (adamx.read_sign, "moments"),
    "mix_slow_momentum": (adamx.mix_slow_momentum, "moments"),
    "mix_accumulated_momentum": (adamx.mix_accumulated_momentum, "moments"),
    "orthogonalize": (adamx.orthogonalize, "matrices"),
    "scale_by_shape": (adamx.scale_by_shape, "matrices"),
    "center_second_moment": (adamx.center_second_moment, "moments"),
    "use_gradient": (adamx.use_gradient, "moments"),
    "scale_by_update_rms": (adamx.scale_by_update_rms, "moments"),
    "with_storage": (lambda: adamx.with_storage(adamx.adam(0.1), mu="bfloat16"), "grads"),
    "with_storage_8bit_sr": (
        lambda: adamx.with_storage(adamx.adamw(0.1), mu="8bit", nu="bfloat16_sr"),
        "grads",
    ),
    "skip_nonfinite": (lambda: adamx.skip_nonfinite(adamx.adam(0.1)), "grads"),
    "cautious": (lambda: adamx.cautious(adamx.adamw(0.1)), "grads"),
    "shard_state": (lambda: adamx.shard_state(adamx.adam(0.1), MESH, "data"), "grads"),
    "from_torch": (lambda: adamx.from_torch("AdamW", lr=1e-2), "grads"),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMATIONS))
def test_update_takes_and_ignores_extra_args(name):
    """Extra keyword arguments (optax's ``GradientTransformationExtraArgs``) are taken and
    change nothing: eager, as they are consumed when the update is traced (the same under
    ``jit``; ``test_step_forwards_extra_args`` and the wrappers' test jit them)."""
    make, kind = TRANSFORMATIONS[name]
    tx = make()
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    inputs = {"grads": GRADS, "matrices": {"w": GRADS["w"]}}  # muon's blocks: matrices only
    updates = inputs[kind] if kind in inputs else _moments_record()
    state = tx.init(PARAMS)
    for _ in range(2):  # ADOPT's first update is zero; a second one reads its state
        plain, new_state = tx.update(updates, state, PARAMS)
        also, also_state = tx.update(updates, state, PARAMS, **EXTRA)
        chex.assert_trees_all_equal((also, also_state), (plain, new_state))
        state = new_state


def test_every_public_transformation_factory_is_in_the_table():
    """A new public transformation joins the table above (so it is checked)."""
    factories = set()
    for name in adamx.__all__:
        obj = getattr(adamx, name)
        if inspect.isfunction(obj) and "GradientTransformation" in str(
            inspect.signature(obj).return_annotation
        ):
            factories.add(name)
    assert factories <= set(TRANSFORMATIONS) | {"shrink_weights"}, factories - set(TRANSFORMATIONS)


class _Scaled(typing.NamedTuple):
    seen: jax.Array


def scale_by_value() -> optax.GradientTransformationExtraArgs:
    """An optax transformation that *uses* an extra argument: multiplies by ``value``."""

    def init(params):
        del params
        return _Scaled(jnp.zeros([]))

    def update(updates, state, params=None, *, value, **extra_args):
        del params, extra_args, state
        return jax.tree.map(lambda u: u * value, updates), _Scaled(value)

    return optax.GradientTransformationExtraArgs(init, update)


@pytest.mark.parametrize("name", adamx.OPTIMIZERS)
def test_chains_with_a_transformation_that_uses_an_extra_arg(name):
    alias = getattr(adamx, name)()
    chained = optax.chain(alias, scale_by_value())
    state = chained.init(PARAMS)
    for _ in range(2):
        updates, new_state = chained.update(GRADS, state, PARAMS, value=jnp.asarray(3.0))
        plain, _ = alias.update(GRADS, state[0], PARAMS)
        chex.assert_trees_all_close(updates, jax.tree.map(lambda u: 3 * u, plain), rtol=1e-6)
        assert float(new_state[1].seen) == 3.0
        state = new_state


def test_wrappers_forward_extra_args_to_the_inner_transformation():
    for wrap in (
        lambda tx: adamx.with_storage(optax.chain(adamx.adam(0.1), tx), mu="bfloat16"),
        lambda tx: adamx.skip_nonfinite(optax.chain(adamx.adam(0.1), tx)),
        lambda tx: adamx.shard_state(optax.chain(adamx.adam(0.1), tx), MESH, "data"),
    ):
        opt = wrap(scale_by_value())
        state = opt.init(PARAMS)
        u3, _ = opt.update(GRADS, state, PARAMS, value=jnp.asarray(3.0))
        u1, _ = opt.update(GRADS, state, PARAMS, value=jnp.asarray(1.0))
        chex.assert_trees_all_close(u3, jax.tree.map(lambda u: 3 * u, u1), rtol=1e-6)


def test_step_forwards_extra_args():
    opt = optax.chain(adamx.adam(0.1), scale_by_value())
    state = opt.init(PARAMS)
    p3, _ = adamx.step(opt, GRADS, state, PARAMS, value=jnp.asarray(3.0))
    updates, _ = opt.update(GRADS, state, PARAMS, value=jnp.asarray(3.0))
    chex.assert_trees_all_close(p3, optax.apply_updates(PARAMS, updates))
    # a recipe with a kernel ignores them, as its update does
    fused = adamx.adam(0.1)
    s = fused.init(PARAMS)
    chex.assert_trees_all_close(
        adamx.step(fused, GRADS, s, PARAMS, value=jnp.asarray(3.0)),
        adamx.step(fused, GRADS, s, PARAMS),
    )


# ----------------------------------------------------------------------------- abstract init
ABSTRACT_TREE = {
    "w": jnp.zeros((4, 3)),
    "b": jnp.zeros((3,)),
    "s": jnp.zeros(()),
    "h": jnp.zeros((2, 3), jnp.bfloat16),
}


def _shapes(tree):
    return jax.tree.map(lambda a: (jnp.shape(a), jnp.result_type(a)), tree)


INITIALISED = {
    **{name: (lambda name=name: getattr(adamx, name)()) for name in adamx.OPTIMIZERS},
    "adam_amsgrad": lambda: adamx.adam(amsgrad=True),
    "nadam_scheduleless": lambda: adamx.nadam(momentum_decay=None),
    "with_storage": lambda: adamx.with_storage(adamx.adam(), mu="8bit", nu="bfloat16_sr"),
    "with_storage_factored": lambda: adamx.with_storage(adamx.adamw(), nu="factored"),
    "skip_nonfinite": lambda: adamx.skip_nonfinite(adamx.lamb()),
    "cautious": lambda: adamx.cautious(adamx.lion(weight_decay=0.1)),
}


@pytest.mark.parametrize("name", sorted(INITIALISED))
def test_init_on_shape_dtype_structs_matches_init_on_zeros(name):
    opt = INITIALISED[name]()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), ABSTRACT_TREE)
    state = opt.init(abstract)
    assert _shapes(state) == _shapes(opt.init(ABSTRACT_TREE))
    assert not any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(state))
    # the state from abstract params steps as the one from concrete params does
    grads = jax.tree.map(jnp.ones_like, ABSTRACT_TREE)
    chex.assert_trees_all_equal(
        opt.update(grads, state, ABSTRACT_TREE),
        opt.update(grads, opt.init(ABSTRACT_TREE), ABSTRACT_TREE),
    )


@pytest.mark.parametrize("name", ["adam", "adafactor", "sgd", "lion"])
def test_init_on_sharded_shape_dtype_structs_keeps_the_sharding(name):
    sharding = jax.sharding.NamedSharding(MESH, jax.sharding.PartitionSpec("data"))
    abstract = {"w": jax.ShapeDtypeStruct((4, 3), jnp.float32, sharding=sharding)}
    opt = getattr(adamx, name)(momentum=0.9) if name == "sgd" else getattr(adamx, name)()
    for leaf in jax.tree.leaves(opt.init(abstract)):
        if jnp.shape(leaf) == (4, 3):
            assert leaf.sharding == sharding


# ----------------------------------------------------------------------------- annotations
def _public_callables():
    for module, names in ((adamx, adamx.__all__), (adamx.storage, adamx.storage.__all__)):
        for name in names:
            obj = getattr(module, name)
            if callable(obj) and not isinstance(obj, type(adamx)):
                yield f"{module.__name__}.{name}", obj


PUBLIC = dict(_public_callables())


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_type_hints_resolve(name):
    obj = PUBLIC[name]
    hints = typing.get_type_hints(obj)
    assert not any(isinstance(h, str) for h in hints.values()), hints
    if inspect.isfunction(obj):
        sig = inspect.signature(obj, eval_str=True)
        assert not any(isinstance(p.annotation, str) for p in sig.parameters.values())


@pytest.mark.parametrize("name", adamx.OPTIMIZERS)
def test_learning_rate_annotation_is_optax_scalar_or_schedule(name):
    """optax's own test checks ``annotation in (base.ScalarOrSchedule, base.Schedule)``."""
    parameters = inspect.signature(getattr(adamx, name)).parameters
    annotation = parameters["learning_rate"].annotation
    allowed = [optax.ScalarOrSchedule, optax.Schedule]
    if name in ("adadelta", "adafactor"):  # optax's own: learning_rate=None is "no scaling"
        allowed.append(optax.ScalarOrSchedule | None)
    if name == "rprop":  # the initial step size, a number (optax.rprop's is ArrayLike)
        allowed = [float]
    assert annotation in allowed
    assert typing.get_type_hints(getattr(adamx, name))["learning_rate"] == annotation
