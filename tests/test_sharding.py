"""State sharded like the params: init, ``adamx.state_shardings``, and a step without gathers.

The multi-device checks run on 8 simulated CPU devices, which must be requested before jax
is imported: one subprocess per module runs them all (every alias batched into one jitted
init and one jitted step) and prints JSON that the tests below read.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx
from adamx.training._sharding import state_shardings

HERE = Path(__file__).resolve().parent
# Left out of the no-gather checks, and why. SOAP's L = G G^T, R = G^T G, their eigh / QR
# and the rotations Q_L^T G Q_R take whole matrices: a sharded matrix is gathered (10
# all-gathers, an all-to-all and a collective-permute for one row-sharded 64 x 32 matrix
# on 8 devices; its params and moments keep their sharding).
GATHERS = {
    "soap": "its preconditioner and eigenbasis are whole-matrix objects",
    "galore": "the SVD of a sharded gradient gathers it at each projector refresh (as "
    "optax.contrib.galore's does), and its projectors are made unsharded",
}
# The module fixture runs one 8-device subprocess, once per run: the suite hands whole
# files to its pytest-xdist workers (``--dist loadfile`` in pyproject.toml).

SCRIPT = r"""
import json, re, sys
sys.path.insert(0, sys.argv[1])
import jax
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import adamx
from adamx.training._sharding import state_shardings
from test_contract import OPTIMIZERS as ROWS

assert jax.device_count() == 8, jax.devices()
mesh = Mesh(np.array(jax.devices()), ("x",))
SH = {"w": NamedSharding(mesh, P("x")), "b": NamedSharding(mesh, P())}
rng = np.random.default_rng(0)
host = {"w": rng.normal(size=(64, 32)).astype(np.float32),
        "b": rng.normal(size=(32,)).astype(np.float32)}
grads_host = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in host.items()}
              for _ in range(3)]
params = jax.device_put(host, SH)
grads = [jax.device_put(g, SH) for g in grads_host]
opts = {name: ROWS[name].factory(**ROWS[name].kwargs) for name in adamx.OPTIMIZERS
        if name not in ("soap", "galore")}  # GATHERS

def param_shaped(state, p):
    # (path, leaf) for every state leaf shaped like p
    out = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        if tuple(np.shape(leaf)) == p.shape and np.ndim(leaf) > 0:
            out.append((jax.tree_util.keystr(path), leaf))
    return out

def check(state):
    # {path: sharding ok} for the param-shaped leaves (of w and of b), + row/col factors
    res = {}
    for key, p in params.items():
        for path, leaf in param_shaped(state, p):
            res[key + path] = bool(leaf.sharding.is_equivalent_to(p.sharding, p.ndim))
    return res

report = {}
eager = {name: opt.init(params) for name, opt in opts.items()}
report["eager"] = {name: check(s) for name, s in eager.items()}
shardings = {name: state_shardings(opt, params) for name, opt in opts.items()}
jitted = jax.jit(lambda p: {n: o.init(p) for n, o in opts.items()}, out_shardings=shardings)(params)
report["jit"] = {name: check(s) for name, s in jitted.items()}
af = jitted["adafactor"]
report["adafactor_factors"] = [list(x.sharding.spec) for x in jax.tree.leaves(af)
                               if np.shape(x) in ((64, 1), (1, 32))]

def steps(ps, states, g):
    return {n: adamx.step(o, g, states[n], ps[n]) for n, o in opts.items()}

step = jax.jit(steps)
ps, states = {n: params for n in opts}, jitted
hlo = step.lower(ps, states, grads[0]).compile().as_text()
report["collectives"] = sorted(set(re.findall(
    r" (all-gather|collective-permute|all-to-all|all-reduce)(?:-start)?\(", hlo)))
report["all_gather"] = len(re.findall(r" all-gather(?:-start)?\(", hlo))
report["collective_permute"] = len(re.findall(r" collective-permute(?:-start)?\(", hlo))

