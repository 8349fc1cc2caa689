"""Step time and state size of adamx's Adan, AdEMAMix, Simplified AdEMAMix, Muon, Rprop, ASGD,
SM3, MADGRAD, ACProp, Prodigy, D-Adaptation AdamW and GaLore next to optax's same rules
(issue 16), and of LaProp, MARS, Cautious, Adam-mini and SOAP next to AdamW / Lion (issue
18), on workload (a)'s transformer-like pytree.

    python benchmarks/relatives.py [--quick] [--rounds 5] [--steps 5] [--only rprop,soap]

Each contender is one jitted ``update + apply_updates`` with params and state donated, run on
float32 params and one fixed float32 gradient tree. Contenders are timed in turns (every
round each times ``--steps`` steps, the order rotating), so machine noise hits all alike;
the table gives the median step (wall and CPU time of the process, all threads), the compile
time and the state's bytes per parameter (``adamx.state_bytes_per_param``: every array of
the state over the parameter count). ``--only`` keeps the named optimizers' rows. The
``--quick`` tree (2.8M parameters) is the one recorded: Muon's Newton-Schulz on the full
tree's 16384 x 576 embedding alone is tens of GFLOP per step.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import workloads

import adamx


def contenders() -> dict[str, optax.GradientTransformation]:
    lr = 1e-3
    return {
        "adan: adamx": adamx.adan(lr),
        "adan: optax": optax.adan(lr),
        "ademamix: adamx": adamx.ademamix(lr),
        "ademamix: optax": optax.contrib.ademamix(lr),
        "simplified_ademamix: adamx": adamx.simplified_ademamix(lr),
        "simplified_ademamix: optax": optax.contrib.simplified_ademamix(lr),
        "muon: adamx (torch reading, bfloat16 NS)": adamx.muon(lr),
        "muon: adamx (torch reading, float32 NS)": adamx.muon(lr, ns_dtype=jnp.float32),
        "muon: adamx (optax reading)": adamx.muon(lr, reading="optax", weight_decay=None),
        "muon: optax": optax.contrib.muon(lr),
        # issue 18, first part: no optax twin; next to AdamW and Lion on the same XLA path
        "adamw: adamx (XLA path)": adamx.adamw(lr, fused=False),
        "adamw: optax": optax.adamw(lr, weight_decay=1e-2),
        "laprop: adamx": adamx.laprop(lr, weight_decay=1e-2),
        "mars: adamx": adamx.mars(lr, weight_decay=1e-2),
        "mars (lion): adamx": adamx.mars(lr, weight_decay=1e-2, instance="lion"),
        "cautious(adamw): adamx": adamx.cautious(adamx.adamw(lr, fused=False)),
        "lion: adamx (XLA path)": adamx.lion(lr, weight_decay=1e-2, fused=False),
        "cautious(lion): adamx": adamx.cautious(adamx.lion(lr, weight_decay=1e-2, fused=False)),
        # issue 18, second part: no optax twin; AdamW (adamx's and optax's) as the yardstick
        "adam_mini: adamx": adamx.adam_mini(lr),
        "soap: adamx": adamx.soap(lr),
        # issue 16, fourth batch (lr multiplies the estimated step size D); AdamW as the base
        "adamw (base of the next four): optax": optax.adamw(lr),
        "prodigy: adamx": adamx.prodigy(),
        "prodigy: optax": optax.contrib.prodigy(),
        "dadapt_adamw: adamx": adamx.dadapt_adamw(),
        "dadapt_adamw: optax": optax.contrib.dadapt_adamw(),
        "galore: adamx (rank 128)": adamx.galore(lr),
        "galore: optax (rank 128)": optax.contrib.galore(lr),
        "galore: adamx (rank 32)": adamx.galore(lr, rank=32),
        "galore: optax (rank 32)": optax.contrib.galore(lr, rank=32),
        "adam: adamx": adamx.adam(lr),
        "adam: optax": optax.adam(lr),
        "rprop: adamx": adamx.rprop(lr),
        "rprop: adamx (optax reading)": adamx.rprop(lr, reading="optax"),
        "rprop: optax": optax.rprop(lr),
        "asgd: adamx": adamx.asgd(lr, t0=0.0),  # averaging from the start, as it will be
        "sgd: adamx (no momentum, for asgd)": adamx.sgd(lr),
        "sm3: adamx": adamx.sm3(lr),
        "sm3: optax": optax.sm3(lr),
        "madgrad: adamx": adamx.madgrad(lr),
        "madgrad: optax": optax.contrib.madgrad(lr),
        "acprop: adamx": adamx.acprop(lr),
        "acprop: optax": optax.contrib.acprop(lr),
    }


def tree(shapes, seed: int):
    rng = np.random.default_rng(seed)
    if isinstance(shapes, tuple):
        return jnp.asarray(rng.standard_normal(shapes, np.float32))
    if isinstance(shapes, dict):
        return {k: tree(v, seed + i) for i, (k, v) in enumerate(sorted(shapes.items()))}
    return [tree(v, seed + i) for i, v in enumerate(shapes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the 2.8M-parameter tree")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated name prefixes to run")
    args = parser.parse_args()
    only = tuple(p.strip() for p in args.only.split(",") if p.strip())
    shapes = workloads.workload_shapes("a", args.quick)
    n_leaves, n_params = workloads.count_params("a", args.quick)
    grads = tree(shapes, 1)
    runs = {}
    for name, opt in contenders().items():
        if only and not name.startswith(only):
            continue
        params = tree(shapes, 0)
        # a copy: optax.contrib.prodigy's init keeps the params themselves as x_0, and one
        # buffer cannot be donated twice
        state = jax.tree.map(lambda x: jnp.array(x, copy=True), opt.init(params))
        bytes_per_param = adamx.state_bytes_per_param(state, params)

        def step(p, s, g, opt=opt):
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s

        jitted = jax.jit(step, donate_argnums=(0, 1))
        start = time.perf_counter()
        with jax.numpy_dtype_promotion("standard"):
            compiled = jitted.lower(params, state, grads).compile()
        compile_s = time.perf_counter() - start
        params, state = jax.block_until_ready(compiled(params, state, grads))
        runs[name] = dict(fn=compiled, carry=(params, state), times=[], cpu=[],
                          compile=compile_s, bytes=bytes_per_param)  # fmt: skip
    names = list(runs)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            run = runs[name]
            for _ in range(args.steps):
                start, cpu = time.perf_counter(), time.process_time()
                run["carry"] = jax.block_until_ready(run["fn"](*run["carry"], grads))
                run["times"].append(time.perf_counter() - start)
                run["cpu"].append(time.process_time() - cpu)
    print(f"workload (a), {n_leaves} leaves, {n_params / 1e6:.2f}M params, float32")
    print()
    print("| optimizer | step (ms, median) | fastest (ms) | CPU (ms, median) | compile (s) "
          "| state B/param |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for name in names:
        run = runs[name]
        med, low = statistics.median(run["times"]) * 1e3, min(run["times"]) * 1e3
        cpu = statistics.median(run["cpu"]) * 1e3
        print(f"| {name} | {med:.1f} | {low:.1f} | {cpu:.1f} | {run['compile']:.1f} "
              f"| {run['bytes']:.2f} |")  # fmt: skip
    assert all(math.isfinite(t) for r in runs.values() for t in r["times"])


if __name__ == "__main__":
    main()
