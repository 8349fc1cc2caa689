"""Every optimizer of ``adamx.OPTIMIZERS`` (and Sophia) on two small tasks, each at a
learning rate from the same small sweep: ``python benchmarks/convergence.py --optimizers``.

The tasks, the same data, order and initial parameters for every optimizer and rate:

* **mlp**: the demo's two-layer MLP (64-64-10, tanh, mean squared error on one-hot
  targets) on the bundled UCI digits, full batch; held out: the demo's 20% test split.
* **charlm**: :mod:`adamx.demo.charlm`'s transformer, small (1 block, d_model 64,
  context 32, batches of 8) on the standard library's help texts; step ``i`` trains on
  ``charlm.batches(..., fold_in(data_key, i))``; held out: 64 windows from the last 10%.

The sweep: for each optimizer the rates ``base * (1/3, 1, 3)``, ``base`` the demo's
``DEFAULT_LEARNING_RATES[name]`` (Sophia, not in the demo: 3e-3, see ``SOPHIA_BASE``);
the rate kept is the one with the lowest final training loss (the mean over the last 10%
of the steps; non-finite runs are never kept). Each (optimizer, rate, task) run is one
jitted function, all the steps in one ``lax.scan``, the evaluation after it.

Reported per optimizer and task: the chosen rate, the final training loss, the held-out
loss at the final parameters, the steps to a target loss (the smoothed loss, a trailing
mean over 10% of the steps, first at or below AdamW's smoothed loss at half the steps,
AdamW at its own chosen rate), and the process CPU time per step (``time.process_time``,
all threads, compilation excluded, of the call that ran the three rates side by side, over
three times its steps): the machine is shared, so wall time says little.
"""

from __future__ import annotations

import argparse
import datetime
import math
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from run import load_average, machine

import adamx
from adamx import demo
from adamx.demo import charlm
from adamx.demo._models import _MODELS

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

SOPHIA_BASE = 3e-3
"""Sophia's centre rate (it is not in the demo's table): its step is clipped to at most
``lr`` per element, like Lion's sign step (demo rate 1e-3) and below Adam's 1e-2."""
FACTORS = (1 / 3, 1.0, 3.0)
REFERENCE = "adamw"
SIZES = {
    "full": {"mlp": 300, "charlm": 150},
    "quick": {"mlp": 40, "charlm": 20},
}
CHARLM_SHAPE = {"d_model": 64, "layers": 1, "heads": 4, "context": 32, "batch": 8}
EVAL_WINDOWS = 64
ONE_RATE_AT_A_TIME = ("rprop", "soap", "galore")
"""Run once per rate, not under ``vmap``: Rprop's rate is an initial step size and takes no
schedule; SOAP's and GaLore's matrix decompositions are slow batched on CPU."""

START = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f} s] {message}", file=sys.stderr, flush=True)


def names() -> list[str]:
    return [*adamx.OPTIMIZERS, "sophia"]


def base_rate(name: str) -> float:
    return SOPHIA_BASE if name == "sophia" else demo.DEFAULT_LEARNING_RATES[name]


# --------------------------------------------------------------------------- tasks


class Task:
    """Initial params, a loss of ``(params, batch)``, the batch of step ``i`` (jittable)
    and the held-out batch."""

    def __init__(self, params, loss: Callable, batch_of: Callable, held_out) -> None:
        self.params, self.loss, self.batch_of, self.held_out = params, loss, batch_of, held_out


def mlp_task() -> Task:
    init, loss_fn, _ = _MODELS["mlp"]
    x_train, y_train, x_test, y_test = (
        jnp.asarray(a) for a in demo.train_test_split(*demo.load_digits(), seed=0)
    )
    return Task(
        init(jax.random.key(0)),
        lambda p, b: loss_fn(p, *b),
        lambda i: (x_train, y_train),
        (x_test, y_test),
    )