for g in grads:
    outs = step(ps, states, g)
    ps = {n: outs[n][0] for n in opts}
    states = {n: outs[n][1] for n in opts}
report["after_steps"] = {name: check(s) for name, s in states.items()}
report["params_sharded"] = {n: bool(ps[n]["w"].sharding.is_equivalent_to(SH["w"], 2))
                            for n in opts}
report["state_in_out_same"] = {
    n: all(bool(a.sharding.is_equivalent_to(b.sharding, np.ndim(a)))
           for a, b in zip(jax.tree.leaves(states[n]), jax.tree.leaves(jitted[n])))
    for n in opts}

# the same 3 steps on one device
dev = jax.devices()[0]
p1 = {n: jax.device_put(host, dev) for n in opts}
s1 = {n: o.init(p1[n]) for n, o in opts.items()}
for g in grads_host:
    outs = step(p1, s1, jax.device_put(g, dev))
    p1 = {n: outs[n][0] for n in opts}
    s1 = {n: outs[n][1] for n in opts}

def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30))) if a.size else 0.0

def normwise(a, b):
    # max |a - b| over max |b| of a leaf: the all-reduces of adafactor and lamb sum in
    # another order than one device does, so elements near 0 differ relatively by more
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.max(np.abs(b)) if b.size else 0.0
    diff = float(np.max(np.abs(a - b), initial=0.0))
    return diff / scale if scale > 0 else diff

report["max_rel_diff"] = {
    n: max(normwise(a, b) for a, b in zip(jax.tree.leaves((ps[n], states[n])),
                                           jax.tree.leaves((p1[n], s1[n]))))
    for n in opts}

# Low-memory state (issue 8, item 5): 8-bit blocks run along each row of the last axis, so
# shards of rows, of whole-block columns, or of whole blocks of a vector hold whole blocks.
SH8 = {"rows": NamedSharding(mesh, P("x", None)),  # 3 rows of 300 per device
       "cols": NamedSharding(mesh, P(None, "x")),  # 256 columns per device
       "vec": NamedSharding(mesh, P("x"))}         # 4 blocks of 256 per device
host8 = {"rows": rng.normal(size=(24, 300)).astype(np.float32),
         "cols": rng.normal(size=(128, 2048)).astype(np.float32),
         "vec": rng.normal(size=(8192,)).astype(np.float32)}
grads8 = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in host8.items()}
          for _ in range(3)]
params8 = jax.device_put(host8, SH8)
lowmem = {"8bit": adamx.with_storage(adamx.adam(1e-2), mu="8bit", nu="8bit"),
          "bfloat16_sr": adamx.with_storage(adamx.adam(1e-2), mu="bfloat16_sr",
                                            nu="bfloat16_sr"),
          "factored": adamx.with_storage(adamx.adam(1e-2), nu="factored")}

def storage_specs(state):
    # {path: (shape, spec padded to its rank)} of every moment leaf
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(state.inner):
        if np.ndim(leaf) == 0:
            continue
        spec = list(leaf.sharding.spec) + [None] * (np.ndim(leaf) - len(leaf.sharding.spec))
        out[jax.tree_util.keystr(path)] = [list(np.shape(leaf)), spec]
    return out

report["lowmem"] = {}
for n, o in lowmem.items():
    eager8 = o.init(params8)
    jit8 = jax.jit(o.init, out_shardings=state_shardings(o, params8))(params8)
    step8 = jax.jit(lambda p, s, g, o=o: adamx.step(o, g, s, p))
    hlo8 = step8.lower(params8, jit8, jax.device_put(grads8[0], SH8)).compile().as_text()
    p8, s8 = params8, jit8
    p1, s1 = jax.device_put(host8, dev), o.init(jax.device_put(host8, dev))
    for g in grads8:
        p8, s8 = step8(p8, s8, jax.device_put(g, SH8))
        p1, s1 = step8(p1, s1, jax.device_put(g, dev))
    report["lowmem"][n] = {
        "eager": storage_specs(eager8), "jit": storage_specs(jit8), "after": storage_specs(s8),
        "gathers": len(re.findall(r" (?:all-gather|collective-permute|all-to-all)(?:-start)?\(",
                                  hlo8)),
        "all_reduce": len(re.findall(r" all-reduce(?:-start)?\(", hlo8)),
        "max_rel_diff": max(normwise(a, b) for a, b in zip(jax.tree.leaves((p8, s8)),
                                                           jax.tree.leaves((p1, s1)))),
    }
