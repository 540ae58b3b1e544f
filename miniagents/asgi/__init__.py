"""Serving agents from web apps: Server-Sent Events over plain ASGI, with no web framework dependency.

* :class:`EventStreamResponse` — an ASGI application streaming a call's replies as SSE (``token``,
  ``message``, then ``done`` or ``error``); the call is cancelled when the client disconnects.
* :class:`MiniAgentsMiddleware` — runs every request attached to an app-wide ``MiniAgents`` context entered in
  the lifespan (:meth:`miniagents.MiniAgents.attach`).
* :func:`reply_events` and :class:`ServerSentEvent` — the events themselves, for frameworks with their own
  streaming responses.

See the README section "Serving agents from a web app".
"""

from miniagents._publish import publish
from miniagents.asgi._app import EventStreamResponse, MiniAgentsMiddleware
from miniagents.asgi._events import ServerSentEvent, error_details, error_payload, reply_events

__all__ = [
    "EventStreamResponse",
    "MiniAgentsMiddleware",
    "ServerSentEvent",
    "error_details",
    "error_payload",
    "reply_events",
]

publish(globals())  # the public names report this module (see miniagents._publish)
