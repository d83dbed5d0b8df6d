"""A real PostgreSQL server for the tests: 127.0.0.1, a random free port, data in a temp folder.

Use it from a test module with `pytest_plugins = ["tests._postgres"]`, then ask for the
`postgres_url` fixture (a fresh, empty database per test; the server starts once per session).
The tests are skipped, with the reason shown, only when the PostgreSQL binaries are absent;
every other problem (initdb or start-up failing) is an error, so CI cannot pass by skipping.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_SERVER: PostgresServer | None = None


def find_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl: PATH first, then Debian's versioned folders."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl", path=str(Path(found).parent)):
        return Path(found).resolve().parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(folder, "initdb").is_file() and Path(folder, "pg_ctl").is_file():
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    """One running server. `url(db)` is a SQLAlchemy URL for Optuna's RDBStorage."""

    bin_dir: Path
    root: Path  # temp folder: data/, the socket and the log
    port: int
    as_user: list[str]  # `runuser -u postgres --` when we are root, else nothing

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        # As users write it: SQLAlchemy 2 maps `postgresql://` to psycopg 3, which the
        # `postgres` extra installs.
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.as_user, *args], capture_output=True, text=True, timeout=timeout, check=False
        )

    def start(self) -> None:
        init = self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
            "-N",
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        for _attempt in range(3):
            # Small and quick: no fsync (a throw-away server), enough connections for workers.
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=60 -c shared_buffers=16MB"
            )
            started = self._run(
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
                timeout=90,
            )
            if started.returncode == 0:
                return
            # The free port may have been taken between the probe and the start: try another.
            log = self.log.read_text() if self.log.exists() else ""
            if "could not bind" not in log and "already in use" not in log:
                break
            self.port = _free_port()
        raise RuntimeError(
            f"pg_ctl start failed:\n{started.stdout}\n{started.stderr}\n"
            f"{self.log.read_text() if self.log.exists() else ''}"
        )

    def create_database(self, name: str) -> str:
        """A fresh empty database; returns its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url(name)

    def stop(self) -> None:
        if self.data.is_dir():
            self._run(
                str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"
            )
        shutil.rmtree(self.root, ignore_errors=True)


def start_server() -> PostgresServer:
    """Start a throw-away server (also used by experiments/benchmarks/scale.py)."""
    bin_dir = find_binaries()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL binaries (initdb, pg_ctl) are not installed")
    # Not pytest's tmp_path: it lives under a 0700 folder the postgres user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="search-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        import pwd

        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("running as root, but there is no `postgres` user") from None
        os.chown(root, entry.pw_uid, entry.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    server = PostgresServer(bin_dir=bin_dir, root=root, port=_free_port(), as_user=as_user)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One server for the whole session, stopped and deleted at the end."""
    global _SERVER
    if _SERVER is None:
        if find_binaries() is None:
            pytest.skip(
                "PostgreSQL binaries (initdb, pg_ctl) not found on PATH or in "
                "/usr/lib/postgresql/*/bin; install the `postgresql` package"
            )
        _SERVER = start_server()
    yield _SERVER
    if _SERVER is not None:
        _SERVER.stop()
        _SERVER = None


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """`postgresql://postgres@127.0.0.1:PORT/DB` for a fresh, empty database."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")
