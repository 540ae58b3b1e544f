"""Images and documents in user turns: ``ImagePart`` / ``DocumentPart`` in a message's ``parts``.

What is specified here: the parts validate their fields at construction (errors name the field); they are
messages, so they freeze, hash stably, pickle and persist (bytes stay bytes) like any other; both providers get
the exact content lists of their APIs, in the order given; a part a provider cannot take raises ``LLMError``
naming the agent and the part before anything is sent; traces never carry the bytes; a cassette records and
replays a request with base64 data.
"""

from __future__ import annotations

import base64
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llm_helpers import ant, oai
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from miniagents import Message, MiniAgents, TextMessage
from miniagents.llms import DocumentPart, ImagePart, LLMError, anthropic_agent, openai_agent, user_message
from miniagents.llms._anthropic import anthropic_messages
from miniagents.llms._common import parse_options
from miniagents.llms._openai import openai_messages
from miniagents.persistence import SQLiteStore
from miniagents.persistence._codec import decode_row, encode_message
from miniagents.testing import Cassette
from miniagents.testing.fake_llm_server import (
    FakeLLMServer,
    anthropic_stream,
    openai_stream,
)
from miniagents.testing.fake_llm_server._validation import _validate_anthropic, _validate_openai
from miniagents.tracing import TracingOptions

pytestmark = pytest.mark.anyio

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(24))
JPEG = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + bytes(range(8))
GIF = b"GIF89a" + bytes(8)
WEBP = b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(8)
PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"
CAT_URL = "https://example.com/cat.png"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def mixed_message() -> TextMessage:
    return TextMessage(
        "What is in these?",
        parts=(
            ImagePart(url=CAT_URL, detail="low"),
            ImagePart(data=PNG),
            "and the report:",
            DocumentPart(data=PDF, filename="report.pdf"),
            DocumentPart(text="plain notes"),
        ),
    )


# -- the part classes ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "media_type"),
    [(PNG, "image/png"), (JPEG, "image/jpeg"), (GIF, "image/gif"), (WEBP, "image/webp")],
)
def test_an_image_from_bytes_reads_its_media_type_from_the_signature(data: bytes, media_type: str) -> None:
    part = ImagePart(data=data)
    assert part.media_type == media_type
    assert part == ImagePart(data=data, media_type=media_type)
    assert part.hash_key == ImagePart(data=data, media_type=media_type).hash_key


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({}, TypeError, "exactly one of url= or data=, got neither"),
        ({"url": CAT_URL, "data": PNG}, TypeError, "exactly one of url= or data=, got both"),
        ({"data": b"not an image"}, ValueError, "ImagePart.media_type is not given"),
        ({"url": CAT_URL, "media_type": "image/bmp"}, ValueError, "ImagePart.media_type must be one of"),
        ({"data": PNG, "media_type": "image/svg+xml"}, ValueError, "ImagePart.media_type must be one of"),
        ({"url": CAT_URL, "detail": "ultra"}, ValueError, "ImagePart.detail must be one of auto, low, high"),
        ({"url": "data:image/png;base64,AAAA"}, ValueError, "ImagePart.url: a data: URL is not accepted"),
        ({"url": "ftp://example.com/a.png"}, ValueError, "ImagePart.url must be an http:// or https:// URL"),
        ({"url": ""}, TypeError, "ImagePart.url must be a non-empty str"),
        ({"data": b""}, ValueError, "ImagePart.data is empty"),
        ({"data": bytearray(PNG)}, TypeError, "bytearray"),
        ({"url": CAT_URL, "content": "a caption"}, ValueError, "ImagePart takes no content"),
    ],
)
def test_an_invalid_image_part_is_refused_naming_the_field(
    kwargs: dict[str, Any], error: type[Exception], text: str
) -> None:
    with pytest.raises(error, match=text.replace("(", r"\(").replace("+", r"\+")):
        ImagePart(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({}, TypeError, "exactly one of url=, data= or text=, got none"),
        ({"text": "a", "data": PDF}, TypeError, "got data= and text="),
        (
            {"data": b"plain bytes"},
            ValueError,
            "DocumentPart.media_type is not given and the data is not a PDF",
        ),
        (
            {"data": PDF, "media_type": "application/msword"},
            ValueError,
            "DocumentPart.media_type must be one of",
        ),
        ({"url": "https://example.com/a.txt", "media_type": "text/plain"}, ValueError, "by url must be"),
        ({"text": "a", "media_type": "application/pdf"}, ValueError, "a text= document is text/plain"),
        ({"data": b"\xff\xfe", "media_type": "text/plain"}, ValueError, "text/plain data is not UTF-8"),
        ({"text": "a", "filename": ""}, TypeError, "DocumentPart.filename must be a non-empty str"),
        ({"text": "a", "extra": {"note": 1}}, TypeError, "DocumentPart takes no extra fields"),
    ],
)
def test_an_invalid_document_part_is_refused_naming_the_field(
    kwargs: dict[str, Any], error: type[Exception], text: str
) -> None:
    with pytest.raises(error, match=text):
        DocumentPart(**kwargs)


