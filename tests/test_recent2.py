"""Adam-mini and SOAP (issue 18, second part) against independent NumPy float64
references of the papers' equations (tests/reference_recent2.py): neither has an optax or
torch.optim twin.

Every trajectory runs a quadratic + sine loss whose gradient is computed in NumPy from the
current params, so the two runs differ only in the optimizers' arithmetic.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference_recent2 as ref
from test_sign_free import make_problem, np_grad

import adamx
from adamx.demo import charlm


def trajectories(opt, reference, shapes, steps):
    """(adamx's, the reference's) params after every step, float64, leaves sorted by name."""
    params, consts, noise = make_problem(shapes=shapes, steps=steps, zeros=())
    names = sorted(shapes)

    @jax.jit
    def step(p, s, g):
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    p = {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}
    s = opt.init(p)
    q = [params[n] for n in names]
    ours, theirs = [], []
    for k in range(steps):
        g = np_grad(consts, {n: np.asarray(x) for n, x in p.items()}, noise[k])
        p, s = step(p, s, {n: jnp.asarray(x) for n, x in g.items()})
        ours.append([np.asarray(p[n]) for n in names])
        g_ref = np_grad(consts, dict(zip(names, q)), noise[k])
        q = reference.step(q, [g_ref[n] for n in names])
        theirs.append(q)
    return ours, theirs


def assert_close(ours, theirs, rtol, atol=None):
    for k, (a, b) in enumerate(zip(ours, theirs)):
        for i, (x, y) in enumerate(zip(a, b)):
            np.testing.assert_allclose(
                x,
                y,
                rtol=rtol,
                atol=rtol if atol is None else atol,
                err_msg=f"step {k + 1} leaf {i}",
            )


# Names the default partition knows, in JAX's (in, ..., out) layout.
MINI_SHAPES = {
    "embed": (6, 3),  # by token: rows
    "unembed": (3, 6),  # by token: columns
    "q": (3, 2, 2),  # by head: axis 1
    "o": (2, 2, 3),  # by output neuron: the last axis
    "mlp_in": (3, 5),  # by output neuron: every axis but the first
    "w": (2, 3),  # unnamed: one block
    "norm": (3,),  # one block
    "s": (),
}
MINI_AXES = {
    "embed": (0,), "unembed": (1,), "q": (1,), "o": (2,), "mlp_in": (1,), "w": (), "norm": (),
    "s": (),
}  # fmt: skip
CUSTOM = {"embed": "full", "unembed": -1, "q": (1, 2), "o": "leaf", "mlp_in": 0, "w": (0, 1),
          "norm": 0, "s": "leaf"}  # fmt: skip
CUSTOM_AXES = {"embed": (0, 1), "unembed": (1,), "q": (1, 2), "o": (), "mlp_in": (0,),
               "w": (0, 1), "norm": (0,), "s": ()}  # fmt: skip


@pytest.mark.parametrize("custom", [False, True], ids=["paper_partition", "given_partition"])
def test_adam_mini_float64_follows_the_reference(custom, x64):
    kw = dict(learning_rate=3e-2, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.05)
    axes = CUSTOM_AXES if custom else MINI_AXES
    opt = adamx.adam_mini(**kw, partition=CUSTOM if custom else None)
    reference = ref.AdamMini(
        [MINI_SHAPES[n] for n in sorted(MINI_SHAPES)],
        lr=3e-2, b1=0.8, b2=0.95, eps=1e-6, wd=0.05, blocks=[axes[n] for n in sorted(axes)],
    )  # fmt: skip
    ours, theirs = trajectories(opt, reference, MINI_SHAPES, 60)
    assert_close(ours, theirs, 1e-10)


def test_adam_mini_keeps_one_second_moment_per_block_on_the_char_lm():
    """The paper's partition of the demo's char LM, and its state: about half of Adam's."""
    params = jax.eval_shape(lambda: charlm.init(jax.random.key(0), 103))
    state = adamx.adam_mini().init(params)
    nu = state[0].nu
    block = nu["blocks"][0]
    assert nu["embed"].shape == (103, 1) and nu["unembed"].shape == (1, 103)
    assert block["q"].shape == block["k"].shape == (1, 4, 1)  # one per head
    assert block["v"].shape == (1, 4, 32) and block["o"].shape == (1, 1, 128)  # per neuron
    assert block["mlp_in"].shape == (1, 512) and block["mlp_out"].shape == (1, 128)
    assert nu["position"].shape == (1, 1) and block["norm1"]["scale"].shape == (1,)
    concrete = jax.tree.map(jnp.zeros_like, params)
    mini = adamx.state_bytes_per_param(state, concrete)
    adam = adamx.state_bytes_per_param(adamx.adamw().init(params), concrete)
    assert mini < 0.51 * adam, (mini, adam)


