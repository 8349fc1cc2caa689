"""Benchmark the optimizer step: adamx vs optax vs torch.optim vs the roofline probe.

One command measures everything in one run and writes ``benchmarks/RESULTS.md``::

    python benchmarks/run.py [--quick] [--workloads a,b,c,d,e,f] [--out benchmarks/RESULTS.md]

The contenders: ``adamx`` (``adamx.step``: the fused CPU kernel for Adam/AdamW, Lion and SGD
with momentum), ``adamx xla`` (the same adamx optimizer through XLA, ``fused=False``),
``optax``, ``torch fused`` and ``torch foreach``. Each contender of a case runs in its own
process (``worker.py``, under ``/usr/bin/time -v`` for its peak RSS). The processes are
started one after the other (so compile times are not disturbed), then visited in turn:
every round each contender times a few steps while the others wait, and the order rotates
from round to round, so machine noise hits all alike. In some rounds the JAX contenders also
time their step run ``loop_steps`` times inside one jitted ``fori_loop`` (no Python dispatch
between steps) and a jitted no-op on the same trees (the dispatch floor). The roofline probe
(``../shared/tools/roofline.c``, compiled here in the same run) takes a turn in some rounds
with the same parameter count. See README.md for how to read the tables.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import workloads

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PROBE_SOURCE = REPO.parent / "shared" / "tools" / "roofline.c"
PROBE_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]
TIME = "/usr/bin/time"
MB = 1e6
# A contender whose median step is this much above its fastest was disturbed by other load.
SPREAD_LIMIT = 1.5


START = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f} s] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the probe


def build_probe(workdir: Path) -> tuple[Path, float]:
    """Compile the roofline probe; return the binary and the compile seconds."""
    if not PROBE_SOURCE.is_file():
        sys.exit(
            f"error: the roofline probe is missing: expected {PROBE_SOURCE} (that is "
            "../shared/tools/roofline.c from the repository root). Check out the shared "
            "tools next to the repository, then run again."
        )
    if shutil.which("gcc") is None:
        sys.exit("error: `gcc` is not on PATH; it is needed to compile the roofline probe.")
    binary = workdir / "roofline"
    t0 = time.perf_counter()
    cmd = ["gcc", *PROBE_FLAGS, str(PROBE_SOURCE), "-o", str(binary), "-lm"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: compiling the probe failed: {shlex.join(cmd)}\n{done.stderr}")
    return binary, time.perf_counter() - t0


def run_probe(binary: Path, n_params: int, threads: int | None = None) -> dict:
    """One run of the probe: its best fused-Adam step time and bandwidth (28 B/param)."""
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run([str(binary), str(n_params)], capture_output=True, text=True, env=env)
    found = re.search(r"best ([\d.]+) ms -> ([\d.]+) GB/s .*\((\d+) threads\)", done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"the probe failed: {done.stdout}{done.stderr}")
    return {
        "seconds": float(found[1]) / 1e3,
        "gbps": float(found[2]),
        "threads": int(found[3]),
    }


# ------------------------------------------------------------------------- the workers


class Worker:
    """A contender in its own process, driven over stdin/stdout (see worker.py)."""

    def __init__(self, spec: dict, workdir: Path):
        self.spec = spec
        tag = re.sub(r"\W+", "_", f"{spec['workload']}_{spec['optimizer']}_{spec['contender']}")
        self.time_file = workdir / f"{tag}.time"
        self.err_file = workdir / f"{tag}.stderr"
        cmd = [sys.executable, str(HERE / "worker.py"), json.dumps(spec)]
        if os.access(TIME, os.X_OK):
            cmd = [TIME, "-v", "-o", str(self.time_file)] + cmd
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
        )
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with open(self.err_file, "w") as err:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                bufsize=1,
                env=env,
                cwd=HERE,
            )
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.loop_times: list[float] = []
        self.floor_times: list[float] = []
        self.ready = self.read()

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("@@ "):
                return json.loads(line[3:])
        self.proc.wait()
        tail = self.err_file.read_text()[-3000:]
        raise RuntimeError(f"worker {self.spec} exited ({self.proc.returncode}):\n{tail}")

    def send(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def run(self, steps: int) -> None:
        found = self.send(f"run {steps}")
        self.times += found["times"]
        self.cpu_times += found["cpu_times"]

    def run_loop(self, calls: int, floor_calls: int) -> None:
        """Time ``calls`` calls of the in-loop steps and ``floor_calls`` of the no-op."""
        found = self.send(f"loop {calls} {floor_calls}")
        self.loop_times += found["loop_times"]
        self.floor_times += found["floor_times"]

    def finish(self) -> dict:
        result = dict(
            self.ready,
            **self.send("quit"),
            times=self.times,
            cpu_times=self.cpu_times,
            loop_times=self.loop_times,
            floor_times=self.floor_times,
        )
        self.proc.stdin.close()
        self.proc.wait()
        result["max_rss_kb"] = None
        if self.time_file.exists():
            found = re.search(
                r"Maximum resident set size \(kbytes\): (\d+)", self.time_file.read_text()
            )
            result["max_rss_kb"] = int(found[1]) if found else None
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def measure_case(workload, optimizer, contenders, probe, cfg, workdir) -> dict:
    """Start the contenders one by one, then interleave their timed steps with the probe."""
    n_leaves, n_params = workloads.count_params(workload, cfg["quick"])
    results, workers = {}, {}
    try:
        for name in contenders:
            spec = dict(
                contender=name,
                workload=workload,
                optimizer=optimizer,
                quick=cfg["quick"],
                warmup=cfg["warmup"],
                loop_steps=cfg["loop_steps"],
            )
            log(f"  start {name}")
            try:
                workers[name] = Worker(spec, workdir)
            except RuntimeError as error:
                log(f"  {name} failed: {error}")
                results[name] = {"error": str(error).splitlines()[-1]}
        load_start = load_average()[0]
        probes, probes_1t = [], []
        rounds = cfg["rounds"]
        probe_rounds, loop_rounds = (
            {round(i * (rounds - 1) / max(runs - 1, 1)) for i in range(runs)}
            for runs in (cfg["probe_runs"], min(cfg["loop_runs"], rounds))
        )
        log(
            f"  {rounds} rounds of {cfg['steps_per_visit']} step(s) each; in {len(loop_rounds)} "
            f"of them also {cfg['loop_steps']} steps in one loop and {cfg['floor_calls']} no-ops"
        )
        for r in range(rounds):
            names = list(workers)
            names = names[r % len(names) :] + names[: r % len(names)] if names else []
            if r in probe_rounds:
                names.insert(r % (len(names) + 1), "probe")
            for name in names:
                if name == "probe":
                    probes.append(run_probe(probe, n_params))
                else:
                    workers[name].run(cfg["steps_per_visit"])
                    if r in loop_rounds and name in workloads.JAX_CONTENDERS:
                        workers[name].run_loop(1, cfg["floor_calls"])
            if cfg["probe_one_thread"] and r == rounds // 2:
                probes_1t.append(run_probe(probe, n_params, threads=1))
        for name, worker in workers.items():
            results[name] = worker.finish()
    finally:
        for worker in workers.values():
            worker.kill()
    return {
        "workload": workload,
        "optimizer": optimizer,
        "n_leaves": n_leaves,
        "n_params": n_params,
        "bytes_per_param": workloads.BYTES_PER_PARAM[optimizer],
        "contenders": results,
        "probe": probes,
        "probe_1t": probes_1t,
        "load": f"{load_start:.2f}, {load_average()[0]:.2f}",
    }


# ------------------------------------------------------------------------- the report


def fmt(x, digits=2, unit=""):
    return "n/a" if x is None else f"{x:.{digits}f}{unit}"


def markdown(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def fmt_ms(x):
    """Milliseconds: two decimals below 10 ms, one above."""
    return fmt(x, 2 if x is not None and x < 10 else 1)


def median_ms(entry: dict | None, key: str = "times") -> float | None:
    """The median of a contender's ``times`` (per call), ``cpu_times`` (its CPU time per
    call), ``loop_times`` (in-loop, per step) or ``floor_times`` (the no-op), in ms; None
    where it has none."""
    ok = entry and "error" not in entry and entry.get(key)
    return statistics.median(entry[key]) * 1e3 if ok else None


# The peers of the ratio columns, where they ran: per call, and in the loop (JAX only).
RATIO_PEERS = ("adamx xla", "optax", "torch fused", "torch foreach")
LOOP_PEERS = ("adamx xla", "optax")
# Case (e): float32 Adam, fused (adamx.step) and XLA.
STORAGE_PEERS = ("adamx", "adamx xla")


def own_xla(name: str, meds: dict, loops: dict) -> list[str]:
    """A storage policy through adamx.step over the same policy's XLA path (per call and
    in-loop); blank for the other rows."""
    peer = workloads.storage_xla_peer(name)
    cells = []
    for table in (meds, loops):
        x, y = table.get(name), table.get(peer) if peer else None
        cells.append(fmt(x / y, 2, "x") if x and y else "")
    return cells


def kernel_cell(entry: dict) -> str:
    """Whether the compiled step calls adamx's fused kernel (n/a for torch)."""
    calls = entry.get("kernel_calls")
    if calls is None:
        return "n/a"
    cell = f"yes ({calls} call{'s' if calls > 1 else ''})" if calls else "no"
    if entry.get("loop_kernel_calls", calls) != calls:
        cell += f"; in-loop program: {entry['loop_kernel_calls']} calls"
    return cell


