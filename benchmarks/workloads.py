"""What the benchmark measures: the workloads' shapes, the optimizers and their peers.

Shared by ``run.py`` (the orchestrator) and ``worker.py`` (one contender in one process).
Nothing here imports jax or torch, so the orchestrator stays light.
"""

from __future__ import annotations

import math

# Bytes moved per parameter by one ideal single-pass step (see ../shared/REFERENCE.md):
#   adam, adamw: read p g m v, write p m v            -> 7 x 4 B = 28
#   amsgrad:     read p g m v vmax, write p m v vmax  -> 9 x 4 B = 36
#   lion, sgd:   read p g buf, write p buf            -> 5 x 4 B = 20
BYTES_PER_PARAM = {
    "adam": 28,
    "adam storage": 28,
    "adamw": 28,
    "amsgrad": 36,
    "lion": 20,
    "sgd": 20,
}

# One set of hyperparameters per optimizer, passed unchanged to every contender.
HYPER = {
    "adam": dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8),
    "adam storage": dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8),
    "adamw": dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2),
    "amsgrad": dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8),
    "lion": dict(lr=1e-4, b1=0.9, b2=0.99, weight_decay=0.0),
    "sgd": dict(lr=1e-2, momentum=0.9),
}

# The contenders, in table order. "adamx" is ``adamx.step`` (the fused CPU kernel for Adam
# and AdamW where it applies); "adamx xla" is adamx's update + optax.apply_updates with
# ``fused=False``, the XLA path the kernel replaces.
CONTENDERS = ("adamx", "adamx xla", "optax", "torch fused", "torch foreach")
JAX_CONTENDERS = ("adamx", "adamx xla", "optax")

# The optimizers that adamx.step runs through a fused kernel (Adam's, or Lion's and SGD's);
# for the others adamx.step is update + apply_updates already, so "adamx xla" would time the
# same program twice.
FUSED_OPTIMIZERS = ("adam", "adamw", "adam storage", "lion", "sgd")

# Case (e): Adam with its moments stored through adamx.with_storage (issue 6), next to
# float32 Adam (fused and XLA). Each policy twice: "adamx <policy>" is adamx.step (the
# stored-moments kernel where it applies: bf16, bf16 sr, 8bit; factored nu has none and
# takes the XLA path), "adamx <policy> xla" is update + apply_updates (the XLA path).
STORAGE_POLICIES = {
    "bf16": dict(mu="bfloat16", nu="bfloat16"),
    "bf16 sr": dict(mu="bfloat16_sr", nu="bfloat16_sr"),
    "8bit": dict(mu="8bit", nu="8bit"),
    "8bit nearest": dict(
        mu="8bit nearest", nu="8bit nearest"
    ),  # blockwise8(stochastic_rounding=False)
    "factored nu": dict(nu="factored"),
}
STORAGE_KERNELS = ("bf16", "bf16 sr", "8bit", "8bit nearest")
STORAGE_CONTENDERS = {}
for _name, _policy in STORAGE_POLICIES.items():
    STORAGE_CONTENDERS[f"adamx {_name}"] = _policy
    if _name in STORAGE_KERNELS:
        STORAGE_CONTENDERS[f"adamx {_name} xla"] = _policy
# Cases (a)-(c): Adam with its moments in one flat buffer each (issue 15 item 4), through
# adamx.step (the float32 kernel on the buffers): 4 moment arrays in and out of the step
# instead of 2 per leaf.
FLAT = "adamx flat"
STORAGE_CONTENDERS[FLAT] = dict(mu="flat", nu="flat")
CONTENDERS = CONTENDERS[:2] + tuple(STORAGE_CONTENDERS) + CONTENDERS[2:]
JAX_CONTENDERS = JAX_CONTENDERS[:2] + tuple(STORAGE_CONTENDERS) + JAX_CONTENDERS[2:]


def storage_xla_peer(name: str) -> str | None:
    """The XLA-path contender of a storage policy timed through adamx.step, if any."""
    peer = f"{name} xla"
    return peer if name in STORAGE_CONTENDERS and peer in STORAGE_CONTENDERS else None