def test_documents_know_their_media_type_and_text() -> None:
    assert DocumentPart(data=PDF).media_type == "application/pdf"
    assert DocumentPart(url="https://example.com/a.pdf").media_type == "application/pdf"
    assert DocumentPart(text="hi").plain_text == "hi"
    assert DocumentPart(data="héllo".encode(), media_type="text/plain").plain_text == "héllo"
    assert DocumentPart(data=PDF).plain_text is None


def test_a_part_repr_shows_the_size_of_its_bytes_never_the_bytes() -> None:
    big = ImagePart(data=PNG + bytes(5_000_000))
    assert repr(big) == f"ImagePart(data=<{len(big.data or b'')} bytes>, media_type='image/png')"
    assert len(repr(TextMessage("x", parts=(big,)))) < 200


def test_parts_are_frozen_bytes_stay_bytes_and_the_message_hash_is_stable() -> None:
    parts: list[Any] = [ImagePart(data=PNG), "tail"]
    message = TextMessage("Look", parts=parts)
    parts.append("later")  # the caller's list is not the message's
    assert message.parts == (ImagePart(data=PNG), "tail")
    assert type(message.parts[0].data) is bytes
    # The key depends only on the class and the field values: pinned, so it is the same in every process.
    assert (
        message.hash_key
        == TextMessage("Look", parts=(ImagePart(data=PNG, media_type="image/png"), "tail")).hash_key
    )
    assert message.hash_key == "73934dae42fd519d8899d03d4ccb5f426b0196e68e4d99d8d6edc7acd5ad3ea1"


def test_a_message_with_parts_pickles_and_round_trips_through_to_dict() -> None:
    message = mixed_message()
    assert pickle.loads(pickle.dumps(message)) == message
    restored = Message.from_dict(json.loads(json.dumps(message.to_dict())))
    assert restored == message and restored.hash_key == message.hash_key
    assert type(restored.parts[1]) is ImagePart and restored.parts[1].data == PNG


def test_user_message_puts_a_leading_text_in_the_content_and_the_rest_in_parts() -> None:
    image = ImagePart(url=CAT_URL)
    assert user_message("Describe", image, "briefly") == TextMessage("Describe", parts=(image, "briefly"))
    assert user_message(image, "Describe") == TextMessage("", parts=(image, "Describe"))
    assert user_message("just text") == TextMessage("just text")
    assert user_message("x", image, cache_control=True).cache_control is True
    with pytest.raises(
        TypeError, match=r"user_message\(\) part 1 must be a str, ImagePart or DocumentPart, got dict"
    ):
        user_message("x", {"type": "image"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes the parts as positional arguments"):
        user_message("x", parts=(image,))


# -- what each provider receives ----------------------------------------------------------------------------------
OPENAI_MIXED = [
    {"type": "text", "text": "What is in these?"},
    {"type": "image_url", "image_url": {"url": CAT_URL, "detail": "low"}},
    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(PNG)}"}},
    {"type": "text", "text": "and the report:"},
    {
        "type": "file",
        "file": {"filename": "report.pdf", "file_data": f"data:application/pdf;base64,{b64(PDF)}"},
    },
    {"type": "text", "text": "plain notes"},
]
ANTHROPIC_MIXED = [
    {"type": "text", "text": "What is in these?"},
    {"type": "image", "source": {"type": "url", "url": CAT_URL}},
    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(PNG)}},
    {"type": "text", "text": "and the report:"},
    {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": b64(PDF)},
        "title": "report.pdf",
    },
    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain notes"}},
]


