"""One daemon per database; a lost or replaced database never re-issues an id (issue 11.4-5).

The daemons here are real `supplier run` processes (the harness of
test_run_e2e) or the daemon in this process on the virtual modem bank.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from supplier.sale import SaleRequest
from supplier.store import MAX_JSON_ID, Store

from .hubkit import RunFactory
from .test_run_e2e import Process, call, free_port, setup  # noqa: F401 - the fixture

NUMBER = {"action": "GET_NUMBER", "country": "russia", "operator": "mts", "service": "vk"}


async def exit_code(process: Process, timeout: float = 20.0) -> int:
    assert process.proc is not None
    code = await asyncio.wait_for(process.proc.wait(), timeout)
    if process._reader is not None:
        await asyncio.wait_for(process._reader, 5)
    return code


def remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def other_daemon(config: Path) -> Process:
    """The same configuration on other listen ports: only the storage is shared."""
    text = config.read_text()
    port = text.split('listen: "127.0.0.1:', 1)[1].split('"', 1)[0]
    second = config.with_name("second.yaml")
    second.write_text(text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}"))
    return Process(second)


async def test_a_second_daemon_on_the_same_database_refuses_to_start(setup: Any) -> None:  # noqa: F811
    bank, hub, first, url = setup
    await first.start()
    await first.until("daemon started")
    assert first.proc is not None
    second = other_daemon(first.config)
    await second.start()
    assert await exit_code(second) == 1
    assert second.count("daemon started") == 0
    [line] = [entry["event"] for entry in second.lines]  # one line, on stderr
    assert f"pid {first.proc.pid}" in line and "in use by another supplier daemon" in line
    # The first one is untouched; once it dies (even by kill -9) the lock goes with it.
    assert (await call(url, NUMBER))["status"] == "SUCCESS"
    await first.stop(signal.SIGKILL)
    await second.start()
    await second.until("daemon started")
    assert await second.stop() == 0


async def test_a_deleted_or_replaced_database_stops_the_daemon_and_ids_continue_above(
    setup: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    bank, hub, process, url = setup
    db = tmp_path / "db" / "supplier.db"
    await process.start()
    await process.until("SIM in inventory", 4)
    first = await call(url, NUMBER)
    assert first["status"] == "SUCCESS"
    remove_database(db)
    assert await exit_code(process, timeout=15) == 1  # systemd's Restart=on-failure
    [lost] = [e for e in process.lines if e["event"] == "database file lost; no more sales"]
    assert lost["level"] == "error" and "was deleted" in lost["problem"]
    assert not db.exists()  # nothing more was written to the deleted file's name
    # Restarted on a new, empty database: the ids go on above the lost ones.
    await process.start()
    await process.until("SIM in inventory", 4)
    second = await call(url, NUMBER)
    assert second["status"] == "SUCCESS", second
    assert type(second["activationId"]) is int
    assert first["activationId"] < second["activationId"] <= MAX_JSON_ID
    # Now replaced under it by another file (a restored copy): the same.
    copy = db.with_name("copy.db")
    shutil.copy(db, copy)
    os.replace(copy, db)
    assert await exit_code(process, timeout=15) == 1
    [lost] = [e for e in process.lines if e["event"] == "database file lost; no more sales"]
    assert "was replaced" in lost["problem"]


async def test_a_replaced_database_stops_sales_at_once(run: RunFactory) -> None:
    r = await run(2)
    await r.number("alpha", "mts")
    store = r.daemon.running.store
    assert store is not None
    path = Path(store.path)
    copy = path.with_name("copy.db")
    shutil.copy(path, copy)
    os.replace(copy, path)  # another file under the same name (a restore, a mistake)
    async with asyncio.timeout(5):
        await r.daemon.failed.wait()
    assert r.daemon.failure is not None and "replaced" in r.daemon.failure
    answer = await r.call("alpha", {**NUMBER, "operator": "megafon"})
    assert answer["status"] == "ERROR"
    services = await r.call("alpha", {"action": "GET_SERVICES"})
    assert services == {"status": "SUCCESS", "countryList": []}  # nothing offered any more


async def test_a_new_database_never_reissues_an_id(tmp_path: Path) -> None:
    from .test_push_faults import queue_sms

    path = tmp_path / "s.db"

    async def open_one(store: Store) -> int:
        activation = await store.open_activation(
            SaleRequest("alpha", "russia", "mts", "vk"),
            iccid="8970010000000000004",
            number="79001234567",
            country="russia",
            operator="mts",
            now=1.0,
            release_at=2.0,
        )
        return activation.id

    store = await Store.open(path)
    issued = [await open_one(store)]
    await queue_sms(store, 1)
    sms = [s.id for s in await store.recent_sms()]
    await store.close()
    backup = tmp_path / "backup.db"
    shutil.copy(path, backup)
    store = await Store.open(path)
    issued.append(await open_one(store))
    await store.close()
    # The database is lost, then a backup from before the last id comes back.
    remove_database(path)
    store = await Store.open(path)
    issued.append(await open_one(store))
    await queue_sms(store, 1)
    sms += [s.id for s in await store.recent_sms()]
    await store.close()
    shutil.copy(backup, path)
    store = await Store.open(path)
    issued.append(await open_one(store))
    await store.close()
    assert issued == sorted(set(issued)), issued  # every one new, each above the last
    assert sms == sorted(set(sms)), sms
    assert all(type(i) is int and i <= MAX_JSON_ID for i in issued + sms)


@pytest.mark.backends
async def test_housekeeping_on_a_failing_store_waits_between_attempts(run: RunFactory) -> None:
    import contextlib
    import time

    from modems.pdu import encode_deliver_parts

    from .test_delivery import received
    from .test_push_faults import captured_logs, set_writable

    r = await run(1, sms={"reassembly_timeout": "300ms"})
    inbox, store = r.daemon.running.inbox, r.daemon.running.store
    assert inbox is not None and store is not None
    pdus = encode_deliver_parts("Bank", "x" * 400, reference=9)
    await inbox.accept(received("8970010000000000004", pdus[0], 1, at=time.time()))
    await set_writable(store, False)  # the part is stored; completing it will fail
    event = "cannot complete waiting multipart SMS"
    with captured_logs() as logs:
        await logs.wait_for(event, timeout=5)
        # Three of the old 50 ms turns would have tried again; the back-off is 5 s.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.5):
                while sum(e["event"] == event for e in logs) < 2:
                    logs.changed.clear()
                    await logs.changed.wait()
        assert [e["log_level"] for e in logs if e["event"] == event] == ["error"]
        await set_writable(store, True)  # the next turn (5 s on) completes it: nothing lost
        await logs.wait_for("waiting multipart SMS completed again", timeout=10)
    [sms] = await store.recent_sms()
    assert not sms.complete and sms.text == "x" * 153


# -- PostgreSQL: a database several daemons share on purpose -------------------------------


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_daemons_on_one_postgresql_database_start_without_a_lock_or_file_watch(
    run: RunFactory,
) -> None:
    first = await run(1)
    second = await run(1)  # the same database (several hosts): not refused
    for r in (first, second):
        assert r.daemon.running.store.shared and r.daemon.running.store.backend == "postgresql"
        assert "database watch" not in {task.get_name() for task in r.daemon._tasks}
        assert r.daemon._db_lock is None  # DatabaseLock is SQLite's alone
        services = await r.call("alpha", {"action": "GET_SERVICES"})
        assert services["status"] == "SUCCESS"
