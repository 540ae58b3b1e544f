"""API keys never leave the process: not through errors that echo them, records, cassettes or spans.

One rule (``miniagents._secrets.is_secret_name``) decides which header, keyword and query-parameter names hold
secrets, everywhere; the LLM error boundary redacts the request's secrets from every error it lets out.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from llm_helpers import failure_of
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from miniagents import CallRecord, MiniAgents
from miniagents._secrets import REDACTED, is_secret_name, redact_text, secret_values
from miniagents.llms import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    LLMError,
    anthropic_agent,
    openai_agent,
)
from miniagents.testing import FakeLLMServer, anthropic_error, openai_error, openai_stream, raw_response
from miniagents.testing._cassette_format import normalise_target, secrets_of

pytestmark = pytest.mark.anyio

KEY = "sk-live-ECHOED-0123456789abcdef"
HELICONE = "sk-helicone-PROXY-9876543210"
AZURE = "azure-subscription-key-ABCDEF123456"


def everything_readable(error: BaseException) -> str:
    """Every text a user, a logger, a store or a pickle can get from *error*."""
    assert isinstance(error, LLMError)
    return "\n".join(
        [
            str(error),
            repr(error),
            repr(error.args),
            json.dumps(error.body, default=str),
            repr(pickle.loads(pickle.dumps(error)).__dict__),
            repr(vars(error)),
        ]
    )


# -- the one rule for secret names ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "x-api-key",
        "api-key",
        "Helicone-Auth",
        "Ocp-Apim-Subscription-Key",
        "OPENAI_API_KEY",
        "apiKey",
        "access_token",
        "Set-Cookie",
        "client_secret",
        "X-Amz-Security-Token",
        "proxy-authorization",
        "password",
        "secretkey",
    ],
)
def test_credential_names_are_secret(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "max_tokens",
        "anthropic-version",
        "traceparent",
        "content-type",
        "model",
        "temperature",
        "input_tokens",
    ],
)
def test_ordinary_names_are_not_secret(name: str) -> None:
    assert not is_secret_name(name)


@pytest.mark.parametrize("header", ["Helicone-Auth", "Ocp-Apim-Subscription-Key"])
async def test_records_and_cassettes_redact_the_same_headers(header: str) -> None:
    records: list[CallRecord] = []
    async with FakeLLMServer.serve() as server, MiniAgents(on_call_finished=records.append):
        server.enqueue(openai_stream("ok"))
        extra = {header: "value-of-the-secret", "x-trace": "visible"}
        await openai_agent.inquire(
            "hi", model="m", base_url=server.openai_base_url, api_key=KEY, extra_headers=extra
        )
        (request,) = server.requests
    (record,) = records
    assert record.kwargs["extra_headers"][header] == REDACTED
    assert record.kwargs["extra_headers"]["x-trace"] == "visible"
    assert record.kwargs["api_key"] == REDACTED
    assert "value-of-the-secret" not in repr(request)  # the fake server's request repr masks it too
    assert secrets_of([(header, "Bearer value-of-the-secret")]) == (
        "Bearer value-of-the-secret",
        "value-of-the-secret",
    )
    assert secrets_of([("x-trace", "visible-but-long")]) == ()


def test_secret_query_parameters_are_redacted_in_cassette_targets() -> None:
    target = normalise_target("/v1/chat/completions?api-version=2024-10-21&subscription-key=abc", ())
    assert "api-version=2024-10-21" in target
    assert "abc" not in target


@given(
    secret=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=30),
    before=st.text(max_size=20),
    after=st.text(max_size=20),
)
def test_redact_text_removes_a_secret_in_its_plain_repr_and_json_forms(
    secret: str, before: str, after: str
) -> None:
    for form in (secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]):
        redacted = redact_text(before + form + after, [secret])
        assert REDACTED in redacted


def test_secret_values_strip_the_auth_scheme_and_sort_longest_first() -> None:
    values = secret_values([("authorization", "Bearer abcdefgh"), ("x-api-key", "k" * 20)])
    assert values == ("k" * 20, "Bearer abcdefgh", "abcdefgh")


# -- keys echoed by servers ---------------------------------------------------------------------------------------
ECHOES = [
    pytest.param(
        "openai",
        openai_error(
            401, f"Incorrect API key provided: {KEY}. Find your key at ...", type="invalid_request_error"
        ),
        AuthenticationError,
        id="openai-401",
    ),
    pytest.param(
        "anthropic",
        anthropic_error(400, f'bad header x-api-key="{KEY}"'),
        BadRequestError,
        id="anthropic-400-quoted",
    ),
    pytest.param(
        "openai",
        raw_response(500, json.dumps({"detail": {"received_key": KEY, "hint": f"Bearer {KEY}"}})),
        APIStatusError,
        id="proxy-json-detail",
    ),
    pytest.param(
        "anthropic",
        raw_response(502, f"<html>upstream rejected {KEY}</html>"),
        APIStatusError,
        id="html-body",
    ),
]


@pytest.mark.parametrize(("provider_name", "response", "error_class"), ECHOES)
async def test_a_key_echoed_in_an_error_body_is_redacted_everywhere(
    provider_name: str, response: Any, error_class: type[LLMError]
) -> None:
    records: list[CallRecord] = []
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with FakeLLMServer.serve() as server:
        server.handler = lambda request: response
        is_anthropic = provider_name == "anthropic"
        agent = anthropic_agent if is_anthropic else openai_agent
        base_url = server.anthropic_base_url if is_anthropic else server.openai_base_url
        async with MiniAgents(on_call_finished=records.append, tracing=provider):
            error = await failure_of(
                agent.inquire("hi", model="m", base_url=base_url, api_key=KEY, max_retries=0)
            )
    assert isinstance(error, error_class)
    readable = everything_readable(error)
    assert KEY not in readable
    assert REDACTED in readable
    (record,) = [r for r in records if r.agent_alias == agent.alias]
    assert record.error is not None and KEY not in record.error and REDACTED in record.error
    assert KEY not in repr(record.kwargs)
    spans = exporter.get_finished_spans()
    assert spans
    for span in spans:
        dumped = f"{span.status.description} {span.attributes} {[e.attributes for e in span.events]}"
        assert KEY not in dumped
    provider.shutdown()


async def test_secret_header_values_and_query_keys_are_redacted_from_errors() -> None:
    echo = f"headers were helicone={HELICONE} azure={AZURE}"
    async with FakeLLMServer.serve() as server, MiniAgents():
        server.handler = lambda request: openai_error(400, echo)
        error = await failure_of(
            openai_agent.inquire(
                "hi",
                model="m",
                base_url=f"{server.openai_base_url}?subscription-key={AZURE}",
                api_key=KEY,
                extra_headers={"Helicone-Auth": f"Bearer {HELICONE}"},
            )
        )
    readable = everything_readable(error)
    assert HELICONE not in readable and AZURE not in readable
    assert "helicone=<redacted> azure=<redacted>" in str(error)


async def test_a_key_echoed_in_a_mid_stream_error_event_is_redacted() -> None:
    from miniagents.testing import SSE, ScriptedResponse

    stream = openai_stream(["partial "])
    body = (
        *stream.body[:2],  # the role chunk and the first token
        SSE({"error": {"message": f"key {KEY} was revoked", "type": "invalid_request_error"}}),
    )
    async with FakeLLMServer.serve() as server, MiniAgents():
        server.handler = lambda request: ScriptedResponse(status=200, headers=stream.headers, body=body)
        replies = openai_agent.inquire("hi", model="m", base_url=server.openai_base_url, api_key=KEY)
        (promise,) = [p async for p in replies.promises()]
        tokens: list[str] = []

        async def read() -> None:
            async for token in promise:
                tokens.append(token)

        with pytest.raises(LLMError) as caught:
            await read()
    assert tokens == ["partial "]  # what was streamed before the error stays visible
    assert KEY not in everything_readable(caught.value)


async def test_an_ordinary_value_that_looks_like_a_header_is_not_redacted() -> None:
    """Only secrets are redacted: the anthropic-version value in a server's message stays readable."""
    async with FakeLLMServer.serve() as server, MiniAgents():
        server.handler = lambda request: anthropic_error(400, "anthropic-version 2023-06-01 is not supported")
        error = await failure_of(
            anthropic_agent.inquire("hi", model="m", base_url=server.anthropic_base_url, api_key=KEY)
        )
    assert "2023-06-01 is not supported" in str(error)
