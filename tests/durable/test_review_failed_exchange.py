"""Review of failure markers of durable LLM exchanges: the secrets of a request must stay out of the database.

Each async test runs on both anyio backends, on SQLite (and PostgreSQL with ``MINIAGENTS_POSTGRES_URL``).
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from durable_helpers import database_text, interrupted, last_content

from miniagents import InteractionContext, MiniAgents, miniagent
from miniagents.durable import DurableRuntime, durable
from miniagents.llms import LLMError, openai_agent
from miniagents.testing import FakeLLMServer, RecordedRequest, ScriptedResponse, openai_stream

pytestmark = pytest.mark.anyio

API_KEY = "sk-review-failed-exchange-key-9876543210"

llm = openai_agent.fork(alias="review_fx_llm", model="fake-model", api_key=API_KEY, max_retries=0)


@miniagent(alias="review_fx_two")
async def _two(ctx: InteractionContext, base_url: str) -> None:
    """Ask two questions in turn; reply what the failure was when one fails."""
    for question in ("question 0", "question 1"):
        try:
            ctx.reply(await llm.inquire(question, base_url=base_url))
        except LLMError as error:
            ctx.reply(f"failed {type(error).__name__}: {error.message}")


two = durable(_two)


async def test_a_mid_stream_error_event_echoing_the_key_is_not_recorded_with_the_key(
    database: str, tmp_path: Path
) -> None:
    """A 2xx stream streams a token, then an error event whose message quotes the API key (a proxy that echoes
    the request): the agent sees the key redacted, and so must the database, marker and recorded body alike;
    the call interrupted after it resumes with the replies of an uninterrupted run."""
    hang = [False]

    def handler(request: RecordedRequest) -> ScriptedResponse:
        if last_content(request) == "question 0":
            return openai_stream(
                ["partial "],
                error={"message": f"upstream rejected key {API_KEY}", "type": "server_error", "code": None},
            )
        if hang[0]:
            hang[0] = False
            return openai_stream(["partial ", "answer"], hang_after=1)
        return openai_stream(["answer"])

    async with FakeLLMServer.serve() as server:
        url = server.openai_base_url
        server.handler = handler
        async with MiniAgents(), DurableRuntime(database) as rt:
            with anyio.fail_after(30):
                reference = await rt.run(two, run_id="reference", base_url=url)
        assert len(server.requests) == 2
        hang[0] = True
        await interrupted(
            database,
            lambda rt: rt.run(two, run_id="resumed", base_url=url),
            lambda: len(server.requests) == 4,
        )
        async with MiniAgents(), DurableRuntime(database) as rt:
            with anyio.fail_after(30):
                resumed = await rt.run(two, run_id="resumed", base_url=url)
        sent = [last_content(r) for r in server.requests[2:]]
    assert sent == ["question 0", "question 1", "question 1"]  # the failed exchange is replayed, not sent
    assert [str(m) for m in resumed] == [str(m) for m in reference]
    assert [m.hash_key for m in resumed] == [m.hash_key for m in reference]
    assert [str(m) for m in reference] == ["failed ServerError: upstream rejected key <redacted>", "answer"]
    data = await anyio.to_thread.run_sync(database_text, database, tmp_path)
    assert b"upstream rejected key" in data  # the failure is recorded
    assert API_KEY.encode() not in data


def test_a_key_in_a_query_parameter_echoed_percent_encoded_is_redacted_from_the_marker_and_the_error() -> (
    None
):
    """A server echoes the request URL in its error: a key with ``+``, ``/``, ``=`` (base64-like) appears there
    percent-encoded, not as the secret itself."""
    from urllib.parse import quote, quote_plus

    from miniagents.durable._failures import encode_failure
    from miniagents.llms import APIStatusError
    from miniagents.llms._http import request_secrets

    key = "k3y+with/slash=="
    url = f"http://127.0.0.1/v1/chat/completions?api-key={quote(key, safe='')}"
    secrets = request_secrets(url, {}, "")
    assert secrets == (key,)
    for echoed in (quote(key, safe=""), quote(key), quote_plus(key, safe="")):
        error = APIStatusError(f"invalid URL ...?api-key={echoed}", status=401, request_id=f"r-{echoed}")
        marker = encode_failure(error, secrets)
        assert echoed not in repr(marker) and "<redacted>" in marker["message"]
        error.redact(secrets)
        assert echoed not in str(error) and echoed not in repr(error)
