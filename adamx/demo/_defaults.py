"""The demo's examples, optimizers, steps and learning rates."""

from __future__ import annotations

import adamx

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
    "acprop": 1e-3,
    "adabelief": 1e-2,
    "adadelta": 1.0,
    "adafactor": 1e-2,
    "adagrad": 0.1,
    "adam": 1e-2,
    "adam_mini": 1e-2,
    "adamax": 2e-2,
    "adamaxw": 2e-2,
    "adamw": 1e-2,
    "asgd": 0.3,
    "adan": 1e-2,
    "ademamix": 1e-2,
    "adopt": 2e-2,
    "amsgrad": 1e-2,
    "dadapt_adamw": 1.0,
    "galore": 1e-2,
    "lamb": 5e-3,
    "laprop": 1e-2,
    "lars": 2.0,
    "lazy_adam": 1e-2,
    "lion": 1e-3,
    "mars": 1e-2,
    "madgrad": 1e-2,
    "muon": 2e-2,
    "nadam": 1e-3,
    "nadamw": 1e-3,
    "novograd": 3e-2,
    "optimistic_adam": 1e-2,
    "prodigy": 1.0,
    "radam": 1e-2,
    "rmsprop": 1e-3,
    "rprop": 1e-3,
    "schedule_free_adamw": 1e-2,
    "schedule_free_sgd": 1.0,
    "sgd": 0.3,
    "simplified_ademamix": 3e-4,
    "sign_sgd": 1e-3,
    "signum": 3e-3,
    "soap": 1e-2,
    "sm3": 0.1,
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
* Adan and AdEMAMix take Adam's 1e-2. Simplified AdEMAMix's momentum sums about
  ``1 / (1 - b1) = 100`` gradients without Adam's ``1 - b1``, and at its default
  ``b1 = 0.99`` the MLP's loss swings for the first hundred steps from about 5e-4 on: 3e-4.
* Issue 16's second batch, from a sweep at 50 and 1000 steps: AdamaxW 2e-2 as Adamax;
  optimistic Adam 1e-2 as Adam; NovoGrad 3e-2 (its per-tensor step ``g / ||g||`` is small
  per element); Schedule-Free AdamW 1e-2 and Schedule-Free SGD 1.0 (constant rates, the
  averaging is their decay); signSGD 1e-3 and Signum 3e-3 (sign steps of ``lr``, as Lion;
  signSGD oscillates on the MLP above that); LARS 2.0 (its step is
  ``lr * 0.001 * ||p||`` per tensor; zero-initialised weights take one plain SGD step of
  ``lr`` first, which limits it: from 5 the MLP stalls).
* Issue 18, from a sweep of 3e-3 to 3e-2 at 50 and 1000 steps: LaProp and MARS 1e-2, as
  Adam (both train both examples steadily over the whole range; 2e-2 and 3e-2 end a little
  lower on softmax regression).
* Issue 18, from a sweep of 1e-3 .. 3e-2 at 50 and 1000 steps: Adam-mini 1e-2 as AdamW
  (the digits models' leaves have no Transformer names: one block per leaf; 1000 steps:
  softmax 95.8%, MLP 97.2%); SOAP 1e-2 (3e-3 leaves softmax regression at 0.33 after 1000
  steps, 1e-2 at 0.027; the MLP trains at every rate swept).
* Issue 16's fourth batch: Prodigy and D-Adaptation AdamW take 1.0, the rate their
  authors advise: it multiplies the step size the optimizer estimates itself. GaLore takes
  Adam's 1e-2 (the demo's matrices are projected at its default rank 128, i.e. whole).
* Issue 16's third batch, from a sweep at 50 and 1000 steps: Rprop 1e-3 (its
  ``learning_rate`` is only the first step size, which then adapts: 1e-3 to 1e-2 end
  within 0.01 of each other on softmax, 1e-3 best on the MLP); ASGD 0.3 as SGD (it is
  SGD with a slowly decaying step: at 0.1 the MLP is below 50% accuracy after 50 steps,
  at 1.0 it diverges); SM3 0.1 as AdaGrad (its accumulators are AdaGrad's sums, kept per
  row and column; at 1.0 the MLP diverges); MADGRAD 1e-2, its default (3e-3 to 3e-2 all
  train both examples; 1e-2 is within 1% of the best accuracy on each); ACProp 1e-3, its
  default (below, the MLP is under 40% accuracy after 50 steps; at 3e-3 its loss rises
  again by step 50).
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
