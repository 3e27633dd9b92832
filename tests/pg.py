"""A throwaway PostgreSQL server for the tests (tests/test_postgres.py, tests/test_faults.py).

``LocalPostgres`` runs Debian's PostgreSQL binaries (tests/setup_postgres.sh) in a directory of its
own, on 127.0.0.1 and a free port, with password logins over TCP. Not pytest-postgresql: its
``postgresql_proc`` runs initdb and pg_ctl as the current user, and these tests run as root
(CI, the project's machines), which PostgreSQL refuses; here the server runs as the ``postgres``
user then. Production uses a managed or containerised PostgreSQL (deploy/).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from study.cluster.servers import LOCALHOST, free_port


def postgres_bindir() -> Path | None:
    """Where Debian's postgresql package puts initdb/pg_ctl (not on PATH): the newest version."""
    for name in ("pg_ctl", "initdb"):
        found = shutil.which(name)
        if found and Path(found).resolve().with_name("postgres").exists():
            return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


@dataclass
class LocalPostgres:
    """A PostgreSQL server of its own in ``directory``, on 127.0.0.1 and a free port.

    PostgreSQL refuses to run as root, so as root the data directory is handed to an ordinary
    user (``postgres``, which Debian's package creates) and the server runs as that user.
    """

    directory: Path
    port: int = field(default_factory=free_port)
    user: str | None = None
    bindir: Path | None = None

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.bindir = self.bindir or postgres_bindir()
        if self.bindir is None:
            raise FileNotFoundError("PostgreSQL server binaries not found (apt-get install postgresql)")
        if self.user is None and os.geteuid() == 0:
            self.user = "postgres"

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, cwd="/")

    def start(self) -> "LocalPostgres":
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.user:
            info = pwd.getpwnam(self.user)
            for p in [self.directory, *self.directory.parents]:
                if p == Path("/"):
                    break
                os.chmod(p, os.stat(p).st_mode | 0o011)  # traversable by the server's user
            shutil.chown(self.directory, info.pw_uid, info.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            # trust on the local socket only for the admin; TCP needs a password (scram).
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                      "--auth-host=scram-sha-256", "-E", "UTF8", "--no-instructions")
        log = self.directory / "server.log"
        for attempt in range(3):
            try:
                self._run(
                    "pg_ctl", "-D", str(self.data), "-l", str(log), "-w", "-t", "60",
                    "-o", f"-h {LOCALHOST} -p {self.port} -k {self.directory}", "start",
                )
                return self
            except subprocess.CalledProcessError:
                # free_port is racy (study/cluster/servers.py): another process took the port first.
                if attempt == 2 or "Address already in use" not in (log.read_text() if log.exists() else ""):
                    raise
                log.unlink()
                self.port = free_port()
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = self._run("psql", "-h", str(self.directory), "-p", str(self.port), "-U", "postgres",
                        "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql)
        return out.stdout

    def create_database(self, name: str, owner: str, password: str) -> str:
        """A role with a password owning a new database; returns its SQLAlchemy URL."""
        quoted = password.replace("'", "''")
        self.psql(f"CREATE ROLE \"{owner}\" LOGIN PASSWORD '{quoted}'")
        self.psql(f'CREATE DATABASE "{name}" OWNER "{owner}"')
        return self.url(name, owner, password)

    def url(self, database: str, user: str, password: str, driver: str = "postgresql+psycopg2") -> str:
        from sqlalchemy.engine import URL

        return URL.create(driver, user, password, LOCALHOST, self.port, database).render_as_string(
            hide_password=False
        )

    def __enter__(self) -> "LocalPostgres":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
