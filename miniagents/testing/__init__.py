"""Testing kit for MiniAgents applications: hypothesis strategies for messages and agent graphs.

``message_types()`` draws descriptions of arbitrary nested ``MessageType`` values (build them inside a running
``MiniAgents`` context with ``spec.build()``; ``spec.expected_messages()`` is the reference flattening).
``agent_graphs()`` draws random DAGs of agents; ``start_graph(spec)`` runs one and ``spec.expected()`` is the
reference model of what every consumer must see.  Both need ``hypothesis`` (``pip install miniagents[testing]``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from miniagents.testing._graphs import (
        Expected,
        GraphNodeError,
        GraphProbe,
        GraphRun,
        GraphSpec,
        NodeSpec,
        Observed,
        Segment,
        agent_graphs,
        start_graph,
    )
    from miniagents.testing._strategies import MessageSpec, flatten_specs, message_types

_LAZY = {
    "message_types": "_strategies",
    "MessageSpec": "_strategies",
    "flatten_specs": "_strategies",
    "agent_graphs": "_graphs",
    "start_graph": "_graphs",
    "Expected": "_graphs",
    "GraphNodeError": "_graphs",
    "GraphProbe": "_graphs",
    "GraphRun": "_graphs",
    "GraphSpec": "_graphs",
    "NodeSpec": "_graphs",
    "Observed": "_graphs",
    "Segment": "_graphs",
}

__all__ = [
    "Expected",
    "GraphNodeError",
    "GraphProbe",
    "GraphRun",
    "GraphSpec",
    "MessageSpec",
    "NodeSpec",
    "Observed",
    "Segment",
    "agent_graphs",
    "flatten_specs",
    "message_types",
    "start_graph",
]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that importing miniagents.testing (e.g. for the fake LLM server) does not
    # require hypothesis.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'miniagents.testing' has no attribute {name!r}")
    try:
        return getattr(importlib.import_module(f"miniagents.testing.{module}"), name)
    except ModuleNotFoundError as error:
        if error.name == "hypothesis":
            raise ImportError(
                f"miniagents.testing.{name} needs hypothesis: pip install 'miniagents[testing]'"
            ) from error
        raise