def kernel_notes(case: dict) -> list[str]:
    """Say so where adamx's Adam/AdamW step does not call the fused kernel."""
    notes = []
    for policy in workloads.STORAGE_KERNELS if case["optimizer"] == "adam storage" else ():
        s = case["contenders"].get(f"adamx {policy}")
        if s and "error" not in s and not s.get("kernel_calls"):
            notes.append(f"- **adamx {policy} did not use the stored-moments kernel.**")
    return notes + _float32_kernel_notes(case)


def _float32_kernel_notes(case: dict) -> list[str]:
    e = case["contenders"].get("adamx")
    if not e or "error" in e or case["optimizer"] not in workloads.FUSED_OPTIMIZERS:
        return []
    if e.get("kernel_calls") and e.get("loop_kernel_calls"):
        return []
    if e.get("kernel_calls"):
        return ["- **adamx's in-loop program does not call the fused kernel** (its step does)."]
    kernel = e.get("kernel") or {}
    why = kernel.get("reason") or "the kernel is available: adamx.step chose the XLA path"
    return [f"- **adamx did not use the fused kernel** in this case ({why})."]


def measured(case: dict) -> list[tuple[str, dict]]:
    """The contenders of a case that ran, in table order."""
    found = case["contenders"]
    return [(c, found[c]) for c in workloads.CONTENDERS if c in found and "error" not in found[c]]


