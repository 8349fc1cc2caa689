"""Issue 18's first relatives: laprop, cautious (C-AdamW, C-Lion) and mars (MARS-AdamW).

No optax or torch.optim anchor has them, so each is checked against an independent NumPy
float64 reference written from its paper (tests/reference_recent1.py) over the 100-step
trajectories of tests/test_sign_free.py (a quadratic + sine loss with sign-flipping noise,
on a tree with a matrix, a 3-D block, a vector starting at zero and a scalar), and on small
cases whose answer follows from the rule by hand, including what the authors' published
code does where the paper leaves it open.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference_recent1 as ref
from test_sign_free import FLAGS, MASK, STEPS, assert_close, make_problem, np_grad, run_jax, run_ref

import adamx

REFERENCE = [  # (id, adamx call, reference class, its kwargs)
    # b1 > sqrt(b2), where Adam's step is unbounded and LaProp's is not; decay with a mask
    ("laprop", lambda: adamx.laprop(0.01, 0.95, 0.9, 1e-8, weight_decay=0.05, mask=MASK),
     ref.LaProp, dict(lr=0.01, b1=0.95, b2=0.9, eps=1e-8, wd=0.05, decay=FLAGS)),
    ("cautious_adamw", lambda: adamx.cautious(adamx.adamw(0.02, 0.8, 0.99, 1e-6,
                                                          weight_decay=0.1, mask=MASK)),
     ref.CautiousAdamW, dict(lr=0.02, b1=0.8, b2=0.99, eps=1e-6, wd=0.1, decay=FLAGS)),
    ("cautious_lion", lambda: adamx.cautious(adamx.lion(0.01, 0.8, 0.95, weight_decay=0.5)),
     ref.CautiousLion, dict(lr=0.01, b1=0.8, b2=0.95, wd=0.5)),
    ("mars", lambda: adamx.mars(0.01, 0.9, 0.95, 1e-6, 0.1, weight_decay=0.05, mask=MASK,
                                max_norm=8.0),
     ref.MarsAdamW, dict(lr=0.01, b1=0.9, b2=0.95, eps=1e-6, gamma=0.1, wd=0.05, decay=FLAGS,
                         max_norm=8.0)),
    ("mars-lion", lambda: adamx.mars(0.003, 0.8, gamma=0.05, weight_decay=0.5, instance="lion"),
     ref.MarsLion, dict(lr=0.003, b1=0.8, gamma=0.05, wd=0.5)),
]  # fmt: skip


@pytest.mark.parametrize(("case", "ours", "cls", "kw"), REFERENCE, ids=[c[0] for c in REFERENCE])
def test_float64_trajectory_matches_numpy_reference(case, ours, cls, kw, x64):
    assert_close(run_jax(ours(), jnp.float64), run_ref(cls, kw), 1e-10, 1e-12)


def test_the_comparisons_can_fail():
    """On this problem the references move apart when one option changes (MARS' correction,
    LaProp's order against Adam's via b1 > b2, C-AdamW's decay inside the mask), so the
    1e-10 agreements above are not vacuous. NumPy only."""
    kw = dict(lr=0.01, b1=0.9, b2=0.95, gamma=0.1, max_norm=8.0)
    with pytest.raises(AssertionError):
        assert_close(run_ref(ref.MarsAdamW, kw), run_ref(ref.MarsAdamW, dict(kw, gamma=0.0)),
                     1e-6, 1e-6)  # fmt: skip
    with pytest.raises(AssertionError):
        assert_close(run_ref(ref.CautiousAdamW, dict(lr=0.02, wd=0.1)),
                     run_ref(ref.CautiousAdamW, dict(lr=0.02, wd=0.0)), 1e-6, 1e-6)  # fmt: skip


def test_mars_reference_run_clips_some_leaves_and_not_others():
    """The MARS case above exercises both sides of the clip (max_norm=8)."""
    params, consts, noise = make_problem()
    names = sorted(params)
    opt = ref.MarsAdamW([params[n].shape for n in names], lr=0.01, b1=0.9, b2=0.95, gamma=0.1,
                        max_norm=8.0)  # fmt: skip
    p = dict(params)
    for k in range(STEPS):
        g = np_grad(consts, p, noise[k])
        p = dict(zip(names, opt.step([p[n] for n in names], [g[n] for n in names])))
    assert 0 < opt.clipped < STEPS * len(names), opt.clipped


def test_laprop_authors_reading_equals_the_papers_at_a_constant_rate_only():
    """The authors' code keeps the rate inside the momentum (bias-corrected by an average
    of the rates): the paper's steps at a constant rate (which test_float64_trajectory_...
    [laprop] holds adamx to), other steps under a schedule (adamx scales the whole ``m`` by
    the current rate, as the paper writes it)."""
    kw = dict(lr=0.01, b1=0.95, b2=0.9, eps=1e-8)
    assert_close(run_ref(ref.LaProp, dict(kw, lr_in_momentum=True)), run_ref(ref.LaProp, kw),
                 1e-12, 1e-14)  # fmt: skip
    rates = [0.01 / (1.0 + 0.05 * k) for k in range(STEPS)]
    with pytest.raises(AssertionError):
        authors = run_ref(ref.LaProp, dict(kw, lr=rates, lr_in_momentum=True))
        assert_close(authors, run_ref(ref.LaProp, dict(kw, lr=rates)), 1e-6, 1e-6)


# ----------------------------------------------------------------------- cautious by hand
def test_cautious_keeps_the_components_that_descend():
    """Plain SGD steps against the gradient everywhere: every component with a non-zero
    gradient is kept and scaled by d / (nnz + 1); a zero gradient is dropped (strict)."""
    g = {"w": jnp.asarray([2.0, -1.0, 0.0, 4.0])}
    opt = adamx.cautious(adamx.sgd(0.5))
    u, _ = opt.update(g, opt.init(g), g)
    np.testing.assert_allclose(u["w"], -0.5 * np.asarray([2.0, -1.0, 0.0, 4.0]) * 4 / (3 + 1))


def test_cautious_lion_masks_the_step_but_not_the_decay():
    """C-Lion by hand (lr 0.1, wd 0.5, b1 0.9, b2 0.99), as the authors' code orders it:
    decay ``p *= 1 - lr wd`` on every element, the masked sign step on the kept ones.
    Step 1 (g = [1, 1]): both signs agree, scale 2 / (2 + 1); m = 0.01 [1, 1].
    Step 2 (g = [1, -1e-3]): c = 0.9 m + 0.1 g = [0.109, 0.0089] > 0, so the second
    element's step (-lr) climbs its gradient: dropped, scale 2 / (1 + 1)."""
    lr, wd = 0.1, 0.5
    opt = jax.jit(adamx.cautious(adamx.lion(lr, weight_decay=wd)).update)
    p = {"w": jnp.asarray([2.0, -3.0])}
    state = adamx.cautious(adamx.lion(lr, weight_decay=wd)).init(p)
    u1, state = opt({"w": jnp.asarray([1.0, 1.0])}, state, p)
    np.testing.assert_allclose(u1["w"], -lr * (2 / 3) * np.ones(2) - lr * wd * np.asarray(p["w"]))
    p = optax.apply_updates(p, u1)
    u2, _ = opt({"w": jnp.asarray([1.0, -1e-3])}, state, p)
    want = -lr * np.asarray([1.0, 0.0]) - lr * wd * np.asarray(p["w"])
    np.testing.assert_allclose(u2["w"], want, rtol=1e-6)


