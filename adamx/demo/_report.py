"""The demo's results as a table and as loss curves."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from adamx.demo._defaults import DEFAULT_OPTIMIZERS, EXAMPLE_TITLES, EXAMPLES, LOSS_NAMES
from adamx.demo._train import TrainResult

# --------------------------------------------------------------------------- output


def format_table(results: Sequence[TrainResult]) -> str:
    """The final table: example, optimizer, learning rate, final train loss, test
    accuracy and steps per second, one row per result."""
    header = ("example", "optimizer", "lr", "final train loss", "test accuracy", "steps/s")
    rows = [
        (
            EXAMPLE_TITLES[r.example],
            r.optimizer,
            "-" if r.learning_rate is None else f"{r.learning_rate:g}",
            f"{r.final_loss:.5f}",
            f"{100 * r.test_accuracy:.2f}%",
            f"{r.steps_per_second:,.0f}",
        )
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    left = {0, 1}

    def fmt(cells):
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    lines = [fmt(header), "  ".join("-" * w for w in widths)]
    lines += [fmt(row) for row in rows]
    return "\n".join(lines)


LINESTYLES = ("-", "--", ":", "-.")


TAB10 = [f"C{k}" for k in range(10)]
# matplotlib's tab20 colour map, its lighter shade of each tab10 colour
TAB20_LIGHT = ["#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
               "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"]  # fmt: skip


def line_styles(n: int) -> list[tuple[str, str]]:
    """``n`` distinct (colour, line style) pairs: the ten ``tab10`` colours solid, then
    dashed, dotted and dash-dotted, then the same with ``tab20``'s ten lighter shades (80
    pairs; past that they repeat)."""
    pairs = [(c, style) for shade in (TAB10, TAB20_LIGHT) for style in LINESTYLES
             for c in shade]  # fmt: skip
    return [pairs[i % len(pairs)] for i in range(n)]


def plot_losses(results: Sequence[TrainResult], path: str | os.PathLike) -> None:
    """Draw the training-loss curves, one panel per example, to the image file ``path``.

    Every optimizer keeps one colour in both panels. Imports matplotlib (with the
    non-interactive Agg backend) only when called.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    examples = [e for e in EXAMPLES if any(r.example == e for r in results)]
    names = list(dict.fromkeys(r.optimizer for r in results))
    many = len(names) > 6
    styles = dict(zip(names, line_styles(len(names))))
    height = 4.2 + (0.17 * ((len(names) + 1) // 2) if many else 0.0)
    fig, axes = plt.subplots(1, len(examples), figsize=(5.5 * len(examples), height), squeeze=False)
    for ax, example in zip(axes[0], examples):
        for r in results:
            if r.example != example:
                continue
            lr = "" if r.learning_rate is None else f" (lr={r.learning_rate:g})"
            label = f"{r.optimizer}{lr}, test acc {100 * r.test_accuracy:.1f}%"
            ax.plot(
                np.arange(1, len(r.losses) + 1),
                r.losses,
                label=label,
                color=styles[r.optimizer][0],
                linestyle=styles[r.optimizer][1],
                linewidth=1.0 if many else 1.5,
            )
        ax.set_yscale("log")
        ax.set_title(EXAMPLE_TITLES[example])
        ax.set_xlabel("step (full batch)")
        ax.set_ylabel(f"training loss ({LOSS_NAMES[example]})")
        ax.grid(True, which="both", alpha=0.3)
        if many:  # below the panel, so that it hides no curve
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize="x-small")
        else:
            ax.legend()
    if set(names) == set(DEFAULT_OPTIMIZERS):
        title = "adamx.adam vs plain gradient descent on the UCI digits"
    elif len(names) <= 4:
        title = ", ".join(f"adamx.{name}" for name in names) + " on the UCI digits"
    else:
        title = f"{len(names)} adamx optimizers on the UCI digits"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
