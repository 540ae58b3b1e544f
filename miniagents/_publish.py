"""Public classes and functions report their public module (``MiniAgents.__module__ == "miniagents"``).

Each package namespace (``miniagents``, ``miniagents.llms``, ...) calls :func:`publish` once, after its
imports, as trio does with ``fixup_module_metadata``: reprs, docs and pickles then name the module users import
from, not the private one that defines the object.  Leaf module: it imports nothing from the package.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping
from typing import Any

__all__ = ["DEFINED_AT", "publish", "publish_object"]

#: The class attribute that keeps ``"module:QualName"`` of where a published class was defined.
DEFINED_AT = "_miniagents_defined_at"


def publish(namespace: Mapping[str, Any]) -> None:
    """Make the classes and functions in ``namespace["__all__"]`` defined in its private modules report it.

    Only objects of the package's own private modules (``<package>._x``) are changed, so an object re-exported
    from a more specific public module keeps that module.  A class's own string annotations are evaluated
    first, in its defining module (``typing.get_type_hints`` looks names up in the module ``__module__``
    names); annotations that cannot be evaluated there (names imported only for type checkers) stay strings.
    A class keeps where it was defined in :data:`DEFINED_AT`, so that message classes keep their serialised
    name and hash keys (see ``miniagents._encoding.class_path``).
    """
    package = namespace["__name__"]
    for name in namespace["__all__"]:
        if name in namespace:  # a lazily imported name is published when it is loaded
            publish_object(package, namespace[name])


def publish_object(package: str, obj: Any) -> None:
    """Make *obj* report *package* as its module if it is a class or function of the package's private modules."""
    if not (isinstance(obj, type) or inspect.isfunction(obj)):
        return
    module = getattr(obj, "__module__", "")
    if not module.startswith(f"{package}._"):
        return
    if isinstance(obj, type):
        setattr(obj, DEFINED_AT, f"{module}:{obj.__qualname__}")
        own = inspect.get_annotations(obj)
        if own:
            try:
                hints = typing.get_type_hints(obj)
            except Exception:
                hints = None
            if hints is not None:
                obj.__annotations__ = {key: hints[key] for key in own if key in hints}
    obj.__module__ = package
