"""Descriptions of the MCP servers to connect to: immutable values, usable in agent kwargs."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs

from miniagents._frozen import FrozenDict, share_by_reference

__all__ = ["HttpServer", "MCPServerSpec", "StdioServer"]


def _str_tuple(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError("args must be a sequence of strings, not one string (use shlex.split())")
    return tuple(str(v) for v in value)


def _frozen_str_map(value: Mapping[str, str] | None) -> FrozenDict[str, str] | None:
    if value is None:
        return None
    return FrozenDict({str(k): str(v) for k, v in value.items()})


def _check_timeout(_: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be a positive number of seconds or None, got {value!r}")


def _check_url(value: str) -> None:
    scheme = urlsplit(value).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"HttpServer url must be an http:// or https:// URL, got scheme {scheme!r}")


def _safe_url(url: str) -> str:
    """*url* without credentials, query or fragment (where secrets may be)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@share_by_reference
@attrs.frozen
class StdioServer:
    """An MCP server run as a subprocess of this program, spoken to over its stdin and stdout.

    Attributes:
        command: the executable (looked up on ``PATH`` when it has no directory).
        args: its command-line arguments.
        env: extra environment variables, added to the SDK's safe default environment (``HOME``, ``PATH``,
            ...; the rest of this process's environment is not passed on).  Values are never shown in the repr.
        cwd: the working directory of the subprocess (``None``: this process's).
        name: the label in errors and logs (default: the command line).
        read_timeout: seconds to wait for the answer to each request (``None``: no limit).

    Equal descriptions mean the same connection: inside one ``MiniAgents`` context, every tool of equal
    descriptions shares one subprocess and session.  The server's stderr goes to this process's stderr.
    """

    command: str
    args: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    env: FrozenDict[str, str] | None = attrs.field(
        default=None,
        converter=_frozen_str_map,
        repr=lambda env: "None" if env is None else f"<{len(env)} vars>",
    )
    cwd: str | None = attrs.field(default=None, converter=attrs.converters.optional(os.fspath))
    name: str | None = None
    read_timeout: float | None = attrs.field(default=None, validator=_check_timeout)

    @property
    def label(self) -> str:
        """The name of the server in errors: ``name``, or the command line."""
        if self.name:
            return self.name
        return shlex.join([os.path.basename(self.command), *self.args])


@share_by_reference
@attrs.frozen
class HttpServer:
    """An MCP server reached over streamable HTTP at *url* (e.g. ``http://127.0.0.1:8000/mcp``).

    Attributes:
        url: the MCP endpoint (shown in reprs and errors without credentials, query or fragment).
        headers: HTTP headers sent with every request (e.g. ``Authorization``); their values never appear in
            the repr, in errors or in logs.
        name: the label in errors and logs (default: the URL without credentials, query or fragment).
        read_timeout: seconds to wait for the answer to each request (``None``: no limit).

    The SDK speaks HTTP with its own client (``httpx2``), not with the ``httpx`` client of the LLM agents:
    MCP traffic is not recorded by cassettes, and has no HTTP spans in tracing.
    """

    url: str = attrs.field(
        validator=lambda _, __, value: _check_url(value), repr=lambda url: repr(_safe_url(url))
    )
    headers: FrozenDict[str, str] | None = attrs.field(
        default=None,
        converter=_frozen_str_map,
        repr=lambda headers: "None" if headers is None else f"<{', '.join(sorted(headers))}>",
    )
    name: str | None = None
    read_timeout: float | None = attrs.field(default=None, validator=_check_timeout)

    @property
    def label(self) -> str:
        """The name of the server in errors: ``name``, or the URL without credentials, query or fragment."""
        if self.name:
            return self.name
        return _safe_url(self.url)


#: What :func:`~miniagents.mcp.mcp_tools` connects to.
MCPServerSpec = StdioServer | HttpServer
