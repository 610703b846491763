"""The knobs of one modem's session, shared by `Modem` and its capability modules."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModemSettings"]


@dataclass(frozen=True, slots=True)
class ModemSettings:
    baudrate: int = 115200
    pin: str | None = None
    command_timeout: float = 5.0  # smstools uses 5 s, Kannel 3 s
    probe_timeout: float = 1.0
    probe_attempts: int = 3
    health_interval: float = 10.0
    sweep_interval: float = 60.0
    hang_after: int = 3
    reconnect_initial: float = 0.5
    reconnect_max: float = 30.0
    not_modem_retry: float = 60.0
    # A SimReady the owner could not take (its store refused the write): reported again
    # after this back-off (doubling to the cap), so the SIM comes into sale once it can.
    ready_retry_initial: float = 1.0
    ready_retry_max: float = 30.0
    busy_retries: int = 5
    busy_delay: float = 0.5
    storage_preference: tuple[str, ...] = ("SM", "ME")
    max_line: int = 8192
    wake_queue: int = 1024
    # False: identify the modem and SIM but never read (or delete) stored SMS
    # (`supplier scan`, which must not take messages away from the daemon).
    read_sms: bool = True
