"""Convergence parity of low-memory optimizer state on the demo's MLP (issue 6).

Each storage policy trains the demo's MLP on the digits from the same start on the same
data as float32 Adam; its final training loss must lie within the issue's bound of float32
Adam's. ``benchmarks/convergence.py`` measures the same at full length, and on a
character-level transformer.
"""

import functools
import math

import jax
import numpy as np
import pytest

import adamx
from adamx import demo, state_bytes_per_param, with_storage
from adamx.demo import regression

# The demo's MLP for the demo's 1000 full-batch steps, but at Adam's 3e-3 rather than the
# demo's 1e-2: at 1e-2 the loss spikes late in training, and rounding-level differences
# alone (the fused kernel vs the XLA path) move the final loss by several percent. At 3e-3
# that noise is under 0.6% per seed, while plain bfloat16 `nu` ends 10-15% worse than
# float32: a policy that loses precision as plain bfloat16 does fails the bounds below.
# Quantized state makes single runs noisier (8-bit: -3.2% to +0.8% per seed over the
# benchmark's 5 seeds), so the loss compared is the mean over SEEDS initialisations,
# trained side by side under `vmap`.
STEPS = 1000
LEARNING_RATE = 3e-3
SEEDS = 3

CASES = [
    # (name, with_storage arguments, bound on |final loss / float32's - 1|)
    ("8bit m+v", {"mu": "8bit", "nu": "8bit"}, 0.02),
    ("bf16 m+v stochastic rounding", {"mu": "bfloat16_sr", "nu": "bfloat16_sr"}, 0.01),
]


@functools.cache
def _train(policy: tuple[tuple[str, object], ...]) -> tuple[float, float]:
    """``(final training loss, state bytes per parameter)`` of the demo's MLP after
    :data:`STEPS` full-batch steps of Adam, its state stored by ``policy``. The final loss
    is the mean over the last 10% of the steps (as in ``benchmarks/convergence.py``) and
    over :data:`SEEDS` initialisations."""
    opt = adamx.adam(LEARNING_RATE)
    if policy:
        opt = with_storage(opt, **dict(policy))
    result = demo.train("mlp", opt, steps=STEPS, seed=0, inits=SEEDS)
    losses = result.losses_per_init
    assert np.all(np.isfinite(losses)), losses
    one = jax.tree.map(lambda a: a[0], (result.opt_state, result.params))
    return float(np.mean(losses[:, -STEPS // 10 :])), state_bytes_per_param(*one)


@pytest.mark.parametrize("name, policy, bound", CASES, ids=[c[0] for c in CASES])
def test_final_loss_within_bound_of_float32(name, policy, bound):
    reference, reference_bytes = _train(())
    loss, state_bytes = _train(tuple(policy.items()))
    assert reference < 0.015  # float32 Adam has trained: the MLP starts near 0.1
    assert state_bytes < 0.75 * reference_bytes, "the policy did not shrink the state"
    assert loss != reference, "the policy changed nothing: is the storage applied?"
    rel = loss / reference - 1
    assert abs(rel) <= bound, f"{name}: final loss {loss:.6f} vs float32 {reference:.6f}"


def test_plain_bfloat16_nu_is_reported(record_property):
    reference, _ = _train(())
    loss, _ = _train((("nu", "bfloat16"),))
    assert math.isfinite(loss)
    rel = loss / reference - 1
    record_property("bf16_nu_final_loss_vs_float32", rel)
    print(f"plain bfloat16 nu: final loss {loss:.6f}, {100 * rel:+.2f}% vs float32 {reference:.6f}")


# The teacher-student regression of issue 15 (adamx.demo.regression), small: a student
# 32-128-128-16 for 1,500 steps at Adam's 3e-3, three seeds; the loss falls ~350x. There
# 8-bit codes rounded to nearest (adamx 0.2's 8-bit state) move the final loss by ~10%
# (their `nu` freezes: a step's change of v is far below half a code gap), while rounded
# stochastically (the default) they stay within 1.1% per seed, 0.2% over the seeds
# (measured). benchmarks/convergence.py runs it at width 256 for 3,000 steps, 5 seeds.
REGRESSION = {"steps": 1500, "width": 128}
REGRESSION_SEEDS = (0, 1, 2)


@functools.cache
def _regression(stochastic: bool | None) -> tuple[float, float]:
    """``(final loss averaged over the seeds, state bytes per parameter)``: float32 Adam
    (None) or 8-bit moments rounded stochastically or to nearest."""
    opt = adamx.adam(LEARNING_RATE)
    if stochastic is not None:
        policy = adamx.storage.blockwise8(stochastic_rounding=stochastic)
        opt = with_storage(opt, mu=policy, nu=policy)
    runs = [regression.train(opt, seed=s, **REGRESSION) for s in REGRESSION_SEEDS]
    assert all(np.all(np.isfinite(run["losses"])) for run in runs)
    assert all(run["final_loss"] < run["losses"][0] / 100 for run in runs)  # trained far down
    finals = [run["final_loss"] for run in runs]
    return float(np.mean(finals)), state_bytes_per_param(runs[0]["opt_state"], runs[0]["params"])


def test_8bit_with_stochastic_codes_matches_float32_on_a_regression_trained_far_down():
    reference, reference_bytes = _regression(None)
    loss, state_bytes = _regression(True)
    # 2.67 B/param: the 128 x 16 output layer and the biases are under the 8-bit minimum
    # of 4,096 elements (the benchmark's width 256: 2.09)
    assert state_bytes < 0.35 * reference_bytes
    rel = loss / reference - 1
    assert abs(rel) <= 0.02, f"8-bit: final loss {loss:.6f} vs float32 {reference:.6f}"


def test_8bit_rounded_to_nearest_departs_from_float32_there():
    """The task is sensitive to the 8-bit state's rounding (so the test above can fail)."""
    reference, _ = _regression(None)
    loss, _ = _regression(False)
    assert abs(loss / reference - 1) > 0.05, (loss, reference)
