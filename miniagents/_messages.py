"""Immutable messages: :class:`Message`, :class:`TextMessage`, :class:`ErrorMessage`.

A message is a frozen attrs class.  ``content`` is always a ``str``; any other field is either declared by a
subclass (the attrs way) or passed as an extra keyword to :class:`Message` itself.  Every field value is deeply
frozen at construction (see :func:`miniagents._frozen.freeze`), which is what lets many agents share one message
object concurrently without copies.

Identity: ``msg.hash_key`` is a SHA-256 over a canonical JSON form of the message; it depends only on the
class and the field values, so it is the same in every process and across restarts (persistence keys on it).
The canonical form agrees with ``==``: values that compare equal (``1``, ``1.0``, ``True``, ``Decimal("1")``;
the same instant in two time zones) encode the same, so equal messages always have equal keys.

Pickling and ``copy`` carry the class and the field values only, never the state a message gathers in one
process (its cached key, the mark of the persistence run that queued it).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import keyword
from collections.abc import AsyncIterable, AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs

from miniagents._encoding import (
    canonical_json,
    class_path,
    decode_value,
    encode_value,
    import_qualified,
    install_message_codec,
)
from miniagents._frozen import EMPTY, FrozenDict, freeze, treat_as_frozen

_M = TypeVar("_M", bound="Message")

_CLASS_KEY = "class"
_BASE_FIELDS = frozenset({"content", "_extra", "_hash_key_cache", "_persisted_in"})
_REGISTRY: dict[str, type[Message]] = {}
_DECLARED_FIELDS: dict[type[Message], tuple[str, ...]] = {}


class _ContentOnlyPrefixes(dict[type, "str | None"]):
    """``cls -> '{"class":"module:QualName","content":'`` for classes that declare no field (else ``None``).

    The canonical JSON of a content-only message is this prefix, the content as an ASCII JSON string (exactly
    what ``json.dumps`` writes) and ``}``: the hot path of :attr:`Message.hash_key` builds it without a dict.
    """

    def __missing__(self, cls: type[Message]) -> str | None:
        prefix = None if _declared_fields(cls) else f'{{"class":{json.dumps(class_path(cls))},"content":'
        self[cls] = prefix
        return prefix


_CONTENT_ONLY_PREFIX = _ContentOnlyPrefixes()
_json_string = json.encoder.encode_basestring_ascii  # what json.dumps(str) calls (ensure_ascii=True)
_sha256 = hashlib.sha256
_set_slot = object.__setattr__


class _NoContent:
    """The default of ``content=`` in :class:`Message`'s constructor: tells "not given" from ``content=""``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<no content given>"


_NO_CONTENT: Any = _NoContent()


def _positional_content(cls: type[Message], args: tuple[Any, ...], also_by_keyword: bool) -> Any:
    """Return the content given positionally to ``cls(...)``, or raise ``TypeError`` naming the problem."""
    name = cls.__name__
    if len(args) > 1:
        raise TypeError(
            f"{name}() takes the content as its only positional argument, but {len(args)} positional "
            "arguments were given; pass the other fields by keyword"
        )
    if also_by_keyword:
        raise TypeError(
            f"{name}() got the content both as a positional argument and as content=; give it once"
        )
    return args[0]


def _accept_positional_content(cls: type[Message]) -> None:
    """Let *cls*'s own ``__init__`` take the content positionally, if it takes ``content`` keyword-only only.

    That is the ``__init__`` attrs generates for ``@attrs.frozen(kw_only=True)`` subclasses:
    ``(self, *, content='', extra=..., priority=0)``.  It is wrapped, and the wrapper's signature says
    ``(self, content='', *, extra=..., priority=0)``.  An inherited ``__init__`` (``init=False``) already
    accepts it; an ``__init__`` with positional parameters of its own is left as it is.
    """
    init = cls.__dict__.get("__init__")
    if init is None or not callable(init):
        return
    try:
        signature = inspect.signature(init)
    except (TypeError, ValueError):  # pragma: no cover - a C-level or otherwise opaque __init__
        return
    params = list(signature.parameters.values())[1:]  # after self
    content = signature.parameters.get("content")
    if (
        content is None
        or content.kind is not inspect.Parameter.KEYWORD_ONLY
        or any(
            p.kind is not inspect.Parameter.KEYWORD_ONLY and p.kind is not inspect.Parameter.VAR_KEYWORD
            for p in params
        )
    ):
        return
    wrapped: Any = init

    def __init__(self: Message, *args: Any, **kwargs: Any) -> None:
        if args:
            kwargs["content"] = _positional_content(type(self), args, "content" in kwargs)
        wrapped(self, **kwargs)

    functools.update_wrapper(__init__, init)
    params.remove(content)
    first = list(signature.parameters.values())[:1]
    __init__.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*first, content.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD), *params]
    )
    cls.__init__ = __init__  # type: ignore[method-assign]


