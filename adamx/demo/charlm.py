"""A small character-level transformer language model, for benchmarks and notebooks.

Plain ``jax.numpy``, no neural-network library: the parameters are a dict of arrays, the
model is :func:`logits` and the objective :func:`loss`. It trains on text every Python
installation has, the help texts of the standard library's ``pydoc_data.topics`` (what
``help("if")`` prints; about 465,000 characters and ~100 distinct ones on CPython 3.11),
so nothing is downloaded.

The model (GPT-2-like, pre-norm)::

    h = embed[x] + position[:T]                      # learned positional embedding
    for each block:
        h = h + attention(layer_norm(h))             # causal, ``heads`` heads
        h = h + mlp(layer_norm(h))                   # d -> 4d (tanh GELU) -> d
    logits = layer_norm(h) @ unembed + unembed_bias  # untied output

The output projection is untied from the input embedding: every matrix then has one
role, and the smallest leaves (biases, norms) stay small. The attention weights are kept
per head, ``q``/``k``/``v`` of shape ``(d_model, heads, d_head)`` and ``o`` of shape
``(heads, d_head, d_model)`` (the kernels of Flax's ``MultiHeadDotProductAttention``), so
the number of heads is read off the parameters and :func:`loss` needs no configuration.

Sizes of the default configuration (``d_model=128, layers=2, heads=4, context=64``,
vocabulary ``V``): ``8,192 + 2 * 197,760 + 256 + 257 * V`` parameters, 430,439 for the
103 characters of CPython 3.11's topics. A training step at the default batch of 16
windows of 64 characters is about 2.6 GFLOP, some 70 ms on two CPU cores, so the
default :func:`train` (300 steps of Adam at 3e-3) takes 20-30 s: the training loss falls
from ``log V`` = 4.63 to about 2.37 (mean of the last 30 steps), 2.26 on held-out text.

Example:
  >>> import adamx
  >>> from adamx import charlm
  >>> run = charlm.train(adamx.adam(3e-3), steps=300, seed=0)  # doctest: +SKIP
  >>> round(run["losses"][0], 2), round(run["final_loss"], 2)  # doctest: +SKIP
  (4.66, 2.37)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adamx

__all__ = [
    "Vocab",
    "batches",
    "encode",
    "eval_windows",
    "init",
    "load_text",
    "logits",
    "loss",
    "num_params",
    "sample",
    "split",
    "train",
]

Params = dict[str, Any]

_INIT_STD = 0.02  # GPT-2's initial scale of every weight matrix


# --------------------------------------------------------------------------- data


def load_text(max_chars: int | None = None) -> str:
    """The text of the Python standard library's help topics, ``pydoc_data.topics``.

    The topics (``help("if")``, ``help("FORMATTING")``, ...: the language reference's
    sections) are joined in sorted order of their names, separated by blank lines, so the
    text is the same on every run of one Python version (it differs slightly between
    versions). About 465,000 characters on CPython 3.11.

    Args:
      max_chars: keep only the first this many characters (``>= 2``), or None for all.

    Returns:
      The text.

    Raises:
      RuntimeError: when this Python was installed without ``pydoc_data`` (some
        distributions strip it; on Debian it is in ``libpython3.X-stdlib``).
    """
    if max_chars is not None and (isinstance(max_chars, bool) or int(max_chars) < 2):
        raise ValueError(f"`max_chars` must be an integer >= 2 or None, got {max_chars!r}.")
    try:
        from pydoc_data.topics import topics
    except ImportError as err:
        raise RuntimeError(
            "adamx.demo.charlm trains on the standard library's help texts (pydoc_data.topics), "
            "which this Python installation lacks; install the full standard library (e.g. "
            "Debian's libpython3-stdlib) or pass your own text to `train(text=...)`."
        ) from err
    text = "\n\n".join(topics[name].strip() for name in sorted(topics))
    return text if max_chars is None else text[: int(max_chars)]


@dataclasses.dataclass(frozen=True)
class Vocab:
    """A character vocabulary: token ``i`` is ``chars[i]``.

    Attributes:
      chars: the distinct characters, sorted by code point.
    """

    chars: tuple[str, ...]

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        """The vocabulary of the distinct characters of ``text``."""
        if not text:
            raise ValueError("`text` is empty: a vocabulary needs at least one character.")
        return cls(tuple(sorted(set(text))))

    @property
    def size(self) -> int:
        """The number of tokens."""
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """``text`` as an int32 array of token ids; every character must be in ``chars``."""
        index = {c: i for i, c in enumerate(self.chars)}
        try:
            return np.fromiter((index[c] for c in text), np.int32, count=len(text))
        except KeyError as err:
            raise ValueError(f"character {err.args[0]!r} is not in the vocabulary.") from None

    def decode(self, tokens) -> str:
        """The text of a sequence of token ids."""
        return "".join(self.chars[int(t)] for t in np.asarray(tokens).reshape(-1))


def encode(text: str) -> tuple[np.ndarray, Vocab]:
    """Build the vocabulary of ``text`` and encode it: ``(tokens, vocab)``, tokens int32."""
    vocab = Vocab.from_text(text)
    return vocab.encode(text), vocab


def split(tokens: np.ndarray, eval_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """``(train, held_out)``: the last ``eval_fraction`` of the tokens is held out."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"`eval_fraction` must lie in (0, 1), got {eval_fraction!r}.")
    cut = len(tokens) - int(round(eval_fraction * len(tokens)))
    return tokens[:cut], tokens[cut:]


