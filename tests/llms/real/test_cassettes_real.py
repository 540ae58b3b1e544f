"""Record LLM exchanges against the real local model servers, then replay them offline: nothing differs.

Each test records a short exchange with a ``Cassette(mode="record")`` against the real server (llama.cpp's, from
the ``xllamacpp`` wheel: OpenAI chat completions with and without tool calls, and Anthropic ``/v1/messages``),
keeping every token as it streamed and every resolved message, then replays the cassette with the agent's
``base_url`` pointing at a closed port on 127.0.0.1, so that any request escaping the cassette fails.  The replay
must give the same tokens, the same messages (all of ``to_dict()``: content, tool calls, usage, finish reason,
model, request and response ids) and the same errors.  The conftest runs the module on trio, then on asyncio; a
cassette recorded on the first backend is replayed on the second one as well.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from miniagents import Message, MiniAgents
from miniagents.llms import ToolRoundsExceededError, anthropic_agent, openai_agent
from miniagents.llms._local_server import LocalLLMServer
from miniagents.testing import Cassette

API_KEY = "test-key-not-secret"  # as started by conftest.local_llm
MAX_TOKENS = 16

# What a test recorded on the previous backend: test name -> (cassette, the live result).  The module runs on
# one backend after the other, so the second backend also replays the first one's cassettes.
_RECORDED: dict[str, list[tuple[Path, Any]]] = {}

Transcript = tuple[list[list[str]], list[dict[str, Any]], str | None]


def closed_port_url() -> str:
    """``http://127.0.0.1:<port>`` of a port that was free a moment ago and has nothing listening on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def transcript(replies: Any) -> Transcript:
    """Every replied message: its tokens as they streamed, its ``to_dict()``, and the error that ended the call."""
    tokens: list[list[str]] = []
    messages: list[dict[str, Any]] = []
    error = None
    try:
        async for promise in replies.promises():
            tokens.append([token async for token in promise])
            message: Message = await promise
            messages.append(message.to_dict())
    except ToolRoundsExceededError as exc:
        error = f"{type(exc).__name__}: {exc}"
    return tokens, messages, error


def file_bytes(path: Path) -> bytes:
    return path.read_bytes()