@attrs.frozen(kw_only=True, init=False, repr=False)
class Message:
    """An immutable message.

    ``Message(content="hi", role="user", tags=["a"])`` keeps ``role`` and ``tags`` as extra fields, reachable
    as attributes (``msg.tags == ("a",)``).  They may also be given as a mapping, ``extra={"role": "user"}``,
    as every message class takes them (so ``attrs.evolve`` keeps them); ``extra`` itself is not a field name.
    Subclasses declare typed fields the attrs way::

        @attrs.frozen(kw_only=True)
        class Note(Message):
            priority: int = 0

    The content may also be given as the one positional argument, for every message class (subclasses
    declared later included): ``TextMessage("hi")`` is ``TextMessage(content="hi")``, ``Note("hi",
    priority=1)`` is ``Note(content="hi", priority=1)``; every other field is keyword-only.  Two positional
    arguments, or the content given both ways, raise ``TypeError`` naming the class.  (A subclass whose
    ``__init__`` takes positional parameters of its own, e.g. one declared with ``@attrs.frozen`` without
    ``kw_only=True``, keeps exactly that signature.)

    Guarantees: values are deeply frozen (``dict`` → :class:`FrozenDict`, ``list`` → ``tuple``, ``set`` →
    ``frozenset``) and later mutation of the caller's objects changes nothing; a value that cannot be frozen
    raises ``TypeError`` naming its field path; ``str(msg)`` is ``msg.content``; equal messages of the same class
    have equal :attr:`hash_key`; a pickled or copied message equals the original (see :meth:`__reduce__`).
    """

    content: str = ""
    _extra: FrozenDict[str, Any] = attrs.field(default=EMPTY, alias="extra", repr=False)
    _hash_key_cache: str | None = attrs.field(default=None, init=False, eq=False, hash=False, repr=False)
    # The persistence run (one per MiniAgents activation) that already queued this very object: forwarding a
    # message through many agents then costs one identity check per hop, not a hash-set lookup.
    _persisted_in: int = attrs.field(default=0, init=False, eq=False, hash=False, repr=False)

    def __init__(self, *args: str, content: str = _NO_CONTENT, **extra: Any) -> None:
        # ``*args`` holds the optional positional content: ``TextMessage("hi")``.  The keyword form is the hot
        # path: it pays one truth test of the (shared) empty tuple and one identity test.
        if args:
            content = _positional_content(type(self), args, content is not _NO_CONTENT)
        elif content is _NO_CONTENT:
            content = ""
        if extra and "extra" in extra:
            extra = _merged_extras(type(self), extra)
        self.__attrs_init__(content=content, extra=_frozen_extras(type(self), extra) if extra else EMPTY)

    def __attrs_post_init__(self) -> None:
        if type(self.content) is not str:
            if not isinstance(self.content, str):
                raise TypeError(
                    f"{type(self).__name__}.content must be str, got {type(self.content).__name__}"
                )
            object.__setattr__(self, "content", str(self.content))
        declared = _DECLARED_FIELDS.get(type(self))
        if declared is None:
            declared = _declared_fields(type(self))
        for name in declared:
            value = getattr(self, name)
            frozen = freeze(value, name)
            if frozen is not value:
                object.__setattr__(self, name, frozen)
        extra = self._extra
        if extra is not EMPTY and type(self).__init__ is not Message.__init__:
            # A subclass with an attrs-generated __init__ got ``extra=`` as given: a plain mapping, maybe an
            # empty one (which must become EMPTY too, not stay a mutable, unhashable dict).
            _check_extra_mapping(type(self), extra)
            object.__setattr__(self, "_extra", _frozen_extras(type(self), dict(extra)) if extra else EMPTY)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[class_path(cls)] = cls

    @classmethod
    def __attrs_init_subclass__(cls) -> None:
        # Called by attrs (>= 24.1) once a subclass is fully built (after __init_subclass__, which for a
        # slotted class runs while attrs is still building it): its generated __init__ is final here.
        _accept_positional_content(cls)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle (and ``copy.copy`` / ``copy.deepcopy``) the fields only, never the per-process state.

        The unpickled or copied message equals the original and has the same :attr:`hash_key`, but carries
        neither the cached key (recomputed by the code of the process that reads it) nor the mark of the
        persistence run that already queued the original (a run of another process could have the same
        number and would skip the message).  Applies to every subclass (attrs' own ``__getstate__`` is not
        used).
        """
        cls = type(self)
        names = _PICKLED_FIELDS.get(cls)
        if names is None:
            names = _pickled_fields(cls)
        return (_restore_message, (cls, {name: getattr(self, name) for name in names}))

    if TYPE_CHECKING:
        # For type checkers only: extra fields are attributes of any name (``msg.tags``).  At run time they
        # are descriptors on the class (see ``_ExtraField``): a ``__getattr__`` would put every attribute read
        # of every message on CPython's slow attribute hook.
        def __getattr__(self, name: str) -> Any: ...

    def __str__(self) -> str:
        return self.content

    def __repr__(self) -> str:
        parts = [f"content={self.content!r}"]
        parts.extend(f"{name}={getattr(self, name)!r}" for name in _declared_fields(type(self)))
        parts.extend(f"{name}={value!r}" for name, value in self._extra.items())
        return f"{type(self).__name__}({', '.join(parts)})"

    # ----------------------------------------------------------------------------------------------------------
    @property
    def extra_fields(self) -> FrozenDict[str, Any]:
        """The fields given as extra keywords (not declared by the class)."""
        return self._extra

    def fields(self) -> FrozenDict[str, Any]:
        """All fields (``content``, declared, extra) by name, in that order."""
        data: dict[str, Any] = {"content": self.content}
        for name in _declared_fields(type(self)):
            data[name] = getattr(self, name)
        data.update(self._extra)
        return FrozenDict(data)

    def get(self, name: str, default: Any = None) -> Any:
        """Return field *name*, or *default* when the message has no such field."""
        try:
            return getattr(self, name)
        except AttributeError:
            return default

    def sub_messages(self) -> Iterator[Message]:
        """Yield the messages nested in this message's fields (not recursively into them), in field order."""
        declared = _declared_fields(type(self))
        if not declared and not self._extra:
            return iter(())  # content only: the common case, on the persistence path
        return self._iter_sub_messages(declared)

    def _iter_sub_messages(self, declared: tuple[str, ...]) -> Iterator[Message]:
        for name in declared:
            yield from _iter_messages(getattr(self, name))
        for value in self._extra.values():
            yield from _iter_messages(value)

    @property
    def hash_key(self) -> str:
        """A stable SHA-256 hex digest of the class and field values (same in every process).

        Messages that compare equal have equal keys; any ``str`` content is supported (lone surrogates too).
        """
        key = self._hash_key_cache
        if key is None:
            prefix = _CONTENT_ONLY_PREFIX[type(self)]
            extra = self._extra
            if prefix is not None and (extra is EMPTY or not extra):
                # Content only: the canonical JSON, written directly (keys in sorted order).
                canonical = prefix + _json_string(self.content) + "}"
            else:
                canonical = canonical_json(self._encode_fields(canonical=True))
            key = _sha256(canonical.encode("ascii")).hexdigest()
            _set_hash_key_cache(self, key)
        return key

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe ``dict`` from which :meth:`from_dict` restores an equal message.

        Plain JSON values stay as they are; other values (tuples become lists, and ``bytes``, dates, UUIDs,
        decimals, enums, paths, frozensets, non-string-keyed mappings and nested messages) are tagged objects
        ``{"$t": <type>, ...}``.
        """
        return self._encode_fields(canonical=False)

    def _encode_fields(self, *, canonical: bool) -> dict[str, Any]:
        data: dict[str, Any] = {_CLASS_KEY: class_path(type(self))}
        for name, value in self.fields().items():
            data[name] = encode_value(value, canonical)
        return data

    @classmethod
    def from_dict(cls: type[_M], data: dict[str, Any]) -> _M:
        """Restore a message from :meth:`to_dict` output, as the class it names.

        Raises:
            ValueError: the class is unknown or not a subclass of *cls*.

        """
        data = dict(data)
        path = data.pop(_CLASS_KEY, None)
        target: type[Message] = cls if path is None else _resolve_class(path)
        if not issubclass(target, cls):
            raise ValueError(f"{path!r} is not a {cls.__name__} subclass")
        values = {name: decode_value(value) for name, value in data.items()}
        content = values.pop("content", "")
        return build_message(target, content, values)

    @classmethod
    def stream(cls, tokens: AsyncIterable[str], /, **fields: Any) -> StreamedMessage:
        """Return a :class:`MessagePromise` whose tokens stream from *tokens* while they are produced.

        *tokens* is pumped by a child task of the current agent call (or of the current :class:`MiniAgents`
        context outside any call).  The promise resolves to ``cls(content="".join(tokens), **fields)``.

        Raises:
            TypeError: at once, when *tokens* is not an async iterable (e.g. a ``str`` or a list); later, in
                the promise, when it yields something other than ``str``.

        """
        if _stream_factory is None:  # pragma: no cover - miniagents/__init__ imports the channels
            raise RuntimeError("import miniagents first: the message channels are not loaded")
        return _stream_factory(tokens, cls, fields)


class StreamedMessage(Protocol):
    """What :meth:`Message.stream` returns: a :class:`~miniagents.MessagePromise` (its tokens, then its message).

    Declared here because messages sit below the channels in the layer rule (see ``miniagents/__init__.py``).
    """

    def __aiter__(self) -> AsyncIterator[str]:
        """Replay the tokens from the first one, then follow the stream."""

    def __await__(self) -> Generator[Any, None, Message]:
        """Wait for the whole message."""


#: Set by the channels layer (``_promises``) when it is imported: how :meth:`Message.stream` makes a promise.
_stream_factory: Callable[[AsyncIterable[str], type[Message], dict[str, Any]], StreamedMessage] | None = None


def install_stream_factory(
    factory: Callable[[AsyncIterable[str], type[Message], dict[str, Any]], StreamedMessage],
) -> None:
    """Let :meth:`Message.stream` make its promises with *factory* (called once, by ``_promises``)."""
    global _stream_factory
    _stream_factory = factory


# What help() and inspect.signature() show for Message, TextMessage, ErrorMessage (``*args`` takes one at most).
Message.__init__.__signature__ = inspect.signature(Message.__init__).replace(  # type: ignore[attr-defined]
    parameters=[
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("content", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="", annotation="str"),
        inspect.Parameter("extra", inspect.Parameter.VAR_KEYWORD, annotation="Any"),
    ]
)


@attrs.frozen(kw_only=True, init=False, repr=False)
class TextMessage(Message):
    """A message whose meaning is its text; what a ``str`` reply becomes."""


@attrs.frozen(kw_only=True, init=False, repr=False)
class ErrorMessage(Message):
    """An agent failure delivered as a message (``errors_as_messages=True``): content ``"ValueError: boom"``."""


def text_message(content: str) -> TextMessage:
    """Return ``TextMessage(content=content)`` for a plain ``str`` *content*, without the general constructor.

    Every ``str`` sent or replied becomes one of these: the hot path of forwarding text.  The result is the
    same object the constructor makes (all four slots set to the same values); *content* must be exactly a
    ``str`` (not a subclass: the constructor converts those).
    """
    message = _new_object(TextMessage)
    _set_content(message, content)
    _set_extra(message, EMPTY)
    _set_hash_key_cache(message, None)
    set_persisted_in(message, 0)
    return message


_new_object = object.__new__
# The slots' own setters: half the cost of ``object.__setattr__`` on a class that overrides ``__setattr__`` (attrs'
# frozen one), which looks the name up on the type first.  For the hot paths only.
_set_content = Message.__dict__["content"].__set__
_set_extra = Message.__dict__["_extra"].__set__
_set_hash_key_cache = Message.__dict__["_hash_key_cache"].__set__
set_persisted_in: Callable[[Message, int], None] = Message.__dict__["_persisted_in"].__set__


_RUNTIME_SLOTS = frozenset({"_hash_key_cache", "_persisted_in"})
_PICKLED_FIELDS: dict[type[Message], tuple[str, ...]] = {}


def _pickled_fields(cls: type[Message]) -> tuple[str, ...]:
    names = tuple(a.name for a in attrs.fields(cls) if a.name not in _RUNTIME_SLOTS)
    _PICKLED_FIELDS[cls] = names
    return names


def _restore_message(cls: type[_M], state: dict[str, Any]) -> _M:
    """Rebuild a message pickled by :meth:`Message.__reduce__`, with fresh per-process state.

    The field values were frozen when the original was built; they are set as they are (the constructor and
    ``__attrs_post_init__`` do not run again, as with attrs' own unpickling).

    Raises:
        TypeError: *cls* is not a message class, or *state* does not hold exactly its fields (the class
            changed between pickling and unpickling).

    """
    if not (isinstance(cls, type) and issubclass(cls, Message)):
        raise TypeError(f"cannot unpickle {cls!r} as a message: not a Message class")
    names = _PICKLED_FIELDS.get(cls)
    if names is None:
        names = _pickled_fields(cls)
    if len(state) != len(names) or not all(name in state for name in names):
        missing = sorted(set(names) - set(state))
        unknown = sorted(set(state) - set(names))
        raise TypeError(
            f"cannot unpickle a message of class {class_path(cls)!r}: its pickled fields do not match the "
            f"class's (missing {missing}, unknown {unknown})"
        )
    message = _new_object(cls)
    for name in names:
        _set_slot(message, name, state[name])
    extra = state.get("_extra")
    if extra is not None:
        if not extra:
            _set_slot(message, "_extra", EMPTY)  # the shared empty one: the fast paths test it by identity
        else:
            for name in extra:
                _check_extra_name(cls, name)
            _expose_extra_fields(extra)
    _set_hash_key_cache(message, None)
    set_persisted_in(message, 0)
    return message


# ----------------------------------------------------------------------------------------------------------------
def build_message(cls: type[_M], content: str, fields: dict[str, Any]) -> _M:
    """Construct ``cls`` from *content* and a mix of declared and extra *fields*.

    :class:`Message`'s own ``__init__`` takes extras as keywords; subclasses with an attrs-generated
    ``__init__`` take declared fields as keywords and the rest as ``extra=``.
    """
    if cls.__init__ is Message.__init__:
        return cls(content=content, extra=fields) if fields else cls(content=content)
    declared = _declared_fields(cls)
    own = {k: v for k, v in fields.items() if k in declared}
    if len(own) != len(fields):
        own["extra"] = {k: v for k, v in fields.items() if k not in own}
    return cls(content=content, **own)


def _declared_fields(cls: type[Message]) -> tuple[str, ...]:
    names = _DECLARED_FIELDS.get(cls)
    if names is None:
        names = tuple(a.name for a in attrs.fields(cls) if a.name not in _BASE_FIELDS)
        _DECLARED_FIELDS[cls] = names
    return names


def _merged_extras(cls: type[Message], keywords: dict[str, Any]) -> dict[str, Any]:
    """The extra fields of ``cls(..., extra={...}, **keywords)``, the mapping and the keywords together.

    ``extra=`` holds a mapping of extra fields, as it does for subclasses with an attrs ``__init__`` (and as
    ``attrs.evolve`` passes them); a name in both raises ``TypeError``.
    """
    keywords = dict(keywords)
    mapping = keywords.pop("extra")
    if mapping is None:
        return keywords
    _check_extra_mapping(cls, mapping)
    both = sorted(set(mapping) & set(keywords))
    if both:
        raise TypeError(f"{cls.__name__}: extra field(s) {both} given both as keywords and in extra=")
    return {**mapping, **keywords}


def _check_extra_mapping(cls: type[Message], value: object) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{cls.__name__}: extra= takes a mapping of field names to values, got {type(value).__name__}"
        )


def _frozen_extras(cls: type[Message], values: Mapping[str, Any]) -> FrozenDict[str, Any]:
    """Check the names of the extra fields *values* for *cls*, freeze the values and expose the names."""
    for name in values:
        _check_extra_name(cls, name)
    frozen = FrozenDict({name: freeze(value, name) for name, value in values.items()})
    _expose_extra_fields(frozen)  # only once the values froze: a failed construction leaves no attribute
    return frozen


def _check_extra_name(cls: type[Message], name: str) -> None:
    if (
        not isinstance(name, str)
        or not name.isidentifier()
        or keyword.iskeyword(name)
        or name.startswith("_")
    ):
        raise TypeError(f"{cls.__name__}: {name!r} is not a valid field name")
    if name == "extra":
        raise TypeError(
            f"{cls.__name__}: 'extra' is not a field name: extra= takes the mapping of extra fields"
        )
    if hasattr(cls, name):
        raise TypeError(f"{cls.__name__}: field {name!r} would shadow {cls.__name__}.{name}")


class _ExtraField:
    """The attribute ``Message.<name>`` for an extra field *name*: reads ``message.extra_fields[name]``.

    Extra fields are per message, but an attribute lookup that fails into ``__getattr__`` would cost every
    attribute read of every message (CPython then skips its specialised slot reads).  So the first message with
    an extra field *name* puts one of these on :class:`Message`, and every later message reads it like any
    other class attribute.  A message without that field raises ``AttributeError`` naming it, and so does the
    class itself (``hasattr(Message, name)`` is false).  Past
    ``_MAX_EXTRA_FIELD_NAMES`` distinct names (extras named by data, say) new names go through a
    ``__getattr__`` instead, so the class does not grow without bound.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, message: Message | None, owner: type | None = None) -> Any:
        if message is None:
            # On the class it is not there: ``hasattr(Message, name)`` stays what it was before any message used
            # the name (and a subclass that declares the name as a field or method is not taken to shadow it).
            found = _inherited_past_message(owner, self.name, None)
            if found is _NOT_INHERITED:
                owner_name = getattr(owner, "__name__", "Message")
                raise AttributeError(
                    f"type object {owner_name!r} has no attribute {self.name!r}", name=self.name, obj=owner
                )
            return found
        try:
            return message._extra[self.name]
        except KeyError:
            pass
        found = _inherited_past_message(type(message), self.name, message)
        if found is _NOT_INHERITED:
            raise _no_field(message, self.name)
        return found

    def __repr__(self) -> str:
        return f"<extra field {self.name!r} of messages>"