def case_title(case: dict) -> str:
    w, opt = case["workload"], case["optimizer"]
    key = case.get("key") or {"adam": w, "adam storage": "e"}.get(opt, "d")
    return (
        f"({key}) {opt} on {workloads.WORKLOAD_TITLES[w]}: "
        f"{case['n_leaves']:,} leaves, {case['n_params'] / 1e6:.2f}M params, "
        f"{case['bytes_per_param']} B/param"
    )


def probe_gbps(case: dict | None) -> float | None:
    """The machine's bandwidth for a fused pass: the best of the case's probe runs (load
    from elsewhere can only slow a run down, so the best is the least disturbed)."""
    runs = case["probe"] + case["probe_1t"] if case else []
    return max(p["gbps"] for p in runs) if runs else None


def timing_table(case: dict) -> list[str]:
    n, bpp, bw = case["n_params"], case["bytes_per_param"], probe_gbps(case)
    probe_ms = n * bpp / (bw * 1e9) * 1e3 if bw else None
    found = measured(case)
    meds = {c: median_ms(e) for c, e in found}
    loops = {c: median_ms(e, "loop_times") for c, e in found}
    cpus = {c: median_ms(e, "cpu_times") for c, e in found}
    storage = case["optimizer"] == "adam storage"
    # case (e): every policy against float32 Adam, fused ("adamx") and XLA, and against
    # its own XLA path
    peers = [c for c in (STORAGE_PEERS if storage else RATIO_PEERS) if c in meds]
    loop_peers = [c for c in (STORAGE_PEERS if storage else LOOP_PEERS) if loops.get(c)]

    def gbps(ms):
        return n * bpp / (ms / 1e3) / 1e9 if ms else None

    def share(ms):
        return 100 * gbps(ms) / bw if bw and ms else None

    def over(x, y):
        return x / y if x and y else None

    rows = []
    for c, e in found:
        med, lp = meds[c], loops[c]
        rows.append([
            c, kernel_cell(e), fmt_ms(med), fmt_ms(min(e["times"]) * 1e3), str(len(e["times"])),
            fmt_ms(lp), fmt_ms(median_ms(e, "floor_times")), fmt(gbps(med), 1),
            fmt(share(med), 0, "%"), fmt(share(lp), 0, "%"), fmt(over(med, probe_ms), 2, "x"),
            *[fmt(over(med, meds[p]), 2, "x") for p in peers],
            *[fmt(over(lp, loops[p]), 2, "x") for p in loop_peers],
            *(own_xla(c, meds, loops) if storage else []), fmt(e["cores_busy"], 2),
            fmt_ms(cpus[c]), *[fmt(over(cpus[c], cpus[p]), 2, "x") for p in peers],
        ])  # fmt: skip
    if bw:
        rows.append([
            "probe (best run)", "", fmt_ms(probe_ms), "", "", "", "", fmt(bw, 1), "100%", "",
            "1.00x", *[fmt(over(probe_ms, meds[p]), 2, "x") for p in peers],
            *[fmt(over(probe_ms, loops[p]), 2, "x") for p in loop_peers],
            *(["", ""] if storage else []), "", "", *["" for _ in peers],
        ])  # fmt: skip
    head = ["contender", "fused kernel", "median ms", "min ms", "steps", "in-loop ms/step",
            "dispatch floor ms", "eff. GB/s", "% of probe BW", "in-loop % of probe BW",
            "÷ probe", *[f"÷ {c}" for c in peers], *[f"in-loop ÷ {c}" for c in loop_peers],
            *(["÷ its xla", "in-loop ÷ its xla"] if storage else []), "cores busy",
            "CPU ms", *[f"CPU ÷ {c}" for c in peers]]  # fmt: skip
    lines = markdown(head, rows)
    lines += [f"- {c}: failed: {e['error']}" for c, e in case["contenders"].items() if "error" in e]
    lines += kernel_notes(case)
    looped = [(c, e) for c, e in found if e.get("loop_times")]
    if looped:
        c, e = looped[0]
        lines += [
            "",
            f"In-loop: median over {len(e['loop_times'])} calls of {e['loop_steps']} steps in "
            f"one jitted `fori_loop`, per step; dispatch floor: median over "
            f"{len(e['floor_times'])} calls of a jitted no-op on the same donated trees.",
        ]
    if bw:
        runs = ", ".join(
            f"{p['gbps']:.1f} ({p['threads']} thread{'s' if p['threads'] > 1 else ''})"
            for p in case["probe"] + case["probe_1t"]
        )
        lines += [
            "",
            f"Probe runs (best step of each, GB/s at 28 B/param): {runs}; the best, "
            f"{bw:.1f} GB/s, gives the probe row's time for this case's {bpp} B/param.",
        ]
    lines.append(f"Load average (1 min) at the start and end of this case: {case['load']}.")
    return lines


