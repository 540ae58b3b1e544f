"""The exceptions MiniAgents raises itself.

Errors raised *by agents* reach consumers unchanged (same type, same object), with a note naming the agent
and the chain of calls that led to it; the classes here are for what the runtime itself has to say::

    MiniAgentsError
    ├── NoActiveContextError      no `MiniAgents` context is active where one is needed
    ├── WrongEventLoopError       a context used from a thread or event loop other than the one it runs in
    ├── SequenceClosedError       sending to a call input / reply sequence that has already finished
    ├── SequenceCycleError        sending a sequence into itself (an agent replying its own replies)
    └── AgentCallCancelledError   the call (or stream) that would have produced this was cancelled
"""

from __future__ import annotations


class MiniAgentsError(Exception):
    """Base class of the errors raised by the MiniAgents runtime itself."""


class NoActiveContextError(MiniAgentsError, RuntimeError):
    """Raised when an operation needs a running ``MiniAgents`` context and none is active."""


class WrongEventLoopError(MiniAgentsError, RuntimeError):
    """Raised when a ``MiniAgents`` context is used from a thread or event loop other than the one it runs in.

    A context's task groups, buffers and events belong to the event loop that entered it; another thread (or a
    second event loop) touching them would corrupt them silently.  Hand work to the context's loop instead,
    e.g. with ``anyio.from_thread.run``.
    """


class SequenceClosedError(MiniAgentsError, RuntimeError):
    """Raised when messages are sent to an input or reply sequence that has already finished."""


class SequenceCycleError(MiniAgentsError, ValueError):
    """Raised when a sequence is sent into itself, e.g. ``ctx.reply(ctx.call.reply_sequence())``.

    Such a sequence would feed on the messages it appends and grow without end; it is refused at the send.
    """


class AgentCallCancelledError(MiniAgentsError):
    """Raised to consumers of a call (or a streamed message) that was cancelled before it finished.

    Cancellation is not a failure: a cancelled call is never reported again when its ``MiniAgents`` block
    exits.  Consumers see the messages produced before the cancellation, then this error.
    """


class StopLoop(Exception):
    """Raise it in an agent to end the ``achain_loop`` it runs in.

    It is a signal, not a failure: it reaches consumers like an error (so the loop sees it wherever it
    surfaces) but is never reported again when the ``MiniAgents`` block exits.
    """