async def test_openai_gets_text_image_url_and_file_content_parts_in_order(server: FakeLLMServer) -> None:
    server.enqueue(openai_stream("A cat and a report."))
    async with MiniAgents():
        reply = await openai_agent.inquire(mixed_message(), **oai(server)).as_single_text()
    request = server.requests[0]
    assert request.validation_error is None
    assert request.json["messages"] == [{"role": "user", "content": OPENAI_MIXED}]
    assert reply == "A cat and a report."


async def test_anthropic_gets_image_and_document_blocks_in_order(server: FakeLLMServer) -> None:
    server.enqueue(anthropic_stream("A cat and a report."))
    async with MiniAgents():
        reply = await anthropic_agent.inquire(mixed_message(), **ant(server)).as_single_text()
    request = server.requests[0]
    assert request.validation_error is None
    assert request.json["messages"] == [{"role": "user", "content": ANTHROPIC_MIXED}]
    assert reply == "A cat and a report."


async def test_a_pdf_by_url_goes_to_anthropic_as_a_url_document(server: FakeLLMServer) -> None:
    server.enqueue(anthropic_stream("ok"))
    async with MiniAgents():
        await anthropic_agent.inquire(
            user_message("Summarise", DocumentPart(url="https://example.com/a.pdf")), **ant(server)
        )
    assert server.requests[0].validation_error is None
    assert server.requests[0].json["messages"][0]["content"] == [
        {"type": "text", "text": "Summarise"},
        {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}},
    ]


async def test_a_part_given_as_a_message_is_a_user_turn_of_its_own(server: FakeLLMServer) -> None:
    server.enqueue(openai_stream("ok"))
    server.enqueue(anthropic_stream("ok"))
    history = ["What is this?", ImagePart(data=JPEG)]
    async with MiniAgents():
        await openai_agent.inquire(history, **oai(server))
        await anthropic_agent.inquire(history, **ant(server))
    image_url = f"data:image/jpeg;base64,{b64(JPEG)}"
    assert server.requests[0].json["messages"] == [
        {"role": "user", "content": "What is this?"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}}]},
    ]
    # Anthropic merges consecutive user turns: the text and the image are one turn.
    assert server.requests[1].json["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/jpeg", "data": b64(JPEG)},
                },
            ],
        }
    ]
    assert all(r.validation_error is None for r in server.requests)


async def test_anthropic_leaves_out_blank_text_parts_and_an_empty_content(server: FakeLLMServer) -> None:
    server.enqueue(anthropic_stream("ok"))
    async with MiniAgents():
        await anthropic_agent.inquire(
            TextMessage("", parts=("  ", ImagePart(url=CAT_URL), "")), **ant(server)
        )
    assert server.requests[0].validation_error is None
    assert server.requests[0].json["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "url", "url": CAT_URL}}
    ]


async def test_plain_messages_keep_their_string_content(server: FakeLLMServer) -> None:
    server.enqueue(openai_stream("ok"))
    async with MiniAgents():
        await openai_agent.inquire(TextMessage("hi", parts=()), **oai(server))
    assert server.requests[0].json["messages"] == [{"role": "user", "content": "hi"}]


# -- what a provider cannot take ----------------------------------------------------------------------------------
async def test_openai_refuses_a_document_by_url_naming_the_agent_and_the_part(server: FakeLLMServer) -> None:
    reader = openai_agent.fork(alias="pdf_reader", **oai(server))
    async with MiniAgents():
        with pytest.raises(LLMError) as caught:
            await reader.inquire(
                ["first", user_message("Read", DocumentPart(url="https://example.com/a.pdf"))]
            )
    text = str(caught.value)
    assert "agent 'pdf_reader'" in text and "input message 1, parts[0]" in text
    assert "DocumentPart(url='https://example.com/a.pdf'" in text and "cannot take a document by URL" in text
    assert "nothing was sent" in text and caught.value.provider == "openai"
    assert server.requests == []


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("role", ["assistant", "tool", "system"])
async def test_parts_on_a_turn_that_is_not_a_user_turn_are_refused(
    server: FakeLLMServer, provider: str, role: str
) -> None:
    agent = openai_agent if provider == "openai" else anthropic_agent
    options = oai(server) if provider == "openai" else ant(server)
    message = TextMessage("x", role=role, tool_call_id="c1", parts=(ImagePart(url=CAT_URL),))
    async with MiniAgents():
        with pytest.raises(
            LLMError, match=rf"agent '{agent.alias}': input message 1, parts \(ImagePart\(url="
        ):
            await agent.inquire(["hello", message], **options)
    assert server.requests == []


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_parts_item_of_the_wrong_type_is_refused_by_position(
    server: FakeLLMServer, provider: str
) -> None:
    agent = openai_agent if provider == "openai" else anthropic_agent
    options = oai(server) if provider == "openai" else ant(server)
    message = TextMessage("x", parts=("ok", {"type": "image_url", "image_url": {"url": CAT_URL}}))
    async with MiniAgents():
        with pytest.raises(
            LLMError, match=r"input message 0, parts\[1\]: a FrozenDict is not a str, ImagePart"
        ):
            await agent.inquire(message, **options)
    assert server.requests == []


