"""Test-wide JAX settings: silent dtype promotion and rank broadcasting are bugs."""

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
    """Run a test with 64-bit floats enabled."""
    with jax.enable_x64(True):
        yield