def batches(
    tokens: jax.Array, batch: int, context: int, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """A batch of random crops: ``(inputs, targets)``, each int32 ``(batch, context)``.

    Each row is a window of ``context + 1`` consecutive tokens starting at a uniformly
    random position; targets are the inputs shifted by one. Jittable (``batch`` and
    ``context`` static); the same ``key`` gives the same batch.

    Args:
      tokens: a 1-D integer array of at least ``context + 1`` tokens.
      batch: the number of windows.
      context: the window length.
      key: a ``jax.random`` key.
    """
    n = tokens.shape[0]
    if n < context + 1:
        raise ValueError(f"need at least `context + 1` = {context + 1} tokens, got {n}.")
    starts = jax.random.randint(key, (batch, 1), 0, n - context)
    windows = jnp.take(tokens, starts + jnp.arange(context + 1)[None, :], axis=0)
    return windows[:, :-1], windows[:, 1:]


def eval_windows(tokens: np.ndarray, context: int, count: int = 128) -> tuple[np.ndarray, ...]:
    """``count`` evenly spaced, non-overlapping windows of held-out tokens, as
    ``(inputs, targets)`` of shape ``(count, context)`` (fewer if the text is short)."""
    span = context + 1
    count = max(1, min(count, len(tokens) // span))
    starts = np.linspace(0, len(tokens) - span, count).astype(np.int64)
    windows = np.stack([tokens[s : s + span] for s in starts])
    return windows[:, :-1], windows[:, 1:]


# --------------------------------------------------------------------------- model


@functools.partial(jax.jit, static_argnames=("vocab_size", "d_model", "layers", "heads", "context"))
def init(
    key: jax.Array,
    vocab_size: int,
    *,
    d_model: int = 128,
    layers: int = 2,
    heads: int = 4,
    context: int = 64,
) -> Params:
    """Initial parameters, float32.

    The token embedding is drawn from ``N(0, 1)`` (as ``torch.nn.Embedding``), every other
    matrix from ``N(0, 0.02^2)`` (GPT-2), the projections that write into the residual
    stream (``o``, ``mlp_out``) scaled by ``1 / sqrt(2 * layers)``; biases are zero and
    layer-norm scales one. The final layer norm and the small ``unembed`` keep the
    initial logits close to zero, so the initial loss is close to ``log(vocab_size)``.
    (With GPT-2's 0.02 for the embedding too, the token signal is no larger than the
    positional one, and this small model needs about 200 steps instead of 30 to get
    from the unigram loss, ~3.2, to the bigram loss, ~2.5.)

    Args:
      key: a ``jax.random`` key.
      vocab_size: the number of tokens.
      d_model: the width of the residual stream, a multiple of ``heads``.
      layers: the number of transformer blocks.
      heads: attention heads per block.
      context: the longest input (the rows of the positional embedding).

    Returns:
      ``{"embed": (V, d), "position": (context, d), "blocks": [block, ...],
      "norm": {"scale", "bias"}, "unembed": (d, V), "unembed_bias": (V,)}``, each block
      ``{"norm1", "q", "k", "v": (d, heads, d // heads), "o": (heads, d // heads, d),
      "norm2", "mlp_in": (d, 4d), "mlp_in_bias", "mlp_out": (4d, d), "mlp_out_bias"}``.
    """
    for name, value in (
        ("vocab_size", vocab_size),
        ("d_model", d_model),
        ("layers", layers),
        ("heads", heads),
        ("context", context),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
    if d_model % heads:
        raise ValueError(f"`d_model` ({d_model}) must be a multiple of `heads` ({heads}).")
    d_head, d_mlp = d_model // heads, 4 * d_model
    out_std = _INIT_STD / math.sqrt(2 * layers)
    # Every matrix is a slice of one normal sample: one random-number kernel to compile
    # instead of one per matrix (seconds of compile time on CPU).
    size = vocab_size * d_model * 2 + context * d_model + layers * (4 + 2 * 4) * d_model**2
    noise = jax.random.normal(key, (size,), jnp.float32)
    used = 0

    def normal(shape, std=_INIT_STD):
        nonlocal used
        n = math.prod(shape)
        used += n
        return np.float32(std) * noise[used - n : used].reshape(shape)

    def norm():
        return {
            "scale": jnp.ones((d_model,), jnp.float32),
            "bias": jnp.zeros((d_model,), jnp.float32),
        }

    blocks = [
        {
            "norm1": norm(),
            "q": normal((d_model, heads, d_head)),
            "k": normal((d_model, heads, d_head)),
            "v": normal((d_model, heads, d_head)),
            "o": normal((heads, d_head, d_model), out_std),
            "norm2": norm(),
            "mlp_in": normal((d_model, d_mlp)),
            "mlp_in_bias": jnp.zeros((d_mlp,), jnp.float32),
            "mlp_out": normal((d_mlp, d_model), out_std),
            "mlp_out_bias": jnp.zeros((d_model,), jnp.float32),
        }
        for _ in range(layers)
    ]
    params = {
        "embed": normal((vocab_size, d_model), 1.0),
        "position": normal((context, d_model)),
        "blocks": blocks,
        "norm": norm(),
        "unembed": normal((d_model, vocab_size)),
        "unembed_bias": jnp.zeros((vocab_size,), jnp.float32),
    }
    assert used == size
    return params


def num_params(params: Params) -> int:
    """The number of scalars in ``params``."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def _layer_norm(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    normed = (x - mean) * jax.lax.rsqrt(var + np.float32(1e-5))
    return normed * p["scale"][None, None, :] + p["bias"][None, None, :]


def _attention(p: Params, x: jax.Array) -> jax.Array:
    """Causal multi-head self-attention of ``x`` ``(B, T, d)``."""
    t, d_head = x.shape[1], p["q"].shape[2]
    q = jnp.einsum("btd,dhk->bhtk", x, p["q"])
    k = jnp.einsum("btd,dhk->bhtk", x, p["k"])
    v = jnp.einsum("btd,dhk->bhtk", x, p["v"])
    scores = jnp.einsum("bhtk,bhsk->bhts", q, k) * np.float32(1.0 / math.sqrt(d_head))
    causal = jnp.tril(jnp.ones((t, t), jnp.bool_))[None, None, :, :]
    scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
    mixed = jnp.einsum("bhts,bhsk->bhtk", jax.nn.softmax(scores, axis=-1), v)
    return jnp.einsum("bhtk,hkd->btd", mixed, p["o"])


def _mlp(p: Params, x: jax.Array) -> jax.Array:
    h = jax.nn.gelu(x @ p["mlp_in"] + p["mlp_in_bias"][None, None, :])
    return h @ p["mlp_out"] + p["mlp_out_bias"][None, None, :]


def logits(params: Params, tokens: jax.Array) -> jax.Array:
    """The next-token logits, float32 ``(B, T, V)``, of int tokens ``(B, T)``, ``T <=
    context``. Position ``t``'s logits depend on ``tokens[:, :t + 1]`` only."""
    t = tokens.shape[-1]
    context = params["position"].shape[0]
    if t > context:
        raise ValueError(f"input of {t} tokens is longer than the model's context {context}.")
    h = jnp.take(params["embed"], tokens, axis=0) + params["position"][None, :t, :]
    for block in params["blocks"]:
        h = h + _attention(block, _layer_norm(block["norm1"], h))
        h = h + _mlp(block, _layer_norm(block["norm2"], h))
    out = _layer_norm(params["norm"], h) @ params["unembed"]
    return out + params["unembed_bias"][None, None, :]


def loss(params: Params, tokens_in: jax.Array, tokens_out: jax.Array) -> jax.Array:
    """The mean cross-entropy (nats per character) of predicting ``tokens_out`` from
    ``tokens_in``, both int ``(B, T)``; ``log(V)`` for uniform predictions."""
    log_probs = jax.nn.log_softmax(logits(params, tokens_in), axis=-1)
    picked = jnp.take_along_axis(log_probs, tokens_out[..., None], axis=-1)
    return -jnp.mean(picked)


def sample(
    params: Params,
    vocab: Vocab,
    prompt: str,
    length: int,
    key: jax.Array,
    *,
    temperature: float = 1.0,
) -> str:
    """``prompt`` followed by ``length`` sampled characters (``temperature`` 0: greedy).

    Each character is drawn from the model's distribution given the previous
    ``context`` characters: one forward pass per character, on a window padded to the
    full context (the positions after the last character cannot affect it), so the
    forward pass compiles once.
    """
    if not prompt:
        raise ValueError("`prompt` must hold at least one character.")
    context = params["position"].shape[0]

    @jax.jit
    def next_logits(params, window, last):
        return logits(params, window[None, :])[0, last]

    tokens = list(vocab.encode(prompt))
    for i in range(length):
        recent = tokens[-context:]
        window = np.zeros(context, np.int32)
        window[: len(recent)] = recent
        scores = next_logits(params, window, len(recent) - 1)
        if temperature == 0:
            tokens.append(int(jnp.argmax(scores)))
        else:
            sub = jax.random.fold_in(key, i)
            tokens.append(int(jax.random.categorical(sub, scores / np.float32(temperature))))
    return vocab.decode(tokens)


# --------------------------------------------------------------------------- training


def train(
    optimizer: optax.GradientTransformation,
    *,
    steps: int = 300,
    seed: int = 0,
    batch: int = 16,
    context: int = 64,
    d_model: int = 128,
    layers: int = 2,
    heads: int = 4,
    text: str | None = None,
    eval_count: int = 128,
) -> dict[str, Any]:
    """Train the model on random crops of ``text`` and evaluate it on held-out text.

    The last 10% of the text is held out (:func:`split`). Step ``i`` trains on
    ``batches(train_tokens, batch, context, fold_in(data_key, i))``, the data key and the
    initial parameters both derived from ``seed``: two runs with the same seed and shapes
    see the same batches in the same order whatever the optimizer. The step (forward,
    backward, ``adamx.step``) is one jitted call with the parameters and optimizer state
    donated.

    Args:
      optimizer: any ``optax.GradientTransformation`` (e.g. ``adamx.adam(3e-3)``).
      steps: the number of updates, ``>= 1``.
      seed: seeds the initial parameters and the batches.
      batch, context, d_model, layers, heads: the batch size and the model's shape
        (:func:`init`).
      text: the text to learn; default :func:`load_text` ``()``.
      eval_count: held-out windows of ``context`` characters for the final evaluation
        (:func:`eval_windows`).

    Returns:
      A dict: ``losses`` (the training loss of each step's batch, before its update),
      ``final_loss`` (their mean over the last 10% of the steps, at least one),
      ``eval_loss`` (the mean loss on the held-out windows at the final parameters),
      ``params`` and ``opt_state`` (final), ``vocab``, ``num_params``,
      ``step_seconds`` (the median wall time of a step, compilation excluded),
      ``compile_seconds``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be an integer >= 1, got {steps!r}.")
    tokens, vocab = encode(load_text() if text is None else text)
    train_tokens, held_out = split(tokens)
    eval_in, eval_out = (jnp.asarray(a) for a in eval_windows(held_out, context, eval_count))
    train_tokens = jnp.asarray(train_tokens)  # type: ignore[assignment]

    init_key, data_key = jax.random.split(jax.random.key(seed))
    params = init(
        init_key, vocab.size, d_model=d_model, layers=layers, heads=heads, context=context
    )
    n_params = num_params(params)
    opt_state = optimizer.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, data, i):
        x, y = batches(data, batch, context, jax.random.fold_in(data_key, i))
        value, grads = jax.value_and_grad(loss)(params, x, y)
        params, opt_state = adamx.step(optimizer, grads, opt_state, params)
        return params, opt_state, value

    t0 = time.perf_counter()
    index = jnp.zeros((), jnp.int32)
    compiled = train_step.lower(params, opt_state, train_tokens, index).compile()
    compile_seconds = time.perf_counter() - t0

    losses, seconds = [], []
    for i in range(steps):
        t0 = time.perf_counter()
        params, opt_state, value = compiled(params, opt_state, train_tokens, jnp.int32(i))
        losses.append(float(value))  # waits for the step
        seconds.append(time.perf_counter() - t0)

    tail = max(1, steps // 10)
    eval_loss = float(jax.jit(loss)(params, eval_in, eval_out))
    return {
        "losses": losses,
        "final_loss": float(np.mean(losses[-tail:])),
        "eval_loss": eval_loss,
        "params": params,
        "opt_state": opt_state,
        "vocab": vocab,
        "num_params": n_params,
        "step_seconds": statistics.median(seconds),
        "compile_seconds": compile_seconds,
    }