def compile_table(case: dict) -> list[str]:
    found = measured(case)
    optax_s = dict(found).get("optax", {}).get("compile_s")
    rows = []
    for c, e in found:
        first = e["first_step_s"] * 1e3
        total = e["compile_s"]
        rows.append([
            c, kernel_cell(e), fmt(e["hlo_loops_per_leaf"], 2), fmt(e["hlo_bytes_per_param"], 1),
            fmt(e["trace_lower_s"]), fmt(e["xla_compile_s"]), fmt(total),
            fmt(total / optax_s if total and optax_s else None, 2, "x"),
            fmt(e.get("loop_compile_s")), fmt(first, 1), fmt(first - median_ms(e), 1),
        ])  # fmt: skip
    head = ["contender", "fused kernel", "loops / leaf",
            f"modeled B/param (ideal {case['bytes_per_param']})", "trace + lower s",
            "XLA compile s", "compile total s", "compile ÷ optax", "in-loop program compile s",
            "first step ms", "first step - median ms"]  # fmt: skip
    return markdown(head, rows)


def memory_table(case: dict) -> list[str]:
    rows = []
    for c, e in measured(case):
        base, pgs, xla = e["baseline_kb"] * 1e3, e["pgs_bytes"], e["xla_memory"] or {}
        peak = e["peak_steps_kb"] * 1e3 - base
        steady = e["before_steps_kb"] * 1e3 - base
        anon = (e["before_steps_anon_kb"] - e["baseline_anon_kb"]) * 1e3
        rows.append([
            c, fmt(pgs / MB, 0), fmt(steady / MB, 0), fmt(anon / MB, 0), fmt(peak / MB, 0),
            fmt((peak - steady) / MB, 0), fmt(peak / pgs, 3),
            fmt(e["setup_peak_kb"] * 1e3 / MB - base / MB, 0), fmt(base / MB, 0),
            fmt(e["max_rss_kb"] * 1e3 / MB if e["max_rss_kb"] else None, 0),
            fmt(xla["temp_bytes"] / MB if xla else None, 1),
            fmt(xla["alias_bytes"] / MB if xla else None, 0),
            fmt((e["peak_loop_kb"] * 1e3 - base) / MB if e.get("peak_loop_kb") else None, 0),
            fmt(e["loop_temp_bytes"] / MB if e.get("loop_temp_bytes") is not None else None, 1),
        ])  # fmt: skip
    head = ["contender", "p+g+state MB", "steady MB", "steady anon MB", "step peak MB",
            "step peak - steady MB", "step peak ÷ p+g+state", "setup peak MB",
            "baseline RSS MB", "max RSS MB (time -v)", "XLA temp MB", "XLA aliased MB",
            "in-loop peak MB", "in-loop XLA temp MB"]  # fmt: skip
    return markdown(head, rows)


