"""The daemon: store, inventory, inbox and pusher, the modem pool, the hub endpoint.

Start order: store → inventory and inbox rebuilt from it → pusher (sends
what was left undelivered) → hub endpoint → status route → (on a shared
store: this host's lease and published SIMs, supplier/hosts.py) → modem pool.
Stop order is the reverse of what matters: stop taking hub requests (those
in flight finish; this host's SIMs leave every host's counts), stop the
modems (no new SMS), stop the pusher, close the store.

One daemon per SQLite database: `start` first takes the lock beside the
database file and refuses to start, naming the holder's pid, when another
daemon has it. On PostgreSQL (`storage.url`) several daemons sharing the
database is the point, so neither the lock nor the file watch applies.
Every `FILE_CHECK_INTERVAL` seconds the daemon checks that its SQLite
database file is still the one it opened; if it was deleted or replaced,
the store refuses every write (GET_SERVICES offers nothing, GET_NUMBER
answers ERROR, no SMS leaves its SIM), the daemon logs
it at error level and sets `failed`, and `supplier run` exits non-zero so
systemd restarts it on the new file.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog
from aiohttp import web

from modems.events import (
    ModemState,
    ModemStateChanged,
    NetworkChanged,
    PoolEvent,
    SimLost,
    SimReady,
    SmsReceived,
)
from modems.modem import Modem, ModemSettings
from modems.pool import ModemPool, expand_ports

from .backend import StoreBackend, open_store
from .bank_reload import RESTART_SECTIONS, Change, changed_fields, plan_banks, restart_only
from .banks_status import BankCollector
from .config import Config, RotationConfig
from .errors import StoreError, SupplierError
from .heap import HeapFreezer
from .hosts import Hosts
from .hosts_status import HostsView, follow_operators
from .inbox import Inbox
from .inventory import Inventory
from .metrics import Metrics, watch_loop_lag
from .pgstore import PgStore
from .protocol import ProtocolService, create_protocol_app
from .pusher import Pusher
from .rotation import Rotation
from .status import StatusView, create_status_app
from .store import DatabaseLock
from .upkeep import Upkeep

__all__ = ["Daemon", "Running"]

log = structlog.get_logger("supplier.daemon")

SHUTDOWN_GRACE = 5.0  # seconds for hub requests in flight to finish at a stop
SEEN_INTERVAL = 60.0  # live SIMs' last_seen is written this often (`supplier sims`)
STARTUP_SUMMARY_WITHIN = 60.0  # the start-up summary waits this long at most for modems
# What an operator calls a modem's state, for the one log line per change that matters.
_LOGGED = {
    ModemState.READY: "ready",
    ModemState.NO_SIM: "no_sim",
    ModemState.SIM_LOCKED: "sim_locked",
    ModemState.UNRESPONSIVE: "unresponsive",
    ModemState.NOT_MODEM: "not_modem",
    ModemState.RESETTING: "resetting",
    ModemState.DISCONNECTED: "gone",
    ModemState.REMOVED: "gone",
}
_SETTLED = frozenset(
    {ModemState.READY, ModemState.NO_SIM, ModemState.SIM_LOCKED, ModemState.NOT_MODEM}
)
FILE_CHECK_INTERVAL = 1.0  # seconds between two checks that the database file is still ours
HOUSEKEEPING_BACKOFF = (5.0, 60.0)  # after a store failure: first wait, cap (doubling)


def _number_codes(config: Config) -> dict[str, str]:
    return {code: o.number_ussd for code, o in config.networks.items() if o.number_ussd}


def _balance_codes(config: Config) -> dict[str, str]:
    return {code: o.balance_ussd for code, o in config.networks.items() if o.balance_ussd}


def modem_settings(config: Config) -> ModemSettings:
    return ModemSettings(
        baudrate=config.modems.baudrate,
        pin=config.modems.pin,
        command_timeout=config.modems.command_timeout,
        health_interval=config.modems.health_interval,
    )


async def _serve(
    app: web.Application, listen: tuple[str, int]
) -> tuple[web.AppRunner, tuple[str, int]]:
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE
    )
    await runner.setup()
    host, port = listen
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    address = runner.addresses[0]
    return runner, (str(address[0]), int(address[1]))


def _address(address: tuple[str, int] | None) -> str:
    if address is None:
        return "-"
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Running:
    """The parts of a started daemon: built once by `Daemon.start`, gone at `stop`."""

    store: StoreBackend
    inventory: Inventory
    inbox: Inbox
    pusher: Pusher
    protocol: ProtocolService
    pool: ModemPool
    upkeep: Upkeep
    rotation: Rotation | None  # the SIM banks' slot rotation; None without `banks:`
    view: StatusView
    listening: tuple[str, int]  # the hub endpoint's address (port 0 in the config: the real one)
    status_listening: tuple[str, int]
    hosts: Hosts | None = None  # several hosts on one PostgreSQL store: this host's part


def _needs_restart(changes: Iterable[Change]) -> None:
    """A reload's changes it does not apply, one warning each (key, new and running value)."""
    for change in changes:
        log.warning(
            "configuration change needs a restart; not applied until then",
            key=change.key,
            value=change.value,
            running=change.running,
        )


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        heap: HeapFreezer | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        # `supplier run` freezes the long-lived heap (heap.py: short GC pauses); a
        # daemon inside another program (the tests, the demo) leaves its GC alone.
        self.heap = heap
        self.metrics = Metrics()
        self._running: Running | None = None
        self._db_lock: DatabaseLock | None = None
        self._runners: tuple[web.AppRunner, ...] = ()  # hub endpoint, status route
        self._tasks: list[asyncio.Task[None]] = []  # background work, cancelled at stop
        self._pool_changed = asyncio.Event()
        self._port_states: dict[str, str] = {}  # port → the last state logged for it
        self.seen_interval = SEEN_INTERVAL
        self._seen_failing = False  # touch_sims failed: logged once per episode
        self._stopping = False  # modems stopped on purpose: no "gone" lines for them
        self.failed = asyncio.Event()  # set when the daemon cannot go on (its database is gone)
        self.failure: str | None = None
        self.metrics.registry.register(
            BankCollector(lambda: self._running.rotation if self._running else None)
        )
        self._observers: list[Callable[[PoolEvent], None]] = []
        self._reloading = asyncio.Lock()  # two SIGHUPs close together: one reload at a time

    @property
    def running(self) -> Running:
        """The started daemon's parts; an error before `start` or after `stop`."""
        if self._running is None:
            raise SupplierError("the daemon is not running")
        return self._running

    def subscribe(self, observer: Callable[[PoolEvent], None]) -> None:
        """Be told of every pool event once the daemon has handled it (tests, status page)."""
        self._observers.append(observer)

    async def start(self) -> None:
        """Build every part, serve both routes, then start the modems.

        A failure part-way (the database held by another daemon, a listen
        port taken) undoes what was started, in reverse, and re-raises.
        """
        config = self.config
        async with contextlib.AsyncExitStack() as undo:
            if config.storage.url is None and config.storage.path != ":memory:":
                lock = DatabaseLock(config.storage.path)
                lock.acquire()  # raises StoreError naming the holder's pid
                undo.callback(lock.release)
                self._db_lock = lock
            store = await open_store(config.storage, host=config.host.name)
            undo.push_async_callback(store.close)
            inventory = Inventory.from_config(store, config, clock=self.clock)
            await inventory.load()
            if isinstance(store, PgStore):  # shared: sell and count over every live host
                inventory.hosts = Hosts(store, inventory, config.host)
            pusher = Pusher(store, config.hubs, clock=self.clock, on_result=self.metrics.on_push)
            inbox = Inbox(
                store,
                inventory,
                reassembly_timeout=config.sms.reassembly_timeout,
                on_queued=pusher.queued,
                clock=self.clock,
            )
            await inbox.load()
            await pusher.start()
            undo.push_async_callback(pusher.stop)
            protocol = ProtocolService(inventory, config.hubs, on_request=self.metrics.on_request)
            # A bank's modules are modems like any other; its control port is not one.
            modules = [port for bank in config.banks for port in bank.modules.values()]
            pool = ModemPool(
                [*config.modems.ports, *(p for p in modules if p not in config.modems.ports)],
                self.on_pool_event,
                modem_settings(config),
                rescan_interval=config.modems.rescan_interval,
                exclude=[bank.control for bank in config.banks if bank.control],
            )
            rotation = (
                Rotation(
                    config.banks,
                    config.rotation,
                    inventory,
                    pool,
                    clock=self.clock,
                    command_timeout=config.modems.command_timeout,
                )
                if config.banks
                else None
            )
            upkeep = Upkeep(
                inventory,
                store,
                pool.by_iccid,
                codes=_number_codes(config),
                balance_codes=_balance_codes(config),
                settings=config.ussd,
                clock=self.clock,
            )
            await upkeep.load()
            inventory.on_sold = upkeep.sold
            # Several hosts on one database: the status page shows and reaches them all.
            hosts_view = (
                HostsView(store, config.host.name, config.host.status_url)
                if isinstance(store, PgStore)
                else None
            )
            view = StatusView(
                inventory,
                store,
                pool,
                upkeep,
                rotation,
                hubs=[hub.name for hub in config.hubs],
                clock=self.clock,
                hosts=hosts_view,
            )
            app = create_protocol_app(
                protocol, path=config.server.path, max_body=config.server.max_body
            )
            runner, listening = await _serve(app, config.server.listen)
            undo.push_async_callback(runner.cleanup)
            token = config.status.token.get_secret_value() if config.status.token else None
            status_app = create_status_app(
                view, self.metrics, token, listen_host=config.status.listen[0]
            )
            status_runner, status_listening = await _serve(status_app, config.status.listen)
            self._runners = (runner, status_runner)
            self._running = Running(
                store,
                inventory,
                inbox,
                pusher,
                protocol,
                pool,
                upkeep,
                rotation,
                view,
                listening,
                status_listening,
                inventory.hosts,
            )
            undo.pop_all()  # started: `stop` undoes it from here on
        matched = len(expand_ports(pool.patterns, pool.exclude))  # what the pool will open
        upkeep.start()
        if inventory.hosts is not None:
            inventory.hosts.start()  # the lease first: this host's SIMs are published as they come
        await pool.start()
        if rotation is not None:
            await rotation.start()
        self._tasks = [
            asyncio.create_task(self._housekeep(), name="housekeeping"),
            asyncio.create_task(watch_loop_lag(self.metrics.loop_lag.observe), name="loop lag"),
        ]
        if not store.shared:  # a file of ours to lose; a database server has none
            self._tasks.append(asyncio.create_task(self._watch_database(), name="database watch"))
        if view.hosts is not None:  # operators' changes made on other hosts' pages
            follow = follow_operators(inventory, view.hosts, config.host.renew, self.clock)
            self._tasks.append(asyncio.create_task(follow, name="operators' changes"))
        log.info(
            "daemon started",
            listen=_address(listening),
            status=f"http://{_address(status_listening)}/",
            ports=config.modems.ports,
            ports_matched=matched,
            hubs=[hub.name for hub in config.hubs],
            sims_known=len(inventory.sims),
            store=f"{store.backend} {store.path}",
        )
        if not matched:
            log.warning(
                "no serial port matches modems.ports; waiting for modems to be plugged in",
                ports=config.modems.ports,
            )
        self._tasks.append(asyncio.create_task(self._startup_summary(), name="startup summary"))

    def status_line(self) -> str:
        """One line for systemd's STATUS= (`systemctl status supplier`)."""
        if self._running is None:
            return "starting"
        t = self._running.view.summary()
        return (
            f"{t['modems']} modems; {t['ready']} SIMs ready, {t['active']} active, "
            f"{t['no_signal']} no signal, "
            f"{t['no_number']} no number, {t['no_sim']} no SIM, {t['errors']} errors; "
            f"{t['open_activations']} open activations"
        )

    async def _startup_summary(self) -> None:
        """One line once every modem found at start has settled (or after a minute)."""
        running = self.running
        pool = running.pool
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_SUMMARY_WITHIN
        while not all(self._settled(m) for m in pool) and loop.time() < deadline:
            self._pool_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(deadline - loop.time()):
                    await self._pool_changed.wait()
        t = running.view.summary()
        counts = pool.counts()
        log.info(
            "start-up summary",
            modems=t["modems"] - counts.get(ModemState.NOT_MODEM, 0),
            not_modem_ports=counts.get(ModemState.NOT_MODEM, 0),
            still_starting=sum(1 for m in pool if not self._settled(m)),
            sims_ready=t["ready"],
            sims_active=t["active"],
            no_signal=t["no_signal"],
            no_number=t["no_number"],
            no_sim=t["no_sim"],
            errors=t["errors"],
            hubs=[hub.name for hub in self.config.hubs],
            listen=_address(running.listening),
            status=f"http://{_address(running.status_listening)}/",
        )

    def _settled(self, modem: Modem) -> bool:
        """Done starting: a state to stay in, and a ready modem's SIM is in the inventory."""
        if modem.state is not ModemState.READY:
            return modem.state in _SETTLED
        sim = self.running.inventory.sims.get(modem.sim.iccid) if modem.sim else None
        return sim is not None and sim.online

    def _log_modem(self, event: ModemStateChanged) -> None:
        """One line per change an operator cares about: ready, reset, gone, back, no SIM…"""
        state = _LOGGED.get(event.state)
        if state is None or self._stopping:
            return  # probing, initializing: steps on the way, not states
        before = self._port_states.get(event.port)
        if state == before:
            return  # a not_modem port re-probed every minute, a reconnect retried
        self._port_states[event.port] = state
        fields = {"port": event.port, "detail": event.detail}
        if state == "ready":
            if before in ("gone", "resetting", "unresponsive"):
                log.info("modem back", was=before, **fields)
        elif state == "unresponsive":
            log.warning("modem not answering; its SIM is out of sale until it answers", **fields)
        elif state == "resetting":
            log.warning("modem reset", **fields)
        elif state == "gone":
            unplugged = event.state is ModemState.REMOVED
            log.warning("modem unplugged" if unplugged else "modem gone; reopening", **fields)
        elif state == "no_sim":
            log.warning("modem has no SIM", **fields)
        elif state == "sim_locked":
            log.warning("SIM locked; not used", **fields)
        else:
            log.info("port does not answer AT; not a modem (probed again every minute)", **fields)

    async def stop(self) -> None:
        """Stop taking hub requests (those in flight finish), then the modems, the pusher
        (pushes in flight get `SHUTDOWN_GRACE`), the store and the lock."""
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        runners, self._runners = self._runners, ()
        for runner in runners:
            await runner.cleanup()  # the hub endpoint first: no more hub requests
        running = self._running
        if running is not None:
            running.protocol.close()
            if running.hosts is not None:
                await running.hosts.stop()  # its SIMs leave every host's counts now
            await running.upkeep.stop()
            if running.rotation is not None:
                await running.rotation.stop()
            await running.pool.stop()  # its last events (SIMs lost) still reach the inventory
            await running.pusher.stop(grace=SHUTDOWN_GRACE)
            await running.store.close()
            self._running = None
        if self._db_lock is not None:
            self._db_lock.release()
            self._db_lock = None
        if self.heap is not None:
            self.heap.close()
        if running is not None:
            log.info("daemon stopped")

    async def reload(self, config: Config) -> None:
        """SIGHUP: new hubs, services, SIM overrides, bank and rotation settings.

        Activations and modems stay. What cannot change without a restart (a
        bank's ports, a bank added or removed) is logged, each time, as needing one.
        """
        async with self._reloading:
            await self._reload(config)

    async def _reload(self, config: Config) -> None:
        running = self.running
        # What only a restart applies (ports, listen addresses, the store, ...) keeps
        # running as it is, and is said at every reload until then, as banks' ports are.
        _needs_restart(restart_only(self.config, config))
        config = config.model_copy(
            update={section: getattr(self.config, section) for section in RESTART_SECTIONS}
        )
        running.inventory.reconfigure_from(config)
        running.protocol.set_hubs(config.hubs)
        running.upkeep.set_codes(_number_codes(config), _balance_codes(config))
        await running.pusher.set_hubs(config.hubs)
        running.view.hubs = [hub.name for hub in config.hubs]
        banks = await self._reload_banks(config)
        self.config = config
        log.info(
            "configuration reloaded",
            hubs=[hub.name for hub in config.hubs],
            services=list(config.services),
            sim_overrides=len(config.sims),
            network_overrides=len(config.networks),
            banks=banks,
        )

    async def _reload_banks(self, config: Config) -> list[str]:
        """Apply what `banks:`/`rotation:` may change live; name what needs a restart."""
        rotation = self.running.rotation
        plan = plan_banks(rotation.banks if rotation is not None else (), config.banks)
        applied = list(plan.applied)
        if rotation is not None:
            applied += changed_fields(
                "rotation", rotation.settings, config.rotation, list(RotationConfig.model_fields)
            )
            await rotation.reconfigure(plan.banks, plan.renamed, config.rotation)
        for change in applied:
            log.info("bank setting changed", key=change.key, value=change.value, was=change.running)
        _needs_restart(plan.restart)
        return [bank.name for bank in plan.banks]

    async def on_pool_event(self, event: PoolEvent) -> None:
        inventory, inbox = self.running.inventory, self.running.inbox
        if isinstance(event, SmsReceived):
            self.metrics.sms_parts_received.inc()
            if await self.running.upkeep.takes(event):
                return  # the operator's answer to our number request: for no hub
            await inbox.accept(event)  # raises if not durable: the SMS stays on the SIM
        elif isinstance(event, SimReady):
            sim = await inventory.sim_ready(event.port, event.sim, event.network)
            log.info(
                "SIM in inventory",
                port=event.port,
                iccid=sim.iccid,
                number=sim.number,
                country=sim.country,
                operator=sim.operator,
                sellable=inventory.present(sim),
            )
            self.running.upkeep.sim_ready(sim.iccid)
        elif isinstance(event, SimLost):
            inventory.sim_lost(event.iccid, event.port)
            lost = inventory.sims.get(event.iccid)
            holder = inventory.holder(event.iccid)
            (log.debug if self._stopping else log.warning)(
                "SIM lost",
                port=event.port,
                iccid=event.iccid,
                reason=event.reason,
                number=lost.number if lost else None,
                open_activation=holder.id if holder else None,
            )
        elif isinstance(event, NetworkChanged):
            inventory.network_changed(event.iccid, event.network)
        elif isinstance(event, ModemStateChanged):
            self._log_modem(event)
            if event.state in (ModemState.REMOVED, ModemState.DISCONNECTED):
                inventory.modem_gone(event.port)
        if self.running.rotation is not None:
            self.running.rotation.on_event(event)
        self._pool_changed.set()
        for observer in self._observers:
            observer(event)

    async def _housekeep(self) -> None:
        """Complete multipart SMS whose parts stopped coming; forget old activations."""
        inbox, inventory = self.running.inbox, self.running.inventory
        seen_at = self.clock()
        first, cap = HOUSEKEEPING_BACKOFF
        backoff = 0.0  # after a store failure: wait this long at least (never a hot loop)
        while True:
            deadline = inbox.next_deadline()
            delay = 5.0 if deadline is None else min(5.0, max(0.05, deadline - self.clock()))
            await asyncio.sleep(max(delay, backoff))
            try:
                await inbox.expire()
            except StoreError as exc:
                if not backoff:
                    log.error("cannot complete waiting multipart SMS", error=str(exc))
                else:
                    log.debug("cannot complete waiting multipart SMS", error=str(exc))
                backoff = min(cap, backoff * 2) if backoff else first
            else:
                if backoff:
                    log.info("waiting multipart SMS completed again")
                backoff = 0.0
            inventory.prune()
            if self.heap is not None:
                self.heap.tick()
            if self.clock() - seen_at >= self.seen_interval:
                seen_at = self.clock()
                await self.mark_seen(seen_at)

    async def mark_seen(self, now: float) -> None:
        """Live SIMs are seen now: their stored last_seen follows (health checks keep them)."""
        running = self.running
        live = [sim for sim in running.inventory.sims.values() if sim.online]
        if not live:
            return
        try:
            await running.store.touch_sims([sim.iccid for sim in live], now)
        except StoreError as exc:
            level = log.debug if self._seen_failing else log.error
            level("cannot record that SIMs were seen", error=str(exc))
            self._seen_failing = True
            return
        if self._seen_failing:
            self._seen_failing = False
            log.info("SIMs seen recorded again")
        for sim in live:
            sim.last_seen = now

    async def _watch_database(self) -> None:
        """Stop at once if the database file was deleted or replaced under the daemon."""
        store = self.running.store
        while True:
            await asyncio.sleep(FILE_CHECK_INTERVAL)
            problem = store.file_problem()
            if problem is not None:
                self.failure = f"database lost: {problem}; stopping so a restart opens the new one"
                log.error("database file lost; no more sales", problem=problem)
                self.failed.set()
                return