def contenders_for(optimizer: str, has_torch: bool) -> list[str]:
    """Who runs a case: adamx and optax always; adamx xla where adamx has a kernel (Adam,
    AdamW, Lion, SGD with momentum); torch fused where torch.optim has the optimizer (it has
    no Lion); torch foreach for Adam (workloads a, b, c) and SGD only, as for Adam-like
    rules it is 10-20x slower on CPU and would take most of the run's time budget."""
    if optimizer == "adam storage":
        return ["adamx", "adamx xla", *(c for c in STORAGE_CONTENDERS if c != FLAT)]
    both = ["torch fused", "torch foreach"]
    torch = {"adam": both, "sgd": both, "lion": []}.get(optimizer, ["torch fused"])
    xla = ["adamx xla"] if optimizer in FUSED_OPTIMIZERS else []
    flat = [FLAT] if optimizer == "adam" else []
    return ["adamx", *flat, *xla, "optax", *(torch if has_torch else [])]


# A case is an optimizer on a workload; (d) is four more optimizers on workload (a), and
# (f) the two of them that have kernels of their own (Lion, SGD with momentum), alone.
CASES = {
    "a": [("a", "adam")],
    "b": [("b", "adam")],
    "c": [("c", "adam")],
    "d": [("a", "adamw"), ("a", "amsgrad"), ("a", "lion"), ("a", "sgd")],
    "e": [("a", "adam storage")],
    "f": [("a", "lion"), ("a", "sgd")],
}

WORKLOAD_TITLES = {
    "a": "transformer-like pytree",
    "b": "1,000 small leaves",
    "c": "one 16M leaf",
}


def transformer_shapes(d: int, vocab: int, context: int, layers: int) -> dict:
    """A GPT-style parameter tree: embeddings, a final norm, and per block the fused qkv
    and output projections, the two MLP matrices and two layer norms (100 leaves for 12
    blocks)."""
    block = {
        "attn_qkv": (d, 3 * d),
        "attn_out": (d, d),
        "mlp_in": (d, 4 * d),
        "mlp_out": (4 * d, d),
        "ln1_scale": (d,),
        "ln1_bias": (d,),
        "ln2_scale": (d,),
        "ln2_bias": (d,),
    }
    return {
        "token_embed": (vocab, d),
        "pos_embed": (context, d),
        "ln_f_scale": (d,),
        "ln_f_bias": (d,),
        "blocks": [dict(block) for _ in range(layers)],
    }


def workload_shapes(workload: str, quick: bool) -> dict | list:
    """The tree of shapes of a workload: the full size, or a small one for ``--quick``."""
    if workload == "a":  # 100 leaves; 57.8M params (quick: 2.8M)
        if quick:
            return transformer_shapes(d=128, vocab=2048, context=256, layers=12)
        return transformer_shapes(d=576, vocab=16384, context=1024, layers=12)
    if workload == "b":  # 1,000 leaves of 10k params (quick: 200 of 5k)
        n, size = (200, 5_000) if quick else (1_000, 10_000)
        return [(size,) for _ in range(n)]
    if workload == "c":  # one leaf of 2**24 params (quick: 2**21)
        return {"w": (2**21 if quick else 2**24,)}
    raise ValueError(f"unknown workload {workload!r}: expected one of 'a', 'b', 'c'")


def leaf_shapes(tree) -> list[tuple[int, ...]]:
    """The shapes of a tree of shapes, in a fixed (depth-first, sorted-key) order."""
    if isinstance(tree, tuple):
        return [tree]
    items = (tree[k] for k in sorted(tree)) if isinstance(tree, dict) else tree
    return [shape for sub in items for shape in leaf_shapes(sub)]


def count_params(workload: str, quick: bool) -> tuple[int, int]:
    """(number of leaves, number of parameters) of a workload."""
    shapes = leaf_shapes(workload_shapes(workload, quick))
    return len(shapes), sum(math.prod(s) for s in shapes)