def target_rows(cases: list[dict], quick: bool) -> list[str]:
    """The issue's CPU targets, each marked met / not met from this run's figures."""
    by = {(c["workload"], c["optimizer"]): c for c in cases}
    a, b = by.get(("a", "adam")), by.get(("b", "adam"))
    lion, sgd = by.get(("a", "lion")), by.get(("a", "sgd"))
    rows = []

    def verdict(ok):
        return "not measured" if ok is None else ("met" if ok else "**not met**")

    def times(case, name):
        e = case["contenders"].get(name) if case else None
        return e["times"] if e and "error" not in e else None

    def ratio(case, x, y, how):
        tx, ty = times(case, x), times(case, y)
        return how(tx) / how(ty) if tx and ty else None

    def loop_ratio(case, x, y):
        ex, ey = ((case["contenders"].get(c) or {}) if case else {} for c in (x, y))
        lx, ly = median_ms(ex, "loop_times"), median_ms(ey, "loop_times")
        return lx / ly if lx and ly else None

    for case, peer, limit, label in (
        (a, "torch fused", 1.0, "(a) adamx step <= 1.0x torch fused"),
        (a, "optax", 0.75, "(a) adamx step <= 0.75x optax.adam"),
        (b, "optax", 0.5, "(b) adamx step <= 0.5x optax.adam"),
        # issue 15 item 5: the Lion and SGD-momentum kernels
        (sgd, "torch fused", 1.0, "(d, f) sgd: adamx step <= 1.0x torch fused"),
        (sgd, "adamx xla", 1.0, "(d, f) sgd: adamx step <= 1.0x its XLA path"),
        (lion, "adamx xla", 1.0, "(d, f) lion: adamx step <= 1.0x its XLA path"),
    ):
        r = ratio(case, "adamx", peer, statistics.median)
        r_min = ratio(case, "adamx", peer, min)
        ok = verdict(None if r is None else r <= limit)
        spreads = {
            c: statistics.median(t) / min(t) for c in ("adamx", peer) if (t := times(case, c))
        }
        if spreads and max(spreads.values()) > SPREAD_LIMIT:
            worst = max(spreads, key=spreads.get)
            ok += f" (unreliable: {worst}'s median is {spreads[worst]:.1f}x its min)"
        text = f"{fmt(r, 2, 'x')} (mins: {fmt(r_min, 2, 'x')}"
        if peer in workloads.JAX_CONTENDERS:
            text += f"; in-loop: {fmt(loop_ratio(case, 'adamx', peer), 2, 'x')}"
        rows.append([label, text + ")", ok])

    bw, t = probe_gbps(a), times(a, "adamx")
    loop_s = median_ms(a["contenders"].get("adamx") if a else None, "loop_times")
    share = [
        a["n_params"] * 28 / how(t) / 1e9 / bw if bw and t else None
        for how in (statistics.median, min)
    ]
    share.append(a["n_params"] * 28 / (loop_s / 1e3) / 1e9 / bw if bw and loop_s else None)
    percent = [fmt(100 * x if x else None, 0, "%") for x in share]
    ok = verdict(None if share[0] is None else share[0] >= 0.9)
    if t and statistics.median(t) / min(t) > SPREAD_LIMIT:
        ok += f" (unreliable: adamx's median is {statistics.median(t) / min(t):.1f}x its min)"
    rows.insert(2, [
        "(a) adamx bandwidth >= 90% of the probe's",
        f"{percent[0]} (min step: {percent[1]}; in-loop: {percent[2]})", ok,
    ])  # fmt: skip

    ca, co = (
        (b["contenders"].get(c) or {}).get("compile_s") if b else None for c in ("adamx", "optax")
    )
    r = ca / co if ca and co else None
    rows.append([
        "(b) adamx compile <= 0.25x optax.adam's", f"{fmt(ca)} s vs {fmt(co)} s = {fmt(r, 2, 'x')}",
        verdict(None if r is None else r <= 0.25),
    ])  # fmt: skip

    for case in cases:
        e = case["contenders"].get("adamx")
        if not e or "error" in e:
            continue
        peak = (e["peak_steps_kb"] - e["baseline_kb"]) * 1e3 / e["pgs_bytes"]
        added = (e["peak_steps_kb"] - e["before_steps_kb"]) * 1e3 / MB
        temp = e["xla_memory"]["temp_bytes"] / MB if e["xla_memory"] else None
        rows.append([
            f"peak memory <= p+g+state + 5%: {case['optimizer']} on ({case['workload']})",
            f"{peak:.3f}x; the steps add {added:.0f} MB to the steady RSS; XLA temp "
            f"{fmt(temp, 1)} MB", verdict(peak <= 1.05),
        ])  # fmt: skip
    rows.append(["GPU targets", "this run is CPU only", "not measured"])
    lines = markdown(["target", "measured", "verdict"], rows)
    if quick:
        lines += ["", "These are `--quick` sizes: the targets are for the full sizes."]
    return lines


