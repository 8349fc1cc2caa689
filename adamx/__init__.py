"""adamx: Adam and its relatives as pure, composable optax gradient transformations.

Every optimizer is a chain of small blocks: moment estimation, bias correction,
normalisation, weight decay and the learning rate. See the README for the recipes.
"""

from adamx._adam import adam, adamw
from adamx._base import Moments
from adamx._correction import bias_correction, correct_bias
from adamx._decay import add_decayed_weights
from adamx._moments import MomentsState, scale_by_moments
from adamx._normalize import normalize
from adamx._schedule import ScheduleState, scale_by_learning_rate

__version__ = "0.1.0"

__all__ = [
    "Moments",
    "MomentsState",
    "ScheduleState",
    "adam",
    "adamw",
    "add_decayed_weights",
    "bias_correction",
    "correct_bias",
    "normalize",
    "scale_by_learning_rate",
    "scale_by_moments",
]