_NOT_INHERITED: Any = object()


def _inherited_past_message(owner: type | None, name: str, message: Message | None) -> Any:
    """*name* as *owner* inherits it from a base after :class:`Message` in its MRO (a mixin), bound to *message*.

    The ``_ExtraField`` on ``Message`` comes before those bases in the MRO, so without this a mixin's method
    or property named like an extra field of some other message would vanish from every class using it.
    Returns ``_NOT_INHERITED`` when no such base has the name.
    """
    mro: tuple[type, ...] = getattr(owner, "__mro__", ())
    try:
        after = mro.index(Message) + 1
    except ValueError:
        return _NOT_INHERITED
    for base in mro[after:]:
        attribute = base.__dict__.get(name, _NOT_INHERITED)
        if attribute is not _NOT_INHERITED:
            get = getattr(type(attribute), "__get__", None)
            return attribute if get is None else get(attribute, message, owner)
    return _NOT_INHERITED


_MAX_EXTRA_FIELD_NAMES = 4096
_exposed_extra_fields: set[str] = set()


def _expose_extra_fields(names: Iterable[str]) -> None:
    for name in names:
        if name not in _exposed_extra_fields:
            if len(_exposed_extra_fields) >= _MAX_EXTRA_FIELD_NAMES:
                if "__getattr__" not in Message.__dict__:
                    Message.__getattr__ = _extra_field_fallback  # type: ignore[method-assign]
                return
            # The attribute first, then the note that it is there: another thread that sees the note reads the
            # attribute at once (two threads may both set it: the same descriptor, harmless).
            setattr(Message, name, _ExtraField(name))
            _exposed_extra_fields.add(name)


