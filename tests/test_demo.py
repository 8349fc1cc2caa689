"""The digits demo: data loading, the training function, and the ``python -m adamx`` CLI."""

import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx
from adamx import demo
from adamx.demo import _models

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits():
    """The default split of the digits, loaded once for the module."""
    return demo.train_test_split(*demo.load_digits(), seed=0)


@pytest.fixture(scope="module")
def default_softmax_runs(digits):
    """Softmax regression at the CLI's defaults, with adam and with plain SGD."""
    return {opt: demo.train("softmax", opt, data=digits) for opt in demo.DEFAULT_OPTIMIZERS}


def table_of(out: str) -> str:
    """The final table of the demo's stdout: from its header to the next blank line."""
    start = out.rindex("\n", 0, out.index("final train loss")) + 1
    return out[start:].split("\n\n")[0].rstrip("\n")


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


def test_sgd_is_plain_gradient_descent(digits):
    """Two SGD steps move the zero-initialised softmax weights by -lr * (g0 + g1), the
    gradients at the successive points: no momentum."""
    result = demo.train("softmax", "sgd", steps=2, learning_rate=0.5, data=digits)
    params = _models._init_softmax(jax.random.key(0))
    for _ in range(2):
        grads = jax.grad(_models._softmax_loss)(params, digits[0], digits[1])
        params = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
    np.testing.assert_allclose(result.params["w"], params["w"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.params["b"], params["b"], rtol=1e-5, atol=1e-7)


def test_mlp_trains_with_both_optimizers():
    x, y = demo.load_digits()
    data = demo.train_test_split(x, y, seed=1)
    for opt in ("adam", "sgd"):
        result = demo.train("mlp", opt, steps=60, seed=1, data=data)
        assert result.final_loss < result.losses[0]
        assert result.test_accuracy > 0.5


def test_demo_offers_every_adamx_optimizer():
    assert demo.OPTIMIZERS == tuple(adamx.OPTIMIZERS)
    assert set(demo.DEFAULT_LEARNING_RATES) == set(adamx.OPTIMIZERS)
    assert all(lr > 0 and math.isfinite(lr) for lr in demo.DEFAULT_LEARNING_RATES.values())
    assert demo.DEFAULT_OPTIMIZERS == ("adam", "sgd")


@pytest.mark.parametrize("name", adamx.OPTIMIZERS)
def test_make_optimizer_is_the_adamx_recipe(name):
    """make_optimizer(name, lr) updates exactly as getattr(adamx, name)(learning_rate=lr),
    and make_optimizer(name) as the same at DEFAULT_LEARNING_RATES[name]."""
    params = {"w": jnp.asarray([[0.5, -1.0], [2.0, 0.25]]), "b": jnp.asarray([0.1, -0.3])}
    grads = {"w": jnp.asarray([[0.3, -0.2], [0.05, 1.0]]), "b": jnp.asarray([-0.4, 0.7])}
    default_lr = demo.DEFAULT_LEARNING_RATES[name]
    pairs = [
        (demo.make_optimizer(name, 0.05), getattr(adamx, name)(learning_rate=0.05)),
        (demo.make_optimizer(name), getattr(adamx, name)(learning_rate=default_lr)),
    ]
    for ours, theirs in pairs:
        state_a, state_b = ours.init(params), theirs.init(params)
        moved = False
        for _ in range(2):  # two: ADOPT's first update is zero by design
            upd_a, state_a = ours.update(grads, state_a, params)
            upd_b, state_b = theirs.update(grads, state_b, params)
            for key in params:
                np.testing.assert_array_equal(upd_a[key], upd_b[key])
                assert np.all(np.isfinite(upd_a[key]))
                moved = moved or bool(np.any(upd_a[key] != 0))
        assert moved


@pytest.mark.parametrize("name", adamx.OPTIMIZERS)
def test_every_optimizer_trains_at_its_default_learning_rate(name, digits):
    """50 steps of the MLP at DEFAULT_LEARNING_RATES[name]: every loss finite, the final one
    below the first and below the one halfway (still falling), and the test accuracy well
    above chance. The MLP only: the softmax example is the convex one of the two (an
    optimizer that trains the MLP at its rate has not failed it in any ``--compare all``
    run), and the tests above train it with the default pair."""
    result = demo.train("mlp", name, steps=50, data=digits)
    assert result.optimizer == name
    assert result.learning_rate == demo.DEFAULT_LEARNING_RATES[name]
    assert all(math.isfinite(v) for v in result.losses), result.losses
    assert math.isfinite(result.final_loss)
    assert result.final_loss < result.losses[0]
    assert result.final_loss < result.losses[25], result.losses
    assert result.test_accuracy > 0.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"example": "cnn"}, "example"),
        ({"optimizer": "nope"}, "optimizer 'nope'"),
        ({"optimizer": "both"}, "optimizer 'both'"),
        ({"steps": 0}, "steps"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
    ],
)
def test_train_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        demo.train(**kwargs)


