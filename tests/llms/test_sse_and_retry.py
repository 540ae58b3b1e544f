"""Unit tests: the SSE parser, the retry policy and the error tree."""

from __future__ import annotations

import email.utils
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miniagents.llms import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ContextLengthError,
    LLMConnectionError,
    LLMError,
    LLMTimeoutError,
    MalformedResponseError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    TruncatedStreamError,
)
from miniagents.llms._http import build_status_error
from miniagents.llms._retry import retry_after_seconds, should_retry_status
from miniagents.llms._sse import ServerSentEvent, SSEDecoder


def parse(*chunks: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events = [e for chunk in chunks for e in decoder.feed(chunk)]
    return events + decoder.close()


# -- SSE ------------------------------------------------------------------------------------------------------
def test_sse_basic_fields_and_defaults() -> None:
    events = parse(b"event: a\ndata: 1\nid: 7\nretry: 1500\n\ndata:2\n\n")
    assert events == [
        ServerSentEvent(event="a", data="1", id="7", retry=1500),
        ServerSentEvent(event="message", data="2", id="7", retry=1500),  # id persists, event resets
    ]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_sse_all_line_endings(newline: bytes) -> None:
    raw = newline.join([b"event: x", b"data: one", b"data: two", b"", b"data: three", b"", b""])
    assert parse(raw) == [ServerSentEvent("x", "one\ntwo"), ServerSentEvent("message", "three")]


def test_sse_crlf_split_between_chunks_is_one_line_end() -> None:
    # "\r" ends one chunk, "\n" starts the next: one line end, not a blank line (which would dispatch early).
    assert parse(b"data: a\r", b"\ndata: b\r\n\r\n") == [ServerSentEvent("message", "a\nb")]


def test_sse_comments_unknown_fields_and_space_stripping() -> None:
    raw = b": keep-alive\nfoo: bar\ndata:  two spaces\nretry: x1\ndata\n\n"
    assert parse(raw) == [ServerSentEvent("message", " two spaces\n")]


def test_sse_event_without_data_is_not_dispatched_and_open_event_is_dropped() -> None:
    assert parse(b"event: lonely\n\ndata: unterminated") == []


def test_sse_bom_and_invalid_utf8() -> None:
    assert parse(b"\xef\xbb\xbfdata: \xff\n\n") == [ServerSentEvent("message", "\ufffd")]


_sse_text = st.text(
    alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=12
)


@given(
    datas=st.lists(st.lists(_sse_text, min_size=1, max_size=3), min_size=1, max_size=6),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_sse_events_do_not_depend_on_chunking(datas: list[list[str]], newline: str, cuts: list[int]) -> None:
    raw = "".join("".join(f"data: {line}{newline}" for line in lines) + newline for lines in datas).encode(
        "utf-8"
    )
    points = sorted({min(c, len(raw)) for c in cuts})
    chunks = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    whole = parse(raw)
    assert [e.data for e in whole] == ["\n".join(lines) for lines in datas]
    assert parse(*chunks) == whole
    assert parse(*[bytes([b]) for b in raw]) == whole


# -- retry policy ---------------------------------------------------------------------------------------------
def test_retry_after_headers() -> None:
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"Retry-After": "3"}) == 3.0
    assert retry_after_seconds({"retry-after-ms": "bad", "retry-after": "2"}) == 2.0
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert retry_after_seconds({"retry-after": date}, now=lambda: 1_000_000) == pytest.approx(30)
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_retry_delay_honours_header_only_in_range() -> None:
    policy = RetryPolicy()
    assert policy.delay(0, {"retry-after-ms": "1500"}) == 1.5
    assert policy.delay(0, {"retry-after": "61"}, rand=lambda: 0.0) == 0.5  # out of range: backoff
    assert policy.delay(0, {"retry-after": "0"}, rand=lambda: 0.0) == 0.5


def test_retry_delay_exponential_backoff_with_jitter() -> None:
    policy = RetryPolicy()
    assert [policy.delay(n, rand=lambda: 0.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert policy.delay(1, rand=lambda: 1.0) == pytest.approx(0.75)
    for n in range(5):
        assert 0.75 * min(0.5 * 2**n, 8) <= policy.delay(n) <= min(0.5 * 2**n, 8)


def test_retryable_statuses_and_overrides() -> None:
    for status in (408, 409, 429, 500, 502, 503, 529):
        assert should_retry_status(status, {})
    for status in (400, 401, 403, 404, 413, 422):
        assert not should_retry_status(status, {})
    assert should_retry_status(400, {"x-should-retry": "true"})
    assert not should_retry_status(503, {"X-Should-Retry": "false"})
    assert not should_retry_status(429, {}, error_code="insufficient_quota")


def test_retry_policy_validation() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)


# -- errors ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (400, b'{"error": {"message": "bad", "type": "invalid_request_error"}}', BadRequestError),
        (
            400,
            b'{"error": {"message": "This model\'s maximum context length is 8192 tokens", '
            b'"type": "invalid_request_error", "code": "context_length_exceeded"}}',
            ContextLengthError,
        ),
        (
            400,
            b'{"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: '
            b'210000 tokens > 200000 maximum"}}',
            ContextLengthError,
        ),
        (401, b'{"detail": "Invalid API Key"}', AuthenticationError),
        (
            403,
            b'{"type": "error", "error": {"type": "permission_error", "message": "no"}}',
            PermissionDeniedError,
        ),
        (404, b'{"error": {"message": "no such model", "code": "model_not_found"}}', NotFoundError),
        (422, b"{}", BadRequestError),
        (
            429,
            b'{"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}',
            RateLimitError,
        ),
        (500, b"Internal Server Error", ServerError),
        (503, b"", ServerError),
        (
            529,
            b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}',
            OverloadedError,
        ),
        (409, b"{}", APIStatusError),
        (
            None,
            b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}',
            OverloadedError,
        ),
        (None, b'{"error": {"message": "boom", "type": "server_error"}}', ServerError),
    ],
)
def test_error_mapping(status: int | None, body: bytes, cls: type[APIStatusError]) -> None:
    error = build_status_error(status, {"request-id": "req_1"}, body, provider="anthropic")
    assert type(error) is cls
    assert error.status == status
    assert error.request_id == "req_1"
    assert isinstance(error, LLMError)


def test_error_fields_and_text() -> None:
    error = build_status_error(
        429,
        {"x-request-id": "req_9"},
        b'{"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}',
        provider="openai",
    )
    assert (error.message, error.error_type, error.code, error.provider) == (
        "Rate limit reached",
        "requests",
        "rate_limit_exceeded",
        "openai",
    )
    assert (
        str(error) == "openai: Rate limit reached (status=429, type=requests, code=rate_limit_exceeded, "
        "request_id=req_9)"
    )
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is RateLimitError and clone.code == "rate_limit_exceeded" and clone.status == 429


def test_error_tree() -> None:
    assert issubclass(ContextLengthError, BadRequestError)
    assert issubclass(OverloadedError, ServerError)
    assert issubclass(LLMTimeoutError, TimeoutError) and issubclass(LLMTimeoutError, LLMError)
    assert issubclass(LLMConnectionError, ConnectionError)
    assert issubclass(TruncatedStreamError, LLMError)
    assert issubclass(MalformedResponseError, LLMError) and not issubclass(
        MalformedResponseError, APIStatusError
    )
