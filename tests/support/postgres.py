"""A real PostgreSQL 16 with pgvector for the tests and benchmarks, from the `pgserver` package.

`pgserver.get_server` makes the data folder (initdb; as root, it runs the server as a system user
`pgserver`) and starts the server on a Unix socket only, trusting every local connection. `started`
then restarts it also listening on 127.0.0.1 at a port the kernel handed out, with TCP connections
held to a SCRAM password (pg_hba.conf), and makes a login role LOGIN with password PASSWORD that is not
a superuser. The tests connect as users do, `postgresql://facerec:PASSWORD@127.0.0.1:PORT/DB`, and a
wrong password gets the server's real "password authentication failed". The Unix socket stays for the
tests' own setup as the superuser `postgres` (`admin`): making databases, the `vector` extension in
them (a superuser's act: pgvector 0.6 is not a trusted extension), looking at other sessions.

The server holds only test data and lives as long as the `with` block; it is stopped (fast shutdown)
after it, and killed if it will not stop. Its data folder is a temporary folder of its own, not one under
pytest's base folder: as root, the server runs as another user, who must be able to reach the folder,
and every pytest session that starts makes /tmp/pytest-of-USER private again (mode 0700), which would
cut a running server off from its files (PostgreSQL panics).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LOGIN, PASSWORD = "facerec", "s3cret-pw"
DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class Postgres:
    """A running server: its data folder, its TCP port, its socket folder and the OS user it runs as."""

    data: Path
    port: int
    socket_dir: Path
    system_user: str | None

    def uri(self, database: str, table: str | None = None, password: str | None = PASSWORD) -> str:
        """The `--gallery` URI of `database` (and `#table`) over TCP as LOGIN."""
        secret = f":{password}" if password is not None else ""
        fragment = f"#{table}" if table else ""
        return f"postgresql://{LOGIN}{secret}@127.0.0.1:{self.port}/{database}{fragment}"

    def admin(self, database: str = "postgres"):
        """A connection as the superuser over the Unix socket (autocommit)."""
        import psycopg

        return psycopg.connect(
            f"postgresql://postgres@/{database}?host={self.socket_dir}&port={self.port}", autocommit=True
        )

    def database(self, name: str, vector: bool = True) -> str:
        """A new database `name` owned by LOGIN (with the `vector` extension unless `vector` is False);
        its URI without a table."""
        if not DATABASE_NAME.fullmatch(name):
            raise ValueError(f"database name {name!r}: lower-case letters, digits and _")
        with self.admin() as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            connection.execute(f"CREATE DATABASE {name} OWNER {LOGIN}")
        if vector:
            with self.admin(name) as connection:
                connection.execute("CREATE EXTENSION vector")
        return self.uri(name)

    def sessions(self, database: str) -> list[dict]:
        """The other sessions on `database` (pg_stat_activity), as dicts."""
        import psycopg.rows

        with self.admin() as connection, connection.cursor(row_factory=psycopg.rows.dict_row) as cursor:
            cursor.execute(
                "SELECT pid, application_name, state, wait_event_type, backend_xid::text AS xid, query "
                "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                [database],
            )
            return cursor.fetchall()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def started() -> Iterator[Postgres]:
    """A server for the `with` block, in a temporary folder removed after (see the module docstring)."""
    import pgserver

    folder = Path(tempfile.mkdtemp(prefix="facerec-postgres-"))
    try:
        first = pgserver.get_server(folder / "data", cleanup_mode=None)  # stopped here, not at exit
        with _serving(first) as server:
            yield server
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _serving(first) -> Iterator[Postgres]:
    """pgserver's server restarted on TCP with passwords, and the login role made; stopped after."""
    import pgserver

    data, user = first.pgdata, first.system_user
    socket_dir = first.get_postmaster_info().socket_dir
    try:
        (data / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n", encoding="utf-8"
        )
        port = free_port()
        options = f"-h 127.0.0.1 -p {port} -k {socket_dir}"
        pgserver.pg_ctl(["-w", "-o", options, "-l", str(data / "log"), "restart"], pgdata=data, user=user)
        server = Postgres(data, port, socket_dir, user)
        with server.admin() as connection:
            connection.execute(f"CREATE ROLE {LOGIN} LOGIN PASSWORD '{PASSWORD}'")
        yield server
    finally:
        _stop(data, user)


def _stop(data: Path, user: str | None) -> None:
    import subprocess

    import pgserver

    try:
        pgserver.pg_ctl(["-w", "-m", "fast", "-t", "30", "stop"], pgdata=data, user=user)
    except subprocess.CalledProcessError:
        pgserver.pg_ctl(["-m", "immediate", "stop"], pgdata=data, user=user)
