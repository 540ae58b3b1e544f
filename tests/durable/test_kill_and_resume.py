"""Kill -9 a durable graph at several points and start it again with the same run id.

The graph (``graph_app.py``): a planner fanning out to 3 LLM workers and a reducer, all ``openai_agent`` calls
to a fake server running in another process, which logs every request.  Checked after the restart: only the
requests in flight at the kill were sent again, the final replies equal an uninterrupted run's (hash keys),
the message store holds every message of the uninterrupted run once and nothing else, and the API key is
nowhere in the DBOS database.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from durable_helpers import (
    WAIT_LIMIT,
    FakeServerProcess,
    app_args,
    child_env,
    database_bytes,
    fake_server,
    run_app,
    store_keys,
    workflow_statuses,
)
from graph_app import API_KEY

pytestmark = pytest.mark.anyio

MODELS = ("planner", "worker1", "worker2", "worker3", "reducer")


def _has_request(model: str) -> Callable[[Path, FakeServerProcess], bool]:
    return lambda directory, server: server.counts().get(model, 0) >= 1


def _worker1_done_others_in_flight(directory: Path, server: FakeServerProcess) -> bool:
    done = any(
        ":worker1:" in wid and status == "SUCCESS" for wid, status in workflow_statuses(directory).items()
    )
    counts = server.counts()
    return done and counts.get("worker2", 0) >= 1 and counts.get("worker3", 0) >= 1


# kill point: (models whose first request hangs, when to kill)
KILL_POINTS = {
    "planner-mid-stream": (["planner"], _has_request("planner")),
    "after-1-of-3-workers": (["worker2", "worker3"], _worker1_done_others_in_flight),
    "during-reducer": (["reducer"], _has_request("reducer")),
}


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
async def test_kill_and_resume(
    point: str, anyio_backend: str, tmp_path: Path, reference: dict[str, object]
) -> None:
    hang, ready_to_kill = KILL_POINTS[point]
    run_id = f"crash-{point}"
    with fake_server(tmp_path, hang) as server:
        env = child_env(MINIAGENTS_DURABLE_LLM=server.url)
        process = await anyio.open_process(app_args(anyio_backend, tmp_path, run_id), env=env)
        try:
            with anyio.fail_after(WAIT_LIMIT):
                while not ready_to_kill(tmp_path, server):
                    assert process.returncode is None, "the app ended before the kill point"
                    await anyio.sleep(0.02)
            before = server.counts()
        finally:
            process.send_signal(signal.SIGKILL)
            await process.wait()
            await process.aclose()
        assert process.returncode == -signal.SIGKILL
        assert all(before.get(model) == 1 for model in hang), before

        result = await run_app(anyio_backend, tmp_path, run_id, server)
        counts = server.counts()

    # Only the requests in flight at the kill were sent again.
    assert counts == {model: 2 if model in hang else 1 for model in MODELS}
    assert result["replies"] == reference["replies"]
    keys = store_keys(tmp_path / "store.db")
    assert len(keys) == len(set(keys))
    assert sorted(keys) == reference["store"]
    # The API key (a default kwarg of every LLM agent) is nowhere in the DBOS database; its data is readable
    # text (portable JSON), so this scan would find the key if it were there.
    data = database_bytes(tmp_path)
    assert result["text"][0].encode() in data
    assert API_KEY.encode() not in data


async def test_same_run_id_after_success_runs_nothing(anyio_backend: str, tmp_path: Path) -> None:
    with fake_server(tmp_path) as server:
        first = await run_app(anyio_backend, tmp_path, "twice", server)
        again = await run_app(anyio_backend, tmp_path, "twice", server)
        counts = server.counts()
    assert again == first
    assert counts == dict.fromkeys(MODELS, 1)