def exchanges_in(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["format"] == "miniagents-llm-cassette"
    return [json.loads(line) for line in lines[1:]]


async def check_cross_backend(test: str, path: Path, live: Any, replay: Any) -> None:
    """Replay on this backend the cassettes this test recorded on the other backend, then remember this one."""
    for other_path, other_live in _RECORDED.get(test, []):
        async with Cassette(other_path, mode="replay") as cassette:
            assert await replay() == other_live
        assert cassette.statistics().unused == 0
    _RECORDED.setdefault(test, []).append((path, live))


Run = Callable[[str, str], Awaitable[Transcript]]


async def record_one_reply(path: Path, run: Run, base_url: str, api_key: str) -> Transcript:
    """Record *run* against the real server: one exchange, one streamed reply whose tokens make its content."""
    async with Cassette(path, mode="record") as cassette:
        live = await run(base_url, api_key)
    assert cassette.statistics().recorded == 1
    tokens, messages, error = live
    assert error is None and len(messages) == 1
    assert len(tokens[0]) >= 2 and "".join(tokens[0]) == messages[0]["content"]
    return live


async def replay_offline(test: str, path: Path, live: Transcript, run: Run, base_url: str) -> None:
    """Replay *path* with *run* pointed at *base_url* (nothing listening) under other keys: same transcript."""
    async with Cassette(path, mode="replay") as cassette:
        replayed = await run(base_url, "sk-another-key-for-replay")
    assert replayed == live  # tokens (chunk for chunk), content, usage, finish_reason, model, ids
    stats = cassette.statistics()
    assert (stats.loaded, stats.replayed, stats.unused, stats.unmatched) == (1, 1, 0, 0)
    await check_cross_backend(test, path, live, lambda: run(base_url, "sk-x-other-key"))


# --------------------------------------------------------------------------------------------------------------
# 1. OpenAI Chat Completions
def chat_agent(model: str, base_url: str, api_key: str) -> Any:
    return openai_agent.fork(
        model=model, base_url=base_url, api_key=api_key, max_tokens=MAX_TOKENS, temperature=0
    )


async def check_openai_chat(server: LocalLLMServer, api_key: str, path: Path, test: str) -> Transcript:
    """Record one streamed chat completion from *server*, replay it offline; return the live transcript."""

    async def run(base_url: str, key: str) -> Transcript:
        llm = chat_agent(server.model, base_url, key)
        async with MiniAgents():
            result = await transcript(llm.inquire("Write a sentence about rivers.", system="Be brief."))
        return result

    live = await record_one_reply(path, run, server.base_url, api_key)
    _, messages, _ = live
    assert messages[0]["provider"] == "openai" and messages[0]["finish_reason"] in ("stop", "length")
    assert messages[0]["model"] and messages[0]["response_id"]
    raw = file_bytes(path)
    assert api_key.encode() not in raw and b"authorization" not in raw.lower()
    await replay_offline(test, path, live, run, closed_port_url() + "/v1")
    return live


async def test_openai_chat_replays_identically_offline(local_llm: LocalLLMServer, tmp_path: Path) -> None:
    _, messages, _ = await check_openai_chat(local_llm, API_KEY, tmp_path / "chat.jsonl", "chat")
    usage = messages[0]["usage"]  # the server's usage chunk, replayed as recorded
    assert usage["completion_tokens"] >= 1 and usage["prompt_tokens"] >= 1


# --------------------------------------------------------------------------------------------------------------
# 2. Tool calls over OpenAI Chat Completions
async def test_openai_tool_rounds_replay_round_by_round(local_llm: LocalLLMServer, tmp_path: Path) -> None:
    path = tmp_path / "tools.jsonl"
    question = "What is the weather in Paris?"

    async def run(base_url: str) -> tuple[Transcript, Transcript, list[str]]:
        cities: list[str] = []

        async def get_weather(city: str) -> str:
            """Return the weather in a city."""
            cities.append(city)
            return f"sunny in {city}"

        llm = openai_agent.fork(
            model=local_llm.model,
            base_url=base_url,
            api_key=API_KEY,
            tools=[get_weather],
            tool_choice="required",  # the base model calls tools only when forced ...
            parallel_tool_calls=False,
            max_tool_rounds=1,  # ... and forced, it asks again after the result: round 2 ends the call
            max_tokens=64,
            temperature=0,
        )
        async with MiniAgents():
            rounds = await transcript(llm.inquire(question))
            # The first tool round and its result go back once more, now with tool_choice "none": a text answer.
            conversation = [question, *(Message.from_dict(m) for m in rounds[1][:2])]
            answer = await transcript(llm.inquire(conversation, tool_choice="none", max_tokens=MAX_TOKENS))
        return rounds, answer, cities

    async with Cassette(path, mode="record") as cassette:
        live = await run(local_llm.base_url)
    rounds, answer, cities = live
    _, messages, error = rounds
    assert error is not None and error.startswith("ToolRoundsExceededError")
    assert [m["role"] for m in messages] == ["assistant", "tool", "assistant"]
    call = messages[0]["tool_calls"][0]
    assert call["name"] == "get_weather"
    assert isinstance(json.loads(call["arguments"]), dict)  # the streamed fragments assembled into valid JSON
    assert messages[1]["tool_call_id"] == call["id"] and messages[1]["content"] == f"sunny in {cities[0]}"
    assert len(cities) == 1  # the tool ran once: round 2's calls were refused (max_tool_rounds)
    assert answer[2] is None and len(answer[1]) == 1 and "tool_calls" not in answer[1][0]
    assert "".join(answer[0][0]) == answer[1][0]["content"]

    recorded = exchanges_in(path)
    assert cassette.statistics().recorded == len(recorded) == 3
    # round 2 and the answer were asked with the tool result of round 1 in the conversation
    for exchange in recorded[1:]:
        sent = exchange["request"]["body"]["messages"]
        assert any(m.get("role") == "tool" and m.get("content") == f"sunny in {cities[0]}" for m in sent)
    assert recorded[2]["request"]["body"]["tool_choice"] == "none"

    async with Cassette(path, mode="replay") as cassette:
        replayed = await run(closed_port_url() + "/v1")
    assert replayed == live  # tool calls (ids, names, arguments), tool results, the error, the answer
    stats = cassette.statistics()
    assert (stats.loaded, stats.replayed, stats.unused, stats.unmatched) == (3, 3, 0, 0)
    await check_cross_backend("tools", path, live, lambda: run(closed_port_url() + "/v1"))


# --------------------------------------------------------------------------------------------------------------
# 3. Anthropic Messages
async def test_anthropic_messages_replay_identically_offline(
    local_llm: LocalLLMServer, tmp_path: Path
) -> None:
    path = tmp_path / "messages.jsonl"

    async def run(base_url: str, api_key: str) -> Transcript:
        llm = anthropic_agent.fork(
            model=local_llm.model, base_url=base_url, api_key=api_key, max_tokens=MAX_TOKENS, temperature=0
        )
        async with MiniAgents():
            result = await transcript(llm.inquire("Write a sentence about mountains.", system="Be brief."))
        return result

    live = await record_one_reply(path, run, local_llm.url, API_KEY)
    _, messages, _ = live
    assert messages[0]["provider"] == "anthropic"
    assert messages[0]["finish_reason"] in ("end_turn", "max_tokens", "stop_sequence")
    assert messages[0]["usage"]["output_tokens"] >= 1 and messages[0]["response_id"]
    await replay_offline("messages", path, live, run, closed_port_url())  # keys the server would refuse


# --------------------------------------------------------------------------------------------------------------
# 4. The real server's API key never reaches the cassette
async def test_real_api_key_never_reaches_the_cassette(local_llm: LocalLLMServer, tmp_path: Path) -> None:
    path = tmp_path / "key.jsonl"
    # The key goes in the x-api-key header (the server refuses requests without it) and in the prompt itself.
    prompt = f"Repeat after me: {API_KEY} {API_KEY}"
    llm = anthropic_agent.fork(
        model=local_llm.model, base_url=local_llm.url, api_key=API_KEY, max_tokens=8, temperature=0
    )
    async with Cassette(path, mode="record"), MiniAgents():
        live = (await llm.inquire(prompt))[0].content
    raw = file_bytes(path)
    assert API_KEY.encode() not in raw
    assert b"x-api-key" not in raw.lower() and b"authorization" not in raw.lower()
    (exchange,) = exchanges_in(path)
    assert exchange["response"]["status"] == 200  # the key was accepted by the real server
    assert "Repeat after me: <redacted> <redacted>" in json.dumps(exchange["request"]["body"])

    # Replay without the key (any other one): the redacted request still matches; the reply is the recorded one.
    async with Cassette(path, mode="replay"), MiniAgents():
        other = llm.fork(base_url=closed_port_url(), api_key="other-key-123456")
        replayed = (await other.inquire("Repeat after me: other-key-123456 other-key-123456"))[0].content
    assert replayed == live.replace(API_KEY, "<redacted>")
    # Known gap: a key the model echoes token by token is split across SSE events and is not redacted (redaction
    # works on bytes).  This base model answers "Test-key-not-secret" here, so the key is not in the stream; if a
    # future model echoed it exactly, this fails: the replayed text would hold the key.
    assert API_KEY not in replayed
