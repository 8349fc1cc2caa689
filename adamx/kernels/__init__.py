"""Execution: :func:`adamx.step` and the fused CPU kernels behind it.

A recipe is a chain of blocks and stays one; this layer runs some of them faster.
:func:`adamx.step` is ``update`` followed by ``optax.apply_updates``; for the recipes that
describe themselves to it (:func:`adamx.adam`, :func:`adamx.adamw`, and
:func:`adamx.with_storage` of either) it runs a single-pass C++ kernel on CPU instead
(sources in ``csrc/``, built on first use). Public names are exported from ``adamx``.
"""
