"""The daemon: store, inventory, inbox and pusher, the modem pool, the hub endpoint.

Start order: store → inventory and inbox rebuilt from it → pusher (sends
what was left undelivered) → hub endpoint → status route → modem pool.
Stop order is the reverse of what matters: stop taking hub requests (those
in flight finish), stop the modems (no new SMS), stop the pusher, close the
store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

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
from modems.modem import ModemSettings
from modems.pool import ModemPool

from .config import Config
from .errors import StoreError
from .inbox import Inbox
from .inventory import Inventory, SimOverrideValues
from .metrics import Metrics, watch_loop_lag
from .protocol import ProtocolService, create_protocol_app
from .pusher import Pusher
from .status import StatusView, create_status_app
from .store import Store

__all__ = ["Daemon"]

log = structlog.get_logger("supplier.daemon")

SHUTDOWN_GRACE = 5.0  # seconds for hub requests in flight to finish at a stop


def _sim_overrides(config: Config) -> dict[str, SimOverrideValues]:
    return {
        iccid: SimOverrideValues(o.number, o.country, o.operator)
        for iccid, o in config.sims.items()
    }


def _network_overrides(config: Config) -> dict[str, tuple[str, str]]:
    return {code: (o.country, o.operator) for code, o in config.networks.items()}


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


class Daemon:
    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.store: Store | None = None
        self.inventory: Inventory | None = None
        self.inbox: Inbox | None = None
        self.pusher: Pusher | None = None
        self.protocol: ProtocolService | None = None
        self.pool: ModemPool | None = None
        self._runner: web.AppRunner | None = None
        self._status_runner: web.AppRunner | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._lag_watch: asyncio.Task[None] | None = None
        self.listening: tuple[str, int] | None = None
        self.status_listening: tuple[str, int] | None = None
        self.metrics = Metrics()
        self.view = StatusView(self)
        self._observers: list[Callable[[PoolEvent], None]] = []

    def subscribe(self, observer: Callable[[PoolEvent], None]) -> None:
        """Be told of every pool event once the daemon has handled it (tests, status page)."""
        self._observers.append(observer)

    async def start(self) -> None:
        config = self.config
        self.store = await Store.open(config.storage.path)
        self.inventory = Inventory(
            self.store,
            services=config.services,
            release_after=config.activation.release_after,
            sim_overrides=_sim_overrides(config),
            network_overrides=_network_overrides(config),
            clock=self.clock,
        )
        await self.inventory.load()
        self.pusher = Pusher(
            self.store, config.hubs, clock=self.clock, on_result=self.metrics.on_push
        )
        self.inbox = Inbox(
            self.store,
            self.inventory,
            reassembly_timeout=config.sms.reassembly_timeout,
            on_queued=self.pusher.queued,
            clock=self.clock,
        )
        await self.inbox.load()
        await self.pusher.start()
        self.protocol = ProtocolService(
            self.inventory, config.hubs, on_request=self.metrics.on_request
        )
        app = create_protocol_app(
            self.protocol, path=config.server.path, max_body=config.server.max_body
        )
        self._runner, self.listening = await _serve(app, config.server.listen)
        token = config.status.token.get_secret_value() if config.status.token else None
        status_app = create_status_app(self.view, self.metrics, token)
        self._status_runner, self.status_listening = await _serve(status_app, config.status.listen)
        self.pool = ModemPool(
            config.modems.ports,
            self.on_pool_event,
            modem_settings(config),
            rescan_interval=config.modems.rescan_interval,
        )
        await self.pool.start()
        self._housekeeping = asyncio.create_task(self._housekeep(), name="housekeeping")
        self._lag_watch = asyncio.create_task(
            watch_loop_lag(self.metrics.loop_lag.observe), name="loop lag"
        )
        log.info(
            "daemon started",
            listen=_address(self.listening),
            status=f"http://{_address(self.status_listening)}/",
            ports=config.modems.ports,
        )

    def status_line(self) -> str:
        """One line for systemd's STATUS= (`systemctl status supplier`)."""
        if self.pool is None or self.inventory is None or self.store is None:
            return "starting"
        t = self.view.summary()
        return (
            f"{t['modems']} modems; {t['ready']} SIMs ready, {t['no_signal']} no signal, "
            f"{t['no_number']} no number, {t['no_sim']} no SIM, {t['errors']} errors; "
            f"{t['open_activations']} open activations"
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()  # no more hub requests; those in flight finish
            self._runner = None
        if self._status_runner is not None:
            await self._status_runner.cleanup()
            self._status_runner = None
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            await asyncio.gather(self._housekeeping, return_exceptions=True)
            self._housekeeping = None
        if self.pool is not None:
            await self.pool.stop()
            self.pool = None
        if self.pusher is not None:
            await self.pusher.stop(grace=SHUTDOWN_GRACE)
            self.pusher = None
        if self.store is not None:
            await self.store.close()
            self.store = None
        if self._lag_watch is not None:
            self._lag_watch.cancel()
            await asyncio.gather(self._lag_watch, return_exceptions=True)
            self._lag_watch = None
        log.info("daemon stopped")

    async def reload(self, config: Config) -> None:
        """SIGHUP: new hubs, services and SIM overrides; activations and modems stay."""
        assert self.inventory is not None
        assert self.protocol is not None
        assert self.pusher is not None
        self.inventory.reconfigure(
            services=config.services,
            release_after=config.activation.release_after,
            sim_overrides=_sim_overrides(config),
            network_overrides=_network_overrides(config),
        )
        self.protocol.set_hubs(config.hubs)
        await self.pusher.set_hubs(config.hubs)
        self.config = config
        log.info("configuration reloaded", hubs=[hub.name for hub in config.hubs])

    async def on_pool_event(self, event: PoolEvent) -> None:
        inventory, inbox = self.inventory, self.inbox
        assert inventory is not None
        assert inbox is not None
        if isinstance(event, SmsReceived):
            self.metrics.sms_received.inc()
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
        elif isinstance(event, SimLost):
            inventory.sim_lost(event.iccid)
        elif isinstance(event, NetworkChanged):
            inventory.network_changed(event.iccid, event.network)
        elif isinstance(event, ModemStateChanged) and event.state in (
            ModemState.REMOVED,
            ModemState.DISCONNECTED,
        ):
            inventory.modem_gone(event.port)
        for observer in self._observers:
            observer(event)

    async def _housekeep(self) -> None:
        """Complete multipart SMS whose parts stopped coming; forget old activations."""
        assert self.inbox is not None
        assert self.inventory is not None
        while True:
            deadline = self.inbox.next_deadline()
            delay = 5.0 if deadline is None else min(5.0, max(0.05, deadline - self.clock()))
            await asyncio.sleep(delay)
            try:
                await self.inbox.expire()
            except StoreError as exc:
                log.error("cannot complete waiting multipart SMS", error=str(exc))
            self.inventory.prune()
