"""The recipes: each optimizer is a chain of blocks, one module per family.

``_adam`` (adam, adamw), ``_variants`` (amsgrad, nadam, radam, adamax, adamaxw, adabelief,
yogi), ``_sgd``, ``_adagrad`` (adagrad, adadelta), ``_rmsprop``, ``_lamb_lion``,
``_adafactor`` (its blocks in ``_adafactor_blocks``), ``_adopt``, ``_lazy``, ``_layerwise``
(lars, novograd), ``_optimistic``, ``_schedule_free``, ``_sign`` (sign_sgd, signum),
``_adan``, ``_ademamix`` (ademamix, simplified_ademamix), ``_muon``, ``_laprop``,
``_mars``, ``_adam_mini``, ``_soap``, ``_cautious`` (the wrapper ``cautious``), ``_rprop``,
``_asgd`` (asgd, asgd_eval_params), ``_sm3``, ``_madgrad``, ``_acprop``, ``_dadapt``
(prodigy, dadapt_adamw), ``_sophia`` and ``_galore``; ``_guard`` holds the input checks
every recipe runs and ``_adam_rule`` what a recipe tells the execution layer about itself.
Blocks used by one family only live in that family's module. Public names are exported from
``adamx``.
"""
