"""The character-level transformer of ``adamx.demo.charlm``: shapes, the initial loss, causality
against an independent NumPy forward pass, training, determinism."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx
from adamx.demo import charlm

SMALL = {"d_model": 16, "layers": 2, "heads": 2, "context": 8}
logits = jax.jit(charlm.logits)
loss = jax.jit(charlm.loss)


@pytest.fixture(scope="module")
def corpus():
    tokens, vocab = charlm.encode(charlm.load_text())
    return tokens, vocab


def test_text_and_vocab(corpus):
    tokens, vocab = corpus
    text = charlm.load_text()
    assert text == charlm.load_text()  # deterministic
    assert len(text) > 100_000 and charlm.load_text(1000) == text[:1000]
    assert tokens.dtype == np.int32 and tokens.shape == (len(text),)
    assert vocab.size == len(set(text)) and list(vocab.chars) == sorted(vocab.chars)
    assert vocab.decode(tokens[:500]) == text[:500]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        vocab.encode("\x00")


def test_shapes():
    params = charlm.init(jax.random.key(0), 50, d_model=32, layers=3, heads=4, context=16)
    assert len(params["blocks"]) == 3
    block = params["blocks"][0]
    assert block["q"].shape == (32, 4, 8) and block["o"].shape == (4, 8, 32)
    assert block["mlp_in"].shape == (32, 128) and params["unembed"].shape == (32, 50)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    per_block = 4 * 32 + 4 * 32 * 32 + 2 * 32 * 128 + 128 + 32
    assert charlm.num_params(params) == 50 * 32 + 16 * 32 + 3 * per_block + 64 + 32 * 50 + 50
    tokens = jnp.zeros((3, 10), jnp.int32)
    assert logits(params, tokens).shape == (3, 10, 50)
    assert loss(params, tokens, tokens).shape == ()
    with pytest.raises(ValueError, match="longer than the model's context"):
        logits(params, jnp.zeros((1, 17), jnp.int32))
    with pytest.raises(ValueError, match="multiple of `heads`"):
        charlm.init(jax.random.key(0), 50, d_model=30, heads=4)


def test_batches(corpus):
    tokens = jnp.asarray(corpus[0])
    key = jax.random.key(3)
    x, y = jax.jit(charlm.batches, static_argnums=(1, 2))(tokens, 5, 12, key)
    assert x.shape == y.shape == (5, 12) and x.dtype == jnp.int32
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # targets are the shifted inputs
    x2, _ = charlm.batches(tokens, 5, 12, key)
    np.testing.assert_array_equal(x, x2)
    text = np.asarray(tokens)
    for row in np.asarray(x):  # every row is a crop of the text
        starts = np.flatnonzero(text[: len(text) - 12] == row[0])
        assert any(np.array_equal(text[s : s + 12], row) for s in starts)


def test_initial_loss_is_log_vocab(corpus):
    tokens, vocab = corpus
    params = charlm.init(jax.random.key(0), vocab.size)  # the default configuration
    x, y = charlm.batches(jnp.asarray(tokens), 16, 64, jax.random.key(1))
    assert abs(float(loss(params, x, y)) - math.log(vocab.size)) < 0.1


def _numpy_logits(params, tokens):
    """An independent float64 forward pass: attention written as explicit sums over the
    positions ``s <= t`` (causality by construction), no masks."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)

    def norm(q, x):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * q["scale"] + q["bias"]

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    batch, t_len = tokens.shape
    h = p["embed"][tokens] + p["position"][:t_len]
    for blk in p["blocks"]:
        x = norm(blk["norm1"], h)
        heads, d_head = blk["q"].shape[1:]
        out = np.zeros_like(h)
        for b in range(batch):
            for head in range(heads):
                q, k, v = (x[b] @ blk[w][:, head, :] for w in "qkv")
                for t in range(t_len):
                    s = np.array([q[t] @ k[j] for j in range(t + 1)]) / math.sqrt(d_head)
                    w = np.exp(s - s.max())
                    mixed = sum(w[j] * v[j] for j in range(t + 1)) / w.sum()
                    out[b, t] += mixed @ blk["o"][head]
        h = h + out
        x = norm(blk["norm2"], h)
        h = h + gelu(x @ blk["mlp_in"] + blk["mlp_in_bias"]) @ blk["mlp_out"] + blk["mlp_out_bias"]
    return norm(p["norm"], h) @ p["unembed"] + p["unembed_bias"]


def test_logits_match_numpy_reference():
    params = charlm.init(jax.random.key(1), 11, **SMALL)
    # perturb every leaf so that zero biases and unit scales are exercised too
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda x: jnp.asarray(x + 0.3 * rng.standard_normal(x.shape).astype(np.float32)), params
    )
    tokens = rng.integers(0, 11, (2, 8)).astype(np.int32)
    got = np.asarray(logits(params, jnp.asarray(tokens)), np.float64)
    np.testing.assert_allclose(got, _numpy_logits(params, tokens), rtol=1e-4, atol=1e-4)


def test_causal():
    params = charlm.init(jax.random.key(1), 11, **SMALL)
    tokens = jax.random.randint(jax.random.key(3), (2, 8), 0, 11)
    base = logits(params, tokens)
    # row j of `changed`: the second sequence with the token at position j replaced
    changed = jnp.stack([tokens[1].at[j].set((tokens[1, j] + 1) % 11) for j in range(8)])
    changed = logits(params, changed)
    for j in range(8):
        np.testing.assert_allclose(changed[j, :j], base[1, :j], rtol=0, atol=1e-6)
        assert np.abs(np.asarray(changed[j, j:] - base[1, j:])).max() > 1e-3
    for t in (1, 5):  # a prefix alone gives the same logits: there is no future to see
        prefix = logits(params, tokens[:, :t])
        np.testing.assert_allclose(prefix, base[:, :t], rtol=1e-5, atol=1e-5)


def _short_run(seed):
    text = charlm.load_text(50_000)
    return charlm.train(
        adamx.adam(1e-2), steps=40, seed=seed, batch=8, text=text, eval_count=16, **SMALL
    )


def test_train_decreases_loss_and_is_deterministic():
    run = _short_run(0)
    losses = run["losses"]
    assert len(losses) == 40 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < losses[0] - 0.8, losses
    assert math.isfinite(run["eval_loss"]) and run["eval_loss"] < losses[0] - 0.5
    assert run["final_loss"] == pytest.approx(np.mean(losses[-4:]))
    assert run["num_params"] == charlm.num_params(run["params"])
    again = _short_run(0)
    assert again["losses"] == losses and again["eval_loss"] == run["eval_loss"]
    jax.tree.map(np.testing.assert_array_equal, again["params"], run["params"])


def test_sample():
    params = charlm.init(jax.random.key(0), 5, **SMALL)
    vocab = charlm.Vocab(tuple("abcde"))
    text = charlm.sample(params, vocab, "abc", 10, jax.random.key(0), temperature=0)
    assert len(text) == 13 and text.startswith("abc") and set(text) <= set("abcde")
    again = charlm.sample(params, vocab, "abc", 10, jax.random.key(1), temperature=0)
    assert again == text  # greedy does not use the key
