r"""The cassette file: recorded LLM exchanges as JSON lines, request normalisation, secrets and matching.

A cassette is a UTF-8 text file of JSON lines.  Line 1 is the header ``{"format": "miniagents-llm-cassette",
"version": 1}``; every further line is one exchange::

    {"request": {"body": {...}, "method": "POST", "path": "/v1/chat/completions"},
     "response": {"chunks": ["data: {...}\\n\\n", ...], "end": "complete",
                  "headers": {"content-type": "text/event-stream"}, "status": 200}}

(one line each in the file).  ``chunks`` are the bytes of the response body exactly as they were received: one
chunk per SSE event by default, or the chunks the network delivered (``Cassette(exact_chunks=True)``).  A chunk
that is valid UTF-8 is stored as a string, any other as ``{"base64": "..."}``.  With timing recorded,
``response.latency`` (seconds to the response head) and ``response.delays`` (seconds before each chunk) are added.
``end`` is ``"complete"``, ``"abort"`` (the connection broke before the body's end) or ``"cancelled"`` (the client
stopped waiting: after the chunks it had read, or, with ``"status": null``, before the response head; replay then
sends no more and waits until the client goes away).
Keys are sorted and nothing that changes from run to run (timing, network chunk boundaries) is written unless
asked for, so re-recording the same exchanges gives the same file.

Guarantee: no request header is stored, only a short list of response headers (content type and encoding,
request ids, retry hints); values of secret request headers (``authorization``, ``x-api-key``, ``api-key``,
``Helicone-Auth``, any header named like a key, token, secret or cookie: the package's one rule, see
``miniagents._secrets``) are replaced by ``<redacted>`` wherever they appear in the path, the query, the request
body or the response, and so are query parameters and string body fields with such names.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode

import attrs

from miniagents._secrets import REDACTED, is_secret_name, secret_query_values, secret_values
from miniagents._secrets import redact_text as _redact_text
from miniagents.llms._sse import SSEDecoder

__all__ = [
    "CASSETTE_FORMAT",
    "CASSETTE_VERSION",
    "CassetteError",
    "CassetteFormatError",
    "CassetteMismatchError",
    "Exchange",
    "RequestKey",
    "dump_cassette",
    "load_cassette",
]

CASSETTE_FORMAT = "miniagents-llm-cassette"
CASSETTE_VERSION = 1
IGNORED = "<ignored>"

#: Response headers kept in a cassette (all others, e.g. cookies and organisation ids, are dropped).
KEPT_RESPONSE_HEADERS = (
    "content-type",
    "content-encoding",
    "x-request-id",
    "request-id",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
)
# Which header, query-parameter and body-field names are secret: the package's one rule (miniagents._secrets).
# Substrings shorter than this are not redacted inside texts (a 4-letter "key" would rewrite ordinary words).
_MIN_SECRET = 8


class CassetteError(Exception):
    """A cassette could not be used; the message names the file (and the line, when one is at fault)."""


class CassetteFormatError(CassetteError):
    """The cassette file is not a valid cassette (truncated, wrong version, a malformed or edited entry).

    Attributes:
        path: the cassette file.
        line: the 1-based line at fault (``None`` when the whole file is).

    """

    def __init__(self, path: Path, line: int | None, problem: str) -> None:
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"bad cassette {where}: {problem}")
        self.path = path
        self.line = line


class CassetteMismatchError(CassetteError):
    """Requests had no recorded exchange during replay; ``problems`` has one message (with a diff) per request."""

    def __init__(self, path: Path, problems: Sequence[str]) -> None:
        count = len(problems)
        head = f"{count} request{'s' if count != 1 else ''} had no recorded exchange in cassette {path}"
        super().__init__(head + ":\n\n" + "\n\n".join(problems))
        self.path = path
        self.problems = tuple(problems)


# ---------------------------------------------------------------------------------------------------------------
# Secrets and normalisation
def secrets_of(headers: Iterable[tuple[str, str]], url: str = "") -> tuple[str, ...]:
    """The secrets of a request, longest first.

    Its secret headers' values (also without an auth scheme such as ``Bearer``) and its secret query
    parameters' values (an Azure ``?api-key=``).
    """
    found = {*secret_values(headers, min_length=_MIN_SECRET), *secret_query_values(url)}
    return tuple(sorted((s for s in found if len(s) >= _MIN_SECRET), key=len, reverse=True))


def redact_text(text: str, secrets: Sequence[str]) -> str:
    """Replace every occurrence of the *secrets* in *text* (plain, JSON- or repr-escaped) with ``<redacted>``."""
    return _redact_text(text, secrets)


def redact_bytes(data: bytes, secrets: Sequence[str]) -> bytes:
    """Replace every occurrence of the *secrets* (UTF-8; plain, JSON- or repr-escaped) with ``<redacted>``."""
    for secret in secrets:
        for form in {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]}:
            raw = form.encode("utf-8")
            if raw and raw in data:
                data = data.replace(raw, REDACTED.encode())
    return data


def normalise_target(target: str, secrets: Sequence[str]) -> str:
    """The request target (path and query) with secret query parameters and secret values redacted."""
    path, question, query = target.partition("?")
    if question:
        pairs = [
            (name, REDACTED if is_secret_name(name) else redact_text(value, secrets))
            for name, value in parse_qsl(query, keep_blank_values=True)
        ]
        path = f"{path}?{urlencode(pairs, safe='<>')}" if pairs else path
    return redact_text(path, secrets)


def _walk_redact(value: Any, secrets: Sequence[str]) -> Any:
    if isinstance(value, dict):
        return {
            # Only string values: a credential is a string, while a dict under a secret-looking key is content
            # (a tool parameter named "key" in a JSON schema).
            key: (REDACTED if isinstance(item, str) and is_secret_name(key) else _walk_redact(item, secrets))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_walk_redact(item, secrets) for item in value]
    if isinstance(value, str):
        return redact_text(value, secrets)
    return value


def _ignore(value: Any, parts: Sequence[str]) -> Any:
    if not parts:
        return IGNORED
    head, rest = parts[0], parts[1:]
    if isinstance(value, dict):
        if head == "*":
            return {key: _ignore(item, rest) for key, item in value.items()}
        if head in value:
            return {**value, head: _ignore(value[head], rest)}
    elif isinstance(value, list) and (head == "*" or head.isdigit()):
        return [
            _ignore(item, rest) if head == "*" or int(head) == n else item for n, item in enumerate(value)
        ]
    return value


Normaliser = Callable[[Any], Any]


@attrs.frozen
class RequestKey:
    """A request as it is matched and stored: method, normalised target and normalised body.

    Attributes:
        method: the HTTP method.
        path: the target (path and query), secrets redacted.
        body: the JSON body, normalised (``None`` when the body is not JSON).
        body_text: the body as text when it is not JSON (secrets redacted), else ``None``.

    """

    method: str
    path: str
    body: Any
    body_text: str | None = None

    @classmethod
    def build(
        cls,
        method: str,
        target: str,
        body: bytes,
        *,
        secrets: Sequence[str] = (),
        ignore_fields: Sequence[str] = (),
        normalise: Normaliser | None = None,
    ) -> RequestKey:
        """Normalise a live request.

        Secrets are redacted, *ignore_fields* (dotted paths, ``*`` matches any key or item) are replaced with
        ``"<ignored>"``, then *normalise* is applied to the parsed body.
        """
        path = normalise_target(target, secrets)
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            return cls(method, path, None, redact_text(body.decode("utf-8", errors="replace"), secrets))
        parsed = _walk_redact(parsed, secrets)
        for field in ignore_fields:
            parsed = _ignore(parsed, field.split("."))
        if normalise is not None:
            parsed = normalise(parsed)
        return cls(method, path, parsed)

    def canonical(self) -> str:
        """Canonical JSON of the request (sorted keys, no spaces): equal requests have equal texts."""
        return json.dumps(self._as_json(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    def pretty_lines(self) -> list[str]:
        """Indented canonical JSON lines, for diffs."""
        return json.dumps(self._as_json(), sort_keys=True, ensure_ascii=False, indent=1).split("\n")

    def _as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"method": self.method, "path": self.path, "body": self.body}
        if self.body_text is not None:
            data["body_text"] = self.body_text
        return data


End = Literal["complete", "abort", "cancelled"]


@attrs.frozen
class Exchange:
    """One recorded exchange: the normalised request and the response as it was received.

    Attributes:
        request: the request key.
        status: the HTTP status (``None``: the client gave up before the response head).
        headers: the kept response headers (sorted by name).
        chunks: the raw body chunks, boundaries as received.
        end: ``"complete"``; ``"abort"`` when the connection broke before the body's end; ``"cancelled"`` when the
            client stopped waiting (after *chunks*), e.g. its agent call was cancelled.
        latency: seconds from sending the request to the response head (``None``: timing not recorded).
        delays: seconds before each chunk (``None``: timing not recorded).
        line: the cassette line it was read from (``None`` for a new recording).

    """

    request: RequestKey
    status: int | None
    headers: tuple[tuple[str, str], ...]
    chunks: tuple[bytes, ...]
    end: End = "complete"
    latency: float | None = None
    delays: tuple[float, ...] | None = None
    line: int | None = attrs.field(default=None, eq=False)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the cassette line."""
        request: dict[str, Any] = {"method": self.request.method, "path": self.request.path}
        if self.request.body_text is not None:
            request["body_text"] = self.request.body_text
        else:
            request["body"] = self.request.body
        response: dict[str, Any] = {
            "status": self.status,
            "headers": dict(self.headers),
            "chunks": [_encode_chunk(chunk) for chunk in self.chunks],
            "end": self.end,
        }
        if self.latency is not None:
            response["latency"] = self.latency
        if self.delays is not None:
            response["delays"] = list(self.delays)
        return {"request": request, "response": response}

    def body_bytes(self) -> bytes:
        """The whole response body."""
        return b"".join(self.chunks)