def machine() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    family = re.search(r"cpu family\s*:\s*(\d+)", cpuinfo)
    number = re.search(r"^model\s*:\s*(\d+)", cpuinfo, re.M)
    flags = set((re.search(r"flags\s*:\s*(.*)", cpuinfo) or ["", ""])[1].split())
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem = re.search(r"MemTotal:\s*(\d+) kB", meminfo)
    l3 = ""
    if shutil.which("lscpu"):
        found = re.search(
            r"L3 cache:\s*(.*)", subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        )
        l3 = f", L3 {found[1].strip()}" if found else ""
    return [
        f"- CPU: {model[1] if model else platform.processor()} "
        f"(family {family[1] if family else '?'}, model {number[1] if number else '?'}; "
        f"{', '.join(simd) or 'no AVX2'}"
        f"{'; virtual machine' if 'hypervisor' in flags else ''}{l3})",
        f"- cores: {os.cpu_count()} ({len(os.sched_getaffinity(0))} usable by this process)",
        f"- memory: {int(mem[1]) / 1e6:.1f} GB" if mem else "- memory: unknown",
        f"- OS: {platform.system()} {platform.release()}",
    ]


def versions() -> list[str]:
    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    git = ["git", "-C", str(REPO)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True)
    gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()
    return [
        f"- python {platform.python_version()}, jax {version('jax')}, jaxlib {version('jaxlib')}, "
        f"optax {version('optax')}, torch {version('torch')}, numpy {version('numpy')}",
        f"- adamx {version('adamx')} at git commit {commit.stdout.strip() or 'unknown'}"
        + (" (with uncommitted changes)" if dirty.stdout.strip() else ""),
        f"- probe compiler: {gcc[0] if gcc else 'gcc'} `{' '.join(PROBE_FLAGS)}`",
    ]


