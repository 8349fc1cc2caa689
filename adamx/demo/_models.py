"""The demo's two models: softmax regression and a two-layer MLP."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adamx.demo._defaults import MLP_HIDDEN, NUM_CLASSES, NUM_FEATURES

# --------------------------------------------------------------------------- models


def _dense(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """``x @ w + b``, the bias broadcast explicitly over the batch."""
    return x @ params["w"] + params["b"][None, :]


def _init_softmax(key: jax.Array) -> dict[str, Any]:
    del key  # the problem is convex: start at zero
    return {
        "w": jnp.zeros((NUM_FEATURES, NUM_CLASSES), jnp.float32),
        "b": jnp.zeros((NUM_CLASSES,), jnp.float32),
    }


def _init_mlp(key: jax.Array) -> dict[str, Any]:
    k1, k2 = jax.random.split(key)

    def glorot(k, fan_in, fan_out):
        scale = np.float32(math.sqrt(2.0 / (fan_in + fan_out)))
        return scale * jax.random.normal(k, (fan_in, fan_out), jnp.float32)

    return {
        "hidden": {
            "w": glorot(k1, NUM_FEATURES, MLP_HIDDEN),
            "b": jnp.zeros((MLP_HIDDEN,), jnp.float32),
        },
        "out": {
            "w": glorot(k2, MLP_HIDDEN, NUM_CLASSES),
            "b": jnp.zeros((NUM_CLASSES,), jnp.float32),
        },
    }


def _softmax_logits(params: dict[str, Any], x: jax.Array) -> jax.Array:
    return _dense(params, x)


def _mlp_outputs(params: dict[str, Any], x: jax.Array) -> jax.Array:
    return _dense(params["out"], jnp.tanh(_dense(params["hidden"], x)))


def _softmax_loss(params: dict[str, Any], x: jax.Array, y: jax.Array) -> jax.Array:
    log_probs = jax.nn.log_softmax(_softmax_logits(params, x), axis=-1)
    one_hot = jax.nn.one_hot(y, NUM_CLASSES, dtype=log_probs.dtype)
    return -jnp.mean(jnp.sum(one_hot * log_probs, axis=-1))


def _mlp_loss(params: dict[str, Any], x: jax.Array, y: jax.Array) -> jax.Array:
    outputs = _mlp_outputs(params, x)
    one_hot = jax.nn.one_hot(y, NUM_CLASSES, dtype=outputs.dtype)
    return jnp.mean(jnp.square(outputs - one_hot))


_MODELS: dict[str, tuple[Callable, Callable, Callable]] = {
    # example: (init(key), loss(params, x, y), predict(params, x) -> scores)
    "softmax": (_init_softmax, _softmax_loss, _softmax_logits),
    "mlp": (_init_mlp, _mlp_loss, _mlp_outputs),
}
