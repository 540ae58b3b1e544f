"""Images and documents in messages: :class:`ImagePart`, :class:`DocumentPart`, :func:`user_message`.

A part is a message class of its own (a frozen attrs subclass of :class:`~miniagents.Message` with no content),
so everything messages guarantee holds for it with no special case: its fields are frozen (``bytes`` stay
``bytes``), its :attr:`~miniagents.Message.hash_key` is stable across processes, it pickles, and the store
persists it (a part used in many messages is stored once, as a row of its own, like any nested message).

A user turn carries parts in its ``parts`` field, a tuple of ``str`` (text parts) and parts, sent after the
message's own content::

    TextMessage("What is in this image?", parts=(ImagePart(url="https://example.com/cat.png"),))
    user_message("Compare", ImagePart(data=png_bytes), "with", ImagePart(data=jpeg_bytes))

A part given on its own as an input message is a user turn made of that part.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Final

import attrs

from miniagents._frozen import FrozenDict
from miniagents._messages import Message, TextMessage
from miniagents.llms._exceptions import LLMError

__all__ = [
    "DOCUMENT_MEDIA_TYPES",
    "IMAGE_MEDIA_TYPES",
    "DocumentPart",
    "ImagePart",
    "Part",
    "base64_text",
    "cache_control_value",
    "checked_parts",
    "data_url",
    "describe_part",
    "message_parts",
    "part_error",
    "user_message",
]

#: The image media types both providers accept.
IMAGE_MEDIA_TYPES: Final = ("image/png", "image/jpeg", "image/gif", "image/webp")
#: The document media types: PDF (both providers) and plain text.
DOCUMENT_MEDIA_TYPES: Final = ("application/pdf", "text/plain")
_IMAGE_DETAILS: Final = ("auto", "low", "high")
_CACHE_TTLS: Final = ("5m", "1h")


def _sniff_image(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _check_no_content(part: Message) -> None:
    name = type(part).__name__
    if part.content:
        raise ValueError(
            f"{name} takes no content (got {part.content[:60]!r}); give the source as url=/data= and put text "
            "in the message's content or as a str in its parts"
        )
    if part.extra_fields:
        raise TypeError(f"{name} takes no extra fields (got {', '.join(sorted(part.extra_fields))})")


def _check_url(name: str, url: str) -> None:
    if not isinstance(url, str) or not url:
        raise TypeError(f"{name}.url must be a non-empty str, got {url!r:.80}")
    scheme = url.partition(":")[0].lower()
    if scheme == "data":
        raise ValueError(
            f"{name}.url: a data: URL is not accepted; pass the decoded bytes as data= (with media_type=)"
        )
    if scheme not in ("http", "https"):
        raise ValueError(f"{name}.url must be an http:// or https:// URL, got {url!r:.80}")


def _check_data(name: str, data: bytes) -> None:
    if type(data) is not bytes:
        raise TypeError(f"{name}.data must be bytes, got {type(data).__name__}")
    if not data:
        raise ValueError(f"{name}.data is empty")


def _set(part: Message, field: str, value: Any) -> None:
    object.__setattr__(part, field, value)


@attrs.frozen(kw_only=True, repr=False)
class ImagePart(Message):
    """An image in a user turn: by ``url`` (http/https) or as ``data`` bytes, exactly one of the two.

    ``media_type`` is one of ``image/png``, ``image/jpeg``, ``image/gif``, ``image/webp``; for ``data`` it is
    read from the bytes' signature when not given (so ``ImagePart(data=png)`` equals
    ``ImagePart(data=png, media_type="image/png")``).  ``detail`` (``"auto"``, ``"low"``, ``"high"``) is
    OpenAI's resolution hint; Anthropic has none and ignores it.

    OpenAI receives ``{"type": "image_url", "image_url": {"url": ...}}`` (bytes as a ``data:`` URL), Anthropic
    ``{"type": "image", "source": {"type": "base64" | "url", ...}}``.

    Raises:
        TypeError, ValueError: at construction, naming the field (``ImagePart.media_type`` ...): both or
            neither of ``url`` / ``data``, a media type not listed above, bytes whose type cannot be read
            without ``media_type``, an unknown ``detail``, a ``data:`` URL, any content or extra field.

    """

    url: str | None = None
    data: bytes | None = None
    media_type: str | None = None
    detail: str | None = None

    def __attrs_post_init__(self) -> None:
        Message.__attrs_post_init__(self)
        _check_no_content(self)
        if (self.url is None) == (self.data is None):
            raise TypeError("ImagePart takes exactly one of url= or data=, got " + _both_or_neither(self))
        if self.url is not None:
            _check_url("ImagePart", self.url)
        if self.data is not None:
            _check_data("ImagePart", self.data)
            if self.media_type is None:
                sniffed = _sniff_image(self.data)
                if sniffed is None:
                    raise ValueError(
                        "ImagePart.media_type is not given and the data is not recognisably PNG, JPEG, GIF or "
                        f"WebP; pass media_type= (one of {', '.join(IMAGE_MEDIA_TYPES)})"
                    )
                _set(self, "media_type", sniffed)
        if self.media_type is not None and self.media_type not in IMAGE_MEDIA_TYPES:
            raise ValueError(
                f"ImagePart.media_type must be one of {', '.join(IMAGE_MEDIA_TYPES)}, got {self.media_type!r}"
            )
        if self.detail is not None and self.detail not in _IMAGE_DETAILS:
            raise ValueError(
                f"ImagePart.detail must be one of {', '.join(_IMAGE_DETAILS)}, got {self.detail!r}"
            )

    def __repr__(self) -> str:
        return _part_repr(self, ("url", "data", "media_type", "detail"))


@attrs.frozen(kw_only=True, repr=False)
class DocumentPart(Message):
    """A document in a user turn: a PDF (``data`` bytes or ``url``) or plain text (``text``, or UTF-8 ``data``).

    Exactly one of ``url``, ``data``, ``text``.  ``media_type`` is ``application/pdf`` or ``text/plain``: a
    ``url`` is a PDF, ``text`` is plain text, and ``data`` starting with ``%PDF-`` is a PDF when not given.
    ``filename`` names the document (OpenAI's ``filename``, default ``"document.pdf"``; Anthropic's ``title``).

    OpenAI receives a PDF as ``{"type": "file", "file": {"filename", "file_data": <data: URL>}}`` and a text
    document as a text part (Chat Completions takes no other file type); it cannot take a document by URL
    (sending one raises :class:`~miniagents.llms.LLMError` before anything is sent).  Anthropic receives
    ``{"type": "document", "source": {"type": "base64" | "url" | "text", ...}}``.

    Raises:
        TypeError, ValueError: at construction, naming the field: not exactly one of the three sources, a
            media type not listed above (or not matching the source), ``text/plain`` bytes that are not
            UTF-8, any content or extra field.

    """

    url: str | None = None
    data: bytes | None = None
    text: str | None = None
    media_type: str | None = None
    filename: str | None = None

    def __attrs_post_init__(self) -> None:
        Message.__attrs_post_init__(self)
        _check_no_content(self)
        given = [name for name in ("url", "data", "text") if getattr(self, name) is not None]
        if len(given) != 1:
            raise TypeError(
                "DocumentPart takes exactly one of url=, data= or text=, got "
                + (" and ".join(f"{n}=" for n in given) if given else "none")
            )
        if self.media_type is not None and self.media_type not in DOCUMENT_MEDIA_TYPES:
            raise ValueError(
                f"DocumentPart.media_type must be one of {', '.join(DOCUMENT_MEDIA_TYPES)}, "
                f"got {self.media_type!r}"
            )
        if self.url is not None:
            _check_url("DocumentPart", self.url)
            if self.media_type not in (None, "application/pdf"):
                raise ValueError(
                    f"DocumentPart.media_type: a document by url must be application/pdf, got {self.media_type!r}"
                )
            _set(self, "media_type", "application/pdf")
        elif self.text is not None:
            if not isinstance(self.text, str):
                raise TypeError(f"DocumentPart.text must be a str, got {type(self.text).__name__}")
            if self.media_type not in (None, "text/plain"):
                raise ValueError(
                    f"DocumentPart.media_type: a text= document is text/plain, got {self.media_type!r}"
                )
            _set(self, "media_type", "text/plain")
        else:
            assert self.data is not None
            _check_data("DocumentPart", self.data)
            if self.media_type is None:
                if not self.data.startswith(b"%PDF-"):
                    raise ValueError(
                        "DocumentPart.media_type is not given and the data is not a PDF (no %PDF- header); "
                        f"pass media_type= (one of {', '.join(DOCUMENT_MEDIA_TYPES)})"
                    )
                _set(self, "media_type", "application/pdf")
            elif self.media_type == "text/plain":
                try:
                    self.data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ValueError(f"DocumentPart.data: text/plain data is not UTF-8 ({exc})") from None
        if self.filename is not None and (not isinstance(self.filename, str) or not self.filename):
            raise TypeError(f"DocumentPart.filename must be a non-empty str, got {self.filename!r}")

    @property
    def plain_text(self) -> str | None:
        """The text of a ``text/plain`` document (``None`` for a PDF)."""
        if self.media_type != "text/plain":
            return None
        if self.text is not None:
            return self.text
        assert self.data is not None
        return self.data.decode("utf-8")

    def __repr__(self) -> str:
        return _part_repr(self, ("url", "data", "text", "media_type", "filename"))


#: What a ``parts`` item may be.
Part = str | ImagePart | DocumentPart


def _both_or_neither(part: Message) -> str:
    return "both" if part.get("url") is not None else "neither"


def _part_repr(part: Message, names: tuple[str, ...]) -> str:
    shown = []
    for name in names:
        value = getattr(part, name)
        if value is None:
            continue
        if isinstance(value, bytes):
            shown.append(f"{name}=<{len(value)} bytes>")  # never megabytes in a repr
        elif isinstance(value, str) and len(value) > 200:
            shown.append(f"{name}={value[:200]!r}...<{len(value)} chars>")
        else:
            shown.append(f"{name}={value!r}")
    return f"{type(part).__name__}({', '.join(shown)})"


def user_message(*parts: Part, **fields: Any) -> TextMessage:
    """Return a user :class:`~miniagents.TextMessage` made of *parts* in order (``str`` and parts).

    A leading ``str`` becomes the message's content (what ``str(message)`` shows), the rest its ``parts``
    field; other keyword *fields* (``cache_control=True`` ...) are message fields too.

    Raises:
        TypeError: a part that is neither a ``str``, an :class:`ImagePart` nor a :class:`DocumentPart`
            (named by its position), or a ``parts=`` / ``content=`` keyword.

    """
    for name in ("parts", "content"):
        if name in fields:
            raise TypeError(f"user_message() takes the {name} as positional arguments, not {name}=")
    for index, part in enumerate(parts):
        if not isinstance(part, (str, ImagePart, DocumentPart)):
            raise TypeError(
                f"user_message() part {index} must be a str, ImagePart or DocumentPart, got {type(part).__name__}"
            )
    content = ""
    rest = parts
    if parts and isinstance(parts[0], str):
        content, rest = parts[0], parts[1:]
    if rest:
        fields["parts"] = rest
    return TextMessage(content, **fields)


def message_parts(message: Any) -> tuple[Any, ...] | None:
    """The content items of *message* after its content: its ``parts`` (``None`` when it has none).

    A part given as a message of its own is its one item.  The items are not checked here (the providers
    name a wrong one with the agent and the message's position).
    """
    if isinstance(message, (ImagePart, DocumentPart)):
        return (message,)
    parts = message.get("parts") if isinstance(message, Message) else None
    if parts is None:
        return None
    return parts if isinstance(parts, tuple) else (parts,)


def data_url(media_type: str, data: bytes) -> str:
    """``data:<media_type>;base64,<data>``."""
    return f"data:{media_type};base64,{base64_text(data)}"


def base64_text(data: bytes) -> str:
    """The base64 text of *data* (what both providers take)."""
    return base64.b64encode(data).decode("ascii")


def cache_control_value(value: Any, where: str) -> dict[str, Any] | None:
    """The Anthropic ``cache_control`` object for a marker value (``None``: no breakpoint).

    ``True`` is ``{"type": "ephemeral"}``; a mapping is ``{"type": "ephemeral"}`` with an optional ``"ttl"``
    of ``"5m"`` or ``"1h"``; ``False`` / ``None`` mark nothing.

    Raises:
        TypeError, ValueError: any other value; the message starts with *where* (the option or field).

    """
    if value is None or value is False:
        return None
    if value is True:
        return {"type": "ephemeral"}
    if isinstance(value, (Mapping, FrozenDict)):
        marker = dict(value)
        if marker.get("type", "ephemeral") != "ephemeral":
            raise ValueError(
                f"{where}: the cache_control type must be 'ephemeral', got {marker.get('type')!r}"
            )
        unknown = sorted(set(marker) - {"type", "ttl"})
        if unknown:
            raise ValueError(f"{where}: unknown cache_control key(s) {', '.join(map(repr, unknown))}")
        if "ttl" in marker and marker["ttl"] not in _CACHE_TTLS:
            raise ValueError(f"{where}: the cache_control ttl must be '5m' or '1h', got {marker['ttl']!r}")
        return {"type": "ephemeral", **({"ttl": marker["ttl"]} if "ttl" in marker else {})}
    raise TypeError(
        f"{where} must be True, False, None or a mapping like {{'type': 'ephemeral', 'ttl': '1h'}}, "
        f"got {type(value).__name__}"
    )


def part_error(agent: str, provider: str, position: int, where: str, reason: str) -> LLMError:
    """The error of an input the provider cannot take: names the agent, the input message and the part."""
    return LLMError(
        f"agent {agent!r}: input message {position}, {where}: {reason}; nothing was sent", provider=provider
    )


def describe_part(item: Any) -> str:
    """A short description of a ``parts`` item for errors (never its data)."""
    if isinstance(item, (ImagePart, DocumentPart)):
        return repr(item)[:200]
    return f"a {type(item).__name__}"


def checked_parts(
    message: Any, role: str, *, agent: str, provider: str, position: int
) -> tuple[Part, ...] | None:
    """The ``parts`` items of input message *position*, checked: ``None`` when it has none.

    Raises:
        LLMError: parts on a message that is not a user turn, or an item that is not a ``str``,
            :class:`ImagePart` or :class:`DocumentPart` (naming the agent, the message and the item).

    """
    items = message_parts(message)
    if items is None:
        return None
    if role != "user" and items:
        raise part_error(
            agent,
            provider,
            position,
            f"parts ({describe_part(items[0])} ...)",
            f"only user messages can carry parts, this one has role {role!r}",
        )
    for index, item in enumerate(items):
        if not isinstance(item, (str, ImagePart, DocumentPart)):
            raise part_error(
                agent,
                provider,
                position,
                f"parts[{index}]",
                f"{describe_part(item)} is not a str, ImagePart or DocumentPart",
            )
    return items
