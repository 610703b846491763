"""systemd's notify protocol: READY=1, STATUS=, WATCHDOG=1 and STOPPING=1.

Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op. The watchdog is
pinged from a task on the event loop, so a loop that is stuck (a blocking
call, a runaway coroutine) stops the pings and systemd restarts the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping

import sdnotify
import structlog

__all__ = ["Notifier", "watchdog_interval"]

log = structlog.get_logger("supplier.systemd")


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings (half of `WatchdogSec=`), or None when no watchdog is asked for."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we were started by a wrapper)
    return int(usec) / 1e6 / 2


class Notifier:
    """Tells systemd how the daemon is doing; `status` is asked for the STATUS= line."""

    def __init__(self, status: Callable[[], str], *, status_interval: float = 10.0) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self.enabled else None
        self._status = status
        self._status_interval = status_interval
        self._watchdog = watchdog_interval() if self.enabled else None
        self._task: asyncio.Task[None] | None = None
        self._last_status: str | None = None

    def send(self, *lines: str) -> None:
        if self._notifier is not None:
            # The protocol is newline-separated KEY=VALUE; a value never spans lines.
            self._notifier.notify("\n".join(line.replace("\n", " ") for line in lines))

    def ready(self) -> None:
        """The pool has started and the server listens: systemd may go on."""
        status = self._current_status()
        self.send("READY=1", f"STATUS={status}")
        self._last_status = status
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(), name="systemd notify")
        if self.enabled:
            log.info("told systemd we are ready", watchdog=self._watchdog)

    async def stopping(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.send("STOPPING=1", "STATUS=stopping")

    def reloading(self, done: bool) -> None:
        self.send("READY=1" if done else "RELOADING=1")

    def _current_status(self) -> str:
        try:
            return self._status()
        except Exception as exc:  # noqa: BLE001 - a status line must never stop the pings
            return f"status unavailable: {exc!r}"

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        period = min(self._watchdog or self._status_interval, self._status_interval)
        next_status = loop.time() + self._status_interval
        while True:
            await asyncio.sleep(period)
            lines = []
            if self._watchdog is not None:
                lines.append("WATCHDOG=1")
            if loop.time() >= next_status:
                next_status = loop.time() + self._status_interval
                status = self._current_status()
                if status != self._last_status:
                    lines.append(f"STATUS={status}")
                    self._last_status = status
            if lines:
                self.send(*lines)
