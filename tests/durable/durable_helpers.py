"""Helpers of the durable tests: the fake LLM server process, the app process, reading the databases."""

from __future__ import annotations

import collections
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio

from miniagents import MiniAgents
from miniagents.durable import DurableRuntime
from miniagents.testing import RecordedRequest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PYTHON = sys.executable
#: Bound of every wait for another process (a guard against a hang, not a timing assertion).
WAIT_LIMIT = 60.0


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this checkout first on the path, plus *extra*."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


class FakeServerProcess:
    """``fake_llm_process.py`` running in a process of its own; :meth:`counts` reads its request log."""

    def __init__(self, directory: Path, hang: list[str], gate: list[str]) -> None:
        self.log = directory / "requests.log"
        portfile = self._portfile = directory / "port"
        args = [PYTHON, str(HERE / "fake_llm_process.py"), str(self.log), str(portfile)]
        for model in hang:
            args += ["--hang", model]
        for model in gate:
            args += ["--gate", model]
        self.process = subprocess.Popen(args, env=child_env())
        for _ in range(int(WAIT_LIMIT / 0.05)):
            if portfile.exists():
                break
            if self.process.poll() is not None:
                raise RuntimeError("the fake LLM server process ended at start")
            import time

            time.sleep(0.05)
        else:  # pragma: no cover - a hang
            raise RuntimeError("the fake LLM server process did not start")
        self.url = f"http://127.0.0.1:{portfile.read_text()}/v1"

    def counts(self) -> dict[str, int]:
        """How many requests each model got."""
        if not self.log.exists():
            return {}
        found: collections.Counter[str] = collections.Counter()
        for line in self.log.read_text(encoding="utf-8").splitlines():
            found[json.loads(line)["model"]] += 1
        return dict(found)

    def open_gate(self) -> None:
        """Let the ``--gate`` requests finish."""
        Path(f"{self._portfile}.open").touch()

    def stop(self) -> None:
        """End the process."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.process.kill()
            self.process.wait()


@contextmanager
def fake_server(
    directory: Path, hang: Sequence[str] = (), gate: Sequence[str] = ()
) -> Iterator[FakeServerProcess]:
    """Run a :class:`FakeServerProcess` for the block."""
    directory.mkdir(parents=True, exist_ok=True)
    server = FakeServerProcess(directory, list(hang), list(gate))
    try:
        yield server
    finally:
        server.stop()


def app_args(backend: str, directory: Path, run_id: str) -> list[str]:
    """The command line of one run of ``run_graph.py``."""
    return [
        PYTHON,
        str(HERE / "run_graph.py"),
        backend,
        f"sqlite:///{directory / 'dbos.db'}",
        str(directory / "store.db"),
        run_id,
    ]


def parse_result(stdout: bytes) -> dict[str, list[str]]:
    """The JSON line ``run_graph.py`` prints last."""
    lines = [line for line in stdout.decode().splitlines() if line.startswith("{")]
    assert lines, f"the app printed no result: {stdout!r}"
    result: dict[str, list[str]] = json.loads(lines[-1])
    return result


async def run_app(
    backend: str, directory: Path, run_id: str, server: FakeServerProcess
) -> dict[str, list[str]]:
    """Run ``run_graph.py`` to its end and return its result."""
    with anyio.fail_after(WAIT_LIMIT):
        done = await anyio.run_process(
            app_args(backend, directory, run_id),
            env=child_env(MINIAGENTS_DURABLE_LLM=server.url),
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return parse_result(done.stdout)


def store_keys(path: Path) -> list[str]:
    """Every hash key in a ``SQLiteStore`` file (a list: duplicates would show)."""
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT hash_key FROM messages")]


def workflow_statuses(directory: Path) -> dict[str, str]:
    """``workflow id -> status`` in the DBOS SQLite database of *directory* (empty before it exists)."""
    path = directory / "dbos.db"
    if not path.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return dict(db.execute("SELECT workflow_uuid, status FROM workflow_status").fetchall())
    except sqlite3.OperationalError:  # not created yet
        return {}


def database_bytes(directory: Path, name: str = "dbos.db") -> bytes:
    """The bytes of a SQLite database and of its WAL and shared-memory files."""
    return b"".join(p.read_bytes() for p in sorted(directory.glob(name + "*")))


def database_text(database: str, tmp_path: Path) -> bytes:
    """Everything the DBOS database holds, as bytes (the SQLite files, or every PostgreSQL row as text)."""
    if database.startswith("sqlite"):
        return database_bytes(tmp_path)
    import psycopg

    chunks: list[bytes] = []
    with psycopg.connect(database) as db:
        tables = db.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema = 'dbos'"
        ).fetchall()
        for schema, table in tables:
            for row in db.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall():
                chunks.append(repr(row).encode())
    return b"\n".join(chunks)


async def interrupted(
    database: str, start: Callable[[DurableRuntime], Any], until: Callable[[], bool]
) -> list[BaseException]:
    """Run ``start(runtime)`` until ``until()`` holds, then leave the runtime (its calls stay PENDING).

    Returns what the interrupted run raised.
    """
    raised: list[BaseException] = []
    async with MiniAgents(), anyio.create_task_group() as tg, DurableRuntime(database) as rt:

        async def go() -> None:
            try:
                await start(rt)
            except Exception as error:
                raised.append(error)

        tg.start_soon(go)
        with anyio.fail_after(30):
            while not until():
                await anyio.sleep(0.01)
    return raised


def last_content(request: RecordedRequest) -> str:
    """The content of the last message of a recorded Chat Completions request (the question it asked)."""
    return str(request.json["messages"][-1]["content"])
