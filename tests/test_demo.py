"""The digits demo: data loading, the training function, and the ``python -m adamx`` CLI."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adamx import demo

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def default_softmax_runs():
    """Softmax regression at the CLI's defaults, with adam and with plain SGD."""
    return {opt: demo.train("softmax", opt) for opt in ("adam", "sgd")}


# ----------------------------------------------------------------------------- data


def test_load_digits_shapes_ranges_and_labels():
    x, y = demo.load_digits()
    assert x.shape == (1797, 64)
    assert x.dtype == np.float32
    assert y.shape == (1797,)
    assert np.issubdtype(y.dtype, np.integer)
    assert x.min() == 0.0 and x.max() == 1.0
    # pixel counts 0..16 scaled by 1/16: every value is a multiple of 1/16
    np.testing.assert_array_equal(x * 16, np.round(x * 16))
    assert set(np.unique(y).tolist()) == set(range(10))
    counts = np.bincount(y, minlength=10)
    assert counts.sum() == 1797
    assert counts.min() >= 170 and counts.max() <= 190, counts


def test_train_test_split_is_deterministic_stratified_and_disjoint():
    x, y = demo.load_digits()
    x_tr, y_tr, x_te, y_te = demo.train_test_split(x, y, seed=3)
    again = demo.train_test_split(x, y, seed=3)
    for a, b in zip((x_tr, y_tr, x_te, y_te), again):
        np.testing.assert_array_equal(a, b)
    assert len(x_tr) + len(x_te) == 1797
    assert len(x_te) == pytest.approx(0.2 * 1797, abs=10)
    # every class is held out in proportion
    share = np.bincount(y_te, minlength=10) / np.bincount(y, minlength=10)
    np.testing.assert_allclose(share, 0.2, atol=0.01)
    # no image is in both sets: rows with their labels are a partition of the data
    rows = {tuple(r) for r in np.concatenate([x_tr, y_tr[:, None]], axis=1)}
    test_rows = {tuple(r) for r in np.concatenate([x_te, y_te[:, None]], axis=1)}
    full = {tuple(r) for r in np.concatenate([x, y[:, None]], axis=1)}
    assert rows | test_rows == full
    other = demo.train_test_split(x, y, seed=4)
    assert not np.array_equal(other[1], y_tr)


def test_train_test_split_rejects_bad_fraction():
    x, y = demo.load_digits()
    with pytest.raises(ValueError, match="test_fraction"):
        demo.train_test_split(x, y, test_fraction=1.0)


# ----------------------------------------------------------------------------- training


def test_default_softmax_adam_reaches_90_percent(default_softmax_runs):
    result = default_softmax_runs["adam"]
    assert result.example == "softmax" and result.optimizer == "adam"
    assert result.steps == demo.DEFAULT_STEPS
    assert result.learning_rate == demo.DEFAULT_LEARNING_RATES["adam"]
    assert len(result.losses) == demo.DEFAULT_STEPS
    assert all(math.isfinite(v) for v in result.losses)
    assert result.losses[0] == pytest.approx(math.log(10), rel=1e-5)  # zero init: uniform
    assert result.final_loss < result.losses[0]
    assert result.steps_per_second > 0
    assert result.test_accuracy >= 0.90


def test_adam_beats_or_matches_sgd_on_softmax_at_defaults(default_softmax_runs):
    adam, sgd = default_softmax_runs["adam"], default_softmax_runs["sgd"]
    assert sgd.learning_rate == demo.DEFAULT_LEARNING_RATES["sgd"]
    assert adam.final_loss <= sgd.final_loss


def test_sgd_is_plain_gradient_descent():
    """One SGD step moves the zero-initialised softmax weights by -lr * gradient."""
    import jax

    x, y = demo.load_digits()
    data = demo.train_test_split(x, y, seed=0)
    result = demo.train("softmax", "sgd", steps=1, learning_rate=0.5, data=data)
    params = demo._init_softmax(jax.random.key(0))
    grads = jax.grad(demo._softmax_loss)(params, data[0], data[1])
    np.testing.assert_allclose(result.params["w"], -0.5 * grads["w"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.params["b"], -0.5 * grads["b"], rtol=1e-5, atol=1e-7)


def test_mlp_trains_with_both_optimizers():
    x, y = demo.load_digits()
    data = demo.train_test_split(x, y, seed=1)
    for opt in ("adam", "sgd"):
        result = demo.train("mlp", opt, steps=60, seed=1, data=data)
        assert result.final_loss < result.losses[0]
        assert result.test_accuracy > 0.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"example": "cnn"}, "example"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"steps": 0}, "steps"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
    ],
)
def test_train_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        demo.train(**kwargs)


# ----------------------------------------------------------------------------- CLI


def test_cli_runs_and_writes_png(tmp_path, capsys):
    plot = tmp_path / "curves.png"
    assert demo.main(["--steps", "5", "--seed", "1", "--plot", str(plot)]) == 0
    assert plot.is_file()
    data = plot.read_bytes()
    assert len(data) > 1000
    assert data.startswith(PNG_MAGIC)
    out, err = capsys.readouterr()
    for text in ("final train loss", "test accuracy", "steps/s", "softmax regression", "MLP"):
        assert text in out
    table = out[out.index("final train loss") :]
    assert table.count("adam") == 2 and table.count("sgd") == 2
    assert str(plot) in out
    assert "100.0%" in err  # the progress bar finished, on stderr


def test_cli_one_optimizer_and_learning_rate(capsys):
    assert demo.main(["--optimizer", "sgd", "--steps", "3", "--learning-rate", "0.05"]) == 0
    out, _ = capsys.readouterr()
    table = out[out.index("final train loss") :]
    assert "sgd" in table and "adam" not in table
    assert "0.05" in table


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--steps", "0"], "--steps"),
        (["--steps", "-3"], "--steps"),
        (["--steps", "ten"], "--steps"),
        (["--learning-rate", "-0.1"], "--learning-rate"),
        (["--learning-rate", "0"], "--learning-rate"),
        (["--learning-rate", "nan"], "--learning-rate"),
        (["--optimizer", "rmsprop"], "--optimizer"),
        (["--seed", "-1"], "--seed"),
        (["--plot", "/nonexistent-adamx-dir/curves.png"], "--plot"),
        (["--bogus"], "--bogus"),
    ],
)
def test_cli_bad_flags_exit_with_usage_error(argv, flag, capsys):
    with pytest.raises(SystemExit) as excinfo:
        demo.main(argv)
    assert excinfo.value.code == 2
    out, err = capsys.readouterr()
    assert "error:" in err and flag in err
    assert out == ""  # failed before any training


def test_python_dash_m_adamx():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "adamx", "--optimizer", "adam", "--steps", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout
