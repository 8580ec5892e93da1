"""A real PostgreSQL server for the tests: Debian's binaries, initdb in a temporary folder, a free port.

One server per test session (per xdist worker), started on first use and stopped at the end; each test gets a fresh
database of its own (`CREATE DATABASE`, fast with fsync off). As root the server runs as the `postgres` user, as
PostgreSQL refuses to run as root. Where the binaries are missing the PostgreSQL variants skip, naming what to install
(CI installs the `postgresql` package).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN_DIRS = [Path(os.environ.get("AUDITOR_PG_BIN", "/usr/lib/postgresql/15/bin")),
            *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]


def _bin_dir() -> Path | None:
    for d in BIN_DIRS:
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="auditor-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = "postgres"
        # Connections over TCP need this password (scram), as on a real server; the socket stays trusted.
        self.password = secrets.token_hex(8)
        self._as_root = os.geteuid() == 0
        self._names = itertools.count(1)

    def _argv(self, *cmd: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if self._as_root else list(cmd)

    def _run(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._argv(*cmd), capture_output=True, text=True, check=False, timeout=120)

    def start(self) -> PostgresServer:
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        if self._as_root:
            shutil.chown(pwfile, "postgres", "postgres")
        p = self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, "--auth-local=trust",
                      "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C",
                      "--no-sync")
        if p.returncode:
            raise RuntimeError(f"initdb failed: {p.stderr or p.stdout}")
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        p = self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-o", opts,
                      "-w", "-t", "60", "start")
        if p.returncode:
            log = (self.root / "log").read_text(errors="replace") if (self.root / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {p.stderr or p.stdout}\n{log}")
        self._watch()
        return self

    def _watch(self) -> None:
        """Stop the server when this test process ends however it ends (a timeout's kill, a crashed worker): a
        detached watcher polls our pid, so no server outlives the session that started it."""
        stop = " ".join(shlex.quote(a) for a in self._argv(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m",
                                                            "immediate", "-w", "stop"))
        script = (f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 2; done; {stop} >/dev/null 2>&1; "
                  f"rm -rf {shlex.quote(str(self.root))}")
        subprocess.Popen(["sh", "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)

    def url(self, database: str = "postgres", with_password: bool = True) -> str:
        auth = f"{self.user}:{self.password}" if with_password else self.user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    server = PostgresServer(bin_dir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server."""
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    with contextlib.suppress(Exception):
        postgres_server.drop_database(name)


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")
