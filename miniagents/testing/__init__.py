"""Testing kit for MiniAgents applications: hypothesis strategies for messages and agent graphs.

``message_types()`` draws descriptions of arbitrary nested ``MessageType`` values (build them inside a running
``MiniAgents`` context with ``spec.build()``; ``spec.expected_messages()`` is the reference flattening).
``agent_graphs()`` draws random DAGs of agents; ``start_graph(spec)`` runs one and ``spec.expected()`` is the
reference model of what every consumer must see.  Both need ``hypothesis`` (``pip install miniagents[testing]``).

``FakeLLMServer`` is a protocol-faithful OpenAI / Anthropic streaming server on 127.0.0.1 (real sockets) that
replays scripted responses (``openai_stream``, ``responses_stream`` for the OpenAI Responses API,
``anthropic_stream``, errors, pauses, truncation) and records the requests it got, for testing LLM agent graphs offline on trio or asyncio.

``Cassette`` records the LLM exchanges of a block (or of a test marked ``@pytest.mark.llm_cassette``, see
``miniagents.testing.pytest_plugin``) to a JSON-lines file once and replays them offline through the fake server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from miniagents._publish import publish_object

if TYPE_CHECKING:
    from miniagents.testing._cassette import CASSETTE_MODE_ENV, Cassette, CassetteMode, CassetteStatistics
    from miniagents.testing._cassette_format import (
        CassetteError,
        CassetteFormatError,
        CassetteMismatchError,
    )
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
    from miniagents.testing.fake_llm_server import (
        SSE,
        FakeLLMServer,
        Gate,
        Hang,
        Pause,
        Raw,
        RecordedRequest,
        ScriptedResponse,
        ToolCall,
        anthropic_error,
        anthropic_stream,
        openai_error,
        openai_stream,
        raw_response,
        responses_stream,
    )
    from miniagents.testing.limits import wait_all_tasks_blocked

_LAZY = {
    "Cassette": "_cassette",
    "CassetteMode": "_cassette",
    "CassetteStatistics": "_cassette",
    "CASSETTE_MODE_ENV": "_cassette",
    "CassetteError": "_cassette_format",
    "CassetteFormatError": "_cassette_format",
    "CassetteMismatchError": "_cassette_format",
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
    "wait_all_tasks_blocked": "limits",
    "SSE": "fake_llm_server",
    "FakeLLMServer": "fake_llm_server",
    "Gate": "fake_llm_server",
    "Hang": "fake_llm_server",
    "Pause": "fake_llm_server",
    "Raw": "fake_llm_server",
    "RecordedRequest": "fake_llm_server",
    "ScriptedResponse": "fake_llm_server",
    "ToolCall": "fake_llm_server",
    "anthropic_error": "fake_llm_server",
    "anthropic_stream": "fake_llm_server",
    "openai_error": "fake_llm_server",
    "openai_stream": "fake_llm_server",
    "raw_response": "fake_llm_server",
    "responses_stream": "fake_llm_server",
}

__all__ = [
    "CASSETTE_MODE_ENV",
    "Cassette",
    "CassetteError",
    "CassetteFormatError",
    "CassetteMismatchError",
    "CassetteMode",
    "CassetteStatistics",
    "Expected",
    "FakeLLMServer",
    "Gate",
    "GraphNodeError",
    "GraphProbe",
    "GraphRun",
    "GraphSpec",
    "Hang",
    "MessageSpec",
    "NodeSpec",
    "Observed",
    "Pause",
    "Raw",
    "RecordedRequest",
    "SSE",
    "ScriptedResponse",
    "Segment",
    "ToolCall",
    "agent_graphs",
    "anthropic_error",
    "anthropic_stream",
    "flatten_specs",
    "message_types",
    "openai_error",
    "openai_stream",
    "raw_response",
    "responses_stream",
    "start_graph",
    "wait_all_tasks_blocked",
]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that importing miniagents.testing (e.g. for the fake LLM server) does not
    # require hypothesis.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'miniagents.testing' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(f"miniagents.testing.{module}"), name)
        publish_object(__name__, value)  # the public name reports this module (see miniagents._publish)
        globals()[name] = value  # looked up once
        return value
    except ModuleNotFoundError as error:
        if error.name == "hypothesis":
            raise ImportError(
                f"miniagents.testing.{name} needs hypothesis: pip install 'miniagents[testing]'"
            ) from error
        raise
