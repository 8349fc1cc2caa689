"""Two classic examples on the UCI handwritten digits: ``python -m adamx``.

The demo trains, full batch, on the 8x8 digits shipped with the package
(``adamx/data/digits.csv.gz``, 1797 images; see ``adamx/data/README.md``):

* **softmax regression**: ``logits = X W + b`` with the softmax cross-entropy loss;
* **a two-layer MLP**: 64 -> 64 (tanh) -> 10, trained with the mean squared error
  against one-hot targets;

each, by default, with :func:`adamx.adam` and with plain gradient descent
(:func:`adamx.sgd`, no momentum), side by side. It prints the training loss at intervals
and a table of final training loss, test accuracy and speed, and with ``--plot FILE.png``
draws the loss curves.

Any of adamx's optimizers can run instead: ``--optimizer NAME`` trains one of
:data:`OPTIMIZERS` (the names in ``adamx.OPTIMIZERS``), and ``--compare adam,lion,sgd``
(or ``--compare`` alone, for all of them) trains several and prints one table. Each runs
at its own default learning rate, :data:`DEFAULT_LEARNING_RATES`, unless
``--learning-rate`` sets one for all.

Run ``python -m adamx --help`` for the options. From Python, :func:`train` runs one
training and returns a :class:`TrainResult`; it takes an optimizer by name or any
``optax.GradientTransformation``, and with ``inits=n`` trains ``n`` initialisations side by
side. :func:`main` is the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gzip
import importlib.resources
import importlib.util
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adamx

__all__ = [
    "DEFAULT_LEARNING_RATES",
    "DEFAULT_OPTIMIZERS",
    "DEFAULT_STEPS",
    "EXAMPLES",
    "OPTIMIZERS",
    "Progress",
    "TrainResult",
    "build_parser",
    "format_table",
    "load_digits",
    "main",
    "make_optimizer",
    "plot_losses",
    "train",
    "train_test_split",
]

EXAMPLES: tuple[str, ...] = ("softmax", "mlp")
"""The examples, in the order they run: softmax regression and the two-layer MLP."""

OPTIMIZERS: tuple[str, ...] = tuple(adamx.OPTIMIZERS)
"""Every optimizer the demo can train with: the names in ``adamx.OPTIMIZERS``, each built
as ``getattr(adamx, name)(learning_rate=...)`` (see :func:`make_optimizer`)."""

DEFAULT_OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
"""The optimizers of the default run (``--optimizer both``): :func:`adamx.adam` and plain
gradient descent, :func:`adamx.sgd` without momentum."""

DEFAULT_STEPS = 1000
"""Full-batch steps per training run when ``--steps`` is not given."""

DEFAULT_LEARNING_RATES: dict[str, float] = {
    "adabelief": 1e-2,
    "adadelta": 1.0,
    "adafactor": 1e-2,
    "adagrad": 0.1,
    "adam": 1e-2,
    "adamax": 2e-2,
    "adamw": 1e-2,
    "adopt": 2e-2,
    "amsgrad": 1e-2,
    "lamb": 5e-3,
    "lazy_adam": 1e-2,
    "lion": 1e-3,
    "nadam": 1e-3,
    "nadamw": 1e-3,
    "radam": 1e-2,
    "rmsprop": 1e-3,
    "sgd": 0.3,
    "yogi": 1e-2,
}
"""Learning rate per optimizer when ``--learning-rate`` is not given, one for both
examples at :data:`DEFAULT_STEPS` steps, chosen from a sweep over ``1e-4 .. 3`` as a rate
that trains both examples steadily (no divergence, no loss that ends well above its
minimum) rather than the fastest one on either.

* Plain gradient descent's 0.3 is about the largest step at which the MLP's loss still
  falls steadily (at 0.4 it starts to jump, at 1 it diverges).
* Adam and its close relatives (AdamW, AMSGrad, lazy Adam, AdaBelief, RAdam, Yogi) take
  1e-2; Adamax and ADOPT 2e-2.
* Lion takes a sign step of size ``lr`` in every coordinate: 1e-3, 10x below Adam.
* NAdam and NAdamW oscillate on the MLP from about 2e-3 on: 1e-3. RMSprop (no bias
  correction, so large first steps) oscillates from about 2e-3: 1e-3.
