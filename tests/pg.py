"""A throwaway PostgreSQL cluster for the tests: Debian's server binaries, no mocks.

`initdb` into a temporary directory, `pg_ctl start` listening on a Unix
socket in that directory only (no TCP at all), a fresh database per test,
and everything removed at the end. As root (CI) the server runs as the
`postgres` user Debian's package creates: PostgreSQL refuses to run as root.

Without the binaries the tests that need them fail in CI (`.ci/run` installs
`postgresql`) and skip elsewhere, saying what to install.

`Stores` gives a test stores of its backend by name (conftest's `stores`
fixture: a SQLite file, or a database of its own in the cluster);
`set_read_only` makes a database refuse writes for real (PostgreSQL's
counterpart of SQLite's `query_only` in the failing-store tests);
`lock_waiters` finds the sessions a test holds behind a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from supplier.backend import StoreBackend, open_store
from supplier.config import StorageConfig

if TYPE_CHECKING:
    import asyncpg

__all__ = ["Cluster", "Stores", "find_bin"]


def find_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin folder (Debian's layout), or None."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def require_bin() -> Path:
    folder = find_bin()
    if folder is None:
        message = "PostgreSQL server binaries not found (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return folder


class Cluster:
    """One server in a temporary directory; `url(name)` for each database in it."""

    _names = itertools.count(1)

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix=f"supplier-pg-{os.getpid()}-"))
        self.data = self.root / "data"
        self.socket = self.root  # the socket file is <root>/.s.PGSQL.5432
        self.log = self.root / "server.log"
        self._user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail(
                    "running as root needs the `postgres` user (apt-get install postgresql)"
                )
            self._user = "postgres"
            shutil.chown(self.root, "postgres", "postgres")
        self.root.chmod(0o755)

    def _run(self, args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if check and result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()}\n{log}"
            )
        return result

    def init(self) -> None:
        self._run(
            [
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "supplier",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )

    def start(self) -> None:
        options = (
            f"-k {self.socket} -c listen_addresses='' -c max_connections=300 "
            "-c fsync=off -c synchronous_commit=on -c full_page_writes=off "
            "-c shared_buffers=32MB"
        )
        self._run(
            ["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"]
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`immediate`: as if it crashed); the data stays."""
        self._run(["pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop"], check=False)

    def running(self) -> bool:
        return self._run(["pg_ctl", "-D", str(self.data), "status"], check=False).returncode == 0

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://supplier@/{database}?host={self.socket}"

    async def drop_databases(self, urls: list[str]) -> None:
        """Drop the databases of these URLs (from `new_database`), ending their sessions."""
        import asyncpg

        connection = await asyncpg.connect(self.url())
        try:
            for url in urls:
                name = url.rsplit("/", 1)[1].split("?", 1)[0]
                await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()

    async def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import asyncpg

        name = f"t{next(self._names)}"
        connection = await asyncpg.connect(self.url())
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()
        return self.url(name)


class Stores:
    """Stores of the test's backend by name: the same name is the same database."""

    def __init__(self, backend: str, tmp_path: Path, cluster: Cluster | None) -> None:
        self.backend = backend
        self._tmp = tmp_path
        self._cluster = cluster
        self._urls: dict[str, str] = {}
        self.opened: list[StoreBackend] = []

    async def storage(self, name: str = "supplier") -> StorageConfig:
        """Where the store `name` is: a file in tmp_path, or a database of its own."""
        if self._cluster is None:
            return StorageConfig(path=str(self._tmp / f"{name}.db"))
        if name not in self._urls:
            if not self._cluster.running():
                self._cluster.start()  # a test that stopped the server and failed
            self._urls[name] = await self._cluster.new_database()
        return StorageConfig(url=self._urls[name])

    async def open(self, name: str = "supplier") -> StoreBackend:
        """The store `name`, open (closed at the test's end if the test did not)."""
        store = await open_store(await self.storage(name))
        self.opened.append(store)
        return store

    async def close(self) -> None:
        """Close what the test left open and drop its databases (the cluster stays small)."""
        for store in self.opened:
            await store.close()
        if self._cluster is not None and self._urls:
            await self._cluster.drop_databases(list(self._urls.values()))


async def set_read_only(url: str, read_only: bool, timeout: float = 10.0) -> None:
    """Make the database at `url` refuse every write (or accept them again), for real.

    PostgreSQL's own rule: the database's `default_transaction_read_only`,
    which a session takes when it starts, so every other session of that
    database is ended (a store's pool reconnects under the new rule) and this
    returns once they have exited: no write slips through an old session.
    """
    import asyncpg

    connection = await asyncpg.connect(
        url, server_settings={"default_transaction_read_only": "off"}
    )
    try:
        async with asyncio.timeout(timeout):
            name = await connection.fetchval("SELECT current_database()")
            value = "on" if read_only else "off"
            await connection.execute(
                f'ALTER DATABASE "{name}" SET default_transaction_read_only = {value}'
            )
            ended = await connection.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            # PostgreSQL 14+ waits for each to exit (true), or answers false: after
            # 5 s, or for a session that had ended already (one closing as it was
            # listed: a store closed just before). Only one still listed is stuck.
            answers = await connection.fetch(
                "SELECT p, pg_terminate_backend(p, 5000) AS gone FROM unnest($1::int[]) p",
                [row[0] for row in ended],
            )
            stuck = await connection.fetch(
                "SELECT pid FROM pg_stat_activity WHERE pid = ANY($1::int[])",
                [row["p"] for row in answers if not row["gone"]],
            )
            assert not stuck, f"sessions {[r[0] for r in stuck]} of the database did not end in 5 s"
    finally:
        await connection.close()


async def lock_waiters(watcher: asyncpg.Connection[asyncpg.Record], count: int) -> list[int]:
    """The backends of the watcher's database waiting for a lock, oldest transaction
    first, once there are `count` of them (10 s at most)."""
    async with asyncio.timeout(10):
        while True:
            rows = await watcher.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' ORDER BY xact_start"
            )
            if len(rows) >= count:
                return [row[0] for row in rows]
            await asyncio.sleep(0.01)  # polling the server's view, under the timeout
