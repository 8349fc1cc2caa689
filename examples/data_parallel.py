"""Data-parallel training of the demo's MLP with adamx, over one or several processes.

The model, data and loss are those of ``python -m adamx`` (:mod:`adamx.demo`): the
two-layer MLP (64 -> 64 tanh -> 10, mean squared error against one-hot targets) on the
8x8 UCI digits. Every step takes a global minibatch of ``--batch-size`` training rows;
each process feeds only its own contiguous slice of it. The parameters and the
optimizer state are replicated on every device, the batch is sharded over a one-axis
mesh ``("data",)`` spanning the devices of all processes, and one jitted step computes
the gradient of the mean loss over the *global* batch (XLA inserts the all-reduce that
averages the per-process gradients) and applies ``adamx.step(adamx.adam(lr), ...)``.
Every process therefore holds the same parameters after every step, equal to those of
the same training on one process (up to the order of the float32 gradient sums).

Run on one machine (CPU, two processes talking through JAX's gloo CPU collectives)::

    python examples/data_parallel.py --process-id 0 --num-processes 2 \\
        --coordinator localhost:12355 --steps 100 --out params.npz &
    python examples/data_parallel.py --process-id 1 --num-processes 2 \\
        --coordinator localhost:12355 --steps 100

and the same training in one process (no coordinator)::

    python examples/data_parallel.py --num-processes 1 --steps 100 --out params1.npz

Use one CPU device per process (do not set ``--xla_force_host_platform_device_count``
in ``XLA_FLAGS`` together with several processes: CPU collectives with several local
devices per process can hang, cf. openxla/xla#16430).

On a multi-host GPU or TPU cluster the same code runs unchanged with ``--cluster``:
start one process per host (``srun``/``mpirun``/the TPU VM's per-worker launch) and
``jax.distributed.initialize()`` is called without arguments, so it detects the
coordinator, the number of processes and this process's id itself (Cloud TPU, SLURM,
Open MPI; elsewhere pass ``--coordinator``, ``--num-processes`` and ``--process-id``).
Each process then sees all of its host's accelerators as local devices, the mesh spans
every device of every host, each host loads only its slice of the global batch
(``jax.make_array_from_process_local_data`` splits it further over the host's devices),
and the gradient all-reduce runs over NCCL on GPUs or ICI/DCN on TPUs instead of gloo.
The global batch size must be a multiple of the total number of devices.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import adamx
from adamx import demo
from adamx.demo import _models

# The demo's MLP: ``_init_mlp``/``_mlp_loss``/``_mlp_outputs`` are private helpers of
# adamx.demo; they are imported here on purpose so that this example trains exactly the
# demo's model (they are not part of adamx's public API and may change with it).
init_mlp = _models._init_mlp
mlp_loss = _models._mlp_loss
mlp_outputs = _models._mlp_outputs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--process-id", type=int, default=0, help="this process's rank")
    parser.add_argument("--num-processes", type=int, default=1, help="number of processes")
    parser.add_argument(
        "--coordinator", default=None, help="HOST:PORT of process 0 (with --num-processes > 1)"
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="call jax.distributed.initialize() without arguments (Cloud TPU, SLURM, MPI)",
    )
    parser.add_argument(
        "--init-timeout", type=int, default=120, help="seconds to wait for all processes"
    )
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size")
    parser.add_argument("--learning-rate", type=float, default=1e-2, help="Adam's lr")
    parser.add_argument("--seed", type=int, default=0, help="seed of init and data order")
    parser.add_argument("--out", default=None, help="write the final params here (.npz)")
    return parser


def initialize(args: argparse.Namespace) -> None:
    """Join the other processes (no-op for a single process)."""
    if args.cluster:
        jax.distributed.initialize(initialization_timeout=args.init_timeout)
    elif args.num_processes > 1:
        if args.coordinator is None:
            raise SystemExit("--coordinator HOST:PORT is required with --num-processes > 1")
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
            initialization_timeout=args.init_timeout,
        )


def batch_indices(num_rows: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """``(steps, batch_size)`` row indices: shuffled epochs, the same on every process."""
    rng = np.random.default_rng(seed)
    per_epoch = num_rows // batch_size
    epochs = -(-steps // per_epoch)
    order = np.concatenate(
        [rng.permutation(num_rows)[: per_epoch * batch_size] for _ in range(epochs)]
    )
    return order.reshape(-1, batch_size)[:steps]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    initialize(args)
    rank, nproc = jax.process_index(), jax.process_count()

    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))
    if args.batch_size % len(jax.devices()):
        raise SystemExit(
            f"--batch-size {args.batch_size} must be a multiple of the {len(jax.devices())} devices"
        )

    # Every process reads the (small) data set and keeps only its slice of each global
    # batch; on a real cluster each host would read only its own shard of the data.
    x, y = demo.load_digits()
    x_train, y_train, x_test, y_test = demo.train_test_split(x, y, seed=args.seed)
    per_process = args.batch_size // nproc
    mine = slice(rank * per_process, (rank + 1) * per_process)

    opt = adamx.adam(args.learning_rate)
    params = jax.jit(init_mlp, out_shardings=replicated)(jax.random.key(args.seed))
    state = jax.jit(opt.init, out_shardings=replicated)(params)

    @jax.jit
    def step(params, state, xb, yb):
        # The mean over the global batch: its gradient is the average of the processes'
        # gradients, and XLA adds the all-reduce since xb/yb are sharded over "data".
        loss, grads = jax.value_and_grad(mlp_loss)(params, xb, yb)
        params, state = adamx.step(opt, grads, state, params)
        return params, state, loss

    t0 = time.perf_counter()
    for t, rows in enumerate(batch_indices(len(x_train), args.batch_size, args.steps, args.seed)):
        local = rows[mine]
        xb = jax.make_array_from_process_local_data(
            batch_sharding, x_train[local], (args.batch_size, x_train.shape[1])
        )
        yb = jax.make_array_from_process_local_data(
            batch_sharding, y_train[local], (args.batch_size,)
        )
        params, state, loss = step(params, state, xb, yb)
        if rank == 0 and (t % 25 == 0 or t == args.steps - 1):
            print(f"step {t:4d}  loss {float(loss):.5f}", flush=True)
    seconds = time.perf_counter() - t0

    # Params are replicated: every process holds the full values on its own devices.
    host = jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), params)
    predictions = np.argmax(np.asarray(mlp_outputs(host, jnp.asarray(x_test))), axis=-1)
    accuracy = float(np.mean(predictions == y_test))
    if rank == 0:
        print(
            f"{nproc} process(es), {len(jax.devices())} device(s): {args.steps} steps in "
            f"{seconds:.2f} s, test accuracy {accuracy:.4f}",
            flush=True,
        )
        if args.out is not None:
            flat = {
                "/".join(str(k.key) for k in path): leaf
                for path, leaf in jax.tree_util.tree_flatten_with_path(host)[0]
            }
            np.savez(args.out, **flat)
    if nproc > 1:
        jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
