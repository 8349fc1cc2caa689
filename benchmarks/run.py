"""Benchmark the optimizer step: adamx vs optax vs torch.optim vs the roofline probe.

One command measures everything in one run and writes ``benchmarks/RESULTS.md``::

    python benchmarks/run.py [--quick] [--workloads a,b,c,d] [--out benchmarks/RESULTS.md]

Each contender of a case runs in its own process (``worker.py``, under ``/usr/bin/time -v``
for its peak RSS). The processes are started one after the other (so compile times are not
disturbed), then visited in turn: every round each contender times a few steps while the
others wait, and the order rotates from round to round, so machine noise hits all alike.
The roofline probe (``../shared/tools/roofline.c``, compiled here in the same run) takes a
turn in some rounds with the same parameter count. See README.md for how to read the tables.
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
        self.times += self.send(f"run {steps}")["times"]

    def finish(self) -> dict:
        result = dict(self.ready, **self.send("quit"), times=self.times)
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
        probe_rounds = {
            round(i * (rounds - 1) / max(cfg["probe_runs"] - 1, 1))
            for i in range(cfg["probe_runs"])
        }
        log(f"  {rounds} rounds of {cfg['steps_per_visit']} step(s) each")
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


def median_ms(entry: dict | None) -> float | None:
    ok = entry and "error" not in entry and entry.get("times")
    return statistics.median(entry["times"]) * 1e3 if ok else None


def measured(case: dict) -> list[tuple[str, dict]]:
    """The contenders of a case that ran, in table order."""
    found = case["contenders"]
    return [(c, found[c]) for c in workloads.CONTENDERS if c in found and "error" not in found[c]]


def case_title(case: dict) -> str:
    w, opt = case["workload"], case["optimizer"]
    return (
        f"({w if opt == 'adam' else 'd'}) {opt} on {workloads.WORKLOAD_TITLES[w]}: "
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
    rows, meds = [], {c: median_ms(e) for c, e in measured(case)}
    for c, e in measured(case):
        med = meds[c]
        gbps = n * bpp / (med / 1e3) / 1e9
        rows.append([
            c, fmt(med, 1), fmt(min(e["times"]) * 1e3, 1), str(len(e["times"])), fmt(gbps, 1),
            fmt(100 * gbps / bw if bw else None, 0, "%"),
            fmt(med / probe_ms if probe_ms else None, 2, "x"),
            *[fmt(med / m, 2, "x") for m in meds.values()], fmt(e["cores_busy"], 2),
        ])  # fmt: skip
    if bw:
        rows.append([
            "probe (best run)", fmt(probe_ms, 1), "", "",
            fmt(bw, 1), "100%", "1.00x", *[fmt(probe_ms / m, 2, "x") for m in meds.values()], "",
        ])  # fmt: skip
    head = ["contender", "median ms", "min ms", "steps", "eff. GB/s", "% of probe BW", "÷ probe",
            *[f"÷ {c}" for c in meds], "cores busy"]  # fmt: skip
    lines = markdown(head, rows)
    lines += [f"- {c}: failed: {e['error']}" for c, e in case["contenders"].items() if "error" in e]
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
    rows = []
    for c, e in measured(case):
        first = e["first_step_s"] * 1e3
        rows.append([
            c, fmt(e["hlo_loops_per_leaf"], 1), fmt(e["hlo_bytes_per_param"], 1),
            fmt(e["trace_lower_s"]), fmt(e["xla_compile_s"]), fmt(e["compile_s"]),
            fmt(first, 1), fmt(first - median_ms(e), 1),
        ])  # fmt: skip
    head = ["contender", "loops / leaf", f"modeled B/param (ideal {case['bytes_per_param']})",
            "trace + lower s", "XLA compile s", "compile total s", "first step ms",
            "first step - median ms"]  # fmt: skip
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
        ])  # fmt: skip
    head = ["contender", "p+g+state MB", "steady MB", "steady anon MB", "step peak MB",
            "step peak - steady MB", "step peak ÷ p+g+state", "setup peak MB",
            "baseline RSS MB", "max RSS MB (time -v)", "XLA temp MB", "XLA aliased MB"]  # fmt: skip
    return markdown(head, rows)


def target_rows(cases: list[dict], quick: bool) -> list[str]:
    """The issue's CPU targets, each marked met / not met from this run's figures."""
    by = {(c["workload"], c["optimizer"]): c for c in cases}
    a, b = by.get(("a", "adam")), by.get(("b", "adam"))
    rows = []

    def verdict(ok):
        return "not measured" if ok is None else ("met" if ok else "**not met**")

    def times(case, name):
        e = case["contenders"].get(name) if case else None
        return e["times"] if e and "error" not in e else None

    def ratio(case, x, y, how):
        tx, ty = times(case, x), times(case, y)
        return how(tx) / how(ty) if tx and ty else None

    for case, peer, limit, label in (
        (a, "torch fused", 1.0, "(a) adamx step <= 1.0x torch fused"),
        (a, "optax", 0.75, "(a) adamx step <= 0.75x optax.adam"),
        (b, "optax", 0.5, "(b) adamx step <= 0.5x optax.adam"),
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
        rows.append([label, f"{fmt(r, 2, 'x')} (mins: {fmt(r_min, 2, 'x')})", ok])

    bw, t = probe_gbps(a), times(a, "adamx")
    share = [
        a["n_params"] * 28 / how(t) / 1e9 / bw if bw and t else None
        for how in (statistics.median, min)
    ]
    percent = [fmt(100 * x if x else None, 0, "%") for x in share]
    ok = verdict(None if share[0] is None else share[0] >= 0.9)
    if t and statistics.median(t) / min(t) > SPREAD_LIMIT:
        ok += f" (unreliable: adamx's median is {statistics.median(t) / min(t):.1f}x its min)"
    rows.insert(2, [
        "(a) adamx bandwidth >= 90% of the probe's", f"{percent[0]} (min step: {percent[1]})", ok,
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
  b 0.9/0.99, no decay; SGD lr 1e-2, momentum 0.9). JAX steps are `update` +
  `optax.apply_updates` in one `jax.jit` with params and state donated (gradients are inputs,
  not donated); torch steps are `opt.step()` with `.grad` set. AMSGrad: adamx and
  `torch.optim.Adam(amsgrad=True)` keep the max of the raw `v`, `optax.amsgrad` of the
  bias-corrected `v` (another rule, the same traffic).
- Each contender runs in its own process. The processes are started one after the other, then
  visited in rotating order, {steps_per_visit} timed step(s) per visit, {rounds} rounds, after
  {warmup} warm-up step(s); the others wait while one runs. Every step is timed alone (JAX:
  until `jax.block_until_ready`). Median and min over all timed steps.
- Effective GB/s = params x bytes/param / median step, with the bytes of an ideal single pass
  (REFERENCE.md): Adam, AdamW 28 (read p g m v, write p m v); AMSGrad 36 (read p g m v vmax,
  write p m v vmax); Lion, SGD-momentum 20 (read p g buf, write p buf). Counters and scalars
  are ignored. A contender that moves more bytes than that shows a lower effective GB/s.
- The probe is `roofline.c` (one fused fp32 Adam pass, OpenMP) with the same parameter
  count, run on all cores in {probe_runs} of the rounds (and, in (a)-(c), once on one
  thread); each run prints its best of 10 steps, and the best of those runs is the probe's
  bandwidth (load from elsewhere only slows a run down), turned into a time for each case's
  bytes/param. Being a best, it is an upper bound: a contender's median reaching it is at
  the machine's limit.
- `÷ X`: this row's median over X's median (below 1 = faster than X). `cores busy`: the
  process's CPU time over wall time during its timed steps.
- Compile: JAX `jit(...).lower()` (trace + lower) and `.compile()` timed apart; torch has no
  compile, its first step allocates the state. `first step - median`: the one-off cost of the
  first call after compiling.
- Memory, per process, in MB above its runtime baseline (RSS after importing the framework and
  running one tiny op, before any workload array): `steady` (RSS before the timed steps, after
  the warm-up and `malloc_trim`); `steady anon` (the same, anonymous memory only: without the
  pages of libtorch/jaxlib code touched since the baseline); `step peak` (VmHWM over the timed
  steps, reset just before them through `/proc/self/clear_refs`); `step peak - steady` (what
  the steps allocate beyond the live buffers); `setup peak` (VmHWM before the reset: data
  creation, compile, warm-up). `step peak ÷ p+g+state` is conservative: it includes code pages
  and compiled executables, a fixed few tens of MB that matter at small sizes only. `max RSS`
  is `/usr/bin/time -v`'s figure, baseline included; as the reset clears the kernel's
  high-water mark, it is the peak from the reset on, not the setup's. XLA temp and aliased:
  `compiled.memory_analysis()`; aliased = output bytes that reuse donated input buffers.
"""


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (zeros where /proc/loadavg is missing)."""
    path = Path("/proc/loadavg")
    return [float(x) for x in path.read_text().split()[:3]] if path.exists() else [0.0] * 3


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
    parser.add_argument("--workloads", default="a,b,c,d", help="comma-separated subset of a,b,c,d")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="report path")
    parser.add_argument("--rounds", type=int, help="rounds of visits (default 12; quick 3)")
    args = parser.parse_args()
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in chosen if w not in workloads.CASES]
    if unknown or not chosen:
        parser.error(f"--workloads: unknown {unknown}; choose from a, b, c, d (comma-separated)")

    cfg = {
        "quick": args.quick,
        "rounds": args.rounds or (3 if args.quick else 12),
        "steps_per_visit": 1 if args.quick else 2,
        "warmup": 1 if args.quick else 2,
        "probe_runs": 1 if args.quick else 4,
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
                cfg["probe_one_thread"] = key != "d"
                log(f"case {optimizer} on ({workload}): {', '.join(contenders)}")
                cases.append(measure_case(workload, optimizer, contenders, probe, cfg, workdir))
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
