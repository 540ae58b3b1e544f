"""Bad cassette files give clear errors naming the file and the line; the format's normalisation rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from miniagents import MiniAgents
from miniagents.llms import NotFoundError, openai_agent
from miniagents.testing import (
    Cassette,
    CassetteFormatError,
    CassetteMismatchError,
    FakeLLMServer,
    openai_stream,
)
from miniagents.testing._cassette_format import RequestKey, load_cassette, normalise_target, secrets_of

pytestmark = pytest.mark.anyio
DEAD = "http://127.0.0.1:9/v1"


@pytest.fixture
async def recorded(tmp_path: Path) -> Path:
    path = tmp_path / "good.jsonl"
    async with FakeLLMServer.serve() as server:
        server.enqueue(openai_stream(["one"]), openai_stream(["two"]))
        async with Cassette(path, mode="record"), MiniAgents():
            for question in ("first", "second"):
                await openai_agent.inquire(question, model="m", base_url=server.openai_base_url, api_key="k")
    assert len(load_cassette(path)) == 2
    return path


def replace_in_line(path: Path, number: int, old: str, new: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert old in lines[number - 1]
    lines[number - 1] = lines[number - 1].replace(old, new)
    path.write_text("".join(lines), encoding="utf-8")


def rewrite(path: Path, edit: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if edit == "truncate":
        text = "".join(lines)
        path.write_text(text[: len(text) - len(lines[-1]) // 2], encoding="utf-8")
        return
    if edit == "version":
        lines[0] = json.dumps({"format": "miniagents-llm-cassette", "version": 99}) + "\n"
    elif edit == "foreign":
        lines[0] = json.dumps({"interactions": []}) + "\n"
    elif edit == "invalid-json":
        lines[1] = lines[1][:40] + "\n"
    elif edit == "chunks":
        entry = json.loads(lines[2])
        entry["response"]["chunks"] = [42]
        lines[2] = json.dumps(entry) + "\n"
    elif edit == "base64":
        entry = json.loads(lines[2])
        entry["response"]["chunks"] = [{"base64": "***"}]
        lines[2] = json.dumps(entry) + "\n"
    elif edit == "status":
        entry = json.loads(lines[1])
        del entry["response"]["status"]
        lines[1] = json.dumps(entry) + "\n"
    path.write_text("".join(lines), encoding="utf-8")


@pytest.mark.parametrize(
    ("edit", "line", "problem"),
    [
        ("truncate", 3, "invalid JSON.*the file ends in the middle of this line: truncated"),
        ("version", 1, "cassette version 99 is not supported .*re-record it"),
        ("foreign", 1, "not a miniagents cassette header"),
        ("invalid-json", 2, "invalid JSON"),
        ("chunks", 3, r"malformed entry: response.chunks\[0\] must be a string"),
        ("base64", 3, r"malformed entry: response.chunks\[0\] is not valid base64"),
        ("status", 2, 'malformed entry: "response.status" must be an HTTP status code'),
    ],
)
async def test_bad_files_name_the_file_and_line(recorded: Path, edit: str, line: int, problem: str) -> None:
    rewrite(recorded, edit)
    with pytest.raises(
        CassetteFormatError, match=f"bad cassette {recorded}, line {line}: {problem}"
    ) as raised:
        await Cassette(recorded, mode="replay").__aenter__()
    assert (raised.value.path, raised.value.line) == (recorded, line)


async def test_empty_and_binary_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(CassetteFormatError, match="the file is empty"):
        load_cassette(empty)
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CassetteFormatError, match="not UTF-8 text"):
        load_cassette(binary)


async def test_an_edited_request_body_is_a_mismatch_naming_the_entry(recorded: Path) -> None:
    replace_in_line(recorded, 3, '"content": "second"', '"content": "edited"')
    messages: list[str] = []

    async def replay() -> None:
        async with Cassette(recorded, mode="replay"), MiniAgents():
            for question in ("first", "second"):
                try:
                    await openai_agent.inquire(question, model="m", base_url=DEAD, api_key="k")
                except NotFoundError as error:
                    messages.append(error.message)

    with pytest.raises(
        CassetteMismatchError, match=f"1 request had no recorded exchange in cassette {recorded}"
    ):
        await replay()
    [message] = messages
    assert "the closest recorded request (entry at line 3) differs" in message
    assert '-    "content": "edited",' in message and '+    "content": "second",' in message


async def test_an_edited_response_is_served_as_edited(recorded: Path) -> None:
    replace_in_line(recorded, 2, '\\"content\\": \\"one\\"', '\\"content\\": \\"uno\\"')
    async with Cassette(recorded, mode="replay"), MiniAgents():
        reply = openai_agent.inquire("first", model="m", base_url=DEAD, api_key="k")
        assert await reply.as_single_text() == "uno"


def test_secrets_and_targets_are_normalised() -> None:
    secrets = secrets_of(
        [("authorization", "Bearer sk-abcdefgh12345"), ("x-api-key", "short"), ("content-type", "x")]
    )
    assert secrets == (
        "Bearer sk-abcdefgh12345",
        "sk-abcdefgh12345",
    )  # "short" is too short to redact in texts
    target = normalise_target("/v1/chat/completions?key=AIza123&alt=sse&note=sk-abcdefgh12345", secrets)
    assert target == "/v1/chat/completions?key=<redacted>&alt=sse&note=<redacted>"
    key = RequestKey.build(
        "POST",
        "/v1/messages",
        json.dumps(
            {"api_key": "x", "max_tokens": 5, "meta": {"id": 7}, "items": [{"id": 1}, {"id": 2}]}
        ).encode(),
        ignore_fields=["meta.id", "items.*.id", "absent.path"],
    )
    assert key.body == {
        "api_key": "<redacted>",
        "max_tokens": 5,
        "meta": {"id": "<ignored>"},
        "items": [{"id": "<ignored>"}, {"id": "<ignored>"}],
    }
    text = RequestKey.build("POST", "/v1/messages", b"not json sk-abcdefgh12345", secrets=secrets)
    assert (text.body, text.body_text) == (None, "not json <redacted>")