def test_cautious_eps_scales_by_the_mean_plus_eps():
    """``eps``: the one-line form 1 / (mean(phi) + eps); 1 of 4 kept here, so the scale is
    1 / (0.25 + 0.25) = 2 (C-AdamW's d / (nnz + 1) would be 4 / (1 + 1) as well: eps = 1/d)."""
    g = {"w": jnp.asarray([2.0, 0.0, 0.0, 0.0])}
    opt = adamx.cautious(adamx.sgd(0.5), eps=0.25)
    u, _ = opt.update(g, opt.init(g), g)
    np.testing.assert_allclose(u["w"], -0.5 * np.asarray([2.0, 0.0, 0.0, 0.0]) * 2)


def test_cautious_composes_with_skip_nonfinite_and_with_storage():
    """skip_nonfinite(cautious(with_storage(adamw))): a NaN step is skipped whole; the next
    is C-AdamW's first step, which stored moments do not change (they are decoded from
    zeros and encoded after the step): -lr sign(g) on every component (Adam's first step
    descends everywhere), scaled by d / (d + 1), plus the unmasked decay -lr wd p."""
    lr, wd = 0.1, 0.1
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3), "b": jnp.asarray([0.5, 1.0, 2.0])}
    grads = {"w": jnp.full((4, 3), 0.5), "b": jnp.asarray([1.0, -1.0, 2.0])}
    inner = adamx.with_storage(adamx.adamw(lr, weight_decay=wd), mu="bfloat16")
    opt = adamx.skip_nonfinite(adamx.cautious(inner))
    state, update = opt.init(params), jax.jit(opt.update)
    bad = {"w": grads["w"].at[0, 0].set(jnp.nan), "b": grads["b"]}
    u, state = update(bad, state, params)
    assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(u))
    assert int(state.total_skipped) == 1
    u, state = update(grads, state, params)
    for k in params:
        d = params[k].size
        want = -lr * np.sign(grads[k]) * d / (d + 1) - lr * wd * np.asarray(params[k])
        np.testing.assert_allclose(u[k], want, rtol=1e-6, atol=1e-7)
    mu = jax.tree.leaves(optax.tree_utils.tree_get(state, "mu"))
    assert mu and all(x.dtype == jnp.bfloat16 for x in mu)


