"""Crash safety: a run killed with SIGKILL leaves a consistent database holding every committed batch, and a
restarted run appends to it without duplicates.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from miniagents import TextMessage
from miniagents.persistence import StoreReader

pytestmark = pytest.mark.anyio

CHILD = Path(__file__).with_name("crash_child.py")
COUNT = 2000


def _run_child(path: str, backend: str, *, kill_after_commits: int | None) -> tuple[set[str], bool]:
    """Run the child; SIGKILL it after that many commits.  Returns the committed keys and whether it finished."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    process = subprocess.Popen(
        [sys.executable, str(CHILD), path, backend], stdout=subprocess.PIPE, text=True, env=env
    )
    assert process.stdout is not None
    committed: set[str] = set()
    commits = 0
    done = False
    for line in process.stdout:
        if line.startswith("COMMIT"):
            committed.update(line.split()[1:])
            commits += 1
            if kill_after_commits is not None and commits >= kill_after_commits:
                process.send_signal(signal.SIGKILL)
                break
        elif line.strip() == "DONE":
            done = True
    process.stdout.close()
    returncode = process.wait(timeout=60)
    if kill_after_commits is not None:
        assert returncode == -signal.SIGKILL
    else:
        assert returncode == 0
    return committed, done


async def test_sigkill_mid_run_then_restart(tmp_path: Path, anyio_backend: str) -> None:
    path = str(tmp_path / "run.db")
    committed, done = _run_child(path, anyio_backend, kill_after_commits=4)
    assert not done and committed

    with sqlite3.connect(path) as db:  # opens cleanly, consistent, every reported commit is there
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {row[0] for row in db.execute("SELECT hash_key FROM messages")}
    assert committed <= stored
    assert len(stored) < COUNT + 1  # it really was killed mid-run

    _, done = _run_child(path, anyio_backend, kill_after_commits=None)
    assert done
    with StoreReader(path) as reader, sqlite3.connect(path) as db:
        contents = [row[0] for row in db.execute("SELECT content FROM messages")]
        assert len(contents) == len(set(contents))  # appended without duplicates
        assert set(contents) == {f"m{i}" for i in range(COUNT)} | {"start"}
        assert {TextMessage(content=f"m{i}").hash_key for i in range(COUNT)} <= reader.hash_keys()
        finished = reader.calls()
        assert len(reader.runs()) == 1  # the killed run finished no call before it died
        assert sorted(c.agent_alias for c in finished) == ["forward", "produce"]
        assert [str(m) for m in reader.replies(next(c for c in finished if c.agent_alias == "forward"))] == [
            f"m{i}" for i in range(COUNT)
        ]
