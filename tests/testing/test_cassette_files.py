"""Cassette files: bad ones give clear errors naming the file and the line (an edited response body too), the
format's normalisation rules, and saving through a temporary file of its own with the umask's permissions."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from cassette_helpers import DEAD_OPENAI_URL

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
                    await openai_agent.inquire(question, model="m", base_url=DEAD_OPENAI_URL, api_key="k")
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
        reply = openai_agent.inquire("first", model="m", base_url=DEAD_OPENAI_URL, api_key="k")
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


# ---------------------------------------------------------------------------------------------------------------
# Saving goes through a temporary file of its own
async def record_answers(path: Path, *answers: str) -> Cassette:
    """Record one OpenAI call per answer to *path*; return the (finished) recording cassette."""
    async with FakeLLMServer.serve() as server:
        server.enqueue(*(openai_stream([answer]) for answer in answers))
        async with Cassette(path, mode="record") as cassette, MiniAgents():
            for n, _ in enumerate(answers):
                await openai_agent.inquire(f"q{n}", model="m", base_url=server.openai_base_url, api_key="k")
    return cassette


def names(directory: Path) -> list[str]:
    """The sorted names in *directory*."""
    return sorted(p.name for p in directory.iterdir())


async def test_saving_does_not_use_a_fixed_temporary_name(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    # Another process's temporary file named ``<cassette>.tmp``: it is neither overwritten nor renamed away.
    foreign = tmp_path / "c.jsonl.tmp"
    foreign.write_text("another writer's half-written cassette", encoding="utf-8")
    await record_answers(path, "one")
    assert [e.body_bytes().count(b"one") for e in load_cassette(path)] == [1]
    assert foreign.read_text(encoding="utf-8") == "another writer's half-written cassette"
    assert names(tmp_path) == ["c.jsonl", "c.jsonl.tmp"]  # no temporary file left


async def test_concurrent_saves_of_one_cassette_never_clash(tmp_path: Path) -> None:
    """Writers saving different recordings to one path at once: no error, and the file is always one of them."""
    shared = tmp_path / "shared.jsonl"
    writers = []
    for n in range(6):
        cassette = await record_answers(
            tmp_path / f"own-{n}.jsonl", *(f"answer {n}.{k}" for k in range(n + 1))
        )
        cassette.path = shared  # save the same recording again, to the shared file
        writers.append(cassette)
    texts = {(tmp_path / f"own-{n}.jsonl").read_text(encoding="utf-8") for n in range(6)}
    assert len(texts) == 6
    errors: list[BaseException] = []
    for _ in range(20):
        shared.unlink(missing_ok=True)
        barrier = threading.Barrier(len(writers))

        def save(cassette: Cassette, barrier: threading.Barrier) -> None:
            barrier.wait()
            try:
                cassette._save()
            except BaseException as error:  # collected and asserted below
                errors.append(error)

        threads = [threading.Thread(target=save, args=(cassette, barrier)) for cassette in writers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert shared.read_text(encoding="utf-8") in texts
    assert not [name for name in names(tmp_path) if name.endswith(".tmp")]


async def test_saved_cassette_has_the_umask_permissions_not_0600(tmp_path: Path) -> None:
    path = tmp_path / "perm.jsonl"
    await record_answers(path, "one")
    plain = tmp_path / "plain"
    plain.write_text("x", encoding="utf-8")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


# ---------------------------------------------------------------------------------------------------------------
# An edited response body is caught when the cassette is loaded, naming the file, the line and the problem
def edit_line(path: Path, number: int, old: str, new: str) -> None:
    """Replace *old* by *new* in line *number* (1-based) of the file, as a person editing it would."""
    lines = path.read_text(encoding="utf-8").split("\n")
    assert old in lines[number - 1]
    lines[number - 1] = lines[number - 1].replace(old, new, 1)
    path.write_text("\n".join(lines), encoding="utf-8")


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        # a quote removed inside a data payload
        (
            '\\"content\\": \\"two\\"',
            '\\"content\\": two\\"',
            r"SSE event 2 \(event 'message'.*not JSON \(Expecting value at character \d+\).*\"content\": two\"",
        ),
        # the blank line between two events removed: their data lines merge into one payload
        (
            '}\\n\\n", "data: {',
            '}\\n", "data: {',
            r"chunks\[1\]\) has data that is not JSON \(Extra data at character \d+\)",
        ),
        # OpenAI's end marker mistyped
        ("data: [DONE]", "data: [DONE", r"has data that is not JSON .*'\[DONE'"),
    ],
)
async def test_an_edited_response_body_fails_loading_with_file_line_and_event(
    tmp_path: Path, old: str, new: str, problem: str
) -> None:
    path = tmp_path / "edited.jsonl"
    await record_answers(path, "one", "two")
    edit_line(path, 3, old, new)
    with pytest.raises(CassetteFormatError, match=problem) as raised:
        load_cassette(path)
    assert raised.value.path == path and raised.value.line == 3
    assert str(raised.value).startswith(f"bad cassette {path}, line 3: malformed entry: the event stream")
    with pytest.raises(CassetteFormatError, match=problem):  # replay fails the same way before any request
        async with Cassette(path, mode="replay"):
            pass


async def test_event_stream_check_accepts_what_recordings_hold(tmp_path: Path) -> None:
    """Comments, CRLF line ends, split chunks, a stream cut short (abort) and error bodies still load."""
    path = tmp_path / "varied.jsonl"
    await record_answers(path, "one")
    lines = path.read_text(encoding="utf-8").split("\n")
    entry = json.loads(lines[1])
    body = "".join(entry["response"]["chunks"])
    crlf = ": keep-alive\r\n\r\n" + body.replace("\n", "\r\n")
    variants = [
        {**entry, "response": {**entry["response"], "chunks": [crlf[:7], crlf[7:50], crlf[50:]]}},
        # cut in the middle of an event's JSON: only completed events are checked
        {
            **entry,
            "response": {**entry["response"], "chunks": [body[: body.index("one") + 2]], "end": "abort"},
        },
        # an error response is not an event stream
        {**entry, "response": {**entry["response"], "status": 500, "chunks": ["{not json"]}},
        # a 2xx body that is not an event stream is not checked either
        {
            **entry,
            "response": {**entry["response"], "headers": {"content-type": "text/plain"}, "chunks": ["x"]},
        },
    ]
    path.write_text("\n".join([lines[0], *map(json.dumps, variants)]) + "\n", encoding="utf-8")
    loaded = load_cassette(path)
    assert [e.status for e in loaded] == [200, 200, 500, 200]
    assert loaded[0].body_bytes().decode() == crlf
