"""MiniAgents: multi-agent systems on trio/anyio structured concurrency.

Agents are ``async def`` functions decorated with :func:`miniagent`; they read ``ctx.messages`` and
``ctx.reply(...)``.  Messages are immutable; promises stream and replay.  Every call runs in a task group
supervised by the :class:`MiniAgents` context, on trio or asyncio.
"""

from miniagents._agents import AgentCall, CallStatistics, InteractionContext, MiniAgent, miniagent
from miniagents._buffer import BufferStatistics
from miniagents._chain import AWAIT, CLEAR, achain_loop
from miniagents._context import ContextAttachment, ContextStatistics, MiniAgents, Store
from miniagents._exceptions import (
    AgentCallCancelledError,
    MiniAgentsError,
    NoActiveContextError,
    SequenceClosedError,
    SequenceCycleError,
    StopLoop,
    WrongEventLoopError,
)
from miniagents._frozen import FrozenDict, share_by_reference
from miniagents._limits import (
    LimiterClock,
    LLMRequestInfo,
    RateKeyStatistics,
    RateLease,
    RateLimit,
    RateLimiter,
    api_key_fingerprint,
)
from miniagents._messages import ErrorMessage, Message, TextMessage
from miniagents._observe import CallObserver
from miniagents._promises import MessagePromise, MessageWriter, Promise, StreamedPromise, StreamWriter
from miniagents._records import CallOutcome, CallRecord
from miniagents._sequence import MessageSequencePromise, MessageSequenceWriter, MessageType

__version__ = "0.1.0"

__all__ = [
    "AWAIT",
    "CLEAR",
    "AgentCall",
    "AgentCallCancelledError",
    "BufferStatistics",
    "CallObserver",
    "CallOutcome",
    "CallRecord",
    "CallStatistics",
    "ContextAttachment",
    "ContextStatistics",
    "ErrorMessage",
    "FrozenDict",
    "InteractionContext",
    "LLMRequestInfo",
    "LimiterClock",
    "Message",
    "MessagePromise",
    "MessageSequencePromise",
    "MessageSequenceWriter",
    "MessageType",
    "MessageWriter",
    "MiniAgent",
    "MiniAgents",
    "MiniAgentsError",
    "NoActiveContextError",
    "Promise",
    "RateKeyStatistics",
    "RateLease",
    "RateLimit",
    "RateLimiter",
    "SequenceClosedError",
    "SequenceCycleError",
    "StopLoop",
    "Store",
    "StreamWriter",
    "StreamedPromise",
    "TextMessage",
    "WrongEventLoopError",
    "__version__",
    "achain_loop",
    "api_key_fingerprint",
    "miniagent",
    "share_by_reference",
]