async def test_anthropic_still_refuses_a_user_turn_of_blank_text_parts_only(server: FakeLLMServer) -> None:
    async with MiniAgents():
        with pytest.raises(LLMError, match="a user turn with no text"):
            await anthropic_agent.inquire(TextMessage("", parts=(" ",)), **ant(server))
    assert server.requests == []


# -- persistence, tracing, cassettes ------------------------------------------------------------------------------
async def test_a_message_with_parts_round_trips_through_the_store_and_a_shared_part_is_stored_once(
    server: FakeLLMServer, tmp_path: Path
) -> None:
    server.handler = lambda request: openai_stream("ok")
    image = ImagePart(data=PNG)
    first = TextMessage("one", parts=(image, DocumentPart(data=PDF, filename="r.pdf")))
    second = user_message("two", image)
    store = SQLiteStore(tmp_path / "run.db")
    async with MiniAgents(store=store):
        await openai_agent.inquire([first, second], **oai(server))
    async with store:
        for message in (first, second, image):
            loaded = await store.get(message.hash_key)
            assert loaded == message and type(loaded) is type(message)
            assert loaded is not None and loaded.hash_key == message.hash_key
        loaded_first = await store.get(first.hash_key)
        assert loaded_first is not None and type(loaded_first.parts[0].data) is bytes
    import sqlite3

    with sqlite3.connect(store.path) as db:
        classes = [row[0] for row in db.execute("SELECT class FROM messages")]
    assert classes.count("miniagents.llms._parts:ImagePart") == 1  # the shared image is one row


async def test_traces_record_parts_without_their_bytes(server: FakeLLMServer) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server.enqueue(openai_stream("ok"))
    big = ImagePart(data=PNG + bytes(2_000_000))
    message = user_message("Look", big, ImagePart(url=CAT_URL), DocumentPart(text="notes"))
    async with MiniAgents(tracing=TracingOptions(tracer_provider=provider, capture_message_content=True)):
        await openai_agent.inquire(message, **oai(server))
    (chat,) = [s for s in exporter.get_finished_spans() if s.name == "chat gpt-test"]
    attribute = str((chat.attributes or {})["gen_ai.input.messages"])
    assert len(attribute) < 1000
    assert json.loads(attribute) == [
        {
            "role": "user",
            "parts": [
                {"type": "text", "content": "Look"},
                {"type": "blob", "modality": "image", "mime_type": "image/png", "size": len(big.data or b"")},
                {"type": "uri", "modality": "image", "uri": CAT_URL},
                {"type": "blob", "modality": "document", "mime_type": "text/plain", "size": 5},
            ],
        }
    ]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_cassette_records_and_replays_a_request_with_base64_data(
    tmp_path: Path, provider: str
) -> None:
    path = tmp_path / "image.jsonl"
    message = user_message("What is this?", ImagePart(data=PNG), DocumentPart(data=PDF))
    agent = openai_agent if provider == "openai" else anthropic_agent
    async with FakeLLMServer.serve() as server:
        server.enqueue(openai_stream("A cat.") if provider == "openai" else anthropic_stream("A cat."))
        options = oai(server) if provider == "openai" else ant(server)
        async with Cassette(path, mode="record"), MiniAgents():
            live = await agent.inquire(message, **options).as_single_text()
    assert b64(PNG) in path.read_text(encoding="utf-8")
    async with Cassette(path, mode="replay") as cassette, MiniAgents():
        replayed = await agent.inquire(message, **options).as_single_text()
    assert live == replayed == "A cat."
    assert cassette.statistics().replayed == 1


