"""XLA step time and state bytes per parameter of adamx's relatives of Adam, each next to
optax's implementation of the same rule (issue 16) or, where optax has none, next to the rule
it changes (issue 18), on workload (a)'s transformer-like pytree.

    python benchmarks/relatives.py --quick                      # every row, 2.66M params
    python benchmarks/relatives.py --optimizers rprop,sm3       # those rows, 57.8M params
    python benchmarks/relatives.py --quick --optimizers signum --rounds 7 --steps 5
    python benchmarks/relatives.py --list                       # the rows and optimizers

A row is one implementation of one optimizer (``"rprop: optax"``); ``--optimizers`` keeps
the rows of the optimizers named (the text of a row before ``:``, without what follows a
space or a parenthesis: ``mars`` keeps both MARS rows, ``cautious`` both Cautious rows), and
adds the row each is compared with (its *ref*: optax's implementation of the same rule where
there is one, else the rule it changes, such as AdamW for LaProp). Without ``--optimizers``
every row runs: use ``--quick`` then, since all rows hold their state at once (the full tree
is 231 MB of params alone per row).

Each row is one jitted ``update + optax.apply_updates`` with params and state donated, on
float32 params and one fixed float32 gradient tree. Rows are timed in turns (every round
each times ``--steps`` steps, the order rotating), so machine noise hits all alike. The table
gives the median step (wall time and the CPU time of the process, all threads: on a shared
machine read the CPU time), the fastest step, the CPU time over the ref row's, the compile
time and the state's bytes per parameter (``adamx.state_bytes_per_param``: every array of
the state over the parameter count). ``--quick`` is the size recorded for Muon and SOAP:
Muon's Newton-Schulz on the full tree's 16384 x 576 embedding alone is tens of GFLOP per
step.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import re
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
ADAMW, LION, SGD = "adamw: adamx (XLA path)", "lion: adamx (XLA path)", "sgd: adamx"


def with_objective(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``tx`` with ``obj_fn = sum(p**2) / 2`` given to every update (Sophia's)."""

    def objective(params):
        return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(params)) / 2

    def update(updates, state, params=None):
        return tx.update(updates, state, params, obj_fn=objective)

    return optax.GradientTransformation(tx.init, update)


