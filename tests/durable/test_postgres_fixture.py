"""The PostgreSQL fixture itself: each test gets its own empty database, dropped afterwards, that psycopg and DBOS
can use; a missing PostgreSQL skips outside CI and fails under it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from postgres_helpers import (
    URL_ENV,
    find_binaries,
    fresh_database,
    import_psycopg,
    libpq_url,
    server_url,
    unavailable,
    with_database,
)

_seen_databases: set[str] = set()


def _user_tables(url: str) -> list[str]:
    psycopg = import_psycopg()
    with psycopg.connect(libpq_url(url)) as conn:
        rows = conn.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
    return [row[0] for row in rows]


def _databases(admin_url: str) -> set[str]:
    psycopg = import_psycopg()
    with psycopg.connect(libpq_url(admin_url)) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database").fetchall()}


@pytest.mark.parametrize("turn", ["first", "second"])
def test_each_test_gets_its_own_empty_database(postgres_url: str, turn: str) -> None:
    parts = urlsplit(postgres_url)
    assert parts.scheme == "postgresql"
    assert parts.hostname == "127.0.0.1"
    assert parts.port
    assert parts.username
    assert parts.password  # a URL with credentials, as DBOS takes it
    name = parts.path.lstrip("/")
    assert name.startswith("miniagents_test_")
    assert name not in _seen_databases, "two tests got the same database"
    _seen_databases.add(name)
    assert _user_tables(postgres_url) == []
    psycopg = import_psycopg()
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (name,)
        # a database shared with the other turn would already hold this table: CREATE TABLE would fail
        conn.execute("CREATE TABLE marker (turn text)")
        conn.execute("INSERT INTO marker VALUES (%s)", (turn,))
    assert _user_tables(postgres_url) == ["public.marker"]


def test_database_is_dropped_even_with_a_client_still_connected(postgres_server: str) -> None:
    psycopg = import_psycopg()
    with fresh_database(postgres_server) as url:
        name = urlsplit(url).path.lstrip("/")
        assert name in _databases(postgres_server)
        left_open = psycopg.connect(url)  # as a DBOS pool a test forgot to close would
    try:
        assert name not in _databases(postgres_server)
    finally:
        left_open.close()


def test_dbos_launches_and_records_a_workflow(postgres_url: str) -> None:
    try:
        import dbos
    except ImportError:
        unavailable("dbos is not installed (the `durable` extra)")
    DBOS = dbos.DBOS
    # No destroy_registry=True: that would also unregister miniagents.durable's workflow (registered once, at
    # import), and every later durable test in this process would hang waiting for a workflow never run.
    DBOS.destroy()
    calls: list[str] = []

    @DBOS.step()
    def exchange(prompt: str) -> str:
        calls.append(prompt)
        return prompt.upper()

    @DBOS.workflow()
    def reply_twice(prompt: str) -> list[str]:
        return [exchange(prompt), exchange(prompt + "!")]

    DBOS(config={"name": "miniagents-fixture-test", "system_database_url": postgres_url})
    try:
        DBOS.launch()
        with dbos.SetWorkflowID("fixture-wf-1"):
            assert reply_twice("hi") == ["HI", "HI!"]
        with dbos.SetWorkflowID("fixture-wf-1"):  # the same id again: the recorded result, no step re-runs
            assert reply_twice("hi") == ["HI", "HI!"]
        assert calls == ["hi", "hi!"]
    finally:
        DBOS.destroy()
    psycopg = import_psycopg()
    with psycopg.connect(postgres_url) as conn:
        status = conn.execute("SELECT status FROM dbos.workflow_status WHERE workflow_uuid = 'fixture-wf-1'")
        assert status.fetchall() == [("SUCCESS",)]
        steps = conn.execute(
            "SELECT count(*) FROM dbos.operation_outputs WHERE workflow_uuid = 'fixture-wf-1'"
        )
        assert steps.fetchone() == (2,)


def test_urls_name_another_database_keeping_credentials() -> None:
    url = "postgresql+psycopg://u:p%40ss@127.0.0.1:5544/postgres?sslmode=disable"
    assert with_database(url, "other") == "postgresql+psycopg://u:p%40ss@127.0.0.1:5544/other?sslmode=disable"
    assert libpq_url(url) == "postgresql://u:p%40ss@127.0.0.1:5544/postgres?sslmode=disable"


@pytest.fixture
def _no_postgres(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(URL_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("postgres_helpers.DEBIAN_BINARIES", str(tmp_path / "none" / "*" / "bin"))


@pytest.mark.usefixtures("_no_postgres")
def test_missing_postgres_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert find_binaries() is None
    with pytest.raises(pytest.skip.Exception, match=f"no PostgreSQL: {URL_ENV} is not set"), server_url():
        pass


@pytest.mark.usefixtures("_no_postgres")
@pytest.mark.parametrize("ci", ["true", "1"])
def test_missing_postgres_fails_under_ci(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="CI is set, so this is a failure"), server_url():
        pass


@pytest.mark.parametrize("ci", ["", "0", "false"])
def test_ci_off_values_skip(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="the reason"):
        unavailable("the reason")


def test_binaries_found_in_debian_layout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    for version in ("9.6", "15", "16"):
        folder = tmp_path / "postgresql" / version / "bin"
        folder.mkdir(parents=True)
        for name in ("initdb", "pg_ctl"):
            (folder / name).write_text("#!/bin/sh\n")
            (folder / name).chmod(stat.S_IRWXU)
    os.remove(tmp_path / "postgresql" / "16" / "bin" / "pg_ctl")  # an incomplete install is passed over
    monkeypatch.setattr("postgres_helpers.DEBIAN_BINARIES", str(tmp_path / "postgresql" / "*" / "bin"))
    assert find_binaries() == tmp_path / "postgresql" / "15" / "bin"


def test_a_killed_test_process_does_not_leave_its_cluster_running(tmp_path: Path) -> None:
    binaries = find_binaries()
    if binaries is None:
        unavailable("no initdb/pg_ctl to start a cluster with")
    psycopg = import_psycopg()
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD_A_CLUSTER, str(Path(__file__).parent), str(binaries)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        url = child.stdout.readline().strip()
        assert url.startswith("postgresql://"), url
        with psycopg.connect(url) as conn:
            data = Path(conn.execute("SHOW data_directory").fetchone()[0])
        assert data.is_dir()
    finally:
        child.kill()  # SIGKILL: no teardown runs in the child
        child.wait()
    deadline = time.monotonic() + 120  # a liveness bound, not a speed check: the watchdog polls once a second
    while data.parent.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not data.parent.exists(), "the cluster's folder outlived the killed process"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=5).close()


_HOLD_A_CLUSTER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from postgres_helpers import throwaway_cluster
with throwaway_cluster(Path(sys.argv[2])) as url:
    print(url, flush=True)
    time.sleep(600)
"""
