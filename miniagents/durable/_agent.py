"""Durable agents: :func:`durable`, :class:`DurableAgent`, the registry by alias, the call boundary.

A durable agent is an ordinary :class:`~miniagents.MiniAgent` to its callers.  Inside a durable run
(:func:`miniagents.durable.run`) each of its calls is one DBOS workflow whose id is derived from content (the
parent workflow, the alias, the call's kwargs, the hash keys of its input and the occurrence of that same
call in the parent), so a resumed parent re-attaches to the children that finished.  Outside a durable run it
runs in process like the agent it wraps.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, Protocol
from urllib.parse import urlsplit

import attrs

from miniagents._agents import MiniAgent
from miniagents._calls import InteractionContext
from miniagents._encoding import canonical_json, encode_value
from miniagents._frozen import FrozenDict, freeze_kwargs
from miniagents._secrets import is_secret_name, secret_query_values
from miniagents.durable._exceptions import DurableConfigError, DurableKwargsError

__all__ = [
    "DurableAgent",
    "DurableScope",
    "current_scope",
    "durable",
    "encode_kwargs",
    "registered_agent",
    "workflow_id_for",
]

_registry: dict[str, DurableAgent] = {}


class RuntimeLike(Protocol):
    """What a durable call needs of the runtime (``_runtime.DurableRuntime``, which imports this module)."""

    @property
    def active(self) -> bool:
        """Whether DBOS is launched."""

    async def call(
        self, ctx: InteractionContext, workflow_id: str, alias: str, queue: str | None, spec: str
    ) -> None:
        """Run (or re-attach to) a durable call and reply its replies in *ctx*."""


@attrs.define(eq=False)
class DurableScope:
    """Where a durable call is started from: the run, the parent workflow (``None`` at the root), counters."""

    runtime: RuntimeLike
    run_id: str
    workflow_id: str | None
    occurrences: dict[str, int] = attrs.field(factory=dict)

    def occurrence(self, key: str) -> int:
        """The number of calls with *key* started in this scope before this one (0, 1, 2...)."""
        n = self.occurrences.get(key, 0)
        self.occurrences[key] = n + 1
        return n


#: The durable scope of the current task (set by ``run()`` and in every durable call's task).
current_scope: ContextVar[DurableScope | None] = ContextVar("miniagents_durable_scope", default=None)


def workflow_id_for(scope: DurableScope, alias: str, kwargs_json: str, input_keys: list[str]) -> str:
    """The workflow id of a call: the run id at the root, else ``<run id>:<alias>:<digest of the content>``."""
    if scope.workflow_id is None:
        return scope.run_id
    content = canonical_json([scope.workflow_id, alias, kwargs_json, input_keys])
    n = scope.occurrence(content)
    digest = hashlib.sha256(f"{content}#{n}".encode()).hexdigest()[:32]
    return f"{scope.run_id}:{alias}:{digest}"


def _check_value(alias: str, path: str, value: Any) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and is_secret_name(key):
                raise DurableKwargsError(_secret_message(alias, f"{path}[{key!r}]"))
            _check_value(alias, f"{path}[{key!r}]", item)
        return
    if isinstance(value, (tuple, list, set, frozenset)):
        for n, item in enumerate(value):
            _check_value(alias, f"{path}[{n}]", item)
        return
    if isinstance(value, str) and "://" in value and _url_holds_secret(value):
        raise DurableKwargsError(
            _secret_message(alias, f"{path} (a URL with a password or a secret query parameter)")
        )
    try:
        encode_value(value)
    except TypeError:
        raise DurableKwargsError(
            f"durable agent {alias!r}: kwarg {path} is a {type(value).__name__}, which cannot be recorded "
            "(a durable call's kwargs cross processes as data: str, numbers, bool, None, bytes, dates, "
            "messages, and lists/dicts of those); give objects as default kwargs of the agent (fork) instead"
        ) from None


def _url_holds_secret(text: str) -> bool:
    """Whether *text* is a URL with a password in its user part or a secret-named query parameter."""
    try:
        parts = urlsplit(text.strip())
        password = parts.password
    except ValueError:
        return False
    return bool(password) or bool(secret_query_values(text))


def _secret_message(alias: str, path: str) -> str:
    return (
        f"durable agent {alias!r}: kwarg {path} looks like a secret, and a durable call's kwargs are recorded "
        "in the DBOS database; give secrets as default kwargs of the agent (e.g. agent.fork(api_key=...)), "
        "which never leave the process"
    )


def encode_kwargs(alias: str, kwargs: Mapping[str, Any]) -> Any:
    """Check a call's (frozen) kwargs for the durable boundary and encode them as JSON-safe data.

    Raises:
        DurableKwargsError: a kwarg holds something that cannot be recorded, or a secret; the message names
            the agent and the kwarg's path.

    """
    _check_kwargs(alias, kwargs)
    return encode_value(freeze_kwargs(kwargs))


def _check_kwargs(alias: str, kwargs: Mapping[str, Any]) -> None:
    for name, value in kwargs.items():
        if is_secret_name(name):
            raise DurableKwargsError(_secret_message(alias, repr(name)))
        _check_value(alias, repr(name), value)


class DurableAgent(MiniAgent):
    """A :class:`~miniagents.MiniAgent` whose calls are DBOS workflows inside a durable run.

    Made by :func:`durable`; ``inner`` is the wrapped agent (it keeps its default kwargs, API keys included:
    they stay in the process), ``queue`` the DBOS queue its calls are enqueued on (``None``: run by the
    process that makes the call).  Calls check their kwargs at once: those of the wrapped agent (unknown,
    missing, its validator), and that they can be recorded (:class:`DurableKwargsError`, naming the agent and
    the kwarg's path).  A durable call reads its whole input before it starts (its workflow id depends on it).
    """

    __slots__ = ("inner", "queue")

    inner: MiniAgent
    queue: str | None

    def __init__(self, inner: MiniAgent, queue: str | None = None) -> None:
        super().__init__(_durable_entry, alias=inner.alias, description=inner.description)
        self.inner = inner
        self.queue = queue

    def _call_kwargs(self, kwargs: dict[str, Any]) -> FrozenDict[str, Any]:
        _check_kwargs(self.alias, kwargs)
        self.inner._call_kwargs(dict(kwargs))  # the wrapped agent's own checks (they name the alias)
        return freeze_kwargs(kwargs)

    def fork(self, alias: str | None = None, description: str | None = None, **kwargs: Any) -> DurableAgent:
        """A durable variant of the wrapped agent (see :meth:`MiniAgent.fork`); it needs an alias of its own."""
        return durable(self.inner.fork(alias, description, **kwargs), queue=self.queue)

    def __repr__(self) -> str:
        queue = f" queue={self.queue!r}" if self.queue is not None else ""
        return f"<DurableAgent {self.alias!r}{queue}>"


def durable(agent: MiniAgent, queue: str | None = None) -> DurableAgent:
    """Mark *agent* durable: inside a durable run each call is a DBOS workflow (see :class:`DurableAgent`).

    The agent is registered by its alias, which must be unique in the process: a worker process
    (``python -m miniagents.durable worker --import myapp``) finds the agent of a call by alias, so every
    process must define the same durable agents (import the same module).  With *queue*, calls are enqueued
    on that DBOS queue and run by a process that serves it.

    Marking the same definition again (the same code and default kwargs: one fork made twice, a function
    defined again) registers the new one in place of the old.

    Raises:
        DurableConfigError: another durable agent already has this alias.
        TypeError: *agent* is not a ``MiniAgent``.

    """
    if isinstance(agent, DurableAgent):
        agent = agent.inner
    if not isinstance(agent, MiniAgent):
        raise TypeError(f"durable() needs a MiniAgent, got {agent!r}")
    known = _registry.get(agent.alias)
    if known is not None and not (_same_definition(known.inner, agent) and known.queue == queue):
        raise DurableConfigError(
            f"a durable agent with alias {agent.alias!r} exists already; durable agents are found by alias in "
            "every process, so each needs an alias of its own (fork(alias=...))"
        )
    if known is not None and known.inner is agent:
        return known
    wrapped = DurableAgent(agent, queue)
    _registry[agent.alias] = wrapped
    return wrapped


def _same_definition(a: MiniAgent, b: MiniAgent) -> bool:
    """Whether *b* defines the agent *a* defines again: the same code and default kwargs."""
    if a is b:
        return True
    code_a = getattr(a.func, "__code__", a.func)
    code_b = getattr(b.func, "__code__", b.func)
    return code_a is code_b and a.default_kwargs == b.default_kwargs


def registered_agent(alias: str) -> DurableAgent:
    """The durable agent registered under *alias*.

    Raises:
        DurableConfigError: none is (the process did not import the module that defines it).

    """
    agent = _registry.get(alias)
    if agent is None:
        raise DurableConfigError(
            f"no durable agent {alias!r} in this process: import the module that defines it (a worker: "
            "--import myapp)"
        )
    return agent


def registered_queues() -> set[str]:
    """The queues named by the registered durable agents."""
    return {agent.queue for agent in _registry.values() if agent.queue is not None}


async def _durable_entry(ctx: InteractionContext, **kwargs: Any) -> None:
    agent = ctx.agent
    assert isinstance(agent, DurableAgent)
    scope = current_scope.get()
    if scope is None or not scope.runtime.active:
        # Not in a durable run: the wrapped agent, in process.
        ctx.reply(agent.inner.inquire(ctx.messages, **kwargs))
        return
    inputs = await ctx.messages
    encoded = encode_kwargs(agent.alias, ctx.kwargs)
    kwargs_json = canonical_json(encoded)
    workflow_id = workflow_id_for(scope, agent.alias, kwargs_json, [m.hash_key for m in inputs])
    spec = json.dumps(
        {
            "alias": agent.alias,
            "run_id": scope.run_id,
            "kwargs": encoded,
            "input": [m.to_dict() for m in inputs],
        },
        ensure_ascii=False,
    )
    await scope.runtime.call(ctx, workflow_id, agent.alias, agent.queue, spec)