def charlm_task() -> Task:
    shape = CHARLM_SHAPE
    tokens, vocab = charlm.encode(charlm.load_text())
    train_tokens, held = charlm.split(tokens)
    held_out = tuple(
        jnp.asarray(a) for a in charlm.eval_windows(held, shape["context"], EVAL_WINDOWS)
    )
    data = jnp.asarray(train_tokens)
    init_key, data_key = jax.random.split(jax.random.key(0))
    params = charlm.init(
        init_key,
        vocab.size,
        d_model=shape["d_model"],
        layers=shape["layers"],
        heads=shape["heads"],
        context=shape["context"],
    )
    return Task(
        params,
        lambda p, b: charlm.loss(p, *b),
        lambda i: charlm.batches(
            data, shape["batch"], shape["context"], jax.random.fold_in(data_key, i)
        ),
        held_out,
    )


def train(name: str, rates: list[float], task: Task, steps: int) -> list[dict[str, Any]]:
    """The runs of ``getattr(adamx, name)`` at each of ``rates``, ``steps`` updates each,
    side by side under ``vmap`` in one compiled call (the rate a constant schedule, so one
    compilation serves them all). The optimizers of ``ONE_RATE_AT_A_TIME`` run once per
    rate, with the rate a number."""
    if name in ONE_RATE_AT_A_TIME:
        return [run for lr in rates for run in _train(name, [lr], task, steps, schedule=False)]
    return _train(name, rates, task, steps, schedule=True)


