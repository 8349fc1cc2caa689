"""Two classic examples on the UCI handwritten digits: ``python -m adamx``.

The demo trains, full batch, on the 8x8 digits shipped with the package
(``adamx/demo/data/digits.csv.gz``, 1797 images; see ``adamx/demo/data/README.md``):

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

from adamx.demo._cli import build_parser, main
from adamx.demo._data import load_digits, train_test_split
from adamx.demo._defaults import (
    DEFAULT_LEARNING_RATES,
    DEFAULT_OPTIMIZERS,
    DEFAULT_STEPS,
    EXAMPLES,
    OPTIMIZERS,
)
from adamx.demo._report import format_table, plot_losses
from adamx.demo._train import Progress, TrainResult, make_optimizer, train

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