METHOD = """
## Method

- Every contender gets the same parameters and gradients (float32, fixed seed) and the same
  hyperparameters (lr 1e-3, b1 0.9, b2 0.999, eps 1e-8; AdamW weight decay 1e-2; Lion lr 1e-4,
  b 0.9/0.99, no decay; SGD lr 1e-2, momentum 0.9). AMSGrad: adamx and
  `torch.optim.Adam(amsgrad=True)` keep the max of the raw `v`, `optax.amsgrad` of the
  bias-corrected `v` (another rule, the same traffic).
- The contenders. `adamx`: `adamx.step(opt, grads, state, params)` in one `jax.jit` with
  params and state donated (gradients are inputs, not donated). For Adam and AdamW that is
  adamx's fused single-pass CPU kernel (an XLA FFI custom call, `adamx_adam_step_v1`, that
  updates p, m and v in place), where it applies; for Lion and SGD with momentum their own
  kernels (`adamx_lion_step_v1`, `adamx_sgd_step_v1`: p and the one state tensor in place);
  for the other optimizers it is `update` + `optax.apply_updates`. The `fused kernel`
  column says whether the compiled step calls a kernel, and how many times (one call per
  group of leaves). `adamx xla` (the optimizers with a kernel only): the same adamx
  optimizer with `fused=False`, `update` + `optax.apply_updates` in one
  `jax.jit`, donated: the XLA path that the kernel replaces (same numbers). `optax`: optax's
  optimizer, the same way. torch: `opt.step()` with `.grad` set. The kernel is built or
  loaded (`adamx.kernel_info()`) in the adamx process before anything is timed, so no compile
  time below includes its C++ build.
- Each contender runs in its own process. The processes are started one after the other, then
  visited in rotating order, {steps_per_visit} timed step(s) per visit, {rounds} rounds, after
  {warmup} warm-up step(s); the others wait while one runs. Every step is timed alone (JAX:
  until `jax.block_until_ready`), Python dispatch included. Median and min over all timed
  steps.
- `in-loop ms/step` (JAX only): the same step run {loop_steps} times inside one jitted
  `jax.lax.fori_loop` (params and state carried and donated, the gradients passed once and
  put behind an `optimization_barrier` each iteration so that XLA cannot hoist work on them
  out of the loop), timed per call and divided by {loop_steps}; median over {loop_runs}
  calls, one in each of {loop_runs} of the rounds, right after that round's steps. It leaves
  out what a call from Python adds to a step (median ms - in-loop ms/step): the dispatch of
  a jitted call, which grows with the number of arrays (thousands in (b)) and is the same
  for every JAX contender, and the launch and wait of a program that does work.
  `dispatch floor ms`: a jitted no-op `lambda p, s, g: (p, s)` with the same donated trees,
  called and awaited like a step ({floor_calls} calls after each loop call; median): the
  part of that overhead that any program on these trees pays.
- Effective GB/s = params x bytes/param / median step, with the bytes of an ideal single pass
  (REFERENCE.md): Adam, AdamW 28 (read p g m v, write p m v); AMSGrad 36 (read p g m v vmax,
  write p m v vmax); Lion, SGD-momentum 20 (read p g buf, write p buf). Counters and scalars
  are ignored. A contender that moves more bytes than that shows a lower effective GB/s.
  `in-loop % of probe BW` is the same figure from the in-loop time.
- The probe is `roofline.c` (one fused fp32 Adam pass, OpenMP) with the same parameter
  count, run on all cores in {probe_runs} of the rounds (and, in (a)-(c), once on one
  thread); each run prints its best of 10 steps, and the best of those runs is the probe's
  bandwidth (load from elsewhere only slows a run down), turned into a time for each case's
  bytes/param. Being a best, it is an upper bound: a contender's median reaching it is at
  the machine's limit.
- `÷ X`: this row's median over X's median (below 1 = faster than X); `in-loop ÷ X`: the
  same with the in-loop times. `cores busy`: the process's CPU time over wall time during
  its timed steps (not the loop calls). `CPU ms`: the median CPU time of the contender's
  process (all its threads) per step, and `CPU ÷ X` its ratio to X's: the work done, which
  other processes on the same cores barely change, where they can stretch the wall times
  (waiting for a core counts in the wall time, not in the CPU time).
- Compile: JAX `jit(...).lower()` (trace + lower) and `.compile()` of the step, timed apart;
  `compile ÷ optax` is the total over optax's. `in-loop program compile s`: lower + compile
  of the `fori_loop` program, done after the step's first call and counted in no other
  column. torch has no compile, its first step allocates the state. `first step - median`:
  the one-off cost of the first call after compiling. `loops / leaf` and `modeled B/param`
  read the step's compiled HLO: the ops that write a leaf-sized array (a kernel call counts
  one per leaf it updates), and the bytes every top-level op reads and writes.
- Memory, per process, in MB above its runtime baseline (RSS after importing the framework,
  running one tiny op and, for adamx, loading the kernel; before any workload array):
  `steady` (RSS before the timed steps, after the warm-up and `malloc_trim`); `steady anon`
  (the same, anonymous memory only: without the pages of libtorch/jaxlib code touched since
  the baseline); `step peak` (VmHWM over the timed steps, reset just before them through
  `/proc/self/clear_refs`, and kept apart from the loop calls); `step peak - steady` (what
  the steps allocate beyond the live buffers); `setup peak` (VmHWM before the reset: data
  creation, compiles, warm-up). `step peak ÷ p+g+state` is conservative: it includes code
  pages and compiled executables, a fixed few tens of MB that matter at small sizes only.
  `max RSS` is `/usr/bin/time -v`'s figure, baseline included; as the resets clear Linux's
  high-water mark, it is the peak since the last reset (after the last loop visit), not the
  setup's. XLA temp and aliased: `compiled.memory_analysis()` of the step; aliased = output
  bytes that reuse donated input buffers. `in-loop peak`: VmHWM over the loop and no-op
  calls; `in-loop XLA temp`: the loop program's temp (a large one would mean that the loop
  does more than repeat the step).
"""


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (zeros where /proc/loadavg is missing)."""
    path = Path("/proc/loadavg")
    return [float(x) for x in path.read_text().split()[:3]] if path.exists() else [0.0] * 3


def kernel_line(cases) -> str:
    """How adamx's fused kernel was had in this run (from the first adamx process)."""
    found = [
        e["kernel"]
        for c in cases
        if (e := c["contenders"].get("adamx")) and "error" not in e and e.get("kernel")
    ]
    if not found:
        return "- adamx fused kernel: not measured"
    k = found[0]
    if not k["available"]:
        return f"- adamx fused kernel: **unavailable** ({k['reason']}): adamx ran the XLA path"
    how = f"built in {k['build_s']:.1f} s" if k["build_s"] else "loaded from the cache"
    return (
        f"- adamx fused kernel: available, {how} (`adamx.kernel_info()`, "
        f"{k['info_s']:.2f} s, before any timing) from `{k['path']}`"
    )


