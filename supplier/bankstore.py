"""The SIM banks' records in the store (schema version 6): slots and modules.

Kept apart from store.py so the bank tables have one owner; it writes
through the store's group-commit writer like every other table.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from .store import Store

__all__ = ["BankStore", "ModuleRow", "SlotRow"]


@dataclass(slots=True)
class SlotRow:
    bank: str
    module: int
    slot: int
    iccid: str | None = None
    imsi: str | None = None
    number: str | None = None
    state: str = "unknown"  # unknown | known | empty | faulty
    last_in: float | None = None
    failures: int = 0
    retry_at: float | None = None
    in_rotation: bool = True


@dataclass(slots=True)
class ModuleRow:
    bank: str
    module: int
    slot: int | None = None
    switching: bool = False
    held: bool = False


class BankStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def load_slots(self) -> list[SlotRow]:
        rows = await self.store._fetchall(
            "SELECT bank, module, slot, iccid, imsi, number, state, last_in, failures,"
            " retry_at, in_rotation FROM bank_slots"
        )
        return [
            SlotRow(
                str(bank),
                int(module),
                int(slot),
                iccid,
                imsi,
                number,
                str(state),
                last_in,
                int(failures),
                retry_at,
                bool(in_rotation),
            )
            for (
                bank,
                module,
                slot,
                iccid,
                imsi,
                number,
                state,
                last_in,
                failures,
                retry_at,
                in_rotation,
            ) in rows
        ]

    async def load_modules(self) -> list[ModuleRow]:
        rows = await self.store._fetchall(
            "SELECT bank, module, slot, switching, held FROM bank_modules"
        )
        return [
            ModuleRow(str(bank), int(module), slot, bool(switching), bool(held))
            for bank, module, slot, switching, held in rows
        ]

    async def save_slot(self, row: SlotRow) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO bank_slots (bank, module, slot, iccid, imsi, number, state, last_in,"
                " failures, retry_at, in_rotation) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (bank, module, slot) DO UPDATE SET iccid = excluded.iccid,"
                " imsi = excluded.imsi, number = excluded.number, state = excluded.state,"
                " last_in = excluded.last_in, failures = excluded.failures,"
                " retry_at = excluded.retry_at, in_rotation = excluded.in_rotation",
                (
                    row.bank,
                    row.module,
                    row.slot,
                    row.iccid,
                    row.imsi,
                    row.number,
                    row.state,
                    row.last_in,
                    row.failures,
                    row.retry_at,
                    int(row.in_rotation),
                ),
            )

        await self.store._write(op, "save a bank slot")

    async def save_module(self, row: ModuleRow) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO bank_modules (bank, module, slot, switching, held) VALUES (?,?,?,?,?)"
                " ON CONFLICT (bank, module) DO UPDATE SET slot = excluded.slot,"
                " switching = excluded.switching, held = excluded.held",
                (row.bank, row.module, row.slot, int(row.switching), int(row.held)),
            )

        await self.store._write(op, "save a bank module")
