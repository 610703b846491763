"""The modem pool: every serial port that matches the configured patterns.

Ports come from glob patterns (`/dev/serial/by-path/*`, `/dev/ttyUSB*`) or
explicit paths, and are rescanned every `rescan_interval` seconds: new ports
get a `Modem`, vanished ones are stopped and reported removed (their SIM
lost). Two names for one device (a by-path link and its ttyUSB node) are one
modem. There is no thread per modem: each is one asyncio task, idle between
health checks, so hundreds of ports are practical.
"""

from __future__ import annotations

import asyncio
import glob
import os
import resource
import stat
from collections.abc import Iterator, Sequence

import structlog

from .events import EventHandler, ModemState
from .modem import Modem, ModemSettings

__all__ = ["ModemPool", "expand_ports", "raise_open_file_limit"]

log = structlog.get_logger("modems.pool")

_GLOB_CHARS = frozenset("*?[")


def raise_open_file_limit() -> int:
    """Lift the soft descriptor limit to the hard one and return it.

    Each port costs five descriptors (the tty and pyserial's two abort
    pipes), so 512 ports need ~2,600: past the usual soft limit of 1,024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def expand_ports(
    patterns: Sequence[str],
    exclude: Sequence[str] = (),
    resolved: dict[str, tuple[int, int, str]] | None = None,
) -> dict[str, str]:
    """Port name → real device path, for every existing match, first name wins.

    `exclude`: ports never taken (by name or device), e.g. a SIM bank's control port.
    `resolved` (name → the name's inode, device and real path, kept by the
    caller between scans) saves resolving a name again while it is the same
    file: `os.path.realpath` is pure Python, 512 of them every rescan cost
    more than all the modems' health checks. A known name then costs two
    system calls a scan (its `stat` and `lstat`).
    """
    found: dict[str, str] = {}
    seen: set[str] = set(exclude) | {os.path.realpath(path) for path in exclude}
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if _GLOB_CHARS & set(pattern) else [pattern]
        for path in matches:
            try:
                target = os.stat(path)  # follows links: a dangling one is no port
            except (OSError, ValueError):
                continue
            real = _realpath(path, resolved)
            if real in seen or stat.S_ISDIR(target.st_mode):
                continue
            seen.add(real)
            found[path] = real
    if resolved is not None:
        for gone in resolved.keys() - found.keys():
            del resolved[gone]
    return found


def _realpath(path: str, resolved: dict[str, tuple[int, int, str]] | None) -> str:
    if resolved is None:
        return os.path.realpath(path)
    try:
        st = os.lstat(path)
    except OSError:
        return os.path.realpath(path)
    known = resolved.get(path)
    if known is not None and known[:2] == (st.st_ino, st.st_dev):
        return known[2]
    real = os.path.realpath(path)
    resolved[path] = (st.st_ino, st.st_dev, real)
    return real


class ModemPool:
    """Owns one `Modem` per port; events go to `handler`."""

    def __init__(
        self,
        patterns: Sequence[str],
        handler: EventHandler,
        settings: ModemSettings | None = None,
        *,
        rescan_interval: float = 2.0,
        exclude: Sequence[str] = (),
    ) -> None:
        self.patterns = tuple(patterns)
        # Ports that match a pattern but are not modems to drive (a SIM bank's control port).
        self.exclude = tuple(exclude)
        self.settings = settings or ModemSettings()
        self.rescan_interval = rescan_interval
        self._handler = handler
        self._modems: dict[str, Modem] = {}
        self._devices: dict[str, str] = {}
        self._resolved: dict[str, tuple[int, int, str]] = {}  # see expand_ports
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def __iter__(self) -> Iterator[Modem]:
        return iter(list(self._modems.values()))

    def __len__(self) -> int:
        return len(self._modems)

    def get(self, port: str) -> Modem | None:
        return self._modems.get(port)

    def by_iccid(self, iccid: str) -> Modem | None:
        for modem in self._modems.values():
            if modem.sim is not None and modem.sim.iccid == iccid:
                return modem
        return None

    def counts(self) -> dict[ModemState, int]:
        out: dict[ModemState, int] = {}
        for modem in self._modems.values():
            out[modem.state] = out.get(modem.state, 0) + 1
        return out

    async def start(self) -> None:
        await self.rescan()
        self._task = asyncio.create_task(self._rescan_loop(), name="modem pool rescan")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        async with self._lock:
            modems = list(self._modems.values())
            self._modems.clear()
            self._devices.clear()
            await asyncio.gather(*(modem.stop() for modem in modems))

    async def rescan(self) -> None:
        """Pick up new ports, drop vanished ones (and re-create a port whose device changed)."""
        async with self._lock:
            # Off the event loop: at 512 ports the glob and the realpath of every
            # port (pure Python) held the loop for 25-30 ms every rescan.
            found = await asyncio.to_thread(
                expand_ports, self.patterns, self.exclude, self._resolved
            )
            for port in list(self._modems):
                if found.get(port) != self._devices.get(port):
                    modem = self._modems.pop(port)
                    self._devices.pop(port, None)
                    log.info("port gone", port=port)
                    await modem.stop(removed=True)
            for port, device in found.items():
                if port not in self._modems:
                    log.info("port found", port=port, device=device)
                    modem = Modem(
                        port, self._handler, self.settings, on_report_taken=self._reports_taken
                    )
                    self._modems[port] = modem
                    self._devices[port] = device
                    modem.start()

    async def _rescan_loop(self) -> None:
        while True:
            await asyncio.sleep(self.rescan_interval)
            try:
                await self.rescan()
            except OSError as exc:
                log.warning("port rescan failed", error=str(exc))

    def _reports_taken(self) -> None:
        """The owner took a SimReady: it takes them again (its store works, say, after an
        outage), so every SIM whose report it refused is reported now, not at the end
        of a back-off that may have grown to `ready_retry_max`."""
        for modem in self._modems.values():
            if modem.report_waiting:
                modem.report_soon()

    def reset(self, port: str) -> bool:
        """Operator action: reset the modem on `port` (AT+CFUN=1,1, then reopen)."""
        modem = self._modems.get(port)
        if modem is None:
            return False
        modem.request_reset()
        return True