print("JSON" + json.dumps(report))
"""


@pytest.fixture(scope="module")
def report():
    """The subprocess's report (run once per process: xdist may set this module fixture up
    twice on one worker when other modules' tests come between this module's)."""
    return _report()


@functools.cache
def _report():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()
    )
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(HERE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON")][-1]
    return json.loads(line[4:])


# Optimizers left out of the 8-device run, and why.


def _all_leaves_sharded(checks: dict) -> None:
    bad = {name: [k for k, ok in leaves.items() if not ok] for name, leaves in checks.items()}
    bad = {name: keys for name, keys in bad.items() if keys}
    assert not bad, f"state leaves not sharded like their params: {bad}"


def test_every_alias_is_checked(report):
    assert sorted(report["eager"]) == sorted(set(adamx.OPTIMIZERS) - set(GATHERS))
    for name, leaves in report["eager"].items():
        if name == "sign_sgd":  # no state shaped like the params, as optax.sign_sgd
            assert leaves == {}, leaves
            continue
        if name != "adafactor":  # its 2-D state is factored; its 1-D state is b's
            assert any(k.startswith("w") for k in leaves), (name, leaves)
        assert any(k.startswith("b") for k in leaves), (name, leaves)


def test_eager_init_shards_state_like_params(report):
    _all_leaves_sharded(report["eager"])


def test_jit_init_with_state_shardings(report):
    _all_leaves_sharded(report["jit"])
    # Adafactor's factors of a P('x', None) matrix: the row factor keeps 'x'
    row, col = report["adafactor_factors"]
    assert row == ["x", None] and col in ([], [None], [None, None]), (row, col)


def test_step_gathers_nothing(report):
    assert report["all_gather"] == 0, report["collectives"]
    assert report["collective_permute"] == 0, report["collectives"]
    assert set(report["collectives"]) <= {"all-reduce"}


def test_step_keeps_state_sharding(report):
    _all_leaves_sharded(report["after_steps"])
    assert all(report["params_sharded"].values()), report["params_sharded"]
    assert all(report["state_in_out_same"].values()), report["state_in_out_same"]


def test_sharded_steps_equal_single_device(report):
    """3 steps on 8 devices equal the same steps on one, to 1e-6 of each leaf's largest
    magnitude (bitwise but for adafactor and lamb, whose norms are all-reduced)."""
    bad = {n: d for n, d in report["max_rel_diff"].items() if not d <= SHARDED_RTOL.get(n, 1e-6)}
    assert not bad, bad


# D-Adaptation's step size D is a ratio of sums over every parameter (all-reduced across
# the shards, in another order than on one device) whose terms cancel: its last bits move.
SHARDED_RTOL = {"dadapt_adamw": 1e-5}


# Where each param's shards lie in its stored moments: (sharded dim of the param, of the
# 8-bit codes uint8[*shape[:-1], n_blocks, block] and scales float32[*shape[:-1], n_blocks]).
SHARDED_DIM = {"rows": 0, "cols": 1, "vec": 0}


@pytest.mark.parametrize("policy", ["8bit", "bfloat16_sr"])
def test_low_memory_state_is_sharded_per_shard(report, policy):
    """Each stored leaf is split along its param's sharded dim, on whole blocks, from eager
    init, from jit(init, out_shardings=state_shardings(...)) and after 3 steps."""
    out = report["lowmem"][policy]
    for phase in ("eager", "jit", "after"):
        leaves = out[phase]
        assert len(leaves) == (12 if policy == "8bit" else 6), leaves  # mu, nu x 3 params
        for path, (shape, spec) in leaves.items():
            name = next(k for k in SHARDED_DIM if f"'{k}'" in path)
            want = [None] * len(shape)
            want[SHARDED_DIM[name]] = "x"
            assert spec == want, (phase, path, shape, spec)
            if policy == "8bit" and path.endswith(".codes"):
                assert shape[-1] == 256, (path, shape)


@pytest.mark.parametrize("policy", ["8bit", "bfloat16_sr"])
def test_low_memory_step_gathers_nothing_and_equals_one_device(report, policy):
    out = report["lowmem"][policy]
    assert out["gathers"] == 0 and out["all_reduce"] == 0
    assert out["max_rel_diff"] == 0.0  # elementwise algebra and codec: bitwise equal


def test_factored_state_all_reduces_its_means_only(report):
    """Factored ``nu`` of a column-sharded matrix: the row means are sums over every shard
    (all-reduced, the math), nothing is gathered; equal to one device up to summation order."""
    out = report["lowmem"]["factored"]
    assert out["gathers"] == 0 and out["all_reduce"] >= 1
    assert out["max_rel_diff"] <= 1e-6


# ------------------------------------------------------------------ single device, unchanged
@pytest.mark.parametrize("name", adamx.OPTIMIZERS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
def test_init_dtypes_and_values_unchanged(name, dtype):
    """zeros_like/full_like give the same state as zeros/full did: every leaf's shape,
    dtype, weak type and value."""
    from test_contract import OPTIMIZERS as ROWS

    opt = ROWS[name].factory(**ROWS[name].kwargs)
    params = {"w": jnp.ones((4, 3), dtype), "b": jnp.ones((3,), dtype), "s": jnp.ones((), dtype)}
    state = opt.init(params)
    expected = jax.eval_shape(opt.init, params)
    for leaf, shape in zip(jax.tree.leaves(state), jax.tree.leaves(expected)):
        assert leaf.shape == shape.shape and leaf.dtype == shape.dtype
        assert not leaf.weak_type
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        if leaf.dtype == jnp.int32:
            continue
        key = jax.tree_util.keystr(path)
        if key.endswith(".b1"):  # schedule-free keeps its b1 for schedule_free_eval_params
            assert float(leaf) == float(jnp.asarray(ROWS[name].kwargs.get("b1", 0.9), dtype))
            continue
        if ".step_size[" in key:  # Rprop's sizes start at its learning rate
            lr = float(jnp.asarray(ROWS[name].kwargs["learning_rate"], dtype))
            assert np.all(np.asarray(leaf, np.float64) == lr), key
            continue
        if leaf.ndim and leaf.shape in ((4, 3), (3,)) and dtype == jnp.float16:
            # second moments of float16 params are stored in float32
            assert leaf.dtype in (jnp.float16, jnp.float32), key
        values = np.unique(np.asarray(leaf, np.float64))
        allowed = [float(jnp.asarray(v, leaf.dtype)) for v in (0.0, 1.0, 1e-6, 0.1)]
        assert values.size == 1 and values[0] in allowed, (key, values)


def test_state_shardings_single_device():
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()[:1]), ("x",))
    params = {
        "w": jax.device_put(jnp.ones((4, 2)), NamedSharding(mesh, P("x"))),
        "b": jax.device_put(jnp.ones((2,)), NamedSharding(mesh, P())),
    }
    for name in adamx.OPTIMIZERS:
        opt = getattr(adamx, name)() if name in ("adafactor", "adadelta", "adagrad") else None
        if opt is None:
            opt = getattr(adamx, name)(learning_rate=1e-2)
        shardings = state_shardings(opt, params)
        state = jax.jit(opt.init, out_shardings=shardings)(params)
        for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(opt.init(params))):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
            assert got.dtype == want.dtype
    with pytest.raises(ValueError, match="NamedSharding"):
        state_shardings(adamx.adam(1e-3), {"w": jnp.ones(3)})


def test_state_shardings_is_exported():
    assert adamx.state_shardings is state_shardings
    assert "state_shardings" in adamx.__all__
