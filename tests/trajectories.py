"""Comparing trajectories (lists of param trees, one per step) in the tests."""

from __future__ import annotations

import jax
import numpy as np


def stack(trajectory) -> list[np.ndarray]:
    """A list of trees -> one float64 array of shape ``(steps, *leaf.shape)`` per leaf."""
    per_step = [jax.tree_util.tree_leaves(t) for t in trajectory]
    return [
        np.stack([np.asarray(s[i], np.float64) for s in per_step]) for i in range(len(per_step[0]))
    ]


def assert_trajectories_close(got, want, rtol: float, atol: float = 0.0) -> None:
    """Compare two trajectories step by step; name the first step and leaf that differ."""
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(want[0])[0]]
    for path, g, w in zip(paths, stack(got), stack(want)):
        bad = ~(np.abs(g - w) <= atol + rtol * np.abs(w))
        if bad.any():
            step = int(np.argwhere(bad)[0][0])
            np.testing.assert_allclose(
                g[step],
                w[step],
                rtol=rtol,
                atol=atol,
                err_msg=f"params{path} after step {step + 1} of {len(got)}",
            )


def max_rel_error(got, want, atol: float = 0.0) -> float:
    """The largest ``|got - want| / (atol + |want|)`` over every step and element."""
    return max(
        float(np.max(np.abs(g - w) / (atol + np.abs(w)))) for g, w in zip(stack(got), stack(want))
    )
