"""W6 stream server: replays a pre-rendered OpenAI Chat Completions stream on 127.0.0.1 (its own process).

The body is rendered once per token count by ``miniagents.testing.fake_llm_server.openai_stream`` (so the
events are byte-for-byte what ``FakeLLMServer`` would send: one ``chat.completion.chunk`` per token, the
finish chunk, the usage chunk and ``data: [DONE]``), framed as HTTP/1.1 ``Transfer-Encoding: chunked`` with one
HTTP chunk per SSE event (as the real API sends it), and written with ``sendall`` in large pieces: the
server's own cost per token is negligible, and it runs in a separate process from the measured client.
``FakeLLMServer`` itself is not used because it writes every event with its own ``await stream.send()``
(h11 framing and a scheduler round trip per event), which would pace the client instead of letting it read
as fast as it parses.

The request's ``model`` says how many tokens to stream: ``"bench-100000"``.  Every token is ``"tok "``.

Usage (``run.py`` starts it; the first line on stdout is the base URL; the optional arguments are token
counts to render before serving, so the first request of that size does not wait for the rendering)::

    python benchmarks/w6_server.py [N ...]
"""

from __future__ import annotations

import json
import sys
import threading
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from miniagents.testing.fake_llm_server import SSE, openai_stream

TOKEN = "tok "
SEND_PIECE = 256 * 1024


@lru_cache(maxsize=8)
def rendered_body(n_tokens: int) -> bytes:
    response = openai_stream([TOKEN] * n_tokens, model=f"bench-{n_tokens}")
    parts = []
    for step in response.body:
        assert isinstance(step, SSE), step
        data = step.encode(response.newline)
        parts.append(b"%x\r\n%b\r\n" % (len(data), data))
    parts.append(b"0\r\n\r\n")
    return b"".join(parts)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY a short response waits ~40 ms for the
    # client's delayed ACK (it made a 2.5 ms call look like 46 ms in bench_durable.py).
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            request = json.loads(body)
            assert request.get("stream") is True, "stream: true is required"
            n_tokens = int(str(request["model"]).removeprefix("bench-"))
        except Exception as exc:
            payload = json.dumps({"error": {"message": f"bad benchmark request: {exc}"}}).encode()
            self.send_response(400)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        data = rendered_body(n_tokens)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("x-request-id", "req_bench")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        view = memoryview(data)
        for start in range(0, len(view), SEND_PIECE):
            self.wfile.write(view[start : start + SEND_PIECE])
        self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    for arg in sys.argv[1:]:
        rendered_body(int(arg))
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    sys.stdout.write(f"http://{host}:{port}/v1\n")
    sys.stdout.flush()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # Serve until the parent closes our stdin (or kills us).
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()