def test_train_accepts_an_optimizer_object(digits):
    """An optax.GradientTransformation trains as the same optimizer given by name, under
    its label, with no learning rate of the demo's; the result keeps the final state."""
    by_name = demo.train("mlp", "adam", steps=5, learning_rate=0.01, data=digits)
    by_object = demo.train("mlp", adamx.adam(0.01), steps=5, data=digits, label="mine")
    assert by_object.losses == by_name.losses
    assert by_object.test_loss == by_name.test_loss and math.isfinite(by_name.test_loss)
    assert by_object.optimizer == "mine" and by_object.learning_rate is None
    assert demo.train("softmax", adamx.sgd(0.1), steps=1, data=digits).optimizer == "custom"
    assert int(by_object.opt_state[0].count) == 5
    assert "mine" in demo.format_table([by_object])
    with pytest.raises(ValueError, match="learning_rate"):
        demo.train("mlp", adamx.adam(0.01), steps=1, learning_rate=0.01, data=digits)
    with pytest.raises(TypeError, match="optimizer"):
        demo.train("mlp", 0.01, steps=1, data=digits)


def test_train_inits_runs_side_by_side(digits):
    """inits=n: n initialisations from split(key(seed), n) under vmap, stacked results."""
    result = demo.train("mlp", "adam", steps=4, data=digits, inits=3)
    assert result.losses_per_init.shape == (3, 4)
    np.testing.assert_allclose(result.losses, result.losses_per_init.mean(axis=0), rtol=1e-6)
    assert len({row[0] for row in result.losses_per_init.tolist()}) == 3  # different inits
    assert result.params["out"]["w"].shape == (3, 64, 10)
    assert 0 <= result.test_accuracy <= 1 and math.isfinite(result.final_loss)
    with pytest.raises(ValueError, match="inits"):
        demo.train("mlp", "adam", steps=1, data=digits, inits=0)


def test_make_optimizer_rejects_unknown_name():
    with pytest.raises(ValueError, match="'nope'.*lion"):
        demo.make_optimizer("nope")


def test_plot_losses_with_every_optimizer(tmp_path, monkeypatch):
    """The many-curves layout (legends below the panels) draws, and no two optimizers share
    a colour and line style in a panel."""
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    results = [
        demo.TrainResult(
            example=example,
            optimizer=name,
            learning_rate=demo.DEFAULT_LEARNING_RATES[name],
            steps=3,
            losses=[2.0, 1.0 + i / 100, 0.5],
            final_loss=0.4,
            test_accuracy=0.9,
            steps_per_second=1.0,
            compile_seconds=0.0,
            params=None,
        )
        for example in demo.EXAMPLES
        for i, name in enumerate(demo.OPTIMIZERS)
    ]
    path = tmp_path / "all.png"
    demo.plot_losses(results, path)
    assert path.read_bytes().startswith(PNG_MAGIC)
    (figure,) = figures
    for ax in figure.axes:
        drawn = [(line.get_color(), line.get_linestyle()) for line in ax.get_lines()]
        assert len(drawn) == len(demo.OPTIMIZERS) and len(set(drawn)) == len(drawn), drawn


