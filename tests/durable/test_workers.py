"""Two worker processes (``python -m miniagents.durable worker``) serve one PostgreSQL queue.

The graph of ``graph_app.py`` with its LLM agents on the queue ``llm``; the root call runs in the app process.
Each worker runs one call at a time.  The first request of ``worker1`` hangs mid-stream and the first of ``worker2``
waits at a gate, so each worker holds one of them (the calls spread over both, whichever worker started listening
first).  The test kills the worker holding ``worker1`` with SIGKILL, hands its pending call to the live one
(``recover_executor``), opens the gate, and checks that the graph finishes with the replies of an uninterrupted
run, re-sending only the request that was in flight in the killed worker.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import anyio
import pytest
from durable_helpers import PYTHON, ROOT, WAIT_LIMIT, app_args, child_env, fake_server, parse_result
from graph_app import API_KEY

from miniagents.durable import recover_executor

pytestmark = pytest.mark.anyio

MODELS = ("planner", "worker1", "worker2", "worker3", "reducer")
QUEUE = "llm"


def _statuses(url: str) -> dict[str, tuple[str, str]]:
    import psycopg

    with psycopg.connect(url) as db:
        try:
            rows = db.execute(
                "SELECT workflow_uuid, status, executor_id FROM dbos.workflow_status"
            ).fetchall()
        except psycopg.errors.UndefinedTable:
            return {}
    return {wid: (status, executor) for wid, status, executor in rows}


def _call(statuses: dict[str, tuple[str, str]], alias: str) -> tuple[str, str] | None:
    found = [value for wid, value in statuses.items() if f":{alias}:" in wid]
    return found[0] if found else None


async def test_two_workers_one_killed(
    anyio_backend: str, tmp_path: Path, postgres_url: str, reference: dict[str, object]
) -> None:
    with fake_server(tmp_path / "server", hang=["worker1"], gate=["worker2"]) as server:
        env = child_env(MINIAGENTS_DURABLE_LLM=server.url, MINIAGENTS_DURABLE_QUEUE=QUEUE)
        workers = {}
        logs = []
        for name in ("worker-a", "worker-b"):
            log = (tmp_path / f"{name}.log").open("wb")
            logs.append(log)
            args = [PYTHON, "-m", "miniagents.durable", "worker", "--db", postgres_url, "--queue", QUEUE]
            args += [
                "--import",
                "graph_app",
                "--executor-id",
                name,
                "--concurrency",
                "1",
                "--backend",
                anyio_backend,
            ]
            workers[name] = subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)  # noqa: ASYNC220
        app_cmd = app_args(anyio_backend, tmp_path, "two-workers")
        app_cmd[3] = postgres_url
        app_cmd.append("app")
        try:
            app_out = (tmp_path / "app.out").open("wb")
            app_err = (tmp_path / "app.err").open("wb")
            logs += [app_out, app_err]
            app = await anyio.open_process(app_cmd, env=env, stdout=app_out, stderr=app_err)
            async with app:
                try:
                    with anyio.fail_after(WAIT_LIMIT):
                        while True:
                            statuses = await anyio.to_thread.run_sync(_statuses, postgres_url)
                            held = _call(statuses, "worker1")
                            gated = _call(statuses, "worker2")
                            counts = server.counts()
                            if (
                                held is not None
                                and gated is not None
                                and held[0] == gated[0] == "PENDING"
                                # both requests are in flight (hung, and at the gate)
                                and counts.get("worker1") == counts.get("worker2") == 1
                            ):
                                break
                            assert app.returncode is None, (tmp_path / "app.err").read_text()[-3000:]
                            await anyio.sleep(0.05)
                    assert {held[1], gated[1]} == {"worker-a", "worker-b"}  # the calls spread over both
                    dead = held[1]
                    workers[dead].send_signal(signal.SIGKILL)
                    workers[dead].wait()
                    recovered = await anyio.to_thread.run_sync(recover_executor, postgres_url, dead)
                    assert [wid for wid in recovered if ":worker1:" in wid] == recovered
                    assert len(recovered) == 1
                    server.open_gate()
                    with anyio.fail_after(WAIT_LIMIT):
                        await app.wait()
                    assert app.returncode == 0, (tmp_path / "app.err").read_text()[-3000:]
                finally:
                    if app.returncode is None:  # a failed test leaves no process behind
                        app.kill()
            result = parse_result((tmp_path / "app.out").read_bytes())
            counts = server.counts()
            final = await anyio.to_thread.run_sync(_statuses, postgres_url)
        finally:
            for process in workers.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in workers.values():
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:  # pragma: no cover
                    process.kill()
            for log in logs:
                log.close()

    assert result["replies"] == reference["replies"]
    assert counts == {model: 2 if model == "worker1" else 1 for model in MODELS}
    survivor = ({"worker-a", "worker-b"} - {dead}).pop()
    assert _call(final, "worker1") == ("SUCCESS", survivor)  # another worker finished the killed one's call
    assert _call(final, "worker2") == ("SUCCESS", survivor)
    assert _call(final, "reducer") == ("SUCCESS", survivor)
    import psycopg

    with psycopg.connect(postgres_url) as db:
        dump = "\n".join(
            str(row)
            for table in ("workflow_status", "workflow_input", "workflow_output", "operation_outputs")
            for row in db.execute(f"SELECT * FROM dbos.{table}").fetchall()
        )
    assert result["text"][0] in dump
    assert API_KEY not in dump
