"""What a SIGHUP may change of `banks:` and `rotation:` while the modems run.

A bank in the new file is the running bank of the same name or, renamed, the
running bank with the same ports (control port and modules) whose name is no
longer listed. Applied at once: every `rotation:` setting, a bank's `name`,
`switch`, `reset_after_switch` and `slots` (fewer: the slots above leave the
rotation, and a module holding one moves off it once its SIM is free; more:
the new slots join it). Not applied: a bank's ports (`control`, `modules`), a
bank added or removed. The modem pool opens its ports at start, so those need
a restart; each is named (its key, the new value, the running one) and the
bank goes on as it runs until then.

Any other section a reload does not apply (`restart_only`: ports, listen
addresses, the store, the modems' timings) is named the same way.

Pure: the daemon logs the plan and `Rotation.reconfigure` carries it out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel

from .config import BankConfig, Config

__all__ = ["BankPlan", "Change", "changed_fields", "plan_banks"]

LIVE = ("switch", "reset_after_switch", "slots")  # a bank's settings a reload applies
PORTS = ("control", "modules")  # ... and those that need a restart


@dataclass(frozen=True, slots=True)
class Change:
    key: str  # where in the new file: banks[0].slots, rotation.dwell
    value: object  # the new file's value
    running: object  # what runs now (and, for a change needing a restart, until then)


@dataclass(frozen=True, slots=True)
class BankPlan:
    banks: tuple[BankConfig, ...]  # what the rotation runs from now on
    renamed: dict[str, str] = field(default_factory=dict)  # running name → new name
    applied: tuple[Change, ...] = ()
    restart: tuple[Change, ...] = ()  # not applied: a restart is needed for these


def _ports(bank: BankConfig) -> tuple[str | None, list[tuple[int, str]]]:
    return bank.control, sorted(bank.modules.items())


def changed_fields(
    prefix: str, old: BaseModel, new: BaseModel, names: Sequence[str]
) -> list[Change]:
    return [
        Change(f"{prefix}.{name}", getattr(new, name), getattr(old, name))
        for name in names
        if getattr(new, name) != getattr(old, name)
    ]


# Config sections a reload does not apply: the ports and listen addresses are bound,
# the store is open, the modems' and USSD timings are in the running tasks.
RESTART_SECTIONS = ("server", "modems", "storage", "host", "status", "sms", "ussd")
_SECRETS = frozenset({"url", "token"})  # a database URL has the password in it


def restart_only(running: Config, wanted: Config) -> list[Change]:
    """What the new file changes that only a restart applies (secrets not shown)."""
    changes: list[Change] = []
    for section in RESTART_SECTIONS:
        old, new = getattr(running, section), getattr(wanted, section)
        for change in changed_fields(section, old, new, list(type(old).model_fields)):
            secret = change.key.rsplit(".", 1)[-1] in _SECRETS
            changes.append(
                Change(change.key, "(changed; not shown)", "(not shown)") if secret else change
            )
    return changes


def plan_banks(running: Sequence[BankConfig], wanted: Sequence[BankConfig]) -> BankPlan:
    """Match the new file's banks to the running ones; split what applies from what cannot."""
    by_name = {bank.name: bank for bank in running}
    listed = {bank.name for bank in wanted}
    matched: set[str] = set()
    banks: list[BankConfig] = []
    renamed: dict[str, str] = {}
    applied: list[Change] = []
    restart: list[Change] = []
    for i, bank in enumerate(wanted):
        key = f"banks[{i}]"
        old = by_name.get(bank.name) or next(
            (b for b in running if b.name not in listed and _ports(b) == _ports(bank)), None
        )
        if old is None:
            restart.append(Change(key, f"bank {bank.name} (new)", "not running"))
            continue
        matched.add(old.name)
        if _ports(old) != _ports(bank):
            # The bank waits for the restart as a whole: its other settings with it
            # (a switch template is only valid with the control port it was written for).
            restart.extend(changed_fields(key, old, bank, PORTS))
            banks.append(old)
            continue
        if old.name != bank.name:
            renamed[old.name] = bank.name
            applied.append(Change(f"{key}.name", bank.name, old.name))
        applied.extend(changed_fields(key, old, bank, LIVE))
        banks.append(bank)
    for bank in running:
        if bank.name not in matched:
            restart.append(Change("banks", f"bank {bank.name} not listed", f"bank {bank.name}"))
            banks.append(bank)  # its modules keep rotating until the restart
    return BankPlan(tuple(banks), renamed, tuple(applied), tuple(restart))
