"""The server process behind :class:`~miniagents.llms._local_server.LocalLLMServer` (run as a script).

``python -I _xllamacpp_server.py --model FILE --port PORT ...`` starts llama.cpp's own HTTP server in this
process through the prebuilt ``xllamacpp`` wheel (no compiler involved), listening on 127.0.0.1 only, and
keeps it running until the process gets SIGTERM or SIGINT, or until its parent process is gone; then it shuts
the server down and exits 0.  It needs only the standard library and ``xllamacpp`` (it is run by file path
with ``-I``, so neither ``PYTHONPATH`` nor the package it lives in is imported).

Exit codes: 0 after a clean stop, 2 for bad arguments (argparse), 3 when the server cannot be created (the
reason is printed to stderr, which the parent keeps in the server log).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Run llama.cpp's server (xllamacpp) on 127.0.0.1.")
    parser.add_argument("--model", required=True, help="the .gguf file")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--alias", required=True, help="the model name the server answers to")
    parser.add_argument("--chat-template-file", required=True, help="a jinja chat template (used as is)")
    parser.add_argument("--api-key-file", help="a file holding the key requests must carry (none: no key)")
    parser.add_argument("--ctx-size", type=int, default=4096, help="context tokens per parallel slot")
    parser.add_argument("--parallel", type=int, default=4, help="requests decoded at once")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a CommonParams attribute (dotted path; VALUE is an int, float, true/false or text)",
    )
    return parser


def _value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _set_param(params: Any, assignment: str) -> None:
    path, sep, text = assignment.partition("=")
    if not sep or not path:
        raise ValueError(f"--param {assignment!r}: expected NAME=VALUE")
    *parents, name = path.split(".")
    target = params
    for part in parents:
        target = getattr(target, part)
    if not hasattr(target, name):
        raise ValueError(f"--param {assignment!r}: xllamacpp.CommonParams has no {path!r}")
    setattr(target, name, _value(text))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT or the parent's exit; return the exit code."""
    args = _parser().parse_args(argv)
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    params.model_alias = {args.alias}
    params.n_parallel = args.parallel
    params.n_ctx = args.ctx_size * args.parallel  # the context is split evenly between the slots
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    with open(args.chat_template_file, encoding="utf-8") as f:
        params.chat_template = f.read()  # with jinja on, the text is the template (not a template name)
    params.use_jinja = True
    params.ui = False
    params.warmup = False  # readiness in ~1 s instead of ~3 s; the first request pays the page-in instead
    if args.api_key_file:
        with open(args.api_key_file, encoding="utf-8") as f:
            params.api_keys = [f.read().strip()]
    try:
        for assignment in args.param:
            _set_param(params, assignment)
    except (ValueError, AttributeError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 3

    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())  # Python runs it in the main thread, whichever got it
    parent = os.getppid()
    try:
        server = xllamacpp.Server(params)
    except Exception as exc:
        print(f"error: the server could not start: {exc}", file=sys.stderr, flush=True)
        return 3
    print(f"serving {args.alias} at {server.listening_address}", flush=True)
    while not stop.wait(1.0):
        if os.getppid() != parent:  # the parent died without stopping us: do not outlive it
            break
    del server  # stops the HTTP server and frees the model
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a subprocess
    sys.exit(main())
