"""The command line: ``python -m adamx``."""

from __future__ import annotations

import argparse
import importlib.resources
import importlib.util
import math
import os
from collections.abc import Sequence

import jax

from adamx.demo._data import load_digits, train_test_split
from adamx.demo._defaults import (
    DEFAULT_LEARNING_RATES,
    DEFAULT_OPTIMIZERS,
    DEFAULT_STEPS,
    EXAMPLES,
    OPTIMIZERS,
)
from adamx.demo._report import format_table, plot_losses
from adamx.demo._train import Progress, train

# --------------------------------------------------------------------------- CLI


def _int_at_least(low: int):
    """An argparse type: an integer ``>= low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {low}, got {text!r}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _optimizer_list(text: str) -> tuple[str, ...]:
    """``--compare``: comma-separated names from :data:`OPTIMIZERS`, or ``all``."""
    if text.strip().lower() == "all":
        return OPTIMIZERS
    names = [part.strip() for part in text.split(",")]
    if not any(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated optimizer names, got {text!r}")
    choices = ", ".join(OPTIMIZERS)
    for name in names:
        if not name:
            raise argparse.ArgumentTypeError(f"empty optimizer name in {text!r}")
        if name not in OPTIMIZERS:
            raise argparse.ArgumentTypeError(
                f"unknown optimizer {name!r} (choose from {choices}; or 'all')"
            )
    return tuple(dict.fromkeys(names))  # in the order given, without repeats


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m adamx`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m adamx",
        description=(
            "Train softmax regression and a two-layer MLP on the UCI 8x8 handwritten digits "
            "(shipped with adamx), full batch, with adamx.adam and plain gradient descent "
            "(adamx.sgd), or with any other adamx optimizer, and print a table of the "
            "results."
        ),
        epilog="optimizers: " + ", ".join(OPTIMIZERS),
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--optimizer",
        choices=(*OPTIMIZERS, "both"),
        default=None,
        metavar="NAME",
        help=(
            "train with this one optimizer, any name listed below, or 'both' for adam and "
            "sgd (default: both)"
        ),
    )
    which.add_argument(
        "--compare",
        type=_optimizer_list,
        nargs="?",
        const=OPTIMIZERS,
        default=None,
        metavar="NAMES",
        help=(
            "train with several optimizers, comma-separated (e.g. adam,lion,sgd; 'all' or "
            "no value: every one), and print one table; not with --optimizer"
        ),
    )
    parser.add_argument(
        "--steps",
        type=_int_at_least(1),
        default=DEFAULT_STEPS,
        help=f"full-batch steps per run (default: {DEFAULT_STEPS})",
    )
    parser.add_argument(
        "--learning-rate",
        type=_positive_float,
        default=None,
        metavar="LR",
        help=(
            "learning rate for every chosen optimizer (default: each its own, "
            + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LEARNING_RATES.items())
            + ")"
        ),
    )
    parser.add_argument(
        "--seed",
        type=_int_at_least(0),
        default=0,
        help="seed of the data split and the MLP init (default: 0)",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        default=None,
        help="write the loss curves of every run to this image file (needs matplotlib)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo with command-line arguments ``argv`` (default ``sys.argv[1:]``).

    Returns:
      0 on success. Bad arguments exit through ``argparse`` with ``SystemExit(2)``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.plot is not None:
        parent = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(parent):
            parser.error(f"--plot: directory {parent!r} does not exist")
        if importlib.util.find_spec("matplotlib") is None:
            parser.error("--plot needs matplotlib: pip install 'adamx[demo]'")

    if args.compare is not None:
        optimizers = args.compare
    elif args.optimizer in (None, "both"):
        optimizers = DEFAULT_OPTIMIZERS
    else:
        optimizers = (args.optimizer,)
    data = train_test_split(*load_digits(), seed=args.seed)
    print(
        f"UCI digits: {len(data[0])} train / {len(data[2])} test images, 8x8; "
        f"{args.steps} full-batch steps per run; jax {jax.__version__} on "
        f"{jax.default_backend()}"
    )
    # one loss line per run when comparing, else five
    log_every = args.steps if args.compare is not None else max(args.steps // 5, 1)
    runs = [(e, o) for e in EXAMPLES for o in optimizers]
    progress = Progress(args.steps * len(runs))
    results = []
    for example, optimizer in runs:
        progress.set_label(f"{example}/{optimizer}")
        results.append(
            train(
                example,
                optimizer,
                steps=args.steps,
                learning_rate=args.learning_rate,
                seed=args.seed,
                data=data,
                log_every=log_every,
                progress=progress,
            )
        )
    progress.close()

    print()
    print(format_table(results))
    if args.plot is not None:
        plot_losses(results, args.plot)
        print(f"\nloss curves written to {args.plot}")
    return 0
