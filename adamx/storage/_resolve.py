"""Storage policies by name."""

from __future__ import annotations

from adamx.storage._blockwise8 import blockwise8
from adamx.storage._cast import cast
from adamx.storage._factored import factored
from adamx.storage._flat import flat
from adamx.storage._policy import Storage

_NAMED = {
    "float32": lambda: cast("float32"),
    "bfloat16": lambda: cast("bfloat16"),
    "float16": lambda: cast("float16"),
    "bfloat16_sr": lambda: cast("bfloat16", stochastic_rounding=True),
    "float16_sr": lambda: cast("float16", stochastic_rounding=True),
    "8bit": blockwise8,
    "factored": factored,
    "flat": flat,
}


def resolve(spec: str | Storage | None) -> Storage | None:
    """The storage policy a name stands for; a policy or None is returned as it is.

    Names: ``"float32"``, ``"bfloat16"``, ``"float16"`` (:func:`cast`), ``"bfloat16_sr"``,
    ``"float16_sr"`` (:func:`cast` with stochastic rounding), ``"8bit"``
    (:func:`blockwise8` with its defaults), ``"factored"`` (:func:`factored` with its
    defaults), ``"flat"`` (:func:`flat`: the moment's leaves in one buffer per dtype).
    None means "as the optimizer computes it".

    Example:
      >>> resolve("bfloat16_sr")
      Cast(dtype='bfloat16', stochastic_rounding=True)

    Raises:
      ValueError: an unknown name (the message lists the valid ones) or another type.
    """
    if spec is None or isinstance(spec, Storage):
        return spec
    if isinstance(spec, str) and spec in _NAMED:
        return _NAMED[spec]()  # type: ignore[operator]
    raise ValueError(
        f"Unknown storage policy {spec!r}: use one of {', '.join(map(repr, _NAMED))}, "
        "a policy such as `adamx.storage.blockwise8(block_size=2048)`, or None."
    )