# "optimizer: implementation" -> (factory, the row it is compared with or None). A factory
# runs only for the rows kept. Without a ref, the row's ref is "<optimizer>: optax".
ROWS = {
    # issue 16, first batch
    "adan: adamx": (lambda: adamx.adan(LR), None),
    "adan: optax": (lambda: optax.adan(LR), None),
    "ademamix: adamx": (lambda: adamx.ademamix(LR), None),
    "ademamix: optax": (lambda: optax.contrib.ademamix(LR), None),
    "simplified_ademamix: adamx": (lambda: adamx.simplified_ademamix(LR), None),
    "simplified_ademamix: optax": (lambda: optax.contrib.simplified_ademamix(LR), None),
    "muon: adamx (torch reading, bfloat16 NS)": (lambda: adamx.muon(LR), None),
    "muon: adamx (torch reading, float32 NS)": (
        lambda: adamx.muon(LR, ns_dtype=jnp.float32), None),
    "muon: adamx (optax reading)": (
        lambda: adamx.muon(LR, reading="optax", weight_decay=None), None),
    "muon: optax": (lambda: optax.contrib.muon(LR), None),
    # issue 16, second batch
    "schedule_free_adamw: adamx": (lambda: adamx.schedule_free_adamw(LR), None),
    "schedule_free_adamw: optax": (lambda: optax.contrib.schedule_free_adamw(LR), None),
    "schedule_free_sgd: adamx": (lambda: adamx.schedule_free_sgd(LR), None),
    "schedule_free_sgd: optax": (lambda: optax.contrib.schedule_free_sgd(LR), None),
    "sign_sgd: adamx": (lambda: adamx.sign_sgd(LR), None),
    "sign_sgd: optax": (lambda: optax.sign_sgd(LR), None),
    "signum: adamx": (lambda: adamx.signum(LR), None),
    "signum: optax": (lambda: optax.signum(LR), None),
    "adamaxw: adamx": (lambda: adamx.adamaxw(LR), None),
    "adamaxw: optax": (lambda: optax.adamaxw(LR), None),
    "lars: adamx": (lambda: adamx.lars(LR), None),
    "lars: optax": (lambda: optax.lars(LR), None),
    "novograd: adamx": (lambda: adamx.novograd(LR), None),
    "novograd: optax": (lambda: optax.novograd(LR), None),
    "optimistic_adam: adamx": (lambda: adamx.optimistic_adam(LR), None),
    "optimistic_adam: optax": (lambda: optax.optimistic_adam_v2(LR), None),
    # issue 16, third batch
    "adam: adamx": (lambda: adamx.adam(LR), None),
    "adam: optax": (lambda: optax.adam(LR), None),
    "rprop: adamx": (lambda: adamx.rprop(LR), None),
    "rprop: adamx (optax reading)": (lambda: adamx.rprop(LR, reading="optax"), None),
    "rprop: optax": (lambda: optax.rprop(LR), None),
    "asgd: adamx": (lambda: adamx.asgd(LR, t0=0.0), SGD),  # averaging from the start
    SGD: (lambda: adamx.sgd(LR), None),  # no momentum: the base of asgd
    "sm3: adamx": (lambda: adamx.sm3(LR), None),
    "sm3: optax": (lambda: optax.sm3(LR), None),
    "madgrad: adamx": (lambda: adamx.madgrad(LR), None),
    "madgrad: optax": (lambda: optax.contrib.madgrad(LR), None),
    "acprop: adamx": (lambda: adamx.acprop(LR), None),
    "acprop: optax": (lambda: optax.contrib.acprop(LR), None),
    # issue 16, fourth batch (lr multiplies the estimated step size D)
    "prodigy: adamx": (lambda: adamx.prodigy(), None),
    "prodigy: optax": (lambda: optax.contrib.prodigy(), None),
    "dadapt_adamw: adamx": (lambda: adamx.dadapt_adamw(), None),
    "dadapt_adamw: optax": (lambda: optax.contrib.dadapt_adamw(), None),
    # Sophia's update takes obj_fn (its Hessian-vector products every update_interval=10
    # steps): a quadratic whose products are cheap, so the figures are the optimizer's
    "sophia: adamx": (lambda: with_objective(adamx.sophia(LR)), None),
    "sophia: optax": (lambda: with_objective(optax.contrib.sophia(LR)), None),
    "galore: adamx (rank 128)": (lambda: adamx.galore(LR), "galore: optax (rank 128)"),
    "galore: optax (rank 128)": (lambda: optax.contrib.galore(LR), None),
    "galore: adamx (rank 32)": (lambda: adamx.galore(LR, rank=32), "galore: optax (rank 32)"),
    "galore: optax (rank 32)": (lambda: optax.contrib.galore(LR, rank=32), None),
    # issue 18: no optax twin; next to AdamW or Lion on the same XLA path
    ADAMW: (lambda: adamx.adamw(LR, fused=False), None),
    "adamw: optax": (lambda: optax.adamw(LR, weight_decay=1e-2), None),
    "laprop: adamx": (lambda: adamx.laprop(LR, weight_decay=1e-2), ADAMW),
    "mars: adamx": (lambda: adamx.mars(LR, weight_decay=1e-2), ADAMW),
    "mars (lion): adamx": (lambda: adamx.mars(LR, weight_decay=1e-2, instance="lion"), LION),
    "cautious(adamw): adamx": (lambda: adamx.cautious(adamx.adamw(LR, fused=False)), ADAMW),
    LION: (lambda: adamx.lion(LR, weight_decay=1e-2, fused=False), None),
    "cautious(lion): adamx": (
        lambda: adamx.cautious(adamx.lion(LR, weight_decay=1e-2, fused=False)), LION),
    "adam_mini: adamx": (lambda: adamx.adam_mini(LR), ADAMW),
    "soap: adamx": (lambda: adamx.soap(LR), ADAMW),
}  # fmt: skip


def optimizer_of(row: str) -> str:
    """A row's optimizer: its name up to the first ':', ' ' or '('."""
    return re.split(r"[:( ]", row, maxsplit=1)[0]


def ref_of(row: str) -> str | None:
    """The row a row is compared with (None for a ref itself)."""
    ref = ROWS[row][1]
    if ref is None and not row.endswith(": optax"):
        twin = f"{optimizer_of(row)}: optax"
        ref = twin if twin in ROWS else None
    return ref


