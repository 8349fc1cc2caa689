"""``adamx.from_torch`` against ``torch.optim``, and the torch spellings on adamx's recipes.

Every torch comparison runs torch.optim and ``adamx.from_torch`` with the same arguments
for ``STEPS`` steps in float64 from the same params, the gradients computed in NumPy from
each side's current params (so the runs differ only in the optimizers' arithmetic), and
compares the params after every step to ``rtol=1e-10``. The configurations are torch's own
(``optim_inputs_func`` of ``torch.testing._internal.common_optimizers.optim_db``, read in
a subprocess: importing that module loads hypothesis profiles and torch test flags that
would leak into the rest of the suite) plus adamx's (AMSGrad readings, SparseAdam's eps,
the ignored implementation switches, instances).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx
from adamx.optimizers._torch_names import IMPLEMENTATION_SWITCHES, TORCH_DEFAULTS

STEPS = 80
RTOL, ATOL = 1e-10, 1e-13
SHAPES = {"b": (4,), "s": (), "w": (6, 4)}  # sorted: the leaf order
SPARSE_SHAPES = {"b": (4,), "w": (6, 4)}  # sparse gradients need a first axis


# ----------------------------------------------------------------------------- the problem
class Problem(NamedTuple):
    params: dict  # name -> float64 array
    consts: dict  # name -> (a, c, w): loss = a/2 (p - c)^2 + 0.3 sin(w p)
    factors: list  # per step: name -> gradient multiplier (noise; 0 on the rows left out)


def make_problem(seed: int = 0, sparse: bool = False) -> Problem:
    rng = np.random.default_rng(seed)
    shapes = SPARSE_SHAPES if sparse else SHAPES
    params, consts = {}, {}
    for name, shape in shapes.items():
        p = rng.normal(size=shape)
        a = rng.uniform(0.5, 2.0, size=shape)
        c = p + rng.choice([-1.0, 1.0], size=shape) * rng.uniform(1.0, 3.0, size=shape)
        params[name], consts[name] = p, (a, c, rng.uniform(0.5, 2.0, size=shape))
    factors = []
    for _ in range(STEPS):
        step = {}
        for name, shape in shapes.items():
            rows = shape[:1] + (1,) * (len(shape) - 1)
            live = rng.random(rows) < 0.5 if sparse else np.ones(rows, bool)
            # noise that flips the sign a quarter of the time, so the moments matter
            step[name] = live * rng.uniform(-1.0, 3.0, size=shape)
        factors.append(step)
    return Problem(params, consts, factors)


def np_grad(problem: Problem, params: dict, k: int) -> dict:
    f = problem.factors[k]
    return {
        n: (a * (params[n] - c) + 0.3 * w * np.cos(w * params[n])) * f[n]
        for n, (a, c, w) in problem.consts.items()
    }


def run_adamx(opt: optax.GradientTransformation, problem: Problem) -> list[dict]:
    @jax.jit
    def step(p, s, g):
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    p = jax.tree.map(jnp.asarray, problem.params)
    s = opt.init(p)
    out = []
    for k in range(STEPS):
        g = np_grad(problem, jax.tree.map(np.asarray, p), k)
        p, s = step(p, s, jax.tree.map(jnp.asarray, g))
        out.append(jax.tree.map(np.asarray, p))
    return out


@contextlib.contextmanager
def torch_float64(torch):
    """torch keeps its per-step scalars (``step``, NAdam's ``mu_product``) in its default
    dtype: float32 unless set, which moves NAdam's steps by 1e-8 relatively."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def torch_tensors(torch, problem: Problem) -> dict:
    return {n: torch.tensor(v, dtype=torch.float64) for n, v in sorted(problem.params.items())}


def run_torch(torch, opt, tensors: dict, problem: Problem, sparse: bool = False) -> list[dict]:
    """Step ``opt`` (built on ``tensors``) through the problem; params after every step."""
    out = []
    for k in range(STEPS):
        g = np_grad(problem, {n: t.detach().numpy() for n, t in tensors.items()}, k)
        for n, t in tensors.items():
            grad = torch.tensor(g[n], dtype=torch.float64)
            if sparse:
                live = np.any(problem.factors[k][n] != 0, axis=tuple(range(1, grad.ndim)))
                rows = torch.tensor(np.flatnonzero(live))[None]
                grad = torch.sparse_coo_tensor(
                    rows, grad[rows[0]], grad.shape, check_invariants=True
                )
            t.grad = grad
        opt.step()
        out.append({n: t.detach().numpy().copy() for n, t in tensors.items()})
    return out


def assert_close(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want) == STEPS
    for k, (g, w) in enumerate(zip(got, want)):
        for n in w:
            np.testing.assert_allclose(
                g[n], w[n], rtol=RTOL, atol=ATOL, err_msg=f"step {k + 1}, leaf {n!r}"
            )


def decode(torch, kwargs: dict) -> dict:
    """Configurations as JSON (see DUMP) back to torch's arguments. A tensor ``lr`` is made
    float64, as torch's own tests make it in their default dtype: torch.optim.SparseAdam
    computes its step size in the dtype of ``lr`` (a float32 ``lr`` moves its steps by
    1e-8 relatively, where adamx reads ``float(lr)``)."""

    def one(v):
        if isinstance(v, dict) and "tensor" in v:
            return torch.tensor(v["tensor"], dtype=torch.float64)
        return tuple(one(x) for x in v) if isinstance(v, list) else v

    return {k: one(v) for k, v in kwargs.items()}


_ADAMX_RUNS: dict[str, list[dict]] = {}


def compare(torch, name: str, kwargs: dict) -> None:
    """torch.optim.<name>(**kwargs) and adamx.from_torch(name, **kwargs), step for step.
    The adamx run is shared by configs that differ in torch's implementation switches
    only (from_torch ignores them: the same transformation)."""
    sparse = name == "SparseAdam"
    rule = {k: v for k, v in kwargs.items() if k not in IMPLEMENTATION_SWITCHES}
    problem = make_problem(seed=len(name) + len(rule), sparse=sparse)
    key = f"{name}{sorted((k, repr(v)) for k, v in rule.items())}"
    if key not in _ADAMX_RUNS:
        _ADAMX_RUNS[key] = run_adamx(adamx.from_torch(name, **kwargs), problem)
    got = _ADAMX_RUNS[key]
    with torch_float64(torch):
        tensors = torch_tensors(torch, problem)
        opt = getattr(torch.optim, name)(list(tensors.values()), **kwargs)
        want = run_torch(torch, opt, tensors, problem, sparse=sparse)
    assert_close(got, want)


# ----------------------------------------------------------------------------- torch's configs
DUMP = r"""
import json, torch
from torch.testing._internal import common_optimizers as co
from torch.testing._internal.common_optimizers import optim_db

def configs(info):
    # each config also with torch's implementation switches that run on CPU (fused,
    # differentiable), as torch's own tests drive them; older torch: the plain list
    every = getattr(co, "_get_optim_inputs_including_global_cliquey_kwargs", None)
    if every is None:
        return info.optim_inputs_func(device="cpu")
    return every("cpu", torch.float64, info)

def enc(v):
    if isinstance(v, torch.Tensor):
        return {"tensor": v.item()}
    return [enc(x) for x in v] if isinstance(v, (tuple, list)) else v

print(json.dumps({
    info.optim_cls.__name__: [
        {"desc": i.desc, "params": i.params is not None,
         "kwargs": {k: enc(v) for k, v in i.kwargs.items()}}
        for i in configs(info)
    ]
    for info in optim_db
}))
"""


def torch_db() -> tuple[dict | None, str]:
    """``{class name: [config]}`` from torch's optim_db, or ``None`` and why not."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", DUMP], capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"reading torch's optim_db failed: {error}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"torch's optim_db is not importable ({last}); pip install torch expecttest"
    return json.loads(done.stdout.strip().splitlines()[-1]), ""


DB, DB_MISSING = torch_db()


def db_params() -> list:
    if DB is None:
        return [pytest.param(None, None, None, marks=pytest.mark.skip(reason=DB_MISSING))]
    out = []
    for name, configs in sorted(DB.items()):
        if name not in TORCH_DEFAULTS:
            continue  # the refusal is tested in test_torch_db_classes_adamx_lacks_are_refused
        for c in configs:
            marks = []
            if c["params"]:
                marks = [pytest.mark.skip(reason="the config brings its own param groups")]
            switches = "".join(f"-{k}" for k in c["kwargs"] if k in IMPLEMENTATION_SWITCHES)
            out.append(pytest.param(name, c["desc"], c["kwargs"], marks=marks,
                                    id=f"{name}-{c['desc']}{switches}"))  # fmt: skip
    return out


@pytest.mark.parametrize(("name", "desc", "kwargs"), db_params())
def test_torch_db_configs_match(name, desc, kwargs, x64):
    torch = pytest.importorskip("torch")
    compare(torch, name, decode(torch, kwargs))


def test_torch_db_classes_adamx_lacks_are_refused():
    if DB is None:
        pytest.skip(DB_MISSING)
    lacking = sorted(set(DB) - set(TORCH_DEFAULTS))
    assert set(TORCH_DEFAULTS) <= set(DB), "a class adamx reproduces left torch's optim_db"
    for name in lacking:
        with pytest.raises(ValueError, match=f"no torch.optim class '{name}'"):
            adamx.from_torch(name)


# ----------------------------------------------------------------------------- adamx's configs
OWN_CONFIGS = [
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01, maximize=True)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, foreach=True)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.2, eps=1e-6)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, eps=1e-4, centered=True, momentum=0.5)),
    ("Adadelta", dict(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.1, differentiable=True)),
    ("Adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, amsgrad=True)),
    ("Adam", dict(lr=0.02, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True, maximize=True)),
    ("Adam", dict(lr=0.02, weight_decay=0.1, decoupled_weight_decay=True)),
    ("Adam", dict(lr=0.02, weight_decay=0.1, decoupled_weight_decay=True, amsgrad=True)),
    ("Adam", dict(lr=0.02, fused=True)),  # torch's fused CPU kernel
    ("AdamW", dict(lr=0.02, betas=(0.8, 0.99), weight_decay=0.3, amsgrad=True)),
    ("AdamW", dict(lr=0.02, weight_decay=0.3, amsgrad=True, maximize=True, foreach=True)),
    ("Adamax", dict(lr=0.05, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1)),
    (
        "NAdam",
        dict(
            lr=0.01,
            betas=(0.8, 0.99),
            momentum_decay=0.01,
            weight_decay=0.1,
            decoupled_weight_decay=True,
            maximize=True,
        ),
    ),  # fmt: skip
    (
        "RAdam",
        dict(lr=0.01, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1, decoupled_weight_decay=True),
    ),  # fmt: skip
    ("Adafactor", dict(lr=0.05, beta2_decay=-0.5, eps=(1e-3, 1e-2), d=1.5, weight_decay=0.2)),
    # SparseAdam's eps on the raw root: a large eps shows the reading from the first step
    ("SparseAdam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-2)),
    ("SparseAdam", dict(lr=0.02, betas=(0.5, 0.9), eps=1e-1, maximize=True)),
    ("Rprop", dict(lr=0.05, etas=(0.3, 1.5), step_sizes=(1e-3, 0.2), maximize=True)),
    ("ASGD", dict(lr=0.05, lambd=0.1, alpha=0.6, t0=5.0, weight_decay=0.05, maximize=True)),
]


@pytest.mark.parametrize(
    ("name", "kwargs"), OWN_CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(OWN_CONFIGS)]
)
def test_own_configs_match(name, kwargs, x64):
    torch = pytest.importorskip("torch")
    compare(torch, name, kwargs)


def test_defaults_table_is_torchs():
    torch = pytest.importorskip("torch")
    p = torch.zeros(2, requires_grad=True)
    for name, defaults in TORCH_DEFAULTS.items():
        assert getattr(torch.optim, name)([p]).defaults == defaults, name


@pytest.mark.parametrize("as_what", ["instance", "class", "dotted name"])
def test_instance_and_class_inputs(as_what, x64):
    torch = pytest.importorskip("torch")
    problem = make_problem(seed=3)
    kwargs = dict(lr=0.03, betas=(0.8, 0.95), weight_decay=0.2, amsgrad=True)
    with torch_float64(torch):
        tensors = torch_tensors(torch, problem)
        opt = torch.optim.AdamW(list(tensors.values()), **kwargs)
        source = {
            "instance": lambda: adamx.from_torch(opt),
            "class": lambda: adamx.from_torch(torch.optim.AdamW, **kwargs),
            "dotted name": lambda: adamx.from_torch("torch.optim.AdamW", **kwargs),
        }[as_what]
        tx = source()
        want = run_torch(torch, opt, tensors, problem)
    assert_close(run_adamx(tx, problem), want)


def test_instance_reads_its_param_groups(x64):
    torch = pytest.importorskip("torch")
    problem = make_problem(seed=4)
    with torch_float64(torch):
        tensors = torch_tensors(torch, problem)
        groups = [{"params": [t]} for t in tensors.values()]  # same hyperparameters each
        opt = torch.optim.RMSprop(groups, lr=0.5, alpha=0.9, centered=True)
        for g in opt.param_groups:
            g["lr"] = 0.02  # what an LR scheduler leaves behind
            g["initial_lr"] = 0.5  # scheduler bookkeeping, not a hyperparameter
        tx = adamx.from_torch(opt)
        want = run_torch(torch, opt, tensors, problem)
    assert_close(run_adamx(tx, problem), want)
    # keyword arguments override the instance's
    overridden = adamx.from_torch(opt, lr=0.01)
    direct = adamx.rmsprop(0.01, 0.9, centered=True)
    assert_close(run_adamx(overridden, problem), run_adamx(direct, problem))


def test_instance_with_differing_groups_is_refused():
    torch = pytest.importorskip("torch")
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([{"params": [a]}, {"params": [b], "lr": 0.1}], lr=0.01)
    with pytest.raises(ValueError, match=r"2 param groups .*lr: \[0.01, 0.1\].*multi_transform"):
        adamx.from_torch(opt)


def test_subclass_is_refused_with_the_name_to_use():
    torch = pytest.importorskip("torch")

    class MyAdam(torch.optim.Adam):
        pass

    with pytest.raises(ValueError, match=r"subclasses torch.optim.Adam.*from_torch\('Adam'"):
        adamx.from_torch(MyAdam)


def test_tensor_lr_of_several_elements_is_refused():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="`lr` is a tensor of 2 elements"):
        adamx.from_torch("Adam", lr=torch.tensor([0.1, 0.2]))


# ----------------------------------------------------------------------------- without torch
MAPPING = [  # from_torch(name, **torch kwargs) == the adamx call the docstring's table gives
    ("SGD", {}, lambda: adamx.sgd(1e-3)),
    ("Adagrad", dict(lr_decay=0.1), lambda: adamx.adagrad(1e-2, lr_decay=0.1)),
    ("RMSprop", dict(alpha=0.9), lambda: adamx.rmsprop(1e-2, decay=0.9)),
    ("Adadelta", {}, lambda: adamx.adadelta(1.0, 0.9, 1e-6)),
    ("Adam", dict(amsgrad=True), lambda: adamx.amsgrad(1e-3)),
    (
        "Adam",
        dict(weight_decay=0.1, decoupled_weight_decay=True),
        lambda: adamx.adamw(1e-3, weight_decay=0.1),
    ),  # fmt: skip
    ("AdamW", {}, lambda: adamx.adamw(1e-3, weight_decay=1e-2)),
    ("Adamax", {}, lambda: adamx.adamax(2e-3)),
    (
        "NAdam",
        dict(weight_decay=0.1, decoupled_weight_decay=True),
        lambda: adamx.nadamw(2e-3, weight_decay=0.1),
    ),  # fmt: skip
    ("RAdam", dict(betas=(0.8, 0.9)), lambda: adamx.radam(1e-3, 0.8, 0.9)),
    ("Adafactor", dict(d=2.0), lambda: adamx.adafactor(1e-2, d=2.0)),
    ("SparseAdam", {}, lambda: adamx.lazy_adam(1e-3, eps_hat=True)),
    ("Rprop", dict(etas=(0.4, 1.3)), lambda: adamx.rprop(1e-2, 0.4, 1.3)),
    ("ASGD", dict(t0=10.0), lambda: adamx.asgd(1e-2, t0=10.0)),
]


@pytest.mark.parametrize(("name", "kwargs", "direct"), MAPPING, ids=[m[0] for m in MAPPING])
def test_mapping_is_the_documented_call(name, kwargs, direct, x64):
    problem = make_problem(seed=5, sparse=name == "SparseAdam")
    assert_close(run_adamx(adamx.from_torch(name, **kwargs), problem), run_adamx(direct(), problem))


def test_learning_rate_schedule_is_passed_on(x64):
    schedule = optax.linear_schedule(0.1, 0.01, 50)
    problem = make_problem(seed=6)
    got = run_adamx(adamx.from_torch("Adam", lr=schedule, amsgrad=True), problem)
    assert_close(got, run_adamx(adamx.adam(schedule, amsgrad=True), problem))


def test_from_torch_does_not_import_torch():
    code = (
        "import sys, adamx\n"
        "for name in ('Adam', 'torch.optim.SparseAdam', 'Adafactor'):\n"
        "    adamx.from_torch(name, lr=0.1)\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("LBFGS",), {}, "no torch.optim class 'LBFGS'.*It reproduces SGD, Adagrad"),
        (("adamw",), {}, "Did you mean 'AdamW'"),
        (("mylib.Adam",), {}, "is not a torch.optim class name"),
        (("Adam",), dict(learning_rate=0.1), "no argument 'learning_rate'.*takes lr, betas"),
        (("SGD",), dict(betas=(0.9, 0.9)), "torch.optim.SGD has no argument 'betas'"),
        (("AdamW",), dict(decoupled_weight_decay=False), "always decouples.*'Adam'"),
        (("RMSprop",), dict(alpha=1.5), r"RMSprop\(alpha=1.5\) cannot be reproduced.*`decay`"),
        (("SGD",), dict(momentum=1.0), r"SGD\(momentum=1.0\) cannot be reproduced.*`momentum`"),
        (("Adam",), dict(betas=(0.9,)), "`betas` is a pair"),
        (("Adam",), dict(lr="0.1"), "`lr` must be a number or a schedule"),
    ],
)
def test_from_torch_refusals_name_the_option(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        adamx.from_torch(*args, **kwargs)


def test_from_torch_rejects_other_objects():
    with pytest.raises(TypeError, match="takes a torch.optim class name"):
        adamx.from_torch(adamx.adam)


# ----------------------------------------------------------------------------- torch spellings
@pytest.mark.parametrize(
    ("build", "match"),
    [
        (
            lambda: adamx.adam(lr=1e-3),
            r"adamx.adam has no argument `lr`.*`learning_rate=`"
            r".*adamx.from_torch\('Adam', lr=\.\.\.\)",
        ),  # fmt: skip
        (lambda: adamx.adamw(betas=(0.9, 0.99)), r"`b1=, b2=`.*from_torch\('AdamW', betas="),
        (lambda: adamx.rmsprop(alpha=0.9), r"`decay=`.*from_torch\('RMSprop', alpha="),
        (lambda: adamx.radam(amsgrad=True), r"adamx.adam\(\.\.\., amsgrad=True\)"),
        (lambda: adamx.nadam(decoupled_weight_decay=True), "adamx.nadamw"),
        (lambda: adamx.sgd(foreach=False), "leave it out"),
        (lambda: adamx.lion(lr=1e-4), "`learning_rate=`"),
    ],
)
def test_torch_spellings_name_adamx_spelling(build, match):
    with pytest.raises(TypeError, match=match):
        build()


def test_torch_spelling_hint_suggests_from_torch_only_with_its_arguments():
    with pytest.raises(TypeError) as info:
        adamx.radam(amsgrad=True)  # torch's RAdam has no amsgrad
    assert "from_torch" not in str(info.value)
    with pytest.raises(TypeError) as info:
        adamx.lion(lr=1e-4)  # no torch twin
    assert "from_torch" not in str(info.value)


def test_unknown_non_torch_keyword_is_pythons_error():
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        adamx.adam(bogus=1)


# ----------------------------------------------------------------------------- the new flags
@pytest.mark.parametrize("kw", [{}, dict(weight_decay=0.1, maximize=True)])
def test_adam_amsgrad_is_the_amsgrad_recipe(kw, x64):
    problem = make_problem(seed=7)
    got = run_adamx(adamx.adam(0.02, 0.8, 0.99, amsgrad=True, **kw), problem)
    assert_close(got, run_adamx(adamx.amsgrad(0.02, 0.8, 0.99, **kw), problem))


def test_adamw_amsgrad_without_decay_is_the_amsgrad_recipe(x64):
    problem = make_problem(seed=8)
    got = run_adamx(adamx.adamw(0.02, weight_decay=0.0, amsgrad=True), problem)
    assert_close(got, run_adamx(adamx.amsgrad(0.02), problem))


@pytest.mark.parametrize("recipe", [adamx.adam, adamx.adamw])
def test_amsgrad_state_and_fused_refusal(recipe):
    params = {"w": jnp.ones(3)}
    state = recipe(amsgrad=True).init(params)
    assert any(isinstance(s, adamx.MaxNuState) for s in state)
    with pytest.raises(ValueError, match="fused=True is not available with amsgrad=True"):
        recipe(amsgrad=True, fused=True)
    with pytest.raises(ValueError, match="amsgrad"):
        recipe(amsgrad=1)
    # adamx.step takes the XLA chain: the same numbers as update + apply_updates
    tx = recipe(0.1, amsgrad=True)
    g = {"w": jnp.asarray([1.0, -2.0, 0.5])}
    new, _ = adamx.step(tx, g, tx.init(params), params)
    u, _ = tx.update(g, tx.init(params), params)
    np.testing.assert_array_equal(new["w"], optax.apply_updates(params, u)["w"])


def sparse_adam_reference(problem: Problem, lr, b1, b2, eps) -> list[dict]:
    """torch.optim.SparseAdam's rule (torch/optim/_functional.py), in NumPy, by rows."""
    p = {n: v.copy() for n, v in problem.params.items()}
    m = {n: np.zeros_like(v) for n, v in p.items()}
    v = {n: np.zeros_like(x) for n, x in p.items()}
    out = []
    for k in range(STEPS):
        t = k + 1
        g = np_grad(problem, p, k)
        step_size = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        for n in p:
            live = np.any(g[n] != 0, axis=tuple(range(1, g[n].ndim)), keepdims=True)
            m_new = b1 * m[n] + (1 - b1) * g[n]
            v_new = b2 * v[n] + (1 - b2) * g[n] ** 2
            m[n], v[n] = np.where(live, m_new, m[n]), np.where(live, v_new, v[n])
            p[n] = p[n] - np.where(live, step_size * m[n] / (np.sqrt(v[n]) + eps), 0.0)
        out.append({n: x.copy() for n, x in p.items()})
    return out


def test_lazy_adam_eps_hat_is_sparse_adams_rule(x64):
    problem = make_problem(seed=9, sparse=True)
    got = run_adamx(adamx.lazy_adam(0.02, 0.8, 0.99, 0.05, eps_hat=True), problem)
    assert_close(got, sparse_adam_reference(problem, 0.02, 0.8, 0.99, 0.05))


def test_lazy_adam_eps_hat_at_eps_zero_is_lazy_adam(x64):
    problem = make_problem(seed=10, sparse=True)
    got = run_adamx(adamx.lazy_adam(0.02, eps=0.0, eps_hat=True), problem)
    assert_close(got, run_adamx(adamx.lazy_adam(0.02, eps=0.0), problem))
