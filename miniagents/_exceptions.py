"""The exceptions MiniAgents raises itself.

Errors raised *by agents* reach consumers unchanged (same type, same object), with a note naming the agent
and the chain of calls that led to it; the classes here are for what the runtime itself has to say::

    MiniAgentsError
    ├── NoActiveContextError      no `MiniAgents` context is active where one is needed
    ├── SequenceClosedError       sending to a call input / reply sequence that has already finished
    └── AgentCallCancelledError   the call (or stream) that would have produced this was cancelled
"""

from __future__ import annotations


class MiniAgentsError(Exception):
    """Base class of the errors raised by the MiniAgents runtime itself."""


class NoActiveContextError(MiniAgentsError, RuntimeError):
    """Raised when an operation needs a running ``MiniAgents`` context and none is active."""


class SequenceClosedError(MiniAgentsError, RuntimeError):
    """Raised when messages are sent to an input or reply sequence that has already finished."""


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
