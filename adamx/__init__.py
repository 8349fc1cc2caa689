"""adamx: Adam and its relatives as pure, composable optax gradient transformations.

Every optimizer is a chain of small blocks: moment estimation, bias correction,
normalisation, weight decay and the learning rate. See the README for the recipes.

Every public name is here, at ``adamx.*``; ``adamx.storage`` is the one public
sub-namespace (the storage policies). The subpackages are the layers of the design, each
importing only those below it (ARCHITECTURE.md): ``blocks`` (the per-leaf algebra),
``optimizers`` (the recipes), ``storage`` (how moments are kept), ``kernels`` (faster
execution of some recipes), ``training`` (tools around a train step) and ``demo``.
"""

from adamx import storage  # the storage policies: adamx.storage.blockwise8, ...
from adamx.blocks._base import Moments
from adamx.blocks._correction import bias_correction, correct_bias
from adamx.blocks._decay import add_decayed_weights, negate
from adamx.blocks._moments import (
    MomentsState,
    SecondMomentRule,
    ema_of_squares,
    scale_by_moments,
    second_moment_dtype,
    second_moment_zeros,
)
from adamx.blocks._normalize import normalize
from adamx.blocks._rules import (
    MaxNuState,
    NesterovState,
    correct_bias_nesterov,
    ema_of_belief,
    infinity_norm,
    keep_max_nu,
    normalize_inf,
    normalize_rectified,
    yogi_squares,
)
from adamx.blocks._schedule import ScheduleState, scale_by_learning_rate
from adamx.kernels._build import FusedKernelWarning, KernelInfo, kernel_info
from adamx.kernels._step import step
from adamx.optimizers._acprop import acprop, normalize_by_previous_belief
from adamx.optimizers._adafactor import adafactor
from adamx.optimizers._adafactor_blocks import (
    FactoredRmsState,
    RelativeStepState,
    clip_by_block_rms,
    scale_by_factored_rms,
    scale_by_param_block_rms,
    scale_by_relative_step,
    shrink_weights,
)
from adamx.optimizers._adagrad import (
    UpdateRmsState,
    adadelta,
    adagrad,
    average_of_squares,
    scale_by_update_rms,
    sum_of_squares,
    use_gradient,
)
from adamx.optimizers._adam import adam, adamw
from adamx.optimizers._adam_mini import adam_mini, adam_mini_partition, scale_by_block_moments
from adamx.optimizers._adan import (
    AdanState,
    ProximalState,
    adan,
    scale_by_adan_moments,
    shrink_proximal,
)
from adamx.optimizers._ademamix import (
    SlowMomentumState,
    ademamix,
    ademamix_schedules,
    mix_accumulated_momentum,
    mix_slow_momentum,
    simplified_ademamix,
)
from adamx.optimizers._adopt import (
    PreviousRmsState,
    adopt,
    normalize_by_previous_rms,
    read_momentum,
)
from adamx.optimizers._asgd import AverageState, asgd, asgd_eval_params, average_params
from adamx.optimizers._cautious import cautious
from adamx.optimizers._dadapt import dadapt_adamw, distance_estimate, prodigy
from adamx.optimizers._dadapt_blocks import (
    DAdaptAdamWState,
    ProdigyState,
    scale_by_dadapt_adamw,
    scale_by_prodigy,
)
from adamx.optimizers._from_torch import from_torch
from adamx.optimizers._galore import GaLoreState, galore, scale_by_galore
from adamx.optimizers._lamb_lion import (
    LionMomentsState,
    lamb,
    lion,
    read_sign,
    scale_by_lion_moments,
    scale_by_trust_ratio,
)
from adamx.optimizers._laprop import RmsState, laprop, normalize_by_rms
from adamx.optimizers._layerwise import (
    LayerwiseMomentState,
    lars,
    novograd,
    scale_by_layerwise_moment,
)
from adamx.optimizers._lazy import lazy_adam, scale_by_lazy_moments
from adamx.optimizers._madgrad import MadgradState, madgrad, scale_by_madgrad
from adamx.optimizers._mars import MarsState, mars, scale_by_mars_correction
from adamx.optimizers._muon import muon, orthogonalize, scale_by_shape
from adamx.optimizers._optimistic import (
    OptimisticState,
    optimistic_adam,
    optimistic_adam_v2,
    scale_by_optimistic_gradient,
)
from adamx.optimizers._rmsprop import center_second_moment, rmsprop
from adamx.optimizers._rprop import RpropState, rprop, scale_by_rprop
from adamx.optimizers._schedule_free import (
    ScheduleFreeState,
    scale_by_schedule_free,
    schedule_free_adamw,
    schedule_free_eval_params,
    schedule_free_sgd,
)
from adamx.optimizers._sgd import MomentumState, sgd, trace_momentum
from adamx.optimizers._sign import scale_by_sign, sign_sgd, signum
from adamx.optimizers._sm3 import CoverMaximaState, normalize_by_cover_maxima, sm3
from adamx.optimizers._soap import SoapState, soap
from adamx.optimizers._sophia import (
    HutchinsonState,
    SophiaState,
    hutchinson_diagonal,
    normalize_by_hessian,
    sophia,
)
from adamx.optimizers._variants import adamax, adamaxw, amsgrad, nadam, nadamw
from adamx.optimizers._variants_nu import adabelief, radam, yogi
from adamx.storage._with_storage import (
    StorageError,
    StorageState,
    state_bytes_per_param,
    storage_error,
    with_storage,
)
from adamx.training._checkpoint import restore_state
from adamx.training._faults import SkipNonfiniteState, skip_nonfinite
from adamx.training._inspect import Diagnostics, inspect, summarize
from adamx.training._sharding import state_shardings
from adamx.training._zero import shard_state, zero_shardings

