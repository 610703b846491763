"""Shared fixtures: quiet logs, a leaked-task check, the virtual modem bank, event recorders."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import uvloop

from modems.emulator import VirtualModemBank
from modems.events import PoolEvent, SimLost, SimReady, SmsReceived
from modems.modem import ModemSettings
from modems.pool import ModemPool
from supplier.backend import StoreBackend
from supplier.daemon import Daemon

from .hubkit import FakeHub, RunFactory, Running, make_config
from .pg import Cluster, Stores, require_bin

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

SHARED = Path(__file__).resolve().parents[2] / "shared"

# Fast timings for tests: every wait is still event-driven, these only bound them.
FAST = ModemSettings(
    command_timeout=0.5,
    probe_timeout=0.3,
    health_interval=0.2,
    sweep_interval=30.0,
    reconnect_initial=0.05,
    reconnect_max=0.5,
    not_modem_retry=0.5,
    busy_delay=0.02,
)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every test on uvloop: the loop the daemon, the emulator and the CLI run on."""
    return {"uvloop": uvloop.new_event_loop}


def shared_dir(*parts: str) -> Path:
    """A folder of ../shared; missing is a failure in CI and a skip elsewhere."""
    path = SHARED.joinpath(*parts)
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: CI must have shared/ beside the clone")
        pytest.skip(
            f"{path} is missing: put the shared data folder there (shared/ beside the clone)"
        )
    return path


@pytest.fixture(autouse=True)
async def _no_leaked_tasks() -> AsyncIterator[None]:
    yield
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for task in leaked:
        task.cancel()
    assert not leaked, f"tasks left running: {leaked}"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One throwaway PostgreSQL server for the session (tests/pg.py), removed at its end."""
    cluster = Cluster(require_bin())
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
async def pg_url(pg_cluster: Cluster) -> str:
    """The URL of a fresh, empty database in the session's cluster."""
    if not pg_cluster.running():
        pg_cluster.start()  # a test that stopped the server and failed before starting it
    return await pg_cluster.new_database()


# -- both backends ---------------------------------------------------------------------
# A test marked `backends` (or a module: `pytestmark = pytest.mark.backends`) runs once
# per backend if it uses `backend` (directly, or through `stores`, `store` or `run`);
# elsewhere those fixtures give SQLite, so the suite's time grows only where the issue
# asks for both. `parametrize("backend", ["postgresql"], indirect=True)`: that one only.

BACKENDS = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "backends: run the module's store-using tests on SQLite and on PostgreSQL"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("backends"):
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The store the test runs on, "sqlite" or "postgresql" (SQLite unless parametrised)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
async def stores(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Stores]:
    cluster = request.getfixturevalue("pg_cluster") if backend == "postgresql" else None
    made = Stores(backend, tmp_path, cluster)
    yield made
    await made.close()


@pytest.fixture
async def store(stores: Stores) -> StoreBackend:
    """An open, empty store of the test's backend."""
    return await stores.open()


class Recorder:
    """An event handler that keeps every event and lets tests wait for one."""

    def __init__(self) -> None:
        self.events: list[PoolEvent] = []
        self.before_accept: Callable[[SmsReceived], Awaitable[None]] | None = None
        self._changed = asyncio.Event()

    async def __call__(self, event: PoolEvent) -> None:
        if isinstance(event, SmsReceived) and self.before_accept is not None:
            await self.before_accept(event)
        self.events.append(event)
        self._changed.set()

    def of(self, kind: type[PoolEvent]) -> list[PoolEvent]:
        return [e for e in self.events if isinstance(e, kind)]

    def sms(self) -> list[SmsReceived]:
        return [e for e in self.events if isinstance(e, SmsReceived)]

    def ready_ports(self) -> set[str]:
        ready: dict[str, bool] = {}
        for event in self.events:
            if isinstance(event, SimReady):
                ready[event.port] = True
            elif isinstance(event, SimLost):
                ready[event.port] = False
        return {port for port, ok in ready.items() if ok}

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


BankFactory = Callable[..., Awaitable[VirtualModemBank]]


@pytest.fixture
async def make_bank(tmp_path: Path) -> AsyncIterator[BankFactory]:
    banks: list[VirtualModemBank] = []

    async def factory(count: int, **kwargs: object) -> VirtualModemBank:
        bank = VirtualModemBank(count, str(tmp_path / f"bank{len(banks)}"), **kwargs)  # type: ignore[arg-type]
        await bank.start()
        banks.append(bank)
        return bank

    yield factory
    for bank in banks:
        bank.stop()


@pytest.fixture
async def pool_of() -> AsyncIterator[Callable[..., Awaitable[tuple[ModemPool, Recorder]]]]:
    pools: list[ModemPool] = []

    async def factory(
        bank: VirtualModemBank, settings: ModemSettings = FAST, recorder: Recorder | None = None
    ) -> tuple[ModemPool, Recorder]:
        recorder = recorder or Recorder()
        pool = ModemPool([bank.pattern], recorder, settings, rescan_interval=0.1)
        await pool.start()
        pools.append(pool)
        return pool, recorder

    yield factory
    for pool in pools:
        await pool.stop()


@pytest.fixture
async def run(tmp_path: Path, make_bank: BankFactory, stores: Stores) -> AsyncIterator[RunFactory]:
    """Start daemons on the test's backend (on PostgreSQL, all share one database)."""
    started: list[tuple[Daemon, list[FakeHub]]] = []

    async def factory(modems: int = 4, hubs: tuple[str, ...] = ("alpha",), **extra: Any) -> Running:
        bank = await make_bank(modems)
        fakes = {name: FakeHub() for name in hubs}
        for fake in fakes.values():
            await fake.start()
        url = (await stores.storage()).url
        daemon = Daemon(make_config(tmp_path, bank, fakes, storage_url=url, **extra))
        await daemon.start()
        started.append((daemon, list(fakes.values())))
        running = Running(daemon, bank, fakes)
        await running.ready(modems)
        return running

    yield factory
    for daemon, fakes in started:
        await daemon.stop()
        for fake in fakes:
            await fake.stop()
