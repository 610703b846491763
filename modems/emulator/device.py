"""One emulated GSM modem on a pseudo-terminal: the port's plumbing.

The daemon opens the pty's slave side (through a stable symlink) with the
same serial code as real hardware; the emulator holds the master side and
feeds what it reads to the AT interpreter (interpreter.py), whose answers
are written back, paced if asked. Unplugging closes the pty.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import tty
from typing import TypedDict, Unpack

from .interpreter import EmulatedModem, Slot, VirtualSim
from .profiles import VendorProfile

__all__ = ["Slot", "VirtualModem", "VirtualSim"]

_MAX_OUTPUT = 64 * 1024  # a real modem drops output nobody reads; so do we


class RadioState(TypedDict, total=False):
    """What the network looks like to the modem at power-up (EmulatedModem's keywords)."""

    rssi: int
    registration: int


class VirtualModem(EmulatedModem):
    """An emulated modem. `open()` creates its pty and symlink; `close()` removes them."""

    def __init__(
        self,
        link: str,
        profile: VendorProfile,
        sim: VirtualSim | None,
        *,
        pace: float | None = None,
        **network: Unpack[RadioState],
    ) -> None:
        super().__init__(link, profile, sim, **network)
        self.pace = pace  # bytes per second for replies, None: as fast as possible
        self._master: int | None = None
        self._slave: int | None = None
        self._out = bytearray()
        self._writer_registered = False

    @property
    def device(self) -> str | None:
        return os.ttyname(self._slave) if self._slave is not None else None

    def open(self) -> None:
        """Power on: a new pty (a new /dev/pts number, like a USB re-enumeration)."""
        master, slave = os.openpty()
        # Raw mode before anyone reads: a cooked pty would echo our output back to us.
        tty.setraw(slave)
        tty.setraw(master)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        tmp = f"{self.link}.tmp{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(os.ttyname(slave), tmp)
        os.replace(tmp, self.link)
        asyncio.get_running_loop().add_reader(master, self._read_ready)
        self.power_on()

    def close(self) -> None:
        """Power off: the port disappears; the daemon's reads fail."""
        loop = asyncio.get_running_loop()
        if self._master is not None:
            loop.remove_reader(self._master)
            if self._writer_registered:
                loop.remove_writer(self._master)
                self._writer_registered = False
            os.close(self._master)
            self._master = None
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.link)
        self._out.clear()
        self.power_off()

    # Faults that take the port away.

    def unplug(self) -> None:
        self.close()

    def replug(self) -> None:
        self.open()

    def _read_ready(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:
                return  # nobody has the slave open right now
            raise
        self.feed(data)

    def _write(self, data: bytes) -> None:
        if self._master is None:
            return
        if self.pace:
            delay = len(data) / self.pace
            asyncio.get_running_loop().call_later(delay, self._write_now, data)
        else:
            self._write_now(data)

    def _write_now(self, data: bytes) -> None:
        if self._master is None:
            return
        if len(self._out) + len(data) > _MAX_OUTPUT:
            return
        self._out += data
        self._flush()

    def _flush(self) -> None:
        if self._master is None:
            return
        loop = asyncio.get_running_loop()
        while self._out:
            try:
                written = os.write(self._master, self._out)
            except BlockingIOError:
                break
            except OSError:
                self._out.clear()
                break
            del self._out[:written]
        if self._out and not self._writer_registered:
            loop.add_writer(self._master, self._flush)
            self._writer_registered = True
        elif not self._out and self._writer_registered:
            loop.remove_writer(self._master)
            self._writer_registered = False
