"""XLA step time and state bytes per parameter of issue 16's second batch, next to optax.

Each optimizer runs as a jitted, donated ``update + optax.apply_updates`` on workload (a)'s
transformer-like pytree (``--quick``: its small version), adamx's and optax's alternately
(``--rounds`` rounds of ``--steps`` steps each; the figure is the median step over the
rounds), in one process, so that the machine's load hits both alike. The ratio adamx / optax
is the figure to read on a shared machine. State bytes per parameter count every array leaf
of the state (scalars included) over the number of parameters.

    python benchmarks/relatives_batch2.py            # 57.8M params
    python benchmarks/relatives_batch2.py --quick    # 2.8M params, a few seconds per optimizer
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workloads  # noqa: E402

import adamx  # noqa: E402

LR = 1e-3
PAIRS = {  # name: (adamx factory, optax factory), the same rule (tests/test_sign_free.py)
    "schedule_free_adamw": (lambda: adamx.schedule_free_adamw(LR),
                            lambda: optax.contrib.schedule_free_adamw(LR)),
    "schedule_free_sgd": (lambda: adamx.schedule_free_sgd(LR),
                          lambda: optax.contrib.schedule_free_sgd(LR)),
    "sign_sgd": (lambda: adamx.sign_sgd(LR), lambda: optax.sign_sgd(LR)),
    "signum": (lambda: adamx.signum(LR), lambda: optax.signum(LR)),
    "adamaxw": (lambda: adamx.adamaxw(LR), lambda: optax.adamaxw(LR)),
    "lars": (lambda: adamx.lars(LR), lambda: optax.lars(LR)),
    "novograd": (lambda: adamx.novograd(LR), lambda: optax.novograd(LR)),
    "optimistic_adam": (lambda: adamx.optimistic_adam(LR),
                        lambda: optax.optimistic_adam_v2(LR)),
}  # fmt: skip


def make_tree(shapes, key):
    leaves = workloads.leaf_shapes(shapes)
    keys = jax.random.split(key, len(leaves))
    return {f"{i:03d}": jax.random.normal(k, s, jnp.float32) for i, (k, s) in
            enumerate(zip(keys, leaves))}  # fmt: skip


def state_bytes(state) -> int:
    return sum(int(np.asarray(x).nbytes) for x in jax.tree.leaves(state) if hasattr(x, "dtype"))


class Runner:
    def __init__(self, opt, params, grads):
        def step(p, s, g):
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s

        self.step = jax.jit(step, donate_argnums=(0, 1))
        self.grads = grads
        self.params = jax.tree.map(jnp.copy, params)
        self.state = opt.init(self.params)
        self.bytes = state_bytes(self.state)
        start = time.perf_counter()
        self.params, self.state = self.step(self.params, self.state, grads)
        jax.block_until_ready(self.params)
        self.compile_s = time.perf_counter() - start

    def time_steps(self, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            self.params, self.state = self.step(self.params, self.state, self.grads)
        jax.block_until_ready((self.params, self.state))
        return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    shapes = workloads.workload_shapes("a", args.quick)
    params = make_tree(shapes, jax.random.key(0))
    grads = make_tree(shapes, jax.random.key(1))
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    load = os.getloadavg()
    print(f"- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}")
    print(f"- command: `python benchmarks/relatives_batch2.py{' --quick' if args.quick else ''}`")
    print(f"- CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"jax {jax.__version__}, optax {optax.__version__}, load before {load}")  # fmt: skip
    print(f"- workload (a){' quick' if args.quick else ''}: {len(jax.tree.leaves(params))} "
          f"leaves, {n / 1e6:.2f}M float32 params; median of {args.rounds} rounds of "
          f"{args.steps} steps, adamx and optax alternating\n")  # fmt: skip
    print("| optimizer | adamx ms/step | optax ms/step | adamx / optax | adamx state B/param | "
          "optax state B/param |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (ours, theirs) in PAIRS.items():
        if args.only and name not in args.only:
            continue
        with jax.numpy_dtype_promotion("standard"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runners = [Runner(ours(), params, grads), Runner(theirs(), params, grads)]
            times = [[], []]
            for _ in range(args.rounds):
                for i, r in enumerate(runners):
                    times[i].append(r.time_steps(args.steps))
        a, b = (statistics.median(t) * 1e3 for t in times)
        print(f"| `{name}` | {a:.1f} | {b:.1f} | {a / b:.2f} | {runners[0].bytes / n:.2f} | "
              f"{runners[1].bytes / n:.2f} |", flush=True)  # fmt: skip
    print(f"\n- load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