def write_report(path: Path, cases, meta) -> None:
    cores = os.cpu_count() or 1
    busy = max(meta["load_before"][0], meta["load_after"][0]) > 0.5 * cores
    lines = [
        "# adamx benchmark results",
        "",
        "Written by `benchmarks/run.py`; how to run it and read it: `benchmarks/README.md`.",
        "",
        f"- date: {meta['date']}",
        f"- command: `{meta['command']}`",
        f"- wall time of the whole run: {meta['wall_s']:.0f} s",
        *machine(),
        *versions(),
        kernel_line(cases),
        f"- jax platform: {meta['platform']}; torch threads: {meta['torch_threads'] or 'n/a'}; "
        f"probe compiled in {meta['probe_compile_s']:.2f} s",
        f"- load average (1, 5, 15 min) before: {meta['load_before']}, after: "
        f"{meta['load_after']} on {cores} cores"
        + (
            " — **other processes were running on this machine during the run**: absolute "
            "times are noisy; the interleaved ratios are the figures to read."
            if busy
            else ""
        ),
        "",
        METHOD.format(**meta).strip(),
        "",
        "## Step time",
        "",
    ]
    for case in cases:
        lines += [f"### {case_title(case)}", "", *timing_table(case), ""]
    lines += ["## Compile time", ""]
    for case in cases:
        lines += [f"### {case_title(case)}", "", *compile_table(case), ""]
    lines += ["## Peak memory (MB = 1e6 bytes)", ""]
    for case in cases:
        lines += [f"### {case_title(case)}", "", *memory_table(case), ""]
    lines += [
        "## Targets (issue 5, CPU)",
        "",
        "Ratios of medians from this one run (in brackets: ratios of the fastest steps, "
        "which the load of other processes disturbs less). The verdicts read the medians, and "
        f"say `unreliable` where a contender's median is over {SPREAD_LIMIT}x its min.",
        "",
        *target_rows(cases, meta["quick"]),
        "",
    ]
    if busy:
        lines += [
            "The machine was shared during this run. torch's OpenMP threads (and the probe's) "
            "stall at their barriers whenever another process holds a core, which inflates "
            "their medians far more than XLA's: where a torch median is much above its min, "
            "read the ratio of the mins.",
            "",
        ]
    path.write_text("\n".join(lines))


# ---------------------------------------------------------------------------- the CLI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few steps: a smoke run")
    parser.add_argument(
        "--workloads", default="a,b,c,d,e", help="comma-separated subset of a,b,c,d,e,f"
    )
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="report path")
    parser.add_argument("--rounds", type=int, help="rounds of visits (default 12; quick 3)")
    args = parser.parse_args()
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in chosen if w not in workloads.CASES]
    if unknown or not chosen:
        parser.error(
            f"--workloads: unknown {unknown}; choose from a, b, c, d, e, f (comma-separated)"
        )

    cfg = {
        "quick": args.quick,
        "rounds": args.rounds or (3 if args.quick else 12),
        "steps_per_visit": 1 if args.quick else 2,
        "warmup": 1 if args.quick else 2,
        "probe_runs": 1 if args.quick else 4,
        # JAX: steps per call of the in-loop program, rounds with a loop call, no-op calls
        # after each loop call.
        "loop_steps": 10,
        "loop_runs": 2 if args.quick else 3,
        "floor_calls": 3 if args.quick else 5,
    }
    has_torch = importlib.util.find_spec("torch") is not None
    meta = dict(
        cfg,
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        command="python " + shlex.join(["benchmarks/run.py", *sys.argv[1:]]),
        load_before=load_average(),
    )
    t_start = time.perf_counter()
    cases = []
    with tempfile.TemporaryDirectory(prefix="adamx-bench-") as tmp:
        workdir = Path(tmp)
        probe, meta["probe_compile_s"] = build_probe(workdir)
        log(f"probe built in {meta['probe_compile_s']:.2f} s; torch found: {has_torch}")
        for key in chosen:
            for workload, optimizer in workloads.CASES[key]:
                contenders = workloads.contenders_for(optimizer, has_torch)
                cfg["probe_one_thread"] = key not in ("d", "f")
                log(f"case {optimizer} on ({workload}): {', '.join(contenders)}")
                cases.append(measure_case(workload, optimizer, contenders, probe, cfg, workdir))
                cases[-1]["key"] = key
    meta["wall_s"] = time.perf_counter() - t_start
    meta["load_after"] = load_average()
    done = [e for c in cases for e in c["contenders"].values() if "error" not in e]
    meta["platform"] = ", ".join(sorted({e["platform"] for e in done})) or "n/a"
    meta["torch_threads"] = next((e["threads"] for e in done if e["threads"]), None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_report(args.out, cases, meta)
    log(f"wrote {args.out} ({meta['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