def _extra_field_fallback(message: Message, name: str) -> Any:
    """``Message.__getattr__`` once there are too many extra field names to give each its own attribute."""
    try:
        extra = object.__getattribute__(message, "_extra")
    except AttributeError:
        raise AttributeError(name) from None
    try:
        return extra[name]
    except KeyError:
        raise _no_field(message, name) from None


def _no_field(message: Message, name: str) -> AttributeError:
    """The error of reading extra field *name* of a message that has none of that name."""
    return AttributeError(f"{type(message).__name__!r} message has no field {name!r}", name=name, obj=message)


def _iter_messages(value: Any) -> Iterator[Message]:
    if isinstance(value, Message):
        yield value
    elif isinstance(value, tuple):
        for item in value:
            yield from _iter_messages(item)
    elif isinstance(value, FrozenDict):
        for item in value.values():
            yield from _iter_messages(item)
    elif isinstance(value, frozenset):
        for item in sorted(value, key=lambda v: canonical_json(encode_value(v, True))):
            yield from _iter_messages(item)


def _resolve_class(path: str) -> type[Message]:
    cls = _REGISTRY.get(path)
    if cls is None:
        try:
            import_qualified(path)
        except (ImportError, AttributeError, ValueError):
            raise ValueError(f"unknown message class {path!r}") from None
        cls = _REGISTRY.get(path)
        if cls is None:
            raise ValueError(f"{path!r} is not a Message class")
    return cls


_REGISTRY[class_path(Message)] = Message
treat_as_frozen(Message)
install_message_codec(Message, Message.from_dict)  # nested messages in field values