# ----------------------------------------------------------------------- construction
@pytest.mark.parametrize(
    ("make", "shown"),
    [
        (lambda: adamx.laprop(b1=1.0), "b1=1.0"),
        (lambda: adamx.laprop(eps=-1.0), "eps=-1.0"),
        (lambda: adamx.mars(gamma=-0.1), "gamma=-0.1"),
        (lambda: adamx.mars(max_norm=0.0), "max_norm=0.0"),
        (lambda: adamx.mars(instance="shampoo"), "instance='shampoo'"),
        (lambda: adamx.mars(instance="lion").init({"w": jnp.ones(2, jnp.complex64)}),
         "complex"),
        (lambda: adamx.cautious(adamx.adamw(), eps=0.0), "eps=0.0"),
        (lambda: adamx.cautious(adamx.adamw(), eps=-1.0), "eps=-1.0"),
        (lambda: adamx.cautious(adamx.adam(weight_decay=0.1)), "coupled L2"),
        (lambda: adamx.cautious(adamx.adamw(maximize=True)), "maximize=True"),
        (lambda: adamx.cautious(adamx.adamw).init({"w": jnp.ones(2)}), "opt=<function"),
        (lambda: adamx.cautious(adamx.adam()).init({"w": jnp.ones(2, jnp.complex64)}),
         "complex"),
    ],
    ids=["laprop-b1", "laprop-eps", "mars-gamma", "mars-max_norm", "mars-instance",
         "mars-lion-complex", "cautious-eps-0",
         "cautious-eps-neg", "coupled", "maximize", "not-a-transformation", "complex"],
)  # fmt: skip
def test_bad_values_raise_naming_the_argument(make, shown):
    with pytest.raises(ValueError) as info:
        make()
    assert shown in str(info.value)


def test_readme_laprop_chain_is_adamx_laprop():
    """The README shows LaProp as Adam's blocks reordered; it is the recipe."""
    from test_docs import ROOT, python_blocks

    namespace = {}
    for code in python_blocks((ROOT / "README.md").read_text()):
        if "laprop = optax.chain" in code:
            exec(compile(code, "README.md", "exec"), namespace)
    chain, alias = namespace["laprop"], adamx.laprop()
    params = {"w": jnp.linspace(-1.0, 1.0, 5)}
    s1, s2 = chain.init(params), alias.init(params)
    f1, f2 = jax.jit(chain.update), jax.jit(alias.update)
    for i in range(3):
        g = {"w": jnp.sin(params["w"] * (i + 1.0))}
        u1, s1 = f1(g, s1, params)
        u2, s2 = f2(g, s2, params)
        np.testing.assert_array_equal(np.asarray(u1["w"]), np.asarray(u2["w"]))
