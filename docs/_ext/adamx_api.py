"""The API pages of the site, generated from ``adamx.__all__``.

``api_groups()`` puts every public name in one group by a rule, so a new optimizer (a name in
``adamx.OPTIMIZERS``) or a new block, storage policy or training tool appears on its page
without an edit here:

- ``optimizers``: ``OPTIMIZERS``, the names it lists, and ``from_torch``;
- ``storage``: names defined in ``adamx.storage`` (and the ``adamx.storage`` namespace);
- ``execution``: names defined in ``adamx.kernels``;
- ``training``: names defined in ``adamx.training``;
- ``blocks``: everything else (the blocks of ``adamx.blocks`` and the recipe-specific blocks
  and state types of ``adamx.optimizers``).

The directive ``{adamx-api} GROUP`` writes one autodoc entry per name of the group:
functions first, then classes (the state types), each in ``__all__`` order.
"""

from __future__ import annotations

import inspect
import types

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

GROUPS = ("optimizers", "blocks", "storage", "execution", "training")
_BY_LAYER = {
    "adamx.storage": "storage",
    "adamx.kernels": "execution",
    "adamx.training": "training",
}
_OPTIMIZERS_DOC = (
    "The names of the optimizers (recipes), in alphabetical order: every other name of "
    "``adamx.__all__`` is a building block, a storage policy or a tool. "
    "``getattr(adamx, name)`` is the factory."
)


def group_of(name: str, obj: object, optimizers: tuple[str, ...]) -> str:
    """The API page a public name of adamx is documented on."""
    if name in optimizers or name in ("OPTIMIZERS", "from_torch"):
        return "optimizers"
    module = obj.__name__ if isinstance(obj, types.ModuleType) else obj.__module__
    for prefix, group in _BY_LAYER.items():
        if module == prefix or module.startswith(prefix + "."):
            return group
    return "blocks"


def api_groups() -> dict[str, list[str]]:
    """Every name of ``adamx.__all__``, in exactly one group, in ``__all__`` order."""
    import adamx

    groups: dict[str, list[str]] = {group: [] for group in GROUPS}
    for name in adamx.__all__:
        groups[group_of(name, getattr(adamx, name), adamx.OPTIMIZERS)].append(name)
    return groups


def _entry(name: str, obj: object) -> list[str]:
    if name == "OPTIMIZERS":
        return [
            ".. py:data:: OPTIMIZERS",
            "   :type: tuple[str, ...]",
            "",
            "   " + _OPTIMIZERS_DOC,
            "",
        ]
    if isinstance(obj, types.ModuleType):  # adamx.storage: names not also at adamx.*
        import adamx

        also = sorted(set(getattr(obj, "__all__", ())) & set(adamx.__all__))
        lines = [f".. automodule:: adamx.{name}", "   :members:"]
        if also:
            lines.append("   :exclude-members: " + ", ".join(also))
        return [*lines, ""]
    if inspect.isclass(obj):
        lines = [f".. autoclass:: adamx.{name}"]
        if not (issubclass(obj, tuple) and hasattr(obj, "_fields")):
            lines.append("   :members:")  # NamedTuple states: their docstring lists the fields
        return [*lines, ""]
    return [f".. autofunction:: adamx.{name}", ""]


class AdamxApi(SphinxDirective):
    """``{adamx-api} GROUP``: the autodoc entries of one group of ``adamx.__all__``."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        import adamx

        group = self.arguments[0]
        if group not in GROUPS:
            raise self.error(f"unknown API group {group!r}; one of {', '.join(GROUPS)}")
        names = api_groups()[group]
        objs = {name: getattr(adamx, name) for name in names}
        if group == "optimizers":
            order = [n for n in names if n not in adamx.OPTIMIZERS] + sorted(
                n for n in names if n in adamx.OPTIMIZERS
            )
        else:
            order = [n for n in names if not inspect.isclass(objs[n])]
            order += [n for n in names if inspect.isclass(objs[n])]
        # the pages are MyST; docstrings are reStructuredText, so autodoc runs in eval-rst
        lines = ["```{eval-rst}", ".. currentmodule:: adamx", ""]
        for name in order:
            lines += _entry(name, objs[name])
        lines.append("```")
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source="adamx_api"), node)
        return node.children


def setup(app):
    app.add_directive("adamx-api", AdamxApi)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
