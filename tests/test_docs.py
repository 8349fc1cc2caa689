"""The examples in the README and in the docstrings run and say what they claim."""

from __future__ import annotations

import doctest
import pathlib
import re
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx

ROOT = pathlib.Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
    return [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)]


@pytest.mark.parametrize("index", range(len(python_blocks((ROOT / "README.md").read_text()))))
def test_readme_python_blocks_run(index):
    code = python_blocks((ROOT / "README.md").read_text())[index]
    namespace = {}  # each block runs on its own, as a reader would paste it
    # users' defaults: the README's model broadcasts, optax's schedules promote int to float
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        exec(compile(code, f"README.md[{index}]", "exec"), namespace)


def test_docstring_examples():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    # adamx.storage's names are defined in its private modules: the finder does not reach
    # them through the package, so they are listed too.
    objects = {name: getattr(adamx, name) for name in adamx.__all__}
    objects.update({f"storage.{n}": getattr(adamx.storage, n) for n in adamx.storage.__all__})
    tests = [t for name, obj in objects.items() for t in finder.find(obj, name)]
    assert any(t.examples for t in tests), "no docstring example found"
    for t in tests:
        runner.run(t)
    assert runner.failures == 0


def test_every_public_symbol_has_a_docstring_with_a_rule():
    for name in adamx.__all__:
        doc = getattr(adamx, name).__doc__ or ""
        assert len(doc.strip()) > 40, f"adamx.{name} lacks a docstring"


def test_readme_recipes_equal_the_aliases():
    namespace = {}
    for code in python_blocks((ROOT / "README.md").read_text()):
        if "amsgrad = optax.chain" in code or "adam = optax.chain" in code:
            exec(compile(code, "README.md", "exec"), namespace)
    assert {"adam", "amsgrad", "adabelief"} <= set(namespace)
    params = {"w": jnp.linspace(-1.0, 1.0, 5)}
    for name, alias in (
        ("adam", adamx.adam(1e-3, weight_decay=1e-2)),
        ("amsgrad", adamx.amsgrad(1e-3)),
        ("adabelief", adamx.adabelief(1e-3)),
    ):
        chain = namespace[name]
        s1, s2 = chain.init(params), alias.init(params)
        for i in range(5):
            g = {"w": jnp.sin(params["w"] * (i + 1.0))}
            u1, s1 = chain.update(g, s1, params)
            u2, s2 = alias.update(g, s2, params)
            np.testing.assert_allclose(np.asarray(u1["w"]), np.asarray(u2["w"]), rtol=1e-6)
