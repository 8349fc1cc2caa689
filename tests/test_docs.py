"""The examples in the README and in the docstrings run and say what they claim."""

from __future__ import annotations

import doctest
import pathlib
import re

import jax
import pytest

import adamx

ROOT = pathlib.Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.parametrize("index", range(len(python_blocks((ROOT / "README.md").read_text()))))
def test_readme_python_blocks_run(index):
    code = python_blocks((ROOT / "README.md").read_text())[index]
    namespace = {
        "weight_decay": 0.0,
        "b1": 0.9,
        "b2": 0.999,
        "eps": 1e-8,
        "eps_root": 0.0,
        "learning_rate": 1e-3,
    }
    # users' defaults: the README's model broadcasts, optax's schedules promote int to float
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        exec(compile(code, f"README.md[{index}]", "exec"), namespace)


def test_docstring_examples():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = [t for name in adamx.__all__ for t in finder.find(getattr(adamx, name), name)]
    assert any(t.examples for t in tests), "no docstring example found"
    for t in tests:
        runner.run(t)
    assert runner.failures == 0


def test_every_public_symbol_has_a_docstring_with_a_rule():
    for name in adamx.__all__:
        doc = getattr(adamx, name).__doc__ or ""
        assert len(doc.strip()) > 40, f"adamx.{name} lacks a docstring"