# -- properties ---------------------------------------------------------------------------------------------------
_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
_IMAGE = st.one_of(
    st.sampled_from([PNG, JPEG, GIF, WEBP]).map(lambda data: ImagePart(data=data)),
    st.sampled_from(["https://a.example/x.png", "http://b.example/y.jpg"]).map(
        lambda url: ImagePart(url=url)
    ),
    st.sampled_from(["auto", "low", "high"]).map(lambda detail: ImagePart(url=CAT_URL, detail=detail)),
)
_DOCUMENT = st.one_of(
    st.just(DocumentPart(data=PDF)),
    _TEXT.map(lambda text: DocumentPart(text=text, filename="notes.txt")),
)
_PART = st.one_of(_TEXT, _IMAGE, _DOCUMENT)


def _openai_expected(part: Any) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if isinstance(part, ImagePart):
        url = part.url or f"data:{part.media_type};base64,{b64(part.data or b'')}"
        return {
            "type": "image_url",
            "image_url": {"url": url, **({"detail": part.detail} if part.detail else {})},
        }
    if part.text is not None:
        return {"type": "text", "text": part.text}
    return {
        "type": "file",
        "file": {"filename": "document.pdf", "file_data": f"data:application/pdf;base64,{b64(PDF)}"},
    }


def _anthropic_kind(part: Any) -> str:
    return "text" if isinstance(part, str) else "image" if isinstance(part, ImagePart) else "document"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=_TEXT, parts=st.lists(_PART, max_size=6))
def test_property_any_mix_of_text_and_parts_maps_in_order_and_round_trips(
    content: str, parts: list[Any]
) -> None:
    """For any content and parts: OpenAI gets the content (when not empty) then one part per item, in order;
    Anthropic the same minus blank texts; both pass the fake server's copy of the API checks (when Anthropic
    has something to send); the message round-trips through ``to_dict`` and the store's row codec with the
    same key."""
    message = TextMessage(content, parts=parts)
    options = parse_options("t", {"model": "m"})
    (sent,) = openai_messages(options, [message])
    if parts:
        expected = ([{"type": "text", "text": content}] if content else []) + [
            _openai_expected(p) for p in parts
        ]
        assert sent == {"role": "user", "content": expected}
    else:
        assert sent == {"role": "user", "content": content}
    assert _validate_openai({"model": "m", "messages": [sent], "stream": True}) is None

    kept = [p for p in ([content] if content else []) + parts if not isinstance(p, str) or p.strip()]
    if kept:
        _, turns = anthropic_messages(options, [message])
        assert [b["type"] for b in turns[0]["content"]] == [_anthropic_kind(p) for p in kept]
        assert _validate_anthropic({"model": "m", "max_tokens": 1, "messages": turns, "stream": True}) is None
    else:
        with pytest.raises(LLMError, match="a user turn with no text"):
            anthropic_messages(options, [message])

    restored = Message.from_dict(json.loads(json.dumps(message.to_dict())))
    assert restored == message and restored.hash_key == message.hash_key
    cls, stored_content, fields, nested = encode_message(message)
    rows = {n.hash_key: n.to_dict() for n in nested}
    row = decode_row(cls, stored_content, fields, len(nested), rows.__getitem__)
    assert Message.from_dict(row) == message


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(_PART, min_size=1, max_size=4), min_size=1, max_size=3))
def test_property_messages_with_parts_read_back_from_a_sqlite_store_equal(
    batches: list[list[Any]], tmp_path_factory: pytest.TempPathFactory, anyio_backend: str
) -> None:
    """For any messages with parts: what a ``SQLiteStore`` stored reads back equal, with the same key."""
    import anyio

    messages = [TextMessage(f"m{i}", parts=parts) for i, parts in enumerate(batches)]
    path = tmp_path_factory.mktemp("store") / "run.db"

    async def run() -> None:
        store = SQLiteStore(path)
        async with MiniAgents(store=store) as context:
            for message in messages:
                context._persist(message)
        async with store:
            for message in messages:
                assert await store.get(message.hash_key) == message

    anyio.run(run, backend=anyio_backend)