def select(names: list[str]) -> list[str]:
    """The rows of the optimizers named, with their refs, in table order."""
    known = sorted({optimizer_of(r) for r in ROWS})
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"--optimizers: unknown {unknown}; known: {', '.join(known)}")
    keep = {r for r in ROWS if optimizer_of(r) in names}
    keep |= {ref_of(r) for r in keep} - {None}
    return [r for r in ROWS if r in keep]


def tree(shapes, seed: int):
    rng = np.random.default_rng(seed)
    if isinstance(shapes, tuple):
        return jnp.asarray(rng.standard_normal(shapes, np.float32))
    if isinstance(shapes, dict):
        return {k: tree(v, seed + i) for i, (k, v) in enumerate(sorted(shapes.items()))}
    return [tree(v, seed + i) for i, v in enumerate(shapes)]


def build(opt: optax.GradientTransformation, shapes, grads) -> dict:
    """One row: its compiled step, its first step's carry, compile time and state size."""
    params = tree(shapes, 0)
    # a copy: optax.contrib.prodigy's init keeps the params themselves as x_0, and one
    # buffer cannot be donated twice
    state = jax.tree.map(lambda x: jnp.array(x, copy=True), opt.init(params))
    bytes_per_param = adamx.state_bytes_per_param(state, params)

    def step(p, s, g):
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    jitted = jax.jit(step, donate_argnums=(0, 1))
    start = time.perf_counter()
    compiled = jitted.lower(params, state, grads).compile()
    compile_s = time.perf_counter() - start
    params, state = jax.block_until_ready(compiled(params, state, grads))
    return dict(fn=compiled, carry=(params, state), times=[], cpu=[], compile=compile_s,
                bytes=bytes_per_param)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the 2.66M-parameter tree")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="steps per row per round")
    parser.add_argument("--optimizers", default="", help="comma-separated; default: all rows")
    parser.add_argument("--list", action="store_true", help="print the rows and exit")
    args = parser.parse_args()
    if args.list:
        for row in ROWS:
            print(f"{optimizer_of(row):20} {row}  (ref: {ref_of(row) or '-'})")
        return
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    rows = select(names) if names else list(ROWS)
    shapes = workloads.workload_shapes("a", args.quick)
    n_leaves, n_params = workloads.count_params("a", args.quick)
    grads = tree(shapes, 1)
    load = os.getloadavg()
    runs = {}
    for name in rows:
        with jax.numpy_dtype_promotion("standard"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optax's deprecations; the same for every run
            runs[name] = build(ROWS[name][0](), shapes, grads)
    for r in range(args.rounds):
        for name in rows[r % len(rows) :] + rows[: r % len(rows)]:
            run = runs[name]
            for _ in range(args.steps):
                start, cpu = time.perf_counter(), time.process_time()
                run["carry"] = jax.block_until_ready(run["fn"](*run["carry"], grads))
                run["times"].append(time.perf_counter() - start)
                run["cpu"].append(time.process_time() - cpu)
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    command = " ".join(["python benchmarks/relatives.py", *sys.argv[1:]])
    print(f"- date: {now}; command: `{command}`")
    print(f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"jax {jax.__version__}, optax {optax.__version__}; load average before "
          f"{load[0]:.1f}, after {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"- workload (a){' quick' if args.quick else ''}: {n_leaves} leaves, "
          f"{n_params / 1e6:.2f}M float32 params; {args.rounds} rounds of {args.steps} "
          "steps per row, rows in rotating turns")  # fmt: skip
    print()
    print("| optimizer | step (ms, median) | fastest (ms) | CPU (ms, median) | CPU / ref "
          "| ref | compile (s) | state B/param |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in rows:
        run = runs[name]
        med, low = statistics.median(run["times"]) * 1e3, min(run["times"]) * 1e3
        cpu = statistics.median(run["cpu"]) * 1e3
        ref, ratio = ref_of(name), "-"
        if ref in runs:
            ratio = f"{cpu / (statistics.median(runs[ref]['cpu']) * 1e3):.2f}"
        else:
            ref = None  # not run: its own ref (adamw: adamx's is optax's) is not added
        print(f"| {name} | {med:.1f} | {low:.1f} | {cpu:.1f} | {ratio} | {ref or '-'} "
              f"| {run['compile']:.1f} | {run['bytes']:.2f} |")  # fmt: skip
    assert all(math.isfinite(t) for r in runs.values() for t in r["times"])


if __name__ == "__main__":
    main()
