"""A fake LLM provider server for tests: OpenAI Chat Completions and Responses, Anthropic Messages, real sockets.

:class:`FakeLLMServer` listens on ``127.0.0.1`` (an anyio TCP server speaking HTTP/1.1 through ``h11``, so it runs
under trio and asyncio alike, inside the test's own event loop).  Tests script the responses it replays, point an
LLM agent at it and inspect what it received::

    from miniagents.llms import openai_agent
    from miniagents.testing.fake_llm_server import FakeLLMServer, openai_stream

    async with FakeLLMServer.serve() as server, MiniAgents():
        server.enqueue(openai_stream(["Hel", "lo"]))
        reply = openai_agent.inquire("hi", model="m", base_url=server.openai_base_url, api_key="test")
        assert await reply.as_single_text() == "Hello"
        assert server.requests[0].json["messages"] == [{"role": "user", "content": "hi"}]

Scripted responses are :class:`ScriptedResponse` objects; the builders :func:`openai_stream`,
:func:`responses_stream` (the OpenAI Responses API, reasoning summaries included), :func:`anthropic_stream`,
:func:`openai_error` (also the Responses API's HTTP errors), :func:`anthropic_error` and :func:`raw_response`
produce the byte-exact event sequences of the real APIs: text, tool calls (single, parallel, interleaved,
fragmented arguments, repeated ids as some compatible servers send them), reasoning (``reasoning_content`` /
``reasoning`` deltas; Anthropic thinking blocks with their ``signature_delta``, ``redacted_thinking`` blocks,
interleaved thinking), usage (cached and reasoning token details), pings, unknown events, mid-stream errors,
truncation (clean end without the terminal events, or an aborted connection), error statuses with
``retry-after`` / ``retry-after-ms`` / ``x-should-retry`` headers, slow streams (:class:`Pause`) and streams
that stop and wait for the client to give up (:class:`Hang`).

Each request is answered by the first queued response whose ``path`` matches (see :meth:`FakeLLMServer.enqueue`),
else by :attr:`FakeLLMServer.handler`, else with a 500 error.  With ``validate=True`` (the default) the server
checks requests the way the real APIs do (authentication header, required fields, roles, the Anthropic
alternation and tool-result pairing, the Responses API's function-call / output pairing, the extended-thinking
budget and the thinking block a continued tool loop must send back) and answers a violation with the
provider's 400/401 error.  Every request is
recorded as a :class:`RecordedRequest`, including whether the client disconnected before the response was
complete (:meth:`RecordedRequest.wait_disconnected`).

The package holds one module per part: ``_script`` (the script language: :class:`SSE`, :class:`Raw`,
:class:`Pause`, :class:`Hang`, :class:`Gate`, :class:`ScriptedResponse`, :class:`ToolCall`,
:func:`raw_response`), ``_openai`` / ``_responses`` / ``_anthropic`` (the provider builders), ``_recorded``
(:class:`RecordedRequest`), ``_validation`` (what the real APIs reject) and ``_server`` (:class:`FakeLLMServer`);
import the public names from here.
"""

from __future__ import annotations

from miniagents._publish import publish
from miniagents.testing.fake_llm_server._anthropic import anthropic_error, anthropic_stream
from miniagents.testing.fake_llm_server._openai import openai_error, openai_stream
from miniagents.testing.fake_llm_server._recorded import RecordedRequest
from miniagents.testing.fake_llm_server._responses import responses_stream
from miniagents.testing.fake_llm_server._script import (
    SSE,
    Gate,
    Hang,
    Pause,
    Raw,
    ScriptedResponse,
    ToolCall,
    raw_response,
)
from miniagents.testing.fake_llm_server._server import FakeLLMServer

__all__ = [
    "SSE",
    "FakeLLMServer",
    "Gate",
    "Hang",
    "Pause",
    "Raw",
    "RecordedRequest",
    "ScriptedResponse",
    "ToolCall",
    "anthropic_error",
    "anthropic_stream",
    "openai_error",
    "openai_stream",
    "raw_response",
    "responses_stream",
]

publish(globals())  # the public names report this module (see miniagents._publish)
