"""MiniAgents: multi-agent systems on trio/anyio structured concurrency.

Agents are ``async def`` functions decorated with :func:`miniagent`; they read ``ctx.messages`` and
``ctx.reply(...)``.  Messages are immutable; promises stream and replay.  Every call runs in a task group
supervised by the :class:`MiniAgents` context, on trio or asyncio.

The layer rule.  A module imports only modules of its own layer or of the layers below it (``_x`` means
``miniagents._x``; a package stands for all of its modules), and no import, at module level, inside a
function or under ``TYPE_CHECKING``, forms a cycle.  The lower layers name Protocols (``_scope.ContextLike``,
``_scope.CallLike``) instead of the concrete classes above them; the core reaches a plug-in only through the
call-observer hook (``_observe``: the tracing plug-in is looked up by name).  ``tests/core/test_layers.py`` walks
every import with ``ast`` and enforces this table, and checks that ``docs/architecture.md`` shows the same::

    layer  what                      modules
    10     plug-ins on the others    miniagents.testing  miniagents.asgi
    9      plug-ins on llms          miniagents.tracing  miniagents.mcp  miniagents.durable
    8      plug-ins                  miniagents.llms  miniagents.persistence
    7      the public namespace      miniagents  miniagents.miniagents
    6      agents and calls          _agents  _calls  _chain
    5      the context               _context
    4      observers, the limiter    _observe  _limits
    3      channels                  _buffer  _promises  _sequence  _sequence_builder
    2      tasks                     _scope
    1      values                    _encoding  _messages  _records
    0      leaves                    _exceptions  _ledger  _frozen  _secrets  _dedup  _publish
"""

from miniagents._agents import MiniAgent, miniagent
from miniagents._buffer import BufferStatistics
from miniagents._calls import AgentCall, CallStatistics, InteractionContext
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
    RateKeyStatistics,
    RateLease,
    RateLimit,
    RateLimiter,
)
from miniagents._messages import ErrorMessage, Message, TextMessage
from miniagents._observe import CallObserver
from miniagents._promises import MessagePromise, MessageWriter, Promise, StreamedPromise, StreamWriter
from miniagents._publish import publish
from miniagents._records import CallOutcome, CallRecord
from miniagents._sequence import MessageSequencePromise, MessageSequenceWriter, MessageType

__version__ = "0.1.0"

__all__ = [
    "AWAIT",
    "AgentCall",
    "AgentCallCancelledError",
    "BufferStatistics",
    "CLEAR",
    "CallObserver",
    "CallOutcome",
    "CallRecord",
    "CallStatistics",
    "ContextAttachment",
    "ContextStatistics",
    "ErrorMessage",
    "FrozenDict",
    "InteractionContext",
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
    "miniagent",
    "share_by_reference",
]

publish(globals())  # the public names report this module (see miniagents._publish)
