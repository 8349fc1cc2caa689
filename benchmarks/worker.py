"""One contender (adamx, optax, torch fused or torch foreach) on one case, in its own process.

Started by ``run.py`` under ``/usr/bin/time -v`` so that its peak RSS is its own. It builds
the workload, compiles the step, warms up, then obeys commands on stdin, one per line:

  ``run K``  time K steps, one by one, and answer the list of seconds
  ``quit``   answer the memory figures of the timed steps and exit

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


def hlo_traffic(hlo: str) -> tuple[int, int]:
    """Model the memory traffic of a compiled program from its optimized HLO text: every
    top-level fusion, copy or other op reads its operands once and writes its outputs once.

    Returns (bytes moved, number of ops writing an array, i.e. the loops over memory)."""
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
        moved += sizes[name] + sum(sizes.get(o, 0) for o in re.findall(r"%([\w.\-]+)", operands))
        loops += any(n > 1 for n in arrays)
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
    """Build, compile and warm up a jitted, donated ``update + apply_updates`` step."""
    import jax
    import optax

    import adamx

    jax.block_until_ready(jax.jit(lambda x: x + 1)(np.float32(0)))  # start the runtime
    baseline_kb = (proc_status_kb("VmRSS"), proc_status_kb("RssAnon"))

    h = workloads.HYPER[spec["optimizer"]]
    lib = adamx if spec["contender"] == "adamx" else optax
    opt = {
        "adam": lambda: lib.adam(h["lr"], b1=h["b1"], b2=h["b2"], eps=h["eps"]),
        "adamw": lambda: lib.adamw(
            h["lr"], b1=h["b1"], b2=h["b2"], eps=h["eps"], weight_decay=h["weight_decay"]
        ),
        "amsgrad": lambda: lib.amsgrad(h["lr"], b1=h["b1"], b2=h["b2"], eps=h["eps"]),
        "lion": lambda: lib.lion(h["lr"], b1=h["b1"], b2=h["b2"], weight_decay=0.0),
        "sgd": lambda: lib.sgd(h["lr"], momentum=h["momentum"]),
    }[spec["optimizer"]]()

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

    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

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

    moved, loops = hlo_traffic(compiled.as_text())
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
    info = {
        "trace_lower_s": t1 - t0,
        "xla_compile_s": t2 - t1,
        "compile_s": t2 - t0,
        "first_step_s": first_step_s,
        "xla_memory": xla,
        "hlo_bytes_per_param": moved / n_params,
        "hlo_loops_per_leaf": loops / n_leaves,
        "threads": None,
        "platform": jax.devices()[0].platform,
    }
    return run_step, baseline_kb, pgs_bytes, info


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
    return opt.step, baseline_kb, pgs_bytes, info


def main() -> None:
    spec = json.loads(sys.argv[1])
    build = torch_contender if spec["contender"].startswith("torch") else jax_contender
    run_step, baseline_kb, pgs_bytes, info = build(spec)
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

    cpu_s = wall_s = 0.0
    for line in sys.stdin:
        command = line.split()
        if command[0] == "run":
            times = []
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(int(command[1])):
                t0 = time.perf_counter()
                run_step()
                times.append(time.perf_counter() - t0)
            cpu_s += time.process_time() - c0
            wall_s += time.perf_counter() - w0
            answer(times=times)
        elif command[0] == "quit":
            answer(
                before_steps_kb=before_steps_kb,
                setup_peak_kb=setup_peak_kb,
                peak_steps_kb=proc_status_kb("VmHWM"),
                peak_was_reset=peak_was_reset,
                cores_busy=cpu_s / wall_s if wall_s else None,
            )
            return


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
