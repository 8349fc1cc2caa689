"""ZeRO-1 state partitioning (``shard_state``): equal results, less state per device.

The 8-device checks run once, in one subprocess with 8 simulated CPU devices
(``--xla_force_host_platform_device_count=8``), which prints its measurements as JSON;
several tests assert on them. The single-device tests run in this process.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

import adamx
from adamx.training._zero import shard_state, zero_shardings

N_DEVICES = 8
# The module fixture runs one 8-device subprocess, once per run: the suite hands whole
# files to its pytest-xdist workers (``--dist loadfile`` in pyproject.toml).

SCRIPT = textwrap.dedent(
    """
    import json, time
    t0 = time.perf_counter()
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import adamx
    from adamx.training._zero import shard_state

    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")
    devices = jax.devices()
    assert len(devices) == 8, devices
    mesh = Mesh(np.array(devices), ("data",))
    rep = NamedSharding(mesh, P())
    SHAPES = {"a": (64, 32), "b": (256, 64), "odd": (30, 7), "bias": (32,)}

    def bytes_on_dev0(tree):
        return sum(
            s.data.nbytes
            for x in jax.tree.leaves(tree)
            for s in x.addressable_shards
            if s.device == devices[0]
        )

    def leaves(tree):
        out = []
        for x in jax.tree.leaves(tree):
            spec = tuple(x.sharding.spec) if hasattr(x.sharding, "spec") else None
            while spec and spec[-1] is None:
                spec = spec[:-1]
            out.append({
                "shape": list(x.shape), "nbytes": int(x.nbytes), "spec": spec,
                "dev0": sum(s.data.nbytes for s in x.addressable_shards if s.device == devices[0]),
            })
        return out

    def run(base, dtype, steps=10):
        keys = jax.random.split(jax.random.key(0), len(SHAPES))
        params0 = {
            k: jax.random.normal(key, shape, dtype) for key, (k, shape) in zip(keys, SHAPES.items())
        }
        params0 = jax.device_put(params0, rep)

        def loss(p, t):
            return sum(jnp.sum((jnp.tanh(x) - t * 0.1) ** 2) for x in jax.tree.leaves(p))

        out = {}
        for mode, opt in (("replicated", base), ("zero1", shard_state(base, mesh, "data"))):
            train = jax.jit(lambda p, s, t: adamx.step(opt, jax.grad(loss)(p, t), s, p))
            p, s = params0, jax.jit(opt.init)(params0)
            init_leaves = leaves(s)
            for t in range(steps):
                p, s = train(p, s, jnp.asarray(t, dtype))
            out[mode] = {
                "params": {k: np.asarray(v).tolist() for k, v in p.items()},
                "params_replicated": all(
                    x.sharding.is_fully_replicated for x in jax.tree.leaves(p)
                ),
                "init_leaves": init_leaves,
                "leaves": leaves(s),
                "state_bytes_dev0": bytes_on_dev0(s),
            }
        return out

    OPTS = {
        "adam": lambda: adamx.adam(1e-2),
        "adamw": lambda: adamx.adamw(1e-2, weight_decay=0.1),
        "lion": lambda: adamx.lion(1e-3),
        "sgd_momentum": lambda: adamx.sgd(1e-2, momentum=0.9),
        "amsgrad": lambda: adamx.amsgrad(1e-2),
        "adam_8bit": lambda: adamx.with_storage(adamx.adam(1e-2), mu="8bit", nu="8bit"),
    }
    results = {name: run(make(), jnp.float32) for name, make in OPTS.items()}
    print(json.dumps({"results": results, "seconds": time.perf_counter() - t0}))
    """
)

# Adafactor is left out: its row/column means become cross-shard sums, equal to the
# unsharded run only up to summation order (max rel 2e-13 in float64, 2e-4 in float32),
# and its float64 compile would double this subprocess's time.
ALL_OPTIMIZERS = ["adam", "adamw", "lion", "sgd_momentum", "amsgrad", "adam_8bit"]


@pytest.fixture(scope="module")
def eight_devices():
    """The subprocess's report (run once per process: xdist may set this module fixture up
    twice on one worker when other modules' tests come between this module's)."""
    return _eight_devices()


@functools.cache
def _eight_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={N_DEVICES}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _expected_spec(shape):
    return ("data",) if shape and shape[0] > 0 and shape[0] % N_DEVICES == 0 else ()


@pytest.mark.parametrize("name", ALL_OPTIMIZERS)
def test_sharded_run_equals_the_replicated_run(eight_devices, name):
    out = eight_devices["results"][name]
    for k, want in out["replicated"]["params"].items():
        np.testing.assert_allclose(out["zero1"]["params"][k], want, rtol=1e-6, atol=0, err_msg=k)
    assert out["zero1"]["params_replicated"]
    assert out["replicated"]["params_replicated"]


@pytest.mark.parametrize("name", ALL_OPTIMIZERS)
def test_state_leaves_are_sharded_by_the_documented_rule(eight_devices, name):
    out = eight_devices["results"][name]
    for phase in ("init_leaves", "leaves"):
        for leaf in out["zero1"][phase]:
            assert tuple(leaf["spec"]) == _expected_spec(leaf["shape"]), (phase, leaf)
        for leaf in out["replicated"][phase]:  # without shard_state: whole on every device
            assert leaf["dev0"] == leaf["nbytes"], (phase, leaf)


@pytest.mark.parametrize("name", ALL_OPTIMIZERS)
def test_per_device_state_bytes_drop_by_the_axis_size(eight_devices, name):
    out = eight_devices["results"][name]
    rep, zero = out["replicated"], out["zero1"]
    expected = sum(
        leaf["nbytes"] // N_DEVICES if _expected_spec(leaf["shape"]) else leaf["nbytes"]
        for leaf in zero["leaves"]
    )
    assert zero["state_bytes_dev0"] == expected
    assert rep["state_bytes_dev0"] == sum(leaf["nbytes"] for leaf in rep["leaves"])
    divisible = [i for i, leaf in enumerate(zero["leaves"]) if _expected_spec(leaf["shape"])]
    assert divisible, "no shardable leaf"
    before = sum(rep["leaves"][i]["dev0"] for i in divisible)
    after = sum(zero["leaves"][i]["dev0"] for i in divisible)
    assert before == N_DEVICES * after
    assert zero["state_bytes_dev0"] < rep["state_bytes_dev0"]


def test_8bit_codes_shard_on_whole_blocks(eight_devices):
    zero = eight_devices["results"]["adam_8bit"]["zero1"]["leaves"]
    codes = [
        leaf
        for leaf in zero
        if len(leaf["shape"]) >= 2 and leaf["nbytes"] == np.prod(leaf["shape"])
    ]
    assert codes, "no uint8 codes in the 8-bit state"
    for leaf in codes:  # uint8[rows, n_blocks, block]: split on rows, so on whole blocks
        assert leaf["spec"] == ["data"]
        assert leaf["dev0"] == leaf["nbytes"] // N_DEVICES


# ----------------------------------------------------------------- single device


def _mesh1(name="data"):
    return Mesh(np.array(jax.devices()[:1]), (name,))


def _params():
    k1, k2 = jax.random.split(jax.random.key(1))
    return {"w": jax.random.normal(k1, (8, 4)), "b": jax.random.normal(k2, (3,))}


@pytest.mark.parametrize(
    "make",
    [
        lambda: adamx.adam(1e-2),
        lambda: adamx.sgd(1e-2, momentum=0.9),
        lambda: adamx.with_storage(adamx.adam(1e-2), mu="8bit", nu="8bit"),
    ],
)
def test_one_device_is_the_identity(make):
    base = make()
    opt = shard_state(base, _mesh1(), "data")
    params = _params()
    grads = jax.tree.map(lambda x: jnp.cos(x), params)
    s0, s1 = base.init(params), opt.init(params)
    assert jax.tree.structure(s0) == jax.tree.structure(s1)
    for _ in range(3):
        u0, s0 = jax.jit(base.update)(grads, s0, params)
        u1, s1 = jax.jit(opt.update)(grads, s1, params)
        for a, b in zip(jax.tree.leaves((u0, s0)), jax.tree.leaves((u1, s1))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_eager_init_and_state_sharding_follow_the_rule():
    mesh = _mesh1()
    opt = shard_state(adamx.adam(1e-2), mesh, "data")
    state = opt.init(_params())  # eager
    for leaf, sharding in zip(
        jax.tree.leaves(state), jax.tree.leaves(zero_shardings(state, mesh, "data"))
    ):
        assert leaf.sharding == sharding
        want = PartitionSpec("data") if leaf.ndim else PartitionSpec()
        assert sharding.spec == want


def test_bad_axis_name_names_it_and_the_mesh_axes():
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    with pytest.raises(ValueError, match=r"'batch'.*\('data', 'model'\)"):
        shard_state(adamx.adam(), mesh, "batch")
    with pytest.raises(ValueError, match="'batch'"):
        zero_shardings({}, mesh, "batch")


def test_bad_argument_types():
    mesh = _mesh1()
    with pytest.raises(TypeError, match="axis"):
        shard_state(adamx.adam(), mesh, 0)
    with pytest.raises(TypeError, match="mesh"):
        shard_state(adamx.adam(), "data", "data")
    with pytest.raises(TypeError, match="optimizer"):
        shard_state(lambda g: g, mesh, "data")
