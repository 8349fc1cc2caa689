"""The building blocks: per-leaf algebra shared by the recipes.

Moment estimation (``_moments``), bias correction (``_correction``), the read-out that
turns moments into a step (``_normalize``), weight decay and sign (``_decay``), the
learning rate (``_schedule``), the alternative second-moment rules and read-outs of the
Adam variants (``_rules``), and the helpers every block uses (``_base``). Each block is an
``optax.GradientTransformation``. Public names are exported from ``adamx``; a block that
only one family uses lives beside that family's recipes in :mod:`adamx.optimizers`.
"""