def _encode_chunk(chunk: bytes) -> str | dict[str, str]:
    try:
        return chunk.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(chunk).decode("ascii")}


def dump_line(data: Mapping[str, Any]) -> str:
    """One cassette line (sorted keys, UTF-8 text kept readable)."""
    return json.dumps(data, sort_keys=True, ensure_ascii=False) + "\n"


def dump_cassette(exchanges: Iterable[Exchange]) -> str:
    """The text of a cassette holding *exchanges* in the given order."""
    header = dump_line({"format": CASSETTE_FORMAT, "version": CASSETTE_VERSION})
    return header + "".join(dump_line(exchange.to_json()) for exchange in exchanges)


# ---------------------------------------------------------------------------------------------------------------
# Loading
def load_cassette(path: Path) -> list[Exchange]:
    """Read and check a cassette file.

    Raises:
        CassetteFormatError: the file is empty, truncated, of another format or version, or an entry is malformed
            (the error names the file and the line), e.g. a successful ``text/event-stream`` response whose
            recorded body does not split into SSE events with JSON (or ``[DONE]``) data: an edited body fails
            here rather than as the agent's :class:`~miniagents.llms.MalformedResponseError` during replay.

    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CassetteFormatError(
            path, None, f"not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
    # Only "\n" ends a line: JSON strings written with ensure_ascii=False may hold U+0085, U+2028 ... verbatim.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if not lines:
        raise CassetteFormatError(path, None, "the file is empty (no header line)")
    header = _parse_line(path, 1, lines[0], last=len(lines) == 1 and not text.endswith("\n"))
    if not isinstance(header, dict) or header.get("format") != CASSETTE_FORMAT:
        raise CassetteFormatError(
            path, 1, f'not a miniagents cassette header (expected {{"format": "{CASSETTE_FORMAT}", ...}})'
        )
    version = header.get("version")
    if version != CASSETTE_VERSION:
        raise CassetteFormatError(
            path,
            1,
            f"cassette version {version!r} is not supported (this miniagents reads version {CASSETTE_VERSION}); "
            "re-record it",
        )
    exchanges = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip(" \t\r"):
            continue
        data = _parse_line(path, number, line, last=number == len(lines) and not text.endswith("\n"))
        exchanges.append(_exchange_from_json(path, number, data))
    return exchanges


def _parse_line(path: Path, number: int, line: str, *, last: bool) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        hint = " (the file ends in the middle of this line: truncated?)" if last else ""
        raise CassetteFormatError(
            path, number, f"invalid JSON: {error.msg} at column {error.colno}{hint}"
        ) from None


def _exchange_from_json(path: Path, number: int, data: Any) -> Exchange:
    def bad(problem: str) -> CassetteFormatError:
        return CassetteFormatError(path, number, f"malformed entry: {problem}")

    if not isinstance(data, dict) or not isinstance(data.get("request"), dict):
        raise bad('expected an object with "request" and "response" objects')
    request, response = data["request"], data.get("response")
    if not isinstance(response, dict):
        raise bad('"response" must be an object')
    method, target = request.get("method"), request.get("path")
    if not isinstance(method, str) or not isinstance(target, str):
        raise bad('"request.method" and "request.path" must be strings')
    body_text = request.get("body_text")
    if body_text is not None and not isinstance(body_text, str):
        raise bad('"request.body_text" must be a string')
    end = response.get("end", "complete")
    if end not in ("complete", "abort", "cancelled"):
        raise bad('"response.end" must be "complete", "abort" or "cancelled"')
    status = response.get("status")
    if status is None and end == "cancelled":
        pass  # the client gave up before the response head
    elif not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise bad('"response.status" must be an HTTP status code')
    headers = response.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise bad('"response.headers" must be an object of strings')
    raw_chunks = response.get("chunks")
    if not isinstance(raw_chunks, list):
        raise bad('"response.chunks" must be a list')
    chunks = tuple(_decode_chunk(chunk, n, bad) for n, chunk in enumerate(raw_chunks))
    latency = response.get("latency")
    if latency is not None and not _is_seconds(latency):
        raise bad('"response.latency" must be a non-negative number')
    delays = response.get("delays")
    if delays is not None:
        if not isinstance(delays, list) or len(delays) != len(chunks) or not all(map(_is_seconds, delays)):
            raise bad('"response.delays" must be one non-negative number per chunk')
        delays = tuple(float(d) for d in delays)
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    if status is not None and 200 <= status < 300 and content_type.lower().startswith("text/event-stream"):
        _check_event_stream(chunks, bad)
    return Exchange(
        request=RequestKey(method, target, request.get("body"), body_text),
        status=status,
        headers=tuple(sorted((k.lower(), v) for k, v in headers.items())),
        chunks=chunks,
        end=end,
        latency=None if latency is None else float(latency),
        delays=delays,
        line=number,
    )


_SHOWN = 80  # characters of a bad event's data quoted in the error


def _check_event_stream(chunks: Sequence[bytes], bad: Callable[[str], CassetteFormatError]) -> None:
    """Check that a recorded SSE body splits into events whose ``data`` is JSON (or OpenAI's ``[DONE]``).

    Only the events the body completes are checked: one cut short by an aborted or cancelled stream is not.
    """
    decoder = SSEDecoder()
    count = 0
    for n, chunk in enumerate((*chunks, None)):
        for event in decoder.feed(chunk) if chunk is not None else decoder.close():
            count += 1
            if event.data == "[DONE]":
                continue
            try:
                json.loads(event.data)
            except ValueError as error:
                where = f"response.chunks[{n}]" if chunk is not None else "the end of response.chunks"
                data, position = event.data, getattr(error, "pos", 0)
                reason = (
                    f"{error.msg} at character {position}" if isinstance(error, json.JSONDecodeError) else ""
                )
                if len(data) > _SHOWN:  # quote the part around the fault
                    start = max(0, min(position - _SHOWN // 2, len(data) - _SHOWN))
                    shown = f"{'...' if start else ''}{data[start : start + _SHOWN]!r}"
                    shown += "..." if start + _SHOWN < len(data) else ""
                else:
                    shown = repr(data)
                raise bad(
                    f"the event stream does not parse: SSE event {count} (event {event.event!r}, completed in "
                    f"{where}) has data that is not JSON ({reason or error}): {shown}"
                ) from None


def _is_seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _decode_chunk(chunk: Any, n: int, bad: Callable[[str], CassetteFormatError]) -> bytes:
    if isinstance(chunk, str):
        return chunk.encode("utf-8")
    if isinstance(chunk, dict) and isinstance(chunk.get("base64"), str):
        try:
            return base64.b64decode(chunk["base64"], validate=True)
        except (binascii.Error, ValueError):
            raise bad(f"response.chunks[{n}] is not valid base64") from None
    raise bad(f'response.chunks[{n}] must be a string or {{"base64": "..."}}')


# ---------------------------------------------------------------------------------------------------------------
# Mismatch reports
_MAX_DIFF_LINES = 120


def mismatch_report(
    path: Path, live: RequestKey, exchanges: Sequence[Exchange], *, exhausted: int = 0
) -> str:
    """A message for a request without a recorded exchange, with a diff against the closest recorded request.

    *exhausted* is how many recorded exchanges had exactly this request but were all replayed already.
    """
    title = f"no recorded exchange in {path} matches {live.method} {live.path}"
    if exhausted:
        return (
            f"{title}: its {exhausted} recorded exchange{'s were' if exhausted != 1 else ' was'} already "
            "replayed (the code sends this request more often than when it was recorded)"
        )
    if not exchanges:
        return f"{title}: the cassette holds no exchanges"
    live_lines = live.pretty_lines()

    def similarity(exchange: Exchange) -> tuple[bool, float]:
        same_route = (exchange.request.method, exchange.request.path) == (live.method, live.path)
        matcher = difflib.SequenceMatcher(None, exchange.request.pretty_lines(), live_lines, autojunk=False)
        return same_route, matcher.ratio()

    closest = max(exchanges, key=similarity)
    diff = list(
        difflib.unified_diff(
            closest.request.pretty_lines(),
            live_lines,
            fromfile=f"recorded (line {closest.line})" if closest.line else "recorded",
            tofile="sent now",
            lineterm="",
            n=2,
        )
    )
    if len(diff) > _MAX_DIFF_LINES:
        diff = [*diff[:_MAX_DIFF_LINES], f"... ({len(diff) - _MAX_DIFF_LINES} more diff lines)"]
    where = f" (entry at line {closest.line})" if closest.line else ""
    return f"{title}; the closest recorded request{where} differs:\n" + "\n".join(diff)
