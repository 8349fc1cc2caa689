"""Every optimizer of ``adamx.OPTIMIZERS`` (and Sophia, and the Cautious forms of AdamW
and Lion) on two small tasks, each at a learning rate from the same sweep:
``python benchmarks/convergence.py --optimizers``.

The tasks, the same data, order and initial parameters for every optimizer and rate:

* **mlp**: the demo's two-layer MLP (64-64-10, tanh, mean squared error on one-hot
  targets) on the bundled UCI digits, full batch; held out: the demo's 20% test split.
* **charlm**: :mod:`adamx.demo.charlm`'s transformer, small (1 block, d_model 64,
  context 32, batches of 8) on the standard library's help texts; step ``i`` trains on
  ``charlm.batches(..., fold_in(data_key, i))``; held out: 64 windows from the last 10%.

The sweep: for each optimizer the five rates ``base * (1/10, 1/3, 1, 3, 10)``, ``base``
the demo's ``DEFAULT_LEARNING_RATES[name]`` (Sophia, not in the demo: 3e-3, see
``SOPHIA_BASE``; ``cautious_adamw`` and ``cautious_lion``, ``adamx.cautious`` of
``adamw`` and ``lion`` at their defaults, the rate of the optimizer they wrap); the rate
kept is the one with the lowest final training loss (the mean over the last 10% of the
steps; non-finite runs are never kept). A rate kept at either end of the grid is marked:
the best rate may lie beyond it. Each (optimizer, rate, task) run is one jitted
function, all the steps in one ``lax.scan``, the evaluation after it.

Reported per optimizer and task: the chosen rate, the final training loss, the held-out
loss at the final parameters, the steps to a target loss (the smoothed loss, a trailing
mean over 10% of the steps, first at or below AdamW's smoothed loss at half the steps,
AdamW at its own chosen rate), and the process CPU time per step (``time.process_time``,
all threads, compilation excluded, of the call that ran the five rates side by side, over
five times its steps): the machine is shared, so wall time says little.
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
FACTORS = (1 / 10, 1 / 3, 1.0, 3.0, 10.0)
FACTOR_NAMES = ("x1/10", "x1/3", "x1", "x3", "x10")
INNER = slice(1, 4)
"""The factors of the earlier 3-point grid (``1/3, 1, 3``), a subset of ``FACTORS``: the
report also says how often the rate kept from those three alone sat at their grid's end."""
WRAPPED = {"cautious_adamw": "adamw", "cautious_lion": "lion"}
"""Rows that are ``adamx.cautious`` of a registered optimizer (``adamx.cautious`` is a
wrapper, not in ``adamx.OPTIMIZERS``), swept around the wrapped optimizer's demo rate."""
REFERENCE = "adamw"
SIZES = {
    "full": {"mlp": 300, "charlm": 150},
    "quick": {"mlp": 40, "charlm": 20},
}
CHARLM_SHAPE = {"d_model": 64, "layers": 1, "heads": 4, "context": 32, "batch": 8}
EVAL_WINDOWS = 64
ONE_RATE_AT_A_TIME = ("rprop", "soap", "galore")
"""Run once per rate, not under ``vmap``: Rprop's rate is an initial step size and takes no
schedule; SOAP's and GaLore's matrix decompositions are slow batched on CPU. The rate is
an argument of their one compiled function, so one compilation serves the five rates."""

START = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f} s] {message}", file=sys.stderr, flush=True)


def names() -> list[str]:
    return [*adamx.OPTIMIZERS, "sophia", *WRAPPED]


def base_rate(name: str) -> float:
    if name == "sophia":
        return SOPHIA_BASE
    return demo.DEFAULT_LEARNING_RATES[WRAPPED.get(name, name)]


def make(name: str, learning_rate) -> Any:
    """The optimizer of row ``name`` at ``learning_rate``, its other options at defaults."""
    if name in WRAPPED:
        return adamx.cautious(getattr(adamx, WRAPPED[name])(learning_rate=learning_rate))
    return getattr(adamx, name)(learning_rate=learning_rate)


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
    """The runs of ``make(name, lr)`` at each of ``rates``, ``steps`` updates each, side by
    side under ``vmap`` in one compiled call (the rate a constant schedule, so one
    compilation serves them all). The optimizers of ``ONE_RATE_AT_A_TIME`` run once per
    rate, the rate a scalar argument of one compiled function."""
    if name in ONE_RATE_AT_A_TIME:
        return _train(name, rates, task, steps, schedule=False)
    return _train(name, rates, task, steps, schedule=True)