* Adadelta's step is relative, 1.0 is its usual setting; Adafactor's 1e-2 is its default
  relative step (``min(lr, 1/sqrt(t))`` times the parameter's RMS).
* Adagrad takes 0.1. Its first step is ``lr * sign(g)`` in every coordinate, so the MLP's
  loss jumps for the first few steps (to about 12 at 0.1, and above 1 at any rate from
  2e-2 on) before it trains; it still ends lower than at smaller rates.
* LAMB scales each step by ``||p|| / ||step||``: softmax regression starts at zero weights,
  so its steps grow only geometrically and the loss stays near ``log 10`` for hundreds of
  steps; 5e-3 gets through that at 1000 steps, while from about 1e-2 on the loss blows up
  late in training.
"""

EXAMPLE_TITLES: dict[str, str] = {
    "softmax": "softmax regression",
    "mlp": "MLP 64-64-10 (tanh, MSE)",
}

LOSS_NAMES: dict[str, str] = {"softmax": "cross-entropy", "mlp": "mean squared error"}

NUM_CLASSES = 10
_NAME_WIDTH = max(len(name) for name in OPTIMIZERS)
NUM_FEATURES = 64
MLP_HIDDEN = 64


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
    resource = importlib.resources.files("adamx") / "data" / "digits.csv.gz"
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


# --------------------------------------------------------------------------- models


def _dense(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """``x @ w + b``, the bias broadcast explicitly over the batch."""
    return x @ params["w"] + params["b"][None, :]


def _init_softmax(key: jax.Array) -> dict[str, Any]:
    del key  # the problem is convex: start at zero
    return {
        "w": jnp.zeros((NUM_FEATURES, NUM_CLASSES), jnp.float32),
        "b": jnp.zeros((NUM_CLASSES,), jnp.float32),
    }


def _init_mlp(key: jax.Array) -> dict[str, Any]:
    k1, k2 = jax.random.split(key)

    def glorot(k, fan_in, fan_out):
        scale = np.float32(math.sqrt(2.0 / (fan_in + fan_out)))
        return scale * jax.random.normal(k, (fan_in, fan_out), jnp.float32)

    return {
        "hidden": {
            "w": glorot(k1, NUM_FEATURES, MLP_HIDDEN),
            "b": jnp.zeros((MLP_HIDDEN,), jnp.float32),
        },
        "out": {
            "w": glorot(k2, MLP_HIDDEN, NUM_CLASSES),
            "b": jnp.zeros((NUM_CLASSES,), jnp.float32),
        },
    }


def _softmax_logits(params: dict[str, Any], x: jax.Array) -> jax.Array:
    return _dense(params, x)


def _mlp_outputs(params: dict[str, Any], x: jax.Array) -> jax.Array:
    return _dense(params["out"], jnp.tanh(_dense(params["hidden"], x)))


def _softmax_loss(params: dict[str, Any], x: jax.Array, y: jax.Array) -> jax.Array:
    log_probs = jax.nn.log_softmax(_softmax_logits(params, x), axis=-1)
    one_hot = jax.nn.one_hot(y, NUM_CLASSES, dtype=log_probs.dtype)
    return -jnp.mean(jnp.sum(one_hot * log_probs, axis=-1))


def _mlp_loss(params: dict[str, Any], x: jax.Array, y: jax.Array) -> jax.Array:
    outputs = _mlp_outputs(params, x)
    one_hot = jax.nn.one_hot(y, NUM_CLASSES, dtype=outputs.dtype)
    return jnp.mean(jnp.square(outputs - one_hot))


_MODELS: dict[str, tuple[Callable, Callable, Callable]] = {
    # example: (init(key), loss(params, x, y), predict(params, x) -> scores)
    "softmax": (_init_softmax, _softmax_loss, _softmax_logits),
    "mlp": (_init_mlp, _mlp_loss, _mlp_outputs),
}


# --------------------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """The record of one training run.

    Attributes:
      example: ``"softmax"`` or ``"mlp"``.
      optimizer: the optimizer's label: its name, one of :data:`OPTIMIZERS` (e.g.
        ``"adam"``), when it was given by name; else ``train``'s ``label`` (default
        ``"custom"``).
      learning_rate: the learning rate used; ``None`` for an optimizer given as an object
        (its learning rate is its own).
      steps: the number of full-batch updates.
      losses: the training loss before each update, ``steps`` floats (with ``inits``: the
        mean over the initialisations).
      final_loss: the training loss at the final parameters.
      test_accuracy: the share of test examples classified correctly, in ``[0, 1]``.
      steps_per_second: updates per second of the training loop, compilation excluded
        (with ``inits``: updates of all the initialisations together).
      compile_seconds: the time spent compiling the training step.
      params: the final parameters (with ``inits``: stacked, a leading axis of ``inits``).
      opt_state: the final optimizer state (stacked like ``params``); ``None`` if not
        recorded.
      test_loss: the loss on the test set at the final parameters; NaN if not recorded.
      losses_per_init: with ``inits``, every initialisation's training loss before each
        update, a float32 array of shape ``(inits, steps)``; ``None`` for a single run.

    With ``inits``, ``final_loss``, ``test_loss`` and ``test_accuracy`` are the means over
    the initialisations.
    """

    example: str
    optimizer: str
    learning_rate: float | None
    steps: int
    losses: list[float]
    final_loss: float
    test_accuracy: float
    steps_per_second: float
    compile_seconds: float
    params: Any = dataclasses.field(repr=False, compare=False)
    opt_state: Any = dataclasses.field(default=None, repr=False, compare=False)
    test_loss: float = math.nan
    losses_per_init: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)


def _check_optimizer(name: str) -> None:
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}.")


def make_optimizer(name: str, learning_rate: float | None = None) -> optax.GradientTransformation:
    """The optimizer ``name``, one of :data:`OPTIMIZERS`, at ``learning_rate``.

    This is ``getattr(adamx, name)(learning_rate=learning_rate)`` with every other
    hyperparameter at its default: ``"adam"`` is :func:`adamx.adam`, ``"lion"``
    :func:`adamx.lion`, and ``"sgd"`` is :func:`adamx.sgd` without momentum, plain
    gradient descent. ``None`` picks :data:`DEFAULT_LEARNING_RATES`.
    """
    _check_optimizer(name)
    lr = DEFAULT_LEARNING_RATES[name] if learning_rate is None else float(learning_rate)
    return getattr(adamx, name)(learning_rate=lr)


def _resolve_optimizer(
    optimizer: str | optax.GradientTransformation,
    learning_rate: float | None,
    label: str | None,
) -> tuple[optax.GradientTransformation, str, float | None]:
    """``(transformation, label, learning rate or None)`` for :func:`train`."""
    if isinstance(optimizer, str):
        _check_optimizer(optimizer)
        lr = DEFAULT_LEARNING_RATES[optimizer] if learning_rate is None else float(learning_rate)
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"`learning_rate` must be finite and > 0, got {learning_rate!r}.")
        return make_optimizer(optimizer, lr), optimizer if label is None else label, lr
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise TypeError(
            "`optimizer` must be a name from demo.OPTIMIZERS or an optax.GradientTransformation, "
            f"got {type(optimizer).__name__}."
        )
    if learning_rate is not None:
        raise ValueError(
            "`learning_rate` applies only to an optimizer given by name; an optimizer object "
            f"has its own: leave learning_rate=None (got {learning_rate!r})."
        )
    return optimizer, "custom" if label is None else label, None


def _log_step(
    example: str, label: str, i: int, steps: int, loss, progress: Progress | None, out: TextIO
) -> None:
    """Print the loss line of step ``i`` (0-based) to ``progress`` or ``out``."""
    width = len(str(steps))
    line = f"  {example:<8} {label:<{_NAME_WIDTH}} step {i + 1:>{width}}  loss {float(loss):.5f}"
    if progress is not None:
        progress.message(line)
    else:
        print(line, file=out, flush=True)


def train(
    example: str = "softmax",
    optimizer: str | optax.GradientTransformation = "adam",
    *,
    steps: int = DEFAULT_STEPS,
    learning_rate: float | None = None,
    seed: int = 0,
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
    inits: int | None = None,
    label: str | None = None,
    log_every: int = 0,
    progress: Progress | None = None,
    out: TextIO | None = None,
) -> TrainResult:
    """Train one example with one optimizer, full batch, and evaluate it.

    Args:
      example: ``"softmax"`` (softmax regression, cross-entropy) or ``"mlp"`` (two-layer
        tanh MLP, mean squared error on one-hot targets).
      optimizer: one of :data:`OPTIMIZERS` (``"adam"``, ``"sgd"``, ``"lion"``, ...), built
        by :func:`make_optimizer` at ``learning_rate``; or any
        ``optax.GradientTransformation`` (e.g. ``with_storage(adamx.adam(3e-3), ...)``),
        used as it is.
      steps: the number of full-batch updates, ``>= 1``. Default :data:`DEFAULT_STEPS`.
      learning_rate: for an optimizer given by name, ``> 0``, or ``None`` for
        :data:`DEFAULT_LEARNING_RATES`. Must be ``None`` for an optimizer object, which
        carries its own (a ``ValueError`` otherwise).
      seed: seeds the train/test split (when ``data`` is not given) and the initial
        weights of the MLP. Default 0.
      data: ``(x_train, y_train, x_test, y_test)``; by default the digits, split with
        :func:`train_test_split` at ``seed``.
      inits: ``None`` (default): one run from ``jax.random.key(seed)``, one compiled call
        per step. An integer ``n >= 1``: ``n`` initialisations, from
        ``jax.random.split(jax.random.key(seed), n)``, trained side by side under
        ``jax.vmap`` with all the steps in one ``jax.lax.scan`` (one compiled call for the
        whole run); the result then holds the per-initialisation losses
        (``losses_per_init``) and stacked params and state, and the loss lines and
        progress come after the run.
      label: the result's ``optimizer`` field and the name in the loss lines; default the
        optimizer's name, or ``"custom"`` for an optimizer object.
      log_every: print the training loss every this many steps (and at the end) to
        ``out``; 0 prints nothing.
      progress: a progress bar advanced once per step, or ``None``.
      out: where the loss lines go; default ``sys.stdout``.

    Returns:
      A :class:`TrainResult`.
    """
    if example not in EXAMPLES:
        raise ValueError(f"Unknown example {example!r}; choose one of {EXAMPLES}.")
    if isinstance(optimizer, str):
        _check_optimizer(optimizer)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be an integer >= 1, got {steps!r}.")
    opt, name, lr = _resolve_optimizer(optimizer, learning_rate, label)
    if inits is not None and (isinstance(inits, bool) or not isinstance(inits, int) or inits < 1):
        raise ValueError(f"`inits` must be None or an integer >= 1, got {inits!r}.")
    if data is None:
        data = train_test_split(*load_digits(), seed=seed)
    x_train, y_train, x_test, y_test = (jnp.asarray(a) for a in data)
    out = sys.stdout if out is None else out
    init, loss_fn, predict = _MODELS[example]
    if inits is not None:
        return _train_inits(
            example,
            opt,
            name,
            lr,
            steps,
            seed,
            inits,
            (x_train, y_train, x_test, y_test),
            log_every,
            progress,
            out,
        )

    params = init(jax.random.key(seed))
    opt_state = opt.init(params)

    # update + apply_updates in one call (one fused pass for Adam/AdamW on CPU); params and
    # state are donated, so they are updated in place.
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        params, opt_state = adamx.step(opt, grads, opt_state, params)
        return params, opt_state, loss

    t0 = time.perf_counter()
    compiled = step.lower(params, opt_state, x_train, y_train).compile()
    compile_seconds = time.perf_counter() - t0

    losses = []
    t0 = time.perf_counter()
    for i in range(steps):
        params, opt_state, loss = compiled(params, opt_state, x_train, y_train)
        losses.append(loss)
        if progress is not None:
            progress.advance()
        if log_every and ((i + 1) % log_every == 0 or i + 1 == steps):
            _log_step(example, name, i, steps, loss, progress, out)
    jax.block_until_ready(params)
    elapsed = time.perf_counter() - t0

    final_loss = float(jax.jit(loss_fn)(params, x_train, y_train))
    test_loss = float(jax.jit(loss_fn)(params, x_test, y_test))
    predictions = jnp.argmax(jax.jit(predict)(params, x_test), axis=-1).astype(y_test.dtype)
    accuracy = float(jnp.mean((predictions == y_test).astype(jnp.float32)))
    return TrainResult(
        example=example,
        optimizer=name,
        learning_rate=lr,
        steps=steps,
        losses=[float(v) for v in jax.device_get(losses)],
        final_loss=final_loss,
        test_accuracy=accuracy,
        steps_per_second=steps / elapsed if elapsed > 0 else math.inf,
        compile_seconds=compile_seconds,
        params=params,
        opt_state=opt_state,
        test_loss=test_loss,
    )


def _train_inits(
    example: str,
    opt: optax.GradientTransformation,
    name: str,
    lr: float | None,
    steps: int,
    seed: int,
    inits: int,
    data: tuple[jax.Array, jax.Array, jax.Array, jax.Array],
    log_every: int,
    progress: Progress | None,
    out: TextIO,
) -> TrainResult:
    """:func:`train` with ``inits``: the runs side by side under ``vmap``, the steps in one
    ``lax.scan``, the evaluation in the same compiled call."""
    init, loss_fn, predict = _MODELS[example]
    x_train, y_train, x_test, y_test = data

    def run(key):
        def step(carry, _):
            value, grads = jax.value_and_grad(loss_fn)(carry[0], x_train, y_train)
            return adamx.step(opt, grads, carry[1], carry[0]), value

        params = init(key)
        (params, state), losses = jax.lax.scan(step, (params, opt.init(params)), length=steps)
        predictions = jnp.argmax(predict(params, x_test), axis=-1).astype(y_test.dtype)
        accuracy = jnp.mean((predictions == y_test).astype(jnp.float32))
        final = loss_fn(params, x_train, y_train)
        return params, state, losses, final, loss_fn(params, x_test, y_test), accuracy

    keys = jax.random.split(jax.random.key(seed), inits)
    t0 = time.perf_counter()
    compiled = jax.jit(jax.vmap(run)).lower(keys).compile()
    compile_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    params, state, losses, finals, test_losses, accuracies = jax.block_until_ready(compiled(keys))
    elapsed = time.perf_counter() - t0

    per_init = np.asarray(losses)
    mean = per_init.mean(axis=0)
    for i in range(steps):
        if progress is not None:
            progress.advance()
        if log_every and ((i + 1) % log_every == 0 or i + 1 == steps):
            _log_step(example, name, i, steps, mean[i], progress, out)
    return TrainResult(
        example=example,
        optimizer=name,
        learning_rate=lr,
        steps=steps,
        losses=mean.tolist(),
        final_loss=float(np.mean(finals)),
        test_accuracy=float(np.mean(accuracies)),
        steps_per_second=steps / elapsed if elapsed > 0 else math.inf,
        compile_seconds=compile_seconds,
        params=params,
        opt_state=state,
        test_loss=float(np.mean(test_losses)),
        losses_per_init=per_init,
    )


# --------------------------------------------------------------------------- progress


class Progress:
    """A one-line text progress bar, redrawn in place on a stream (stderr by default).

    ``advance()`` moves it on; ``message(line)`` prints a line to ``out`` (stdout by
    default) above the bar without garbling it; ``close()`` ends the bar's line. On a
    stream that is not a terminal the bar is drawn only at every tenth of the way, one
    line each, so logs stay short.
    """

    def __init__(
        self,
        total: int,
        *,
        stream: TextIO | None = None,
        out: TextIO | None = None,
        width: int = 30,
    ):
        self.total = max(int(total), 1)
        self.done = 0
        self.stream = sys.stderr if stream is None else stream
        self.out = sys.stdout if out is None else out
        self.width = width
        self.label = ""
        isatty = getattr(self.stream, "isatty", None)
        self.interactive = bool(isatty and isatty())
        self._drawn = -1 if self.interactive else 0
        self._start = time.perf_counter()

    def set_label(self, label: str) -> None:
        """Change the text shown left of the bar."""
        self.label = label

    def _line(self) -> str:
        frac = self.done / self.total
        filled = int(round(frac * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        secs = time.perf_counter() - self._start
        return f"{self.label:<14} [{bar}] {100 * frac:5.1f}% {self.done}/{self.total} {secs:5.1f}s"

    def _draw(self, force: bool = False) -> None:
        if self.interactive:
            # redraw at most ~200 times over the whole run
            tick = self.done * 200 // self.total
            if force or tick != self._drawn:
                self._drawn = tick
                self.stream.write("\r" + self._line())
                self.stream.flush()
        else:
            tick = self.done * 10 // self.total
            if force or tick != self._drawn:
                self._drawn = tick
                self.stream.write(self._line() + "\n")
                self.stream.flush()

    def _clear(self) -> None:
        if self.interactive:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more steps done and redraw if the bar moved."""
        self.done = min(self.done + n, self.total)
        self._draw()

    def message(self, line: str) -> None:
        """Print ``line`` to ``out`` above the bar."""
        self._clear()
        print(line, file=self.out, flush=True)
        if self.interactive:
            self._draw(force=True)

    def close(self) -> None:
        """Draw the bar a last time and end its line."""
        if self.interactive:
            self._clear()
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
        elif self._drawn != 10:
            self._draw(force=True)


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
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    colors = {name: cmap(i % cmap.N) for i, name in enumerate(names)}
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
                color=colors[r.optimizer],
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
