"""Agents: :func:`miniagent` and :class:`MiniAgent`.

An agent is an agent function with its alias, description and default kwargs.  Each
:meth:`MiniAgent.initiate_call` / :meth:`MiniAgent.inquire` starts an :class:`~miniagents.AgentCall`
(``_calls``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from miniagents._calls import AgentCall
from miniagents._frozen import FrozenDict, freeze_kwargs, share_by_reference
from miniagents._scope import current_owner
from miniagents._sequence import MessageSequencePromise, MessageType

if TYPE_CHECKING:
    from miniagents._context import MiniAgents

AgentFunction = Callable[..., Coroutine[Any, Any, None]]
_F = TypeVar("_F", bound=AgentFunction)


class MiniAgent:
    """An agent: an ``async def f(ctx, **kwargs)`` plus its alias, description and default kwargs.

    Agents are immutable and stateless; every :meth:`inquire` or :meth:`initiate_call` is a new call.  Create
    them with :func:`miniagent`.

    Kwargs are checked against the function's declared keyword parameters (unless it takes ``**kwargs``).  A
    function that takes ``**kwargs`` can have its kwargs checked by a *kwargs_validator*: it is called as
    ``kwargs_validator(alias, kwargs)`` with the default kwargs when the agent is created (or forked) and with
    the kwargs of each call (as given, before the defaults are merged in) when :meth:`initiate_call` /
    :meth:`inquire` is called, each time only when there are any; it raises (``TypeError``, ``ValueError``) to
    reject them, and that error is raised to the caller at once, before any call starts.  It is kept by
    :meth:`fork`.
    """

    __slots__ = (
        "_accepts_any_kwargs",
        "_known_kwargs",
        "_kwargs_validator",
        "_required_kwargs",
        "alias",
        "default_kwargs",
        "description",
        "func",
    )

    func: AgentFunction
    _accepts_any_kwargs: bool
    _known_kwargs: frozenset[str]
    _kwargs_validator: Callable[[str, FrozenDict[str, Any]], object] | None
    _required_kwargs: frozenset[str]
    alias: str
    description: str | None
    default_kwargs: FrozenDict[str, Any]

    def __init__(
        self,
        func: AgentFunction,
        *,
        alias: str | None = None,
        description: str | None = None,
        kwargs_validator: Callable[[str, FrozenDict[str, Any]], object] | None = None,
        **default_kwargs: Any,
    ) -> None:
        if not callable(func) or not _is_async_function(func):
            raise TypeError(
                f"@miniagent needs an `async def` function taking (ctx, **kwargs); got {func!r}, which is not "
                "a coroutine function"
            )
        self.func = func
        self.alias = alias if alias is not None else getattr(func, "__name__", type(func).__name__)
        self.description = description if description is not None else inspect.getdoc(func)
        self.default_kwargs = freeze_kwargs(default_kwargs)
        self._inspect_signature()
        unknown = self._unknown(self.default_kwargs)
        if unknown:
            raise TypeError(f"agent {self.alias!r} does not accept default kwargs {unknown}")
        self._kwargs_validator = kwargs_validator
        if kwargs_validator is not None and self.default_kwargs:
            kwargs_validator(self.alias, self.default_kwargs)

    def _inspect_signature(self) -> None:
        try:
            parameters = list(inspect.signature(self.func).parameters.values())
        except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
            self._accepts_any_kwargs = True
            self._known_kwargs = self._required_kwargs = frozenset()
            return
        if not parameters or parameters[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise TypeError(
                f"agent {self.alias!r}: the function must take the InteractionContext as first argument"
            )
        rest = parameters[1:]
        self._accepts_any_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in rest)
        self._known_kwargs = frozenset(
            p.name
            for p in rest
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        )
        self._required_kwargs = frozenset(
            p.name
            for p in rest
            if p.default is inspect.Parameter.empty
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        )

    def _unknown(self, kwargs: FrozenDict[str, Any]) -> list[str]:
        if self._accepts_any_kwargs:
            return []
        return sorted(name for name in kwargs if name not in self._known_kwargs)

    def _call_kwargs(self, kwargs: dict[str, Any]) -> FrozenDict[str, Any]:
        frozen = freeze_kwargs(kwargs)
        validator = self._kwargs_validator
        if validator is not None and frozen:
            validator(self.alias, frozen)
        merged = self.default_kwargs | frozen if self.default_kwargs else frozen
        if not self._accepts_any_kwargs:
            unknown = self._unknown(frozen)
            if unknown:
                raise TypeError(f"agent {self.alias!r} got unexpected kwargs {unknown}")
            missing = sorted(self._required_kwargs.difference(merged))
            if missing:
                raise TypeError(f"agent {self.alias!r} is missing required kwargs {missing}")
        return merged

    def initiate_call(self, **kwargs: Any) -> AgentCall:
        """Start a call soon and return it, with its input open for :meth:`AgentCall.send`.

        *kwargs* are frozen now (later mutation of the caller's objects changes nothing) and merged over the
        agent's default kwargs.

        Raises:
            TypeError: a kwarg cannot be frozen (the message names its path), is unknown to the agent
                function, or a required one is missing (the message names the agent); or what the agent's
                ``kwargs_validator`` raises (``TypeError``, ``ValueError``).
            NoActiveContextError: no ``MiniAgents`` context is active.

        """
        context, owner = current_owner(f"calling agent {self.alias!r}")
        return AgentCall(self, self._call_kwargs(kwargs), cast("MiniAgents", context), owner)

    def inquire(self, messages: MessageType | None = None, **kwargs: Any) -> MessageSequencePromise:
        """Start a call soon with *messages* as its whole input and return its replies (no await needed)."""
        call = self.initiate_call(**kwargs)
        if messages is not None:
            try:
                call.send(messages)
            except BaseException:
                call.cancel()  # rejected input: the call never runs
                raise
        return call.reply_sequence()

    def fork(self, alias: str | None = None, description: str | None = None, **kwargs: Any) -> MiniAgent:
        """Return a variant of this agent with more default kwargs (and optionally a new alias/description).

        The variant keeps the agent's ``kwargs_validator``, which checks the new default kwargs at once.

        Raises:
            TypeError: a kwarg is unknown to the agent function or cannot be frozen; or what the
                ``kwargs_validator`` raises (``TypeError``, ``ValueError``).

        """
        return MiniAgent(
            self.func,
            alias=alias if alias is not None else self.alias,
            description=description if description is not None else self.description,
            kwargs_validator=self._kwargs_validator,
            **{**self.default_kwargs, **kwargs},
        )

    def __repr__(self) -> str:
        return f"<MiniAgent {self.alias!r}>"


share_by_reference(MiniAgent)  # agents are immutable: tools=[agent, ...] passes them as they are


def _is_async_function(func: Any) -> bool:
    while isinstance(func, functools.partial):
        func = func.func
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(type(func), "__call__", None)  # noqa: B004 - an object whose __call__ is `async def`
    return call is not None and inspect.iscoroutinefunction(call)


@overload
def miniagent(func: AgentFunction, /) -> MiniAgent: ...


@overload
def miniagent(
    *, alias: str | None = None, description: str | None = None, **default_kwargs: Any
) -> Callable[[AgentFunction], MiniAgent]: ...


def miniagent(
    func: AgentFunction | None = None,
    /,
    *,
    alias: str | None = None,
    description: str | None = None,
    **default_kwargs: Any,
) -> MiniAgent | Callable[[AgentFunction], MiniAgent]:
    """Turn ``async def f(ctx: InteractionContext, **kwargs)`` into a :class:`MiniAgent`.

    Use it bare (``@miniagent``) or with options (``@miniagent(alias="x", description="...", **defaults)``).
    The alias defaults to the function name and the description to its docstring.

    Raises:
        TypeError: *func* is not an ``async def`` function (or an object with an ``async def __call__``).

    """
    if func is not None:
        return MiniAgent(func, alias=alias, description=description, **default_kwargs)

    def decorate(f: AgentFunction) -> MiniAgent:
        return MiniAgent(f, alias=alias, description=description, **default_kwargs)

    return decorate
