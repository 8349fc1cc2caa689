"""One contender (adamx, adamx xla, optax, torch fused or torch foreach) on one case, in its
own process.

Started by ``run.py`` under ``/usr/bin/time -v`` so that its peak RSS is its own. It builds
the workload, compiles the step, warms up, then obeys commands on stdin, one per line:

  ``run K``     time K steps, one by one, and answer the list of seconds
  ``loop C F``  (JAX only) time C calls of the jitted loop of ``loop_steps`` steps (answer
                seconds per step) and F calls of the jitted no-op (the dispatch floor)
  ``quit``      answer the memory figures of the timed steps and exit

The JAX contenders: ``adamx`` is ``adamx.step(opt, grads, state, params)`` (the fused CPU
kernel for Adam/AdamW, Lion and SGD with momentum where it applies, else update +
apply_updates); ``adamx xla`` is the same adamx optimizer with ``fused=False``, and
``optax`` is optax's optimizer, both as ``update`` + ``optax.apply_updates``. Each is one
``jax.jit`` with params and state donated.

Answers are single lines starting with ``@@ `` followed by JSON (anything else on stdout,
such as a library's warning, is ignored by the orchestrator). Only one worker runs at a
time: the others wait on their stdin, so the timings do not disturb one another.

Usage (by run.py): ``python worker.py '{"contender": ..., "workload": ..., ...}'``.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import re
import sys
import time

import numpy as np
import workloads


def answer(**fields) -> None:
    print("@@ " + json.dumps(fields), flush=True)


def proc_status_kb(field: str) -> int:
    """A ``/proc/self/status`` figure such as ``VmRSS`` or ``VmHWM``, in kB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def release_free_heap() -> None:
    """Give freed heap pages (the compiler's, the data generation's) back to the OS, so
    that the RSS before the timed steps counts live buffers, not garbage."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


DTYPE_BYTES = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2,
               "f16": 2, "s16": 2, "u16": 2, "s8": 1, "u8": 1, "pred": 1}  # fmt: skip
SHAPE = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([\d,]*)\]")
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\([^()]*\)|\S+) ([a-z][\w\-]*)\((.*?)\)")
NO_TRAFFIC = {"parameter", "tuple", "get-tuple-element", "constant", "bitcast"}
# The custom-call targets of adamx's fused kernels (adamx/kernels/_build.py), and how many
# leaf-sized arrays each writes per leaf: Adam/AdamW (p, m, v), its stored-moments kernel
# (with_storage(adam), adamx/kernels/_fused_storage.py), Lion and SGD with momentum (p and
# the one state tensor).
KERNEL_TARGET = "adamx_adam_step_v1"
STORAGE_TARGET = "adamx_adam_storage_step_v1"
# Adam on flat moments (with_storage(mu="flat", nu="flat")): each call's results are the
# whole m and v buffers, then the p of its leaves; it reads and writes only its leaves'
# stretch of m and v.
FLAT_TARGET = "adamx_adam_flat_step_v1"
WRITES_PER_LEAF = {
    KERNEL_TARGET: 3,
    FLAT_TARGET: 1,
    STORAGE_TARGET: 3,
    "adamx_lion_step_v1": 2,
    "adamx_sgd_step_v1": 2,
}


def kernel_calls(hlo: str) -> int:
    """How many calls of adamx's fused kernels a compiled program makes."""
    return sum(hlo.count(f'custom_call_target="{t}"') for t in WRITES_PER_LEAF)