def test_line_styles_stay_distinct_up_to_forty_curves():
    from adamx.demo._report import line_styles

    assert len(set(line_styles(40))) == 40


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
    table = table_of(out)
    assert table.count("adam") == 2 and table.count("sgd") == 2
    assert len(table.splitlines()) == 2 + 4  # header, rule, 2 examples x (adam, sgd)
    assert str(plot) in out
    assert "100.0%" in err  # the progress bar finished, on stderr


def test_cli_one_optimizer_and_learning_rate(capsys):
    assert demo.main(["--optimizer", "sgd", "--steps", "3", "--learning-rate", "0.05"]) == 0
    out, _ = capsys.readouterr()
    table = table_of(out)
    assert "sgd" in table and "adam" not in table
    assert "0.05" in table


def test_cli_optimizer_lion(capsys):
    assert demo.main(["--optimizer", "lion", "--steps", "3"]) == 0
    out, _ = capsys.readouterr()
    rows = table_of(out).splitlines()[2:]
    assert len(rows) == 2  # both examples, lion only
    for row in rows:
        assert row.split()[-5:-3] == ["lion", f"{demo.DEFAULT_LEARNING_RATES['lion']:g}"]


def test_cli_compare_prints_one_table(tmp_path, capsys):
    plot = tmp_path / "compare.png"
    argv = ["--compare", "adam,lion", "--steps", "20", "--plot", str(plot)]
    assert demo.main(argv) == 0
    out, _ = capsys.readouterr()
    assert out.count("final train loss") == 1  # one table
    rows = table_of(out).splitlines()[2:]
    assert len(rows) == 4
    names = [row.split()[-5] for row in rows]
    assert names == ["adam", "lion", "adam", "lion"]  # per example, in the order given
    assert [row.startswith("softmax") for row in rows] == [True, True, False, False]
    assert "sgd" not in table_of(out)
    for row in rows:
        loss, accuracy = float(row.split()[-3]), float(row.split()[-2].rstrip("%"))
        assert math.isfinite(loss) and 0 <= accuracy <= 100
    assert plot.read_bytes().startswith(PNG_MAGIC)


def test_cli_compare_parsing():
    parser = demo.build_parser()
    assert parser.parse_args(["--compare"]).compare == demo.OPTIMIZERS
    assert parser.parse_args(["--compare", "all"]).compare == demo.OPTIMIZERS
    args = parser.parse_args(["--compare", " lion , adam,lion"])
    assert args.compare == ("lion", "adam")  # in order, spaces and repeats dropped
    assert args.optimizer is None


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--steps", "0"], ["--steps"]),
        (["--steps", "-3"], ["--steps"]),
        (["--steps", "ten"], ["--steps"]),
        (["--learning-rate", "-0.1"], ["--learning-rate"]),
        (["--learning-rate", "0"], ["--learning-rate"]),
        (["--learning-rate", "nan"], ["--learning-rate"]),
        (["--optimizer", "nope"], ["--optimizer", "'nope'", "lion"]),
        (["--compare", "adam,nope"], ["--compare", "'nope'", "adabelief", "yogi"]),
        (["--compare", "adam,,sgd"], ["--compare", "empty"]),
        (["--compare", "both"], ["--compare", "'both'"]),
        (["--optimizer", "lion", "--compare", "adam"], ["--compare", "--optimizer"]),
        (["--optimizer", "both", "--compare", "adam"], ["--compare", "--optimizer"]),
        (["--seed", "-1"], ["--seed"]),
        (["--plot", "/nonexistent-adamx-dir/curves.png"], ["--plot"]),
        (["--bogus"], ["--bogus"]),
    ],
)
def test_cli_bad_flags_exit_with_usage_error(argv, names, capsys):
    with pytest.raises(SystemExit) as excinfo:
        demo.main(argv)
    assert excinfo.value.code == 2
    out, err = capsys.readouterr()
    assert "error:" in err
    for name in names:
        assert name in err
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


def test_python_dash_m_adamx_unknown_compare_name():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "adamx", "--compare", "adam,nope"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown optimizer 'nope'" in proc.stderr
    assert proc.stdout == ""