def _train(
    name: str, rates: list[float], task: Task, steps: int, *, schedule: bool
) -> list[dict[str, Any]]:
    def run(lr):
        opt = make(name, (lambda count: lr) if schedule else lr)

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
        cpu = time.process_time()
        all_losses, held_outs = jax.block_until_ready(compiled(jnp.asarray(rates, jnp.float32)))
        cpus = [(time.process_time() - cpu) / (steps * len(rates))] * len(rates)
    else:
        compiled = jax.jit(run).lower(jnp.float32(rates[0])).compile()
        outs, cpus = [], []
        for lr in rates:
            cpu = time.process_time()
            outs.append(jax.block_until_ready(compiled(jnp.float32(lr))))
            cpus.append((time.process_time() - cpu) / steps)
        all_losses = np.stack([np.asarray(o[0]) for o in outs])
        held_outs = [o[1] for o in outs]
    tail = max(1, steps // 10)
    runs = []
    for lr, losses, held_out, cpu in zip(
        rates, np.asarray(all_losses, np.float64), held_outs, cpus
    ):
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


def grid_end(finals: list[float]) -> str | None:
    """``"low"`` or ``"high"`` where the lowest of ``finals`` (in rate order) is the first
    or the last rate's, else None (also when every run is non-finite)."""
    if not any(math.isfinite(f) for f in finals):
        return None
    i = int(np.argmin(finals))
    return "low" if i == 0 else "high" if i == len(finals) - 1 else None


def steps_to(losses: np.ndarray, target: float) -> int | None:
    hit = np.nonzero(smoothed(losses) <= target)[0]
    return int(hit[0]) + 1 if hit.size else None


def sweep(task_name: str, task: Task, steps: int, only: list[str]) -> dict[str, dict]:
    results = {}
    for name in only:
        t0 = time.perf_counter()
        runs = train(name, [base_rate(name) * f for f in FACTORS], task, steps)
        finals = [r["final"] for r in runs]
        best = runs[int(np.argmin(finals))]
        best["tried"] = [(r["lr"], r["final"]) for r in runs]
        best["edge"] = grid_end(finals)
        best["inner_edge"] = grid_end(finals[INNER])
        results[name] = best
        log(
            f"{task_name:<6} {name:<20} lr {best['lr']:.3g}{best['edge'] or ''}  "
            f"train {best['final']:.4f}  "
            f"held-out {best['held_out']:.4f}  {1e3 * best['cpu_per_step']:.2f} ms CPU/step  "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    return results


# --------------------------------------------------------------------------- report


def table(results: dict[str, dict], steps: int) -> tuple[float, list[str]]:
    ref = results.get(REFERENCE) or next(iter(results.values()))
    target = float(smoothed(ref["losses"])[steps // 2 - 1])
    lines = [
        "| optimizer | lr (chosen) | grid end | final train loss | held-out loss "
        f"| steps to target | CPU ms/step | finals at lr {', '.join(FACTOR_NAMES)} |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    order = sorted(results, key=lambda n: results[n]["final"])
    for name in order:
        r = results[name]
        hit = steps_to(r["losses"], target)
        tried = ", ".join(f"{f:.4g}" if math.isfinite(f) else "non-finite" for _, f in r["tried"])
        final = f"{r['final']:.4f}" if r["finite"] else "non-finite"
        lines.append(
            f"| {name} | {r['lr']:.3g} | {r['edge'] or ''} | {final} | {r['held_out']:.4f} "
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
        "hyperparameters at their defaults (Sophia with `obj_fn` the step's batch loss; "
        "`cautious_adamw` and `cautious_lion` are `adamx.cautious(adamx.adamw(learning_rate="
        "lr))` and the same of `adamx.lion`), "
        "trained from the same initial parameters on the same data in the same order. "
        "*lr*: the best of `base * (1/10, 1/3, 1, 3, 10)`, `base` the demo's "
        f"`DEFAULT_LEARNING_RATES[name]` (Sophia: {SOPHIA_BASE:g}; the Cautious rows: the "
        "wrapped optimizer's), by the lowest final training loss. *grid end*: `low` or "
        "`high` where that rate is the grid's smallest or largest, so the best rate may lie "
        "beyond the grid. *final train loss*: the mean training loss over the last 10% of the "
        "steps; *held-out loss*: at the final parameters (for the schedule-free optimizers "
        "the parameters the gradients are taken at, not the average `x` of "
        "`schedule_free_eval_params`); *steps to target*: the first "
        "step at which the loss, a trailing mean over 10% of the steps, is at or below the "
        f"target, {REFERENCE}'s (at its chosen rate) at half the steps; *CPU ms/step*: the "
        "process CPU time (all threads, compilation excluded) of the call that trained the "
        f"{len(FACTORS)} rates side by side under `vmap`, over {len(FACTORS)} times its steps "
        "(rprop, soap, galore: of the chosen rate's own call); the 2-core machine is shared "
        "with other "
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
        n = len(results)
        edges = [name for name, r in results.items() if r["edge"]]
        inner = sum(1 for r in results.values() if r["inner_edge"])
        lines += [
            "",
            head,
            "",
            f"Target loss {target:.4f}. Chosen rate at an end of the {len(FACTORS)}-point grid: "
            f"{len(edges)} of {n} ({', '.join(edges) or 'none'}); had the sweep been the inner "
            f"three rates (x1/3, x1, x3) alone, its choice would have sat at their grid's end "
            f"for {inner} of {n}.",
            "",
            *rows,
        ]
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
