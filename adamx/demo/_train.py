"""Training one example with one optimizer (or several initialisations), with progress."""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adamx
from adamx.demo._data import load_digits, train_test_split
from adamx.demo._defaults import (
    _NAME_WIDTH,
    DEFAULT_LEARNING_RATES,
    DEFAULT_STEPS,
    EXAMPLES,
    OPTIMIZERS,
)
from adamx.demo._models import _MODELS

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
