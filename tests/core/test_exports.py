"""Every public namespace is pinned: ``__all__`` is sorted and is exactly what the namespace offers.

For ``miniagents``, ``miniagents.llms``, ``miniagents.tracing``, ``miniagents.persistence``, ``miniagents.testing``
and ``miniagents.asgi``:

* ``__all__`` is sorted and names exactly the public (non-underscore) names the namespace holds, besides its
  submodules and the imports it needs itself (no list of names is copied here: the namespace is the list);
* every exported class and function defined in the package reports a public module as ``__module__`` (the
  namespace itself, or a more specific public module such as ``miniagents.testing.fake_llm_server``), where it
  can be found under its name;
* every export has a docstring.
"""

from __future__ import annotations

import importlib
import inspect
import types
from typing import Any

import pytest

import miniagents
import miniagents.miniagents as legacy

NAMESPACES = [
    "miniagents",
    "miniagents.llms",
    "miniagents.tracing",
    "miniagents.persistence",
    "miniagents.testing",
    "miniagents.asgi",
    "miniagents.mcp",
    "miniagents.durable",
]

#: Names a namespace holds for itself that are not exports (imports it needs at module level).
NOT_EXPORTS = {
    "miniagents": {"publish"},
    "miniagents.llms": {"httpx", "publish", "share_by_reference"},
    "miniagents.tracing": {"annotations", "publish", "TYPE_CHECKING", "Any"},
    "miniagents.persistence": {"publish"},
    "miniagents.testing": {"annotations", "importlib", "publish_object", "TYPE_CHECKING", "Any"},
    "miniagents.asgi": {"publish"},
    "miniagents.mcp": {"publish"},
    "miniagents.durable": {"publish"},
}

#: Exports that are values or type aliases, not classes or functions (they have no ``__module__`` of their own).
VALUES = {
    "AWAIT",
    "CLEAR",
    "CassetteMode",
    "CallOutcome",
    "MessageType",
    "__version__",
    "CAPTURE_CONTENT_ENV",
    "CASSETTE_MODE_ENV",
    "DATABASE_ENV",
    "MCPServerSpec",
}


def _public_names(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


@pytest.mark.parametrize("name", NAMESPACES)
def test_all_is_sorted(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__all__ == sorted(module.__all__)
    assert len(set(module.__all__)) == len(module.__all__)


@pytest.mark.parametrize("name", NAMESPACES)
def test_all_is_exactly_what_the_namespace_offers(name: str) -> None:
    module = importlib.import_module(name)
    for export in module.__all__:
        getattr(module, export)  # also loads the lazily imported names of miniagents.testing
    offered = _public_names(module) - NOT_EXPORTS[name]
    assert offered == set(module.__all__) - {"__version__"}


def _exports(name: str) -> list[tuple[str, Any]]:
    module = importlib.import_module(name)
    return [(export, getattr(module, export)) for export in module.__all__]


@pytest.mark.parametrize("name", NAMESPACES)
def test_exported_classes_and_functions_report_a_public_module(name: str) -> None:
    for export, value in _exports(name):
        if export in VALUES or not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        module = value.__module__
        assert module.startswith("miniagents"), (export, module)
        assert not any(part.startswith("_") for part in module.split(".")), (export, module)
        assert getattr(importlib.import_module(module), value.__name__) is value, (export, module)


def test_the_root_classes_report_the_root() -> None:
    for cls in (
        miniagents.MiniAgents,
        miniagents.AgentCall,
        miniagents.TextMessage,
        miniagents.MessagePromise,
    ):
        assert cls.__module__ == "miniagents"


@pytest.mark.parametrize("name", NAMESPACES)
def test_every_export_has_a_docstring(name: str) -> None:
    for export, value in _exports(name):
        if export in VALUES:
            continue
        assert inspect.getdoc(value), f"{name}.{export} needs a docstring"


def test_hash_keys_keep_the_defining_module_of_a_message_class() -> None:
    """Publishing a class under the root changes neither its serialised name nor its messages' hash keys."""
    message = miniagents.TextMessage("hi")
    assert message.to_dict()["class"] == "miniagents._messages:TextMessage"


def test_wait_all_tasks_blocked_is_public_in_the_testing_kit() -> None:
    from miniagents.testing import wait_all_tasks_blocked

    assert inspect.iscoroutinefunction(wait_all_tasks_blocked)


def test_original_import_path_still_works() -> None:
    for name in miniagents.__all__:
        if name != "__version__":
            assert getattr(legacy, name) is getattr(miniagents, name)


def test_package_is_typed() -> None:
    from importlib.resources import files

    assert files("miniagents").joinpath("py.typed").is_file()
