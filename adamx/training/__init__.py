"""Tools around a train step: skipping non-finite steps (``_faults``), restoring state from
checkpoints (``_checkpoint``), inspecting the state (``_inspect``), state shardings
(``_sharding``) and ZeRO-1 sharding of the state (``_zero``). Public names are exported
from ``adamx``.
"""