__version__ = "0.2.0"

# The names of the optimizers (recipes); everything else in __all__ is a building block.
OPTIMIZERS = (
    "acprop", "adabelief", "adadelta", "adafactor", "adagrad", "adam", "adam_mini", "adamax",
    "adamaxw", "adamw", "adan", "ademamix", "adopt", "amsgrad", "asgd", "dadapt_adamw",
    "galore", "lamb", "laprop", "lars", "lazy_adam", "lion", "madgrad", "mars", "muon", "nadam",
    "nadamw", "novograd", "optimistic_adam", "prodigy", "radam", "rmsprop", "rprop",
    "schedule_free_adamw", "schedule_free_sgd", "sgd", "sign_sgd", "signum",
    "simplified_ademamix", "sm3", "soap", "yogi",
)  # fmt: skip

__all__ = [
    "OPTIMIZERS",
    "acprop",
    "adabelief",
    "adadelta",
    "adafactor",
    "adagrad",
    "adam",
    "adam_mini",
    "adamax",
    "adamaxw",
    "adamw",
    "adan",
    "ademamix",
    "adopt",
    "amsgrad",
    "dadapt_adamw",
    "galore",
    "asgd",
    "lamb",
    "laprop",
    "lars",
    "lazy_adam",
    "lion",
    "mars",
    "madgrad",
    "muon",
    "nadam",
    "nadamw",
    "novograd",
    "optimistic_adam",
    "optimistic_adam_v2",
    "prodigy",
    "radam",
    "rmsprop",
    "rprop",
    "schedule_free_adamw",
    "schedule_free_sgd",
    "sgd",
    "sign_sgd",
    "sophia",
    "signum",
    "simplified_ademamix",
    "soap",
    "sm3",
    "yogi",
    "cautious",
    "step",
    "from_torch",
    "state_shardings",
    "shard_state",
    "zero_shardings",
    "with_storage",
    "state_bytes_per_param",
    "storage",
    "StorageState",
    "StorageError",
    "storage_error",
    "kernel_info",
    "AdanState",
    "DAdaptAdamWState",
    "AverageState",
    "CoverMaximaState",
    "Diagnostics",
    "FactoredRmsState",
    "FusedKernelWarning",
    "GaLoreState",
    "HutchinsonState",
    "KernelInfo",
    "LayerwiseMomentState",
    "LionMomentsState",
    "MarsState",
    "MadgradState",
    "MaxNuState",
    "MomentumState",
    "Moments",
    "MomentsState",
    "NesterovState",
    "OptimisticState",
    "PreviousRmsState",
    "ProdigyState",
    "ProximalState",
    "RmsState",
    "RelativeStepState",
    "RpropState",
    "ScheduleFreeState",
    "ScheduleState",
    "SkipNonfiniteState",
    "SlowMomentumState",
    "SoapState",
    "SophiaState",
    "SecondMomentRule",
    "UpdateRmsState",
    "adam_mini_partition",
    "add_decayed_weights",
    "ademamix_schedules",
    "asgd_eval_params",
    "average_params",
    "average_of_squares",
    "bias_correction",
    "center_second_moment",
    "clip_by_block_rms",
    "correct_bias",
    "correct_bias_nesterov",
    "distance_estimate",
    "ema_of_belief",
    "ema_of_squares",
    "infinity_norm",
    "hutchinson_diagonal",
    "inspect",
    "keep_max_nu",
    "mix_accumulated_momentum",
    "mix_slow_momentum",
    "negate",
    "normalize",
    "normalize_by_hessian",
    "normalize_by_cover_maxima",
    "normalize_by_previous_belief",
    "normalize_by_previous_rms",
    "normalize_by_rms",
    "normalize_inf",
    "normalize_rectified",
    "orthogonalize",
    "read_momentum",
    "read_sign",
    "restore_state",
    "scale_by_adan_moments",
    "scale_by_block_moments",
    "scale_by_dadapt_adamw",
    "scale_by_factored_rms",
    "scale_by_galore",
    "scale_by_layerwise_moment",
    "scale_by_lazy_moments",
    "scale_by_learning_rate",
    "scale_by_lion_moments",
    "scale_by_mars_correction",
    "scale_by_madgrad",
    "scale_by_moments",
    "scale_by_optimistic_gradient",
    "scale_by_param_block_rms",
    "scale_by_prodigy",
    "scale_by_relative_step",
    "scale_by_rprop",
    "scale_by_schedule_free",
    "scale_by_shape",
    "scale_by_sign",
    "scale_by_trust_ratio",
    "schedule_free_eval_params",
    "second_moment_dtype",
    "second_moment_zeros",
    "shrink_proximal",
    "shrink_weights",
    "skip_nonfinite",
    "scale_by_update_rms",
    "sum_of_squares",
    "summarize",
    "trace_momentum",
    "use_gradient",
    "yogi_squares",
]
