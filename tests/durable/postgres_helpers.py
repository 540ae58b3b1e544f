"""PostgreSQL for the durable tests: a fresh, empty database per test on one server per test session.

The server is ``MINIAGENTS_POSTGRES_URL`` (a superuser URL; ``.ci/run`` starts a cluster and exports it) when set.
Otherwise a throwaway cluster is started once per session from ``initdb``/``pg_ctl`` on ``PATH`` or in
``/usr/lib/postgresql/*/bin`` (Debian's package), as the ``postgres`` user when the tests run as root (PostgreSQL
refuses root), with its data in a temporary folder, password auth, listening on 127.0.0.1 only; it is stopped and
its folder removed when the session ends.  Without a server the tests that need one are skipped, naming why;
under CI (``CI`` set, as CI services do) that is a failure instead, so a broken CI setup cannot pass silently.

The ``postgres_url`` fixture gives each test its own database (``CREATE DATABASE`` with a unique name, dropped
after the test with ``WITH (FORCE)``, so connections a test left open do not keep it alive) as a URL of the form
``postgresql://USER:PASSWORD@127.0.0.1:PORT/DATABASE``, which DBOS takes as ``system_database_url``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest

URL_ENV = "MINIAGENTS_POSTGRES_URL"
DEBIAN_BINARIES = "/usr/lib/postgresql/*/bin"


def on_ci() -> bool:
    """Whether the tests run under CI: the ``CI`` variable is set to anything but an empty, ``0`` or ``false``."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """Skip the test for a missing PostgreSQL (or client library), or fail it under CI."""
    if on_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def import_psycopg() -> Any:
    """The ``psycopg`` module (installed with ``dbos``); skip or fail (under CI) when it is missing."""
    try:
        import psycopg
    except ImportError:
        unavailable("psycopg is not installed (it comes with the `durable` extra's dbos)")
    return psycopg


def with_database(url: str, database: str) -> str:
    """``url`` naming ``database`` instead of the one it names (user, password, host, port and query are kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def libpq_url(url: str) -> str:
    """``url`` as libpq (psycopg) takes it: a SQLAlchemy driver suffix (``postgresql+psycopg://``) removed."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme=parts.scheme.split("+")[0]))


def find_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: ``PATH`` first, else the newest ``/usr/lib/postgresql/*/bin``."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent

    def version(folder: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", Path(folder).parent.name))

    for folder in sorted(glob.glob(DEBIAN_BINARIES), key=version, reverse=True):
        if all(os.access(Path(folder) / name, os.X_OK) for name in ("initdb", "pg_ctl")):
            return Path(folder)
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def throwaway_cluster(binaries: Path) -> Iterator[str]:
    """Start a PostgreSQL cluster from ``binaries`` and yield its superuser URL; stop it and delete it on exit.

    Runs the server as the ``postgres`` user when this process is root (skips, or fails under CI, if there is
    none).  The superuser is ``postgres`` with a random password; the data folder is a new temporary folder.
    """
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            unavailable("running as root and there is no `postgres` user to run PostgreSQL's initdb as")
    as_owner: dict[str, Any] = (
        {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []} if owner else {}
    )

    def run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, text=True, timeout=120, cwd=folder, **as_owner)

    folder = Path(tempfile.mkdtemp(prefix="miniagents-test-postgres-"))
    data = folder / "data"
    try:
        if owner:
            os.chown(folder, owner.pw_uid, owner.pw_gid)
        password = secrets.token_hex(16)
        password_file = folder / "password"
        password_file.write_text(password + "\n")
        if owner:
            os.chown(password_file, owner.pw_uid, owner.pw_gid)
        initdb = [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", f"--pwfile={password_file}"]
        run(
            *initdb,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        password_file.unlink()
        port = 0
        for attempt in range(5):  # the port may be taken between free_port() and the server binding it
            port = free_port()
            options = f"-h 127.0.0.1 -p {port} -k {folder} -N 200 -F -c synchronous_commit=off"
            start = [
                str(binaries / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(folder / "server.log"),
                "-o",
                options,
            ]
            try:
                run(*start, "-w", "-t", "60", "start")
                break
            except subprocess.CalledProcessError:
                if attempt == 4:
                    log = (folder / "server.log").read_text(errors="replace")
                    raise RuntimeError(f"PostgreSQL did not start from {binaries}; its log:\n{log}") from None
        try:
            yield f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"
        finally:
            run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """Create a database with a unique name on the server of ``server_url`` (a superuser URL), yield its URL and
    drop it on exit, even while clients are still connected to it."""
    psycopg = import_psycopg()
    name = f"miniagents_test_{secrets.token_hex(8)}"
    admin = libpq_url(server_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_url, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def server_url() -> Iterator[str]:
    """The superuser URL of a PostgreSQL server (see the module docstring for where it comes from), for as long as
    the context is open; skips, or fails under CI, when there is none."""
    import_psycopg()
    if url := os.environ.get(URL_ENV):
        yield url
        return
    binaries = find_binaries()
    if binaries is None:
        unavailable(
            f"no PostgreSQL: {URL_ENV} is not set and neither PATH nor {DEBIAN_BINARIES} has initdb and pg_ctl"
            " (install Debian's `postgresql` package, or run .ci/run)"
        )
    with throwaway_cluster(binaries) as url:
        yield url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The superuser URL of the session's PostgreSQL server, shared by every test of the session."""
    with server_url() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for this test alone, as ``postgresql://USER:PW@127.0.0.1:PORT/DB``;
    dropped after the test."""
    with fresh_database(postgres_server) as url:
        yield url
