"""The UCI handwritten digits shipped with the package, and their split."""

from __future__ import annotations

import gzip
import importlib.resources
import importlib.util

import numpy as np

from adamx.demo._defaults import NUM_FEATURES

# --------------------------------------------------------------------------- data


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Load the 8x8 handwritten digits shipped with adamx.

    The file is the test set of the UCI "Optical Recognition of Handwritten Digits"
    data (Alpaydin & Kaynak, 1998; CC BY 4.0), the same CSV scikit-learn ships: 1797
    rows of 64 pixel counts in ``0..16`` followed by the label. Nothing is downloaded.

    Returns:
      ``(X, y)``: ``X`` a float32 array of shape ``(1797, 64)`` scaled to ``[0, 1]``
      (pixel / 16), ``y`` an int32 array of shape ``(1797,)`` with labels ``0..9``.
    """
    resource = importlib.resources.files("adamx.demo") / "data" / "digits.csv.gz"
    with resource.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != NUM_FEATURES + 1:
        raise ValueError(
            f"digits.csv.gz should have {NUM_FEATURES + 1} columns, found {table.shape[1]}."
        )
    x = (table[:, :NUM_FEATURES].astype(np.float32) / np.float32(16.0)).astype(np.float32)
    y = table[:, NUM_FEATURES].astype(np.int32)
    return x, y


def train_test_split(
    x: np.ndarray, y: np.ndarray, *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split into train and test sets, stratified by label and deterministic in ``seed``.

    From every class, ``round(test_fraction * count)`` examples (chosen by a
    ``numpy.random.default_rng(seed)`` permutation) go to the test set, the rest to the
    training set; both sets are then shuffled with the same generator.

    Args:
      x: the inputs, one row per example.
      y: the integer labels, shape ``(len(x),)``.
      test_fraction: the share of every class held out, in ``(0, 1)``. Default 0.2.
      seed: the seed of the split. Default 0.

    Returns:
      ``(x_train, y_train, x_test, y_test)``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must lie in (0, 1), got {test_fraction!r}.")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}.")
    rng = np.random.default_rng(seed)
    test_idx: list[np.ndarray] = []
    train_idx: list[np.ndarray] = []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_test = int(round(test_fraction * len(idx)))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train = rng.permutation(np.concatenate(train_idx))
    test = rng.permutation(np.concatenate(test_idx))
    return x[train], y[train], x[test], y[test]