SOAP_SHAPES = {
    "w": (4, 3),  # SOAP
    "k": (3, 3),  # SOAP
    "wide": (2, 9),  # a side above max_precond_dim=8: Adam
    "t": (2, 2, 2),  # not a matrix: Adam
    "b": (4,),
    "s": (),
}


def test_soap_float64_follows_the_reference_across_refreshes(x64):
    """30 updates at precondition_frequency=4: the initial eigh, then seven power-iteration
    refreshes of each basis (the reference without them is off by O(1) here)."""
    kw = dict(learning_rate=2e-2, b1=0.9, b2=0.95, shampoo_beta=0.8, eps=1e-8)
    opt = adamx.soap(**kw, weight_decay=0.05, precondition_frequency=4, max_precond_dim=8)
    reference = ref.Soap(
        [SOAP_SHAPES[n] for n in sorted(SOAP_SHAPES)],
        lr=2e-2, b1=0.9, b2=0.95, shampoo_beta=0.8, eps=1e-8, wd=0.05,
        precondition_frequency=4, max_precond_dim=8,
    )  # fmt: skip
    ours, theirs = trajectories(opt, reference, SOAP_SHAPES, 30)
    assert_close(ours, theirs, 1e-10)


def test_soap_bfloat16_params_keep_float32_bases_and_state_sizes():
    params = {"w": jnp.ones((4, 3), jnp.bfloat16), "b": jnp.ones(3, jnp.bfloat16)}
    opt = adamx.soap(1e-2, precondition_frequency=2)
    state = opt.init(params)
    step = jax.jit(opt.update)
    rng = np.random.default_rng(0)
    for _ in range(3):  # the initial eigh and one refresh
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        updates, state = step(grads, state, params)
    inner = state.inner_states["soap"].inner_state[0]
    assert inner.left["w"].dtype == inner.q_right["w"].dtype == jnp.float32
    assert inner.q_left["w"].shape == (4, 4) and inner.q_right["w"].shape == (3, 3)
    assert inner.mu["w"].dtype == inner.nu["w"].dtype == jnp.bfloat16
    q = np.asarray(inner.q_left["w"], np.float64)
    np.testing.assert_allclose(q.T @ q, np.eye(4), atol=1e-5)  # still orthonormal
    assert updates["w"].dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(updates["w"])))
    # state per parameter: M, V (bfloat16) and L, R, Q_L, Q_R (float32) for the matrix
    expected = (2 * 12 * 2 + 2 * (16 + 9) * 4 + 2 * 3 * 2 + 8) / 15
    assert abs(adamx.state_bytes_per_param(state, params) - expected) < 1.0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: adamx.soap(precondition_frequency=0), "`precondition_frequency` must be an int"),
        (lambda: adamx.soap(precondition_frequency=2.5), "precondition_frequency=2.5"),
        (lambda: adamx.soap(max_precond_dim=1.5), "`max_precond_dim` must be a Python int"),
        (lambda: adamx.soap(shampoo_beta=1.0), "`shampoo_beta` must lie in"),
        (lambda: adamx.adam_mini(b2=1.5), "`b2` must lie in"),
        (
            lambda: adamx.adam_mini(partition={"w": 2}).init({"w": jnp.zeros((2, 2))}),
            r"params\['w'\] \(shape \(2, 2\)\) the spec 2",
        ),
        (
            lambda: adamx.adam_mini(partition={"v": 0}).init({"w": jnp.zeros(2)}),
            "`partition` must be a tree like the params",
        ),
    ],
)
def test_construction_errors_name_the_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()
