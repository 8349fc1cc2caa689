"""State storage codecs: the format an optimizer moment is kept in between two steps.

Storage is separate from the algebra: a moment block computes ``mu`` and ``nu`` in float32;
a codec decides how they sit in memory until the next step. ``encode`` turns a float32 leaf
into a stored pytree, ``decode`` turns it back; both are pure and jittable, and a codec is a
frozen, hashable dataclass, so it can be closed over or passed as a static argument.

Policies (see :func:`resolve` for the names):

- :func:`cast`: a narrower float dtype, optionally with stochastic rounding;
- :func:`blockwise8`: 8-bit block-wise dynamic quantization (Dettmers et al. 2022);
- :func:`factored`: row and column means of the second moment (Shazeer & Stern 2018);
- :func:`flat`: the moment's leaves in one 1-D buffer per dtype (:class:`FlatMoments`).

:func:`state_bytes` measures what a state really occupies. :func:`adamx.with_storage` wraps an
optimizer so that its moments are kept through these policies.
"""

from adamx.storage._blockwise8 import Blockwise8, Quantized, blockwise8, dynamic_code, row_blocks
from adamx.storage._cast import Cast, cast
from adamx.storage._factored import Factored, FactoredMoment, factored
from adamx.storage._flat import Flat, FlatMoments, flat
from adamx.storage._policy import Storage, state_bytes
from adamx.storage._resolve import resolve
from adamx.storage._with_storage import (
    StorageError,
    StorageState,
    state_bytes_per_param,
    storage_error,
    with_storage,
)

__all__ = [
    "Blockwise8",
    "Cast",
    "Factored",
    "FactoredMoment",
    "Flat",
    "FlatMoments",
    "Quantized",
    "Storage",
    "StorageError",
    "StorageState",
    "blockwise8",
    "cast",
    "dynamic_code",
    "factored",
    "flat",
    "resolve",
    "row_blocks",
    "state_bytes",
    "state_bytes_per_param",
    "storage_error",
    "with_storage",
]
