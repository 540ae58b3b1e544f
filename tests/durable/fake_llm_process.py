"""A FakeLLMServer in a process of its own, for the crash tests (the app process is killed, this one is not).

``python fake_llm_process.py LOG PORTFILE [--hang MODEL ...] [--gate MODEL ...]``: serves OpenAI chat completions
on 127.0.0.1; writes its port to PORTFILE, and one JSON line per request to LOG (``{"model": ..., "n": ...}``) as
the request arrives.  The first request of each ``--hang`` model streams two chunks and then hangs (a request in
flight when the app is killed); that of each ``--gate`` model streams two chunks and waits until the file
``PORTFILE.open`` exists; every other request gets the model's whole answer.  Answers depend only on the model
and on the request body, so a re-sent request gets the same answer.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import sys

import anyio

from miniagents.testing import FakeLLMServer, Gate, RecordedRequest, ScriptedResponse, openai_stream


def answer(model: str, body: bytes) -> list[str]:
    """The tokens of *model*'s answer to a request body (the same for the same body)."""
    digest = hashlib.sha256(body).hexdigest()[:8]
    return [f"{model} ", "says ", "something ", "about ", f"{digest}."]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("log")
    parser.add_argument("portfile")
    parser.add_argument("--hang", action="append", default=[])
    parser.add_argument("--gate", action="append", default=[])
    args = parser.parse_args()
    counts: collections.Counter[str] = collections.Counter()
    gate = Gate()

    with open(args.log, "a", encoding="utf-8") as log:  # noqa: ASYNC230 - a test helper process, at start

        def handler(request: RecordedRequest) -> ScriptedResponse:
            model = str(request.json["model"])
            counts[model] += 1
            log.write(json.dumps({"model": model, "n": counts[model]}) + "\n")
            log.flush()
            first = counts[model] == 1
            return openai_stream(
                answer(model, request.body),
                model=model,
                completion_id=f"cmpl-{model}",
                request_id=f"req-{model}",
                hang_after=2 if first and model in args.hang else None,
                gate=gate if first and model in args.gate else None,
                gate_after=2,
            )

        async def open_gate_on_file() -> None:
            while not os.path.exists(args.portfile + ".open"):  # noqa: ASYNC240 - a tiny stat, a test helper
                await anyio.sleep(0.02)
            gate.open()

        async with FakeLLMServer.serve() as server, anyio.create_task_group() as tg:
            tg.start_soon(open_gate_on_file)
            server.handler = handler
            with open(args.portfile + ".tmp", "w", encoding="utf-8") as out:  # noqa: ASYNC230
                out.write(str(server.port))
            os.replace(args.portfile + ".tmp", args.portfile)
            await anyio.sleep_forever()


if __name__ == "__main__":
    try:
        anyio.run(main)
    except KeyboardInterrupt:
        sys.exit(0)
