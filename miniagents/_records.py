"""What the runtime tells persistence about each finished call: :class:`CallRecord`."""

from __future__ import annotations

from typing import Any, Literal

import attrs

from miniagents._frozen import FrozenDict
from miniagents._messages import Message
from miniagents._secrets import REDACTED, is_secret_name

CallOutcome = Literal["completed", "failed", "cancelled"]


def redact(value: Any) -> Any:
    """Return *value* with every mapping entry whose key is a secret name (:func:`is_secret_name`) replaced."""
    if isinstance(value, FrozenDict):
        return FrozenDict(
            {k: REDACTED if isinstance(k, str) and is_secret_name(k) else redact(v) for k, v in value.items()}
        )
    if isinstance(value, tuple):
        return tuple(redact(v) for v in value)
    return value


@attrs.frozen(kw_only=True)
class CallFields:
    """The fields of a finished agent call that a store keeps (their meaning: see :class:`CallRecord`).

    The base of :class:`CallRecord` (which adds the messages) and of ``miniagents.persistence.StoredCall``
    (which reads them back), so that both declare the same fields, in the same order.
    """

    run_id: str
    call_id: int
    parent_call_id: int | None
    agent_alias: str
    kwargs: FrozenDict[str, Any]
    started_at: float
    finished_at: float
    outcome: CallOutcome
    error_type: str | None = None
    error: str | None = None


@attrs.frozen(kw_only=True)
class CallRecord(CallFields):
    """A finished agent call, as handed to ``on_call_finished`` handlers (and stores).

    ``run_id`` identifies the ``MiniAgents`` context (a fresh UUID each time it is entered); ``call_id`` is
    unique within the process and ``parent_call_id`` names the call that started this one (``None`` for calls
    started outside any agent).  ``input_messages`` and ``reply_messages`` are the messages of the call's input
    and replies, in order, that had resolved when the call ended; every one of them was passed to the
    ``on_persist_message`` handlers before this record.  ``kwargs`` are the call's kwargs with secrets
    redacted: any entry, at any depth, whose name looks like an API key, token, password or authorization
    header holds ``"<redacted>"`` instead, so records can be persisted safely.
    """

    input_messages: tuple[Message, ...] = ()
    reply_messages: tuple[Message, ...] = ()
