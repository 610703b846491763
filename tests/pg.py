"""A throwaway PostgreSQL cluster for the tests: Debian's server binaries, no mocks.

`initdb` into a temporary directory, `pg_ctl start` listening on a Unix
socket in that directory only (no TCP at all), a fresh database per test,
and everything removed at the end. As root (CI) the server runs as the
`postgres` user Debian's package creates: PostgreSQL refuses to run as root.

Without the binaries the tests that need them fail in CI (`.ci/run` installs
`postgresql`) and skip elsewhere, saying what to install.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest

__all__ = ["Cluster", "find_bin"]


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
