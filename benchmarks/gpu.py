"""GPU benchmark: adamx's XLA path vs optax vs torch's fused Adam vs the copy bandwidth.

One short run on a CUDA device (at most ``--budget`` seconds, default 300, start to finish)::

    python benchmarks/gpu.py [--out benchmarks/GPU.md] [--budget 300]
    python benchmarks/gpu.py --smoke          # tiny sizes, on the GPU if any, else the CPU

Without a CUDA device for JAX (and without ``--smoke``) it says so and exits (status 0)
having measured and written nothing. ``--smoke`` runs every contender at tiny sizes in a few
seconds, on the GPU if JAX and torch see one and on the CPU otherwise: a check of the
script end to end (tests/test_gpu_benchmark.py runs it on the CPU), not a measurement.

Adam steps of float32 parameters on three trees: 1e8 and 1e9 parameters in 8 leaves, and
1,000 leaves of 1e5 (1e8 in all). Contenders, each step ``jax.jit``-ed with params and
state donated (gradients are inputs):

* ``adamx f32``: ``adamx.step`` of ``adamx.adam`` with ``fused=False``, the XLA path (on a
  GPU ``adamx.step`` is always the XLA path: the fused kernels are CPU-only);
* ``optax f32``: ``optax.adam``, ``update`` + ``optax.apply_updates``;
* ``adamx bf16+SR``: ``adamx.with_storage(adamx.adam(...), mu="bfloat16_sr",
  nu="bfloat16_sr")``; ``adamx 8bit``: the same with ``mu="8bit", nu="8bit"``;
* ``torch fused``: ``torch.optim.Adam(..., fused=True)`` on the same sizes, ``.grad`` set
  (left out when torch, or for a full run torch's CUDA, is missing);
* the copy-bandwidth probe: a jitted ``x + 1`` over a large float32 array (one read, one
  write per element) and, with torch, ``dst.copy_(src)``; the best of them is the copy
  bandwidth.

A step's time is the median over a few batches of back-to-back steps, each batch timed
until the device is done, divided by its length; compile time (JAX) is lower + compile.
*eff. GB/s* is parameters x the bytes an ideal single pass moves (float32 Adam 28: read p,
g, m, v, write p, m, v; bf16 moments 20; 8-bit moments 16.06 with the block scales) over
the median step, and *% of copy BW* that over the probe's bandwidth. Targets: float32 Adam
on 1e9 parameters at >= 85% of the copy bandwidth; 8-bit state no slower than float32.

torch and JAX run in separate processes, one after the other (torch first, with at most a
quarter of the budget), so neither holds device memory the other needs; each prints its
results as it goes, and the run stops each at the budget, reporting what was measured and
which cases were cut; a contender that fails (out of memory, say) is reported as such and
the others go on. Prints the markdown table and writes it to ``--out`` (default
``benchmarks/GPU.md``; with ``--smoke`` a temporary file), with the JSON beside it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LR, B1, B2, EPS = 1e-3, 0.9, 0.999, 1e-8
# Bytes one ideal pass moves per parameter: p read+written, g read, and each moment
# read+written in its stored form (8-bit: a byte, plus a float32 scale per 256 elements).
BYTES = {"f32": 28.0, "bf16+SR": 20.0, "8bit": 12.0 + 4 * (1 + 4 / 256)}
CASES = {  # name: (leaves, elements per leaf)
    "full": [("1e9 params, 8 leaves", 8, 125_000_000), ("1e8 params, 8 leaves", 8, 12_500_000),
             ("1e8 params, 1,000 leaves", 1000, 100_000)],
    # >= 4,096 elements a leaf: 8-bit storage leaves smaller ones in float32 (its min_size)
    "smoke": [("smoke: 2 leaves of 16,384", 2, 16_384), ("smoke: 6 leaves of 4,096", 6, 4096)],
}  # fmt: skip
PROBE_ELEMENTS = {"full": 250_000_000, "smoke": 1 << 20}
JAX_CONTENDERS = [("adamx", "f32"), ("optax", "f32"), ("adamx", "8bit"), ("adamx", "bf16+SR")]
TARGET_BW = 0.85  # of the copy bandwidth, float32 Adam on the first (largest) case


def emit(**fields) -> None:
    print("@@ " + json.dumps(fields), flush=True)


def batches(step, state, reps: int, deadline: float, batch_s: float = 0.2):
    """``(median, min, steps)``: seconds per step over ``reps`` batches of back-to-back
    calls of ``step(state) -> state`` (each batch ~``batch_s``, timed until
    ``sync(state)``), and how many steps ran."""
    run, sync = step
    state = run(state)  # warm-up (after the first call)
    sync(state)
    t0 = time.perf_counter()
    state = run(state)
    sync(state)
    one = max(time.perf_counter() - t0, 1e-6)
    k = max(1, min(50, round(batch_s / one)))
    times = []
    for _ in range(reps):
        if times and time.perf_counter() > deadline:
            break
        t0 = time.perf_counter()
        for _ in range(k):
            state = run(state)
        sync(state)
        times.append((time.perf_counter() - t0) / k)
    return statistics.median(times), min(times), k * len(times) + 2


# ------------------------------------------------------------------------------- JAX


def jax_worker(plan: dict) -> None:
    import jax
    import jax.numpy as jnp
    import optax

    import adamx

    deadline = plan["deadline"]
    device = jax.devices()[0]
    emit(kind="device", framework="jax", platform=device.platform, name=device.device_kind,
         jax=jax.__version__)  # fmt: skip
    if not plan["smoke"] and device.platform != "gpu":
        emit(kind="error", message=f"no CUDA device for JAX (default device: {device})")
        return

    def sync(tree):
        jax.block_until_ready(tree)

    # the copy-bandwidth probe: one read and one write of a float32 array
    n = plan["probe_elements"]
    x = jnp.ones([n], jnp.float32)
    plus_one = jax.jit(lambda x: x + jnp.float32(1))
    median, best, _ = batches((plus_one, sync), x, plan["reps"], deadline, plan["batch_s"])
    emit(kind="probe", name="jax x + 1", bytes=8 * n, median_s=median, min_s=best)
    del x

    def optimizer(who: str, state: str):
        if who == "optax":
            return optax.adam(LR, b1=B1, b2=B2, eps=EPS)
        opt = adamx.adam(LR, b1=B1, b2=B2, eps=EPS, fused=False)
        if state == "bf16+SR":
            return adamx.with_storage(opt, mu="bfloat16_sr", nu="bfloat16_sr")
        if state == "8bit":
            return adamx.with_storage(opt, mu="8bit", nu="8bit")
        return opt

    def step_of(who, opt):
        if who == "optax":

            def step(p, s, g):
                updates, s = opt.update(g, s, p)
                return optax.apply_updates(p, updates), s
        else:

            def step(p, s, g):
                return adamx.step(opt, g, s, p)

        return jax.jit(step, donate_argnums=(0, 1))

    for name, leaves, size in plan["cases"]:
        keys = jax.random.split(jax.random.key(0), 2 * leaves)
        make = jax.jit(lambda k, n=size: jax.random.normal(k, [n], jnp.float32))
        params = [make(keys[i]) for i in range(leaves)]
        grads = [make(keys[leaves + i]) * jnp.float32(1e-2) for i in range(leaves)]
        sync((params, grads))
        for who, state in JAX_CONTENDERS:
            row = dict(kind="result", case=name, leaves=leaves, params=leaves * size,
                       contender=f"{who} {state}", state=state)  # fmt: skip
            if time.perf_counter() > deadline - plan["reserve"]:
                emit(**row, status="skipped: time budget")
                continue
            try:
                opt = optimizer(who, state)
                p = [jnp.copy(x) for x in params]
                s = jax.jit(opt.init)(p)
                t0 = time.perf_counter()
                lowered = step_of(who, opt).lower(p, s, grads)
                t1 = time.perf_counter()
                compiled = lowered.compile()
                t2 = time.perf_counter()
                run = lambda ps, c=compiled, g=grads: c(*ps, g)  # noqa: E731
                median, best, steps = batches(
                    (run, sync), (p, s), plan["reps"], deadline, plan["batch_s"]
                )
            except Exception as error:  # noqa: BLE001 - out of memory, say: the next one
                emit(**row, status=f"failed: {type(error).__name__}: {str(error)[:300]}")
            else:
                emit(**row, status="ok", lower_s=t1 - t0, compile_s=t2 - t1, median_s=median,
                     min_s=best, steps=steps)  # fmt: skip
            p = s = compiled = lowered = run = None  # free the device memory
        del params, grads


# ----------------------------------------------------------------------------- torch


def torch_worker(plan: dict) -> None:
    try:
        import torch
    except ImportError:
        emit(kind="error", message="torch is not installed: no torch column")
        return
    cuda = torch.cuda.is_available()
    if not cuda and not plan["smoke"]:
        emit(kind="error", message=f"torch {torch.__version__} has no CUDA device: no torch column")
        return
    dev = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    emit(kind="device", framework="torch", platform=dev.type, name=name, torch=torch.__version__)
    deadline = plan["deadline"]

    def sync(_):
        if cuda:
            torch.cuda.synchronize()

    torch_probe(torch, dev, plan["probe_elements"], sync, plan["reps"], deadline, plan["batch_s"])

    for case, leaves, size in plan["cases"]:
        row = dict(kind="result", case=case, leaves=leaves, params=leaves * size,
                   contender="torch fused f32", state="f32")  # fmt: skip
        if time.perf_counter() > deadline - plan["reserve"]:
            emit(**row, status="skipped: time budget")
            continue
        params = opt = None
        try:
            gen = torch.Generator(device=dev).manual_seed(0)
            params = [torch.randn(size, device=dev, generator=gen) for _ in range(leaves)]
            for p in params:
                p.grad = torch.randn(size, device=dev, generator=gen) * 1e-2
            # fused=True: CUDA, or the CPU from torch 2.4 (older: ValueError/RuntimeError)
            opt = torch.optim.Adam(params, lr=LR, betas=(B1, B2), eps=EPS, fused=True)

            def step(state, opt=opt):
                opt.step()
                return state

            median, best, steps = batches((step, sync), None, plan["reps"], deadline,
                                          plan["batch_s"])  # fmt: skip
        except Exception as error:  # noqa: BLE001 - out of memory, say: the next case
            emit(**row, status=f"failed: {type(error).__name__}: {str(error)[:300]}")
        else:
            emit(**row, status="ok", median_s=median, min_s=best, steps=steps)
        params = opt = None
        if cuda:
            torch.cuda.empty_cache()


def torch_probe(torch, dev, n: int, sync, reps: int, deadline: float, batch_s: float) -> None:
    """``dst.copy_(src)`` of ``n`` float32 elements (a device-to-device memcpy on CUDA)."""
    src, dst = torch.ones(n, device=dev), torch.empty(n, device=dev)

    def copy(state):
        dst.copy_(src)
        return state

    median, best, _ = batches((copy, sync), None, reps, deadline, batch_s)
    emit(kind="probe", name="torch copy_", bytes=8 * n, median_s=median, min_s=best)


# -------------------------------------------------------------------- orchestration


def run_worker(which: str, plan: dict, until: float) -> tuple[list[dict], str]:
    """Run a worker process until ``until`` (then kill it); its records and any note."""
    env = dict(os.environ)
    if which == "jax":
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # only what it needs
    plan = {**plan, "deadline": None}
    command = [sys.executable, __file__, "--worker", which, "--plan", json.dumps(plan)]
    records, note = [], ""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.PIPE, text=True, env=env)
        try:
            _, err = proc.communicate(timeout=max(1.0, until - time.perf_counter()))
            if proc.returncode != 0:
                note = f"{which} worker failed (exit {proc.returncode}): " + err.strip()[-800:]
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            note = f"{which} worker stopped at the time budget"
        out.seek(0)
        records = [json.loads(ln[3:]) for ln in out if ln.startswith("@@ ")]
    return records, note


def fmt(x, spec: str) -> str:
    return "" if x is None else format(x, spec)


def report(args, plan, records, notes, wall) -> dict:
    notes = notes + [r["message"] for r in records if r["kind"] == "error"]
    probes = [r for r in records if r["kind"] == "probe"]
    copy_bw = max((r["bytes"] / r["min_s"] for r in probes), default=None)
    results = [r for r in records if r["kind"] == "result"]
    for r in results:
        if r.get("status") == "ok":
            r["eff_gbs"] = r["params"] * BYTES[r["state"]] / r["median_s"] / 1e9
            r["pct_copy_bw"] = r["eff_gbs"] * 1e9 / copy_bw if copy_bw else None
    ran = {(r["case"], r["contender"]) for r in results}
    for case, leaves, size in plan["cases"]:
        for contender in [f"{w} {s}" for w, s in JAX_CONTENDERS] + ["torch fused f32"]:
            if (case, contender) not in ran:
                results.append(dict(kind="result", case=case, leaves=leaves,
                                    params=leaves * size, contender=contender,
                                    status="not run"))  # fmt: skip
    by = {(r["case"], r["contender"]): r for r in results}
    targets = []
    case = plan["cases"][0][0]  # the targets read the largest case (1e9 params)
    f32 = by.get((case, "adamx f32"), {})
    q8 = by.get((case, "adamx 8bit"), {})
    if f32.get("status") == "ok" and f32.get("pct_copy_bw") is not None:
        got = f32["pct_copy_bw"]
        targets.append(dict(target=f"adamx f32 on {case} >= {TARGET_BW:.0%} of copy BW",
                            measured=f"{got:.0%}", met=got >= TARGET_BW))  # fmt: skip
    if f32.get("status") == "ok" and q8.get("status") == "ok":
        ratio = q8["median_s"] / f32["median_s"]
        targets.append(dict(target=f"adamx 8bit step <= adamx f32 step on {case}",
                            measured=f"{ratio:.2f}x", met=ratio <= 1.0))  # fmt: skip

    devices = [r for r in records if r["kind"] == "device"]
    names = sorted({f"{d['name']} ({d['platform']})" for d in devices})
    lines = [
        f"## adamx on {', '.join(names)}"
        + (" (smoke run: tiny sizes, not a measurement)" if args.smoke else ""),
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- command: `python {' '.join(sys.argv)}`; wall time {wall:.0f} s of a "
        f"{args.budget:.0f} s budget",
        "- "
        + ", ".join(
            f"{k} {v}" for d in devices for k, v in d.items() if k in ("jax", "torch")
        ),  # fmt: skip
        "- copy bandwidth: "
        + (f"{copy_bw / 1e9:.0f} GB/s (best of: " if copy_bw else "not measured (")
        + ", ".join(f"{p['name']} {p['bytes'] / p['min_s'] / 1e9:.0f} GB/s" for p in probes)
        + ")",
        *[f"- note: {n}" for n in notes],
        "",
        "| case | contender | state B/param | median ms | min ms | eff. GB/s | % of copy BW "
        "| compile s | status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    order = [f"{w} {s}" for w, s in JAX_CONTENDERS] + ["torch fused f32"]
    for case, _, _ in plan["cases"]:
        for contender in order:
            r = by[(case, contender)]
            ok = r.get("status") == "ok"
            state = contender.split()[-1]
            pct = r.get("pct_copy_bw")
            cells = [
                case, contender, f"{BYTES[state]:.2f}",
                f"{r['median_s'] * 1e3:.2f}" if ok else "",
                f"{r['min_s'] * 1e3:.2f}" if ok else "",
                fmt(r.get("eff_gbs"), ".0f"),
                "" if pct is None else f"{100 * pct:.0f}",
                fmt(r.get("compile_s"), ".2f"), str(r.get("status")),
            ]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    if targets and not args.smoke:  # tiny sizes say nothing of the targets
        lines += ["", "| target | measured | verdict |", "| --- | --- | --- |"]
        lines += [f"| {t['target']} | {t['measured']} | {'met' if t['met'] else '**not met**'} |"
                  for t in targets]  # fmt: skip
    table = "\n".join(lines)
    print(table)
    return dict(
        command=sys.argv, smoke=args.smoke, budget_s=args.budget, wall_s=wall,
        devices=devices, probes=probes, copy_bw_bytes_per_s=copy_bw, results=results,
        targets=targets, notes=notes, bytes_per_param=BYTES, markdown=table,
    )  # fmt: skip


CHECK_DEVICE = "import jax; d = jax.devices()[0]; print(d.platform, '|', d)"


def jax_device() -> tuple[str, str]:
    """JAX's default platform (``gpu`` for CUDA) and device, asked in a process of its own
    (this one never holds device memory); ``("", why)`` when JAX cannot say."""
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    done = subprocess.run([sys.executable, "-c", CHECK_DEVICE], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip
    if done.returncode != 0:
        return "", (done.stderr.strip().splitlines() or ["no output"])[-1]
    platform_, _, device = done.stdout.strip().rpartition("\n")[2].partition(" | ")
    return platform_, device


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    smoke = "tiny sizes, on the GPU if any, else the CPU: a check of the script in seconds"
    parser.add_argument("--smoke", action="store_true", help=smoke)
    parser.add_argument("--budget", type=float, help="seconds for the whole run (300; smoke 60)")
    parser.add_argument("--out", type=Path, help="the markdown table (default benchmarks/GPU.md)")
    parser.add_argument("--json", type=Path, help="the results as JSON (default: --out's .json)")
    parser.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        plan = json.loads(args.plan)
        plan["deadline"] = time.perf_counter() + plan["seconds"]
        (jax_worker if args.worker == "jax" else torch_worker)(plan)
        return 0

    start = time.perf_counter()
    if not args.smoke:
        platform_, device = jax_device()
        if platform_ != "gpu":
            print(
                f"benchmarks/gpu.py: no CUDA device for JAX ({device or 'no device'}"
                f"{'' if not platform_ else ', platform ' + platform_}): nothing measured, "
                "nothing written. Run it on a machine with an NVIDIA GPU and JAX's CUDA "
                "plugin (pip install -U 'jax[cuda12]'); `--smoke` checks the script on the "
                "CPU at tiny sizes.",
                file=sys.stderr,
            )
            return 0
    args.budget = args.budget or (60.0 if args.smoke else 300.0)
    size = "smoke" if args.smoke else "full"
    plan = dict(smoke=args.smoke, cases=CASES[size], probe_elements=PROBE_ELEMENTS[size],
                reps=2 if args.smoke else 5, batch_s=0.005 if args.smoke else 0.2,
                reserve=5.0 if args.smoke else 20.0)  # fmt: skip
    end = start + args.budget - 5.0  # leave time for the report
    notes: list[str] = []
    torch_until = min(end, time.perf_counter() + args.budget / 4)
    records, note = run_worker("torch", {**plan, "seconds": torch_until - time.perf_counter()},
                               torch_until)  # fmt: skip
    notes += [note] if note else []
    more, note = run_worker("jax", {**plan, "seconds": end - time.perf_counter()}, end)
    notes += [note] if note else []
    records += more
    out = report(args, plan, records, notes, time.perf_counter() - start)
    md = args.out or (
        Path(tempfile.gettempdir()) / "adamx_gpu_smoke.md" if args.smoke else HERE / "GPU.md"
    )
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(out["markdown"] + "\n")
    path = args.json or md.with_suffix(".json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {md} and {path}", file=sys.stderr)
    measured = any(r["kind"] == "result" and r.get("status") == "ok" for r in records)
    return 0 if measured else 1


if __name__ == "__main__":
    sys.exit(main())
