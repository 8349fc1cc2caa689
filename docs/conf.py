"""Sphinx configuration of the adamx documentation site.

Build (from the repository root, after ``pip install -e ".[docs]"``)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The prose pages include sections of the README and the CHANGELOG (one source for both); the
API pages are generated from ``adamx.__all__`` by ``_ext/adamx_api.py``; the notebooks are
rendered with the outputs stored in them, never executed here.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))  # adamx from this checkout, installed or not

import adamx  # noqa: E402

project = "adamx"
author = "The adamx authors"
copyright = "The adamx authors; Apache 2.0"
release = adamx.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_nb",
    "adamx_api",
]

exclude_patterns = [
    "_build",
    "README.md",
    "screenshots.py",
    "notebooks/*.png",
    "**/.ipynb_checkpoints",
]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}

# Notebooks are shown with the outputs committed in them (tests/test_notebooks.py executes
# them); the site never runs them.
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "html_image"]
myst_heading_anchors = 2

# Cross-references are checked: an unresolved reference to an adamx name is an error (with
# -W); names of other libraries (no intersphinx: the build must not need the network) and
# the typing forms of signatures are not ours to resolve.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(optax|jax|jnp|np|numpy|chex|torch|flax|typing|collections|types)(\..*)?"),
    (r"py:.*", r"(Any|Callable|Sequence|Mapping|Iterable|Literal|NamedTuple|PyTree)"),
    (r"py:.*", r"(int|float|bool|str|bytes|tuple|list|dict|object|None|type|Path)"),
    (r"py:.*", r"(ScalarOrSchedule|Schedule|Array|ArrayTree|Params|Updates|OptState|Shape)"),
    (r"py:.*", r"(DTypeLike|ArrayLike|Numeric|Dtype|Sharding|Mesh|PartitionSpec)"),
]

# docstrings' literal blocks are update rules in plain text, not Python: no colours
highlight_language = "text"
autodoc_member_order = "bysource"
# the types are in each docstring's Args; optax.ScalarOrSchedule would print as a long union
autodoc_typehints = "none"
autodoc_preserve_defaults = True
# a member without a docstring shows none, not its base's (`Storage.stochastic = False` is a
# bool: its inherited "docstring" would be bool's)
autodoc_inherit_docstrings = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # NamedTuple fields are documented once, by autodoc
napoleon_attr_annotations = False  # the field types as the docstrings write them
napoleon_custom_sections = [("References", "notes_style"), ("Example", "examples_style")]

html_theme = "furo"
html_title = f"adamx {release}"
html_theme_options = {"navigation_with_keys": True}
html_static_path = ["_static"]
html_css_files = ["tables.css"]


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
    """A NamedTuple's fields are listed by its docstring; their own docstrings only say
    "Alias for field number N"."""
    if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)
