"""The SIM banks' records in the store (schema version 6): slots and modules.

Kept apart from store.py so the bank tables have one owner: the column
lists and their types live here, and the store (either backend) only reads
whole rows and upserts them (`table_rows`, `upsert_row`) through its own
writer, so the same code serves SQLite and PostgreSQL.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .backend import StoreBackend

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


_SLOT_COLUMNS = tuple(f.name for f in fields(SlotRow))
_MODULE_COLUMNS = tuple(f.name for f in fields(ModuleRow))


class BankStore:
    def __init__(self, store: StoreBackend) -> None:
        self.store = store

    async def load_slots(self) -> list[SlotRow]:
        rows = await self.store.table_rows("bank_slots", _SLOT_COLUMNS)
        return [
            SlotRow(
                str(bank), int(module), int(slot), iccid, imsi, number, str(state), last_in,
                int(failures), retry_at, bool(in_rotation),  # SQLite gives booleans as 0/1
            )
            for (
                bank, module, slot, iccid, imsi, number, state, last_in, failures, retry_at,
                in_rotation,
            ) in rows
        ]  # fmt: skip

    async def load_modules(self) -> list[ModuleRow]:
        rows = await self.store.table_rows("bank_modules", _MODULE_COLUMNS)
        return [
            ModuleRow(str(bank), int(module), slot, bool(switching), bool(held))
            for bank, module, slot, switching, held in rows
        ]

    async def save_slot(self, row: SlotRow) -> None:
        values = dict(zip(_SLOT_COLUMNS, astuple(row), strict=True))
        await self.store.upsert_row(
            "bank_slots", values, ("bank", "module", "slot"), "cannot save a bank slot"
        )

    async def save_module(self, row: ModuleRow) -> None:
        values = dict(zip(_MODULE_COLUMNS, astuple(row), strict=True))
        await self.store.upsert_row(
            "bank_modules", values, ("bank", "module"), "cannot save a bank module"
        )