def _train(
    name: str, rates: list[float], task: Task, steps: int, *, schedule: bool
) -> list[dict[str, Any]]:
    def run(lr):
        opt = getattr(adamx, name)(learning_rate=(lambda count: lr) if schedule else lr)

        def step(carry, i):
            params, state = carry
            batch = task.batch_of(i)
            value, grads = jax.value_and_grad(task.loss)(params, batch)
            extra = {"obj_fn": lambda p: task.loss(p, batch)} if name == "sophia" else {}
            return adamx.step(opt, grads, state, params, **extra), value

        params = task.params
        (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(steps))
        return losses, task.loss(params, task.held_out)

    if schedule:
        compiled = jax.jit(jax.vmap(run)).lower(jnp.asarray(rates, jnp.float32)).compile()
        args: Any = jnp.asarray(rates, jnp.float32)
    else:
        compiled = jax.jit(lambda: jax.tree.map(lambda a: a[None], run(rates[0]))).lower().compile()
        args = None
    cpu = time.process_time()
    all_losses, held_outs = jax.block_until_ready(compiled(args) if schedule else compiled())
    cpu = (time.process_time() - cpu) / (steps * len(rates))
    tail = max(1, steps // 10)
    runs = []
    for lr, losses, held_out in zip(rates, np.asarray(all_losses, np.float64), held_outs):
        final = float(losses[-tail:].mean())
        finite = bool(np.all(np.isfinite(losses))) and math.isfinite(float(held_out))
        runs.append(
            {
                "lr": lr,
                "losses": losses,
                "final": final if finite else math.inf,
                "held_out": float(held_out),
                "cpu_per_step": cpu,
                "finite": finite,
            }
        )
    return runs


def smoothed(losses: np.ndarray) -> np.ndarray:
    """The trailing mean over ``max(1, len // 10)`` steps (fewer at the start)."""
    window = max(1, len(losses) // 10)
    sums = np.cumsum(np.insert(losses, 0, 0.0))
    ends = np.arange(1, len(losses) + 1)
    starts = np.maximum(0, ends - window)
    return (sums[ends] - sums[starts]) / (ends - starts)


def steps_to(losses: np.ndarray, target: float) -> int | None:
    hit = np.nonzero(smoothed(losses) <= target)[0]
    return int(hit[0]) + 1 if hit.size else None


def sweep(task_name: str, task: Task, steps: int, only: list[str]) -> dict[str, dict]:
    results = {}
    for name in only:
        t0 = time.perf_counter()
        runs = train(name, [base_rate(name) * f for f in FACTORS], task, steps)
        best = min(runs, key=lambda r: r["final"])
        best["tried"] = [(r["lr"], r["final"]) for r in runs]
        results[name] = best
        log(
            f"{task_name:<6} {name:<20} lr {best['lr']:.3g}  train {best['final']:.4f}  "
            f"held-out {best['held_out']:.4f}  {1e3 * best['cpu_per_step']:.2f} ms CPU/step  "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    return results


# --------------------------------------------------------------------------- report


def table(results: dict[str, dict], steps: int) -> tuple[float, list[str]]:
    ref = results.get(REFERENCE) or next(iter(results.values()))
    target = float(smoothed(ref["losses"])[steps // 2 - 1])
    lines = [
        "| optimizer | lr (chosen) | final train loss | held-out loss | steps to target "
        "| CPU ms/step | finals at lr x1/3, x1, x3 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    order = sorted(results, key=lambda n: results[n]["final"])
    for name in order:
        r = results[name]
        hit = steps_to(r["losses"], target)
        tried = ", ".join(f"{f:.4g}" if math.isfinite(f) else "non-finite" for _, f in r["tried"])
        final = f"{r['final']:.4f}" if r["finite"] else "non-finite"
        lines.append(
            f"| {name} | {r['lr']:.3g} | {final} | {r['held_out']:.4f} "
            f"| {hit if hit is not None else 'not reached'} "
            f"| {1e3 * r['cpu_per_step']:.2f} | {tried} |"
        )
    return target, lines


def report(all_results: dict, args, seconds: float, loads, sizes: dict[str, int]) -> str:
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    lines = [
        "## Every optimizer on the demo's MLP and a small char LM, tuned rates (issues 16, 18)",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/convergence.py', *sys.argv[1:]])}`, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{seconds / 60:.1f} minutes; adamx {adamx.__version__} at {commit or 'unknown'}.",
        "",
        *machine(),
        f"- load average (1 min) {loads[0][0]:.2f} before, {loads[1][0]:.2f} after",
        "",
        "Every optimizer is `getattr(adamx, name)(learning_rate=lr)` with its other "
        "hyperparameters at their defaults (Sophia with `obj_fn` the step's batch loss), "
        "trained from the same initial parameters on the same data in the same order. "
        "*lr*: the best of `base * (1/3, 1, 3)`, `base` the demo's "
        f"`DEFAULT_LEARNING_RATES[name]` (Sophia: {SOPHIA_BASE:g}), by the lowest final "
        "training loss. *final train loss*: the mean training loss over the last 10% of the "
        "steps; *held-out loss*: at the final parameters (for the schedule-free optimizers "
        "the parameters the gradients are taken at, not the average `x` of "
        "`schedule_free_eval_params`); *steps to target*: the first "
        "step at which the loss, a trailing mean over 10% of the steps, is at or below the "
        f"target, {REFERENCE}'s (at its chosen rate) at half the steps; *CPU ms/step*: the "
        "process CPU time (all threads, compilation excluded) of the call that trained the "
        "three rates side by side under `vmap`, over three times its steps (rprop, soap, "
        "galore: of the chosen rate's own call); the 2-core machine is shared with other "
        "jobs, so wall time is not reported, and CPU time is noisy too (compare large "
        "ratios only). Rows sorted by final training loss. One initialisation and one data "
        "order: small differences are within the noise of a seed.",
    ]
    for task_name, results in all_results.items():
        steps = sizes[task_name]
        target, rows = table(results, steps)
        if task_name == "mlp":
            head = f"### mlp: the demo's MLP on the digits, {steps} full-batch steps"
        else:
            shape = ", ".join(f"{k} {v}" for k, v in CHARLM_SHAPE.items())
            head = f"### charlm: {shape}, {steps} steps"
        lines += ["", head, "", f"Target loss {target:.4f}.", "", *rows]
    if args.quick:
        lines += ["", "These are `--quick` sizes (a smoke run)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps: a smoke run")
    parser.add_argument("--tasks", default="mlp,charlm", help="comma-separated subset")
    parser.add_argument("--only", default="", help="comma-separated optimizers (default: all)")
    parser.add_argument("--out", type=Path, default=HERE / "CONVERGENCE_OPTIMIZERS.md")
    args = parser.parse_args(argv)
    sizes = SIZES["quick" if args.quick else "full"]
    only = args.only.split(",") if args.only else names()
    before = load_average()
    makers = {"mlp": mlp_task, "charlm": charlm_task}
    all_results = {
        t: sweep(t, makers[t](), sizes[t], only) for t in args.tasks.split(",") if t in makers
    }
    markdown = report(
        all_results, args, time.perf_counter() - START, (before, load_average()), sizes
    )
    args.out.write_text(markdown)
    print(markdown)
    log(f"report written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