def hlo_traffic(hlo: str, leaf_sizes: set[int]) -> tuple[int, int]:
    """Model the memory traffic of a compiled program from its optimized HLO text: every
    top-level fusion, copy, custom call or other op reads its operands once and writes its
    outputs once.

    Returns (bytes moved, loops over the leaves). A loop is an op that writes an array of
    a leaf's size (``leaf_sizes``: element counts), so the small vectors of scalars do not
    count; a call of adamx's kernel counts one loop per leaf it updates (it writes p, m
    and v of each leaf in one pass)."""
    sizes, moved, loops = {}, 0, 0
    for line in hlo[hlo.index("\nENTRY") :].splitlines():
        found = INSTRUCTION.match(line)
        if not found:
            continue
        name, shape, opcode, operands = found.groups()
        arrays = [
            math.prod(int(d) for d in dims.split(",") if d) for _, dims in SHAPE.findall(shape)
        ]
        sizes[name] = sum(
            DTYPE_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d)
            for t, dims in SHAPE.findall(shape)
        )
        if opcode in NO_TRAFFIC:
            continue
        if opcode == "custom-call" and f'"{FLAT_TARGET}"' in line:
            p_bytes = 4 * sum(arrays[2:])  # the leaves' p; m, v, g: as many bytes each
            moved += 7 * p_bytes  # read p g m v, write p m v
            loops += len(arrays) - 2
            continue
        moved += sizes[name] + sum(sizes.get(o, 0) for o in re.findall(r"%([\w.\-]+)", operands))
        written = sum(n in leaf_sizes for n in arrays)
        target = next((t for t in WRITES_PER_LEAF if f'"{t}"' in line), None)
        if opcode == "custom-call" and target is not None:
            loops += max(written // WRITES_PER_LEAF[target], 1)
        else:
            loops += written > 0
    return moved, loops


def numpy_leaves(spec: dict):
    """Yield parameters ~ N(0, 0.02) and gradients ~ N(0, 1e-3), float32, one pair per
    leaf, the same for every contender (fixed seed, fixed leaf order)."""
    rng = np.random.default_rng(0)
    for shape in workloads.leaf_shapes(workloads.workload_shapes(spec["workload"], spec["quick"])):
        p = rng.standard_normal(shape, dtype=np.float32)
        p *= 0.02
        g = rng.standard_normal(shape, dtype=np.float32)
        g *= 1e-3
        yield p, g


def jax_contender(spec: dict):
    """Build, compile and warm up a jitted, donated step (``adamx.step`` for ``adamx``,
    ``update`` + ``apply_updates`` for the others), its in-loop version and the no-op."""
    import jax
    import optax

    import adamx

    jax.block_until_ready(jax.jit(lambda x: x + 1)(np.float32(0)))  # start the runtime
    name = spec["contender"]
    kernel = None
    if name == "adamx" or name in workloads.STORAGE_CONTENDERS:
        # Build (first use ever: seconds) or load the fused kernel now, so that the trace
        # and compile times below do not include a C++ build. Before the baseline: the
        # loaded library counts with the runtime's code.
        t0 = time.perf_counter()
        k = adamx.kernel_info()
        kernel = {
            "available": k.available,
            "reason": k.reason,
            "path": k.path,
            "build_s": k.build_seconds,
            "info_s": time.perf_counter() - t0,
        }
    baseline_kb = (proc_status_kb("VmRSS"), proc_status_kb("RssAnon"))

    h = workloads.HYPER[spec["optimizer"]]
    lib = adamx if name.startswith("adamx") else optax
    # adamx xla: adamx's own optimizer on the XLA path (what its fused kernel replaces).
    xla_only = {"fused": False} if name == "adamx xla" else {}
    opt = {
        "adam": lambda: lib.adam(h["lr"], b1=h["b1"], b2=h["b2"], eps=h["eps"], **xla_only),
        "adamw": lambda: lib.adamw(
            h["lr"],
            b1=h["b1"],
            b2=h["b2"],
            eps=h["eps"],
            weight_decay=h["weight_decay"],
            **xla_only,
        ),
        "amsgrad": lambda: lib.amsgrad(h["lr"], b1=h["b1"], b2=h["b2"], eps=h["eps"]),
        "lion": lambda: lib.lion(h["lr"], b1=h["b1"], b2=h["b2"], weight_decay=0.0, **xla_only),
        "sgd": lambda: lib.sgd(h["lr"], momentum=h["momentum"], **xla_only),
    }[spec["optimizer"].removesuffix(" storage")]()  # case (e) is Adam, stored otherwise
    if name in workloads.STORAGE_CONTENDERS:  # case (e): the moments in another storage
        policies = {  # "8bit nearest": 8-bit codes rounded to nearest (adamx 0.2's)
            moment: adamx.storage.blockwise8(stochastic_rounding=False)
            if policy == "8bit nearest"
            else policy
            for moment, policy in workloads.STORAGE_CONTENDERS[name].items()
        }
        opt = adamx.with_storage(opt, **policies)

    shapes = workloads.workload_shapes(spec["workload"], spec["quick"])
    treedef = jax.tree_util.tree_structure(shapes, is_leaf=lambda x: isinstance(x, tuple))
    # One leaf at a time into jax (jnp.array copies, so the buffers belong to jax and
    # donation can reuse them), so the numpy copies never add up.
    leaves = [(jax.numpy.array(p), jax.numpy.array(g)) for p, g in numpy_leaves(spec)]
    params = treedef.unflatten([p for p, _ in leaves])
    grads = treedef.unflatten([g for _, g in leaves])
    del leaves
    state = jax.jit(opt.init)(params)
    jax.block_until_ready(state)
    buffers = jax.tree_util.tree_leaves((params, grads, state))
    pgs_bytes = sum(x.nbytes for x in buffers)

    # adamx.step: float32 Adam's kernel ("adamx") and the stored-moments kernel (the
    # storage contenders without " xla"); the others: update + apply_updates.
    if name == "adamx" or (name in workloads.STORAGE_CONTENDERS and not name.endswith(" xla")):

        def step(params, state, grads):
            return adamx.step(opt, grads, state, params)

    else:

        def step(params, state, grads):
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state

    def loop(params, state, grads, n):
        """``n`` steps in one program (``n`` is traced: one compile for any count)."""

        def body(_, carry):
            params, state = carry
            # The barrier hides from XLA that the gradients are the same at every
            # iteration; else it hoists work on them (g * g, for v) out of the loop, and
            # an iteration would be less than a step.
            params, g = jax.lax.optimization_barrier((params, grads))
            return step(params, state, g)

        return jax.lax.fori_loop(0, n, body, (params, state))

    t0 = time.perf_counter()
    lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    analysis = compiled.memory_analysis()
    xla = None
    if analysis is not None:
        xla = {
            "argument_bytes": analysis.argument_size_in_bytes,
            "output_bytes": analysis.output_size_in_bytes,
            "alias_bytes": analysis.alias_size_in_bytes,
            "temp_bytes": analysis.temp_size_in_bytes,
        }

    hlo = compiled.as_text()
    leaf_sizes = {x.size for x in jax.tree_util.tree_leaves(params)}
    moved, loops = hlo_traffic(hlo, leaf_sizes)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    n_leaves = len(jax.tree_util.tree_leaves(params))

    carry = {"params": params, "state": state}
    del params, state

    def run_step() -> None:
        carry["params"], carry["state"] = compiled(carry["params"], carry["state"], grads)
        jax.block_until_ready(carry["params"])

    t3 = time.perf_counter()
    run_step()
    first_step_s = time.perf_counter() - t3

    # The same step, loop_steps times in one call (no Python dispatch between steps), and
    # a no-op with the same donated trees (the dispatch alone). Compiled after the step's
    # timings, so they do not disturb them.
    t4 = time.perf_counter()
    looped = (
        jax.jit(loop, donate_argnums=(0, 1))
        .lower(carry["params"], carry["state"], grads, np.int32(1))
        .compile()
    )
    loop_compile_s = time.perf_counter() - t4
    loop_analysis = looped.memory_analysis()
    noop = (
        jax.jit(lambda p, s, g: (p, s), donate_argnums=(0, 1))
        .lower(carry["params"], carry["state"], grads)
        .compile()
    )
    k_steps = np.int32(spec["loop_steps"])

    def run_loop(n=k_steps) -> None:
        carry["params"], carry["state"] = looped(carry["params"], carry["state"], grads, n)
        jax.block_until_ready(carry["params"])

    def run_noop() -> None:
        carry["params"], carry["state"] = noop(carry["params"], carry["state"], grads)
        jax.block_until_ready(carry["params"])

    run_loop(np.int32(1))  # the first call of each program pays one-off costs
    run_noop()
    extra = {"loop": run_loop, "noop": run_noop, "loop_steps": int(k_steps)}

    info = {
        "trace_lower_s": t1 - t0,
        "xla_compile_s": t2 - t1,
        "compile_s": t2 - t0,
        "first_step_s": first_step_s,
        "loop_compile_s": loop_compile_s,
        "loop_steps": int(k_steps),
        "xla_memory": xla,
        "loop_temp_bytes": loop_analysis.temp_size_in_bytes if loop_analysis else None,
        "hlo_bytes_per_param": moved / n_params,
        "hlo_loops_per_leaf": loops / n_leaves,
        "kernel_calls": kernel_calls(hlo),
        "loop_kernel_calls": kernel_calls(looped.as_text()),
        "kernel": kernel,
        "threads": None,
        "platform": jax.devices()[0].platform,
    }
    return run_step, baseline_kb, pgs_bytes, info, extra


def torch_contender(spec: dict):
    """Build a ``torch.optim`` optimizer with ``fused=True`` or ``foreach=True``."""
    import torch

    torch.ones(1).add_(1)
    baseline_kb = (proc_status_kb("VmRSS"), proc_status_kb("RssAnon"))

    h = workloads.HYPER[spec["optimizer"]]
    mode = {"fused": True} if spec["contender"] == "torch fused" else {"foreach": True}
    params = []
    for p, g in numpy_leaves(spec):
        tensor = torch.from_numpy(p).requires_grad_()  # shares numpy's buffer: no copy
        tensor.grad = torch.from_numpy(g)
        params.append(tensor)
    betas = (h.get("b1", 0.9), h.get("b2", 0.999))
    opt = {
        "adam": lambda: torch.optim.Adam(params, h["lr"], betas, h["eps"], **mode),
        "adamw": lambda: torch.optim.AdamW(
            params, h["lr"], betas, h["eps"], weight_decay=h["weight_decay"], **mode
        ),
        "amsgrad": lambda: torch.optim.Adam(params, h["lr"], betas, h["eps"], amsgrad=True, **mode),
        "sgd": lambda: torch.optim.SGD(params, h["lr"], momentum=h["momentum"], **mode),
    }[spec["optimizer"]]()

    t0 = time.perf_counter()
    opt.step()  # allocates the state
    first_step_s = time.perf_counter() - t0
    state = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    tensors = params + [p.grad for p in params] + state
    pgs_bytes = sum(t.numel() * t.element_size() for t in tensors)
    info = {
        "trace_lower_s": None,
        "xla_compile_s": None,
        "compile_s": None,
        "first_step_s": first_step_s,
        "xla_memory": None,
        "hlo_bytes_per_param": None,
        "hlo_loops_per_leaf": None,
        "threads": torch.get_num_threads(),
        "platform": "cpu",
    }
    return opt.step, baseline_kb, pgs_bytes, info, None


def main() -> None:
    spec = json.loads(sys.argv[1])
    build = torch_contender if spec["contender"].startswith("torch") else jax_contender
    run_step, baseline_kb, pgs_bytes, info, extra = build(spec)
    for _ in range(spec["warmup"]):
        run_step()
    release_free_heap()
    before_steps_kb = proc_status_kb("VmRSS")
    setup_peak_kb = proc_status_kb("VmHWM")
    peak_was_reset = reset_peak_rss()
    answer(
        ready=True,
        baseline_kb=baseline_kb[0],
        baseline_anon_kb=baseline_kb[1],
        before_steps_anon_kb=proc_status_kb("RssAnon"),
        pgs_bytes=pgs_bytes,
        **info,
    )

    def timed(call, n: int, per: int = 1, cpu: list | None = None) -> list[float]:
        """Wall seconds of ``n`` calls (per step); the CPU seconds of this process's threads
        per step go to ``cpu`` (unlike the wall time, they barely grow when other processes
        share the cores)."""
        times = []
        for _ in range(n):
            c0, t0 = time.process_time(), time.perf_counter()
            call()
            times.append((time.perf_counter() - t0) / per)
            if cpu is not None:
                cpu.append((time.process_time() - c0) / per)
        return times

    cpu_s = wall_s = 0.0
    # The high-water marks of the plain steps and of the loop visits, kept apart: before a
    # loop visit the mark so far is the steps', and it is reset again after the visit.
    peak_steps_kb, peak_loop_kb = 0, None
    for line in sys.stdin:
        command = line.split()
        if command[0] == "run":
            c0, w0 = time.process_time(), time.perf_counter()
            cpu_times: list[float] = []
            times = timed(run_step, int(command[1]), cpu=cpu_times)
            cpu_s += time.process_time() - c0
            wall_s += time.perf_counter() - w0
            answer(times=times, cpu_times=cpu_times)
        elif command[0] == "loop":
            peak_steps_kb = max(peak_steps_kb, proc_status_kb("VmHWM"))
            reset_peak_rss()
            loop_times = timed(extra["loop"], int(command[1]), extra["loop_steps"])
            floor_times = timed(extra["noop"], int(command[2]))
            peak_loop_kb = max(peak_loop_kb or 0, proc_status_kb("VmHWM"))
            reset_peak_rss()
            answer(loop_times=loop_times, floor_times=floor_times)
        elif command[0] == "quit":
            answer(
                before_steps_kb=before_steps_kb,
                setup_peak_kb=setup_peak_kb,
                peak_steps_kb=max(peak_steps_kb, proc_status_kb("VmHWM")),
                peak_loop_kb=peak_loop_kb,
                peak_was_reset=peak_was_reset,
                cores_busy=cpu_s / wall_s if wall_s else None,
            )
            return


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
