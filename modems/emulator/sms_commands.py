"""Emulated messaging commands: PDU mode, storage, indications, read, list, delete."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from modems.at import split_args
from modems.codes import CmsCode, SmsStatus

if TYPE_CHECKING:
    from .interpreter import EmulatedModem

__all__ = ["COMMANDS"]


def cscs(modem: EmulatedModem, name: str, arg: str) -> tuple[list[str], str]:
    if arg == "?":
        return [f'+CSCS: "{modem.charset}"'], "OK"
    if arg == "=?":
        offered = ",".join(f'"{charset}"' for charset in modem.profile.charsets)
        return [f"+CSCS: ({offered})"], "OK"
    wanted = split_args(arg[1:])[0].upper() if arg.startswith("=") and arg[1:] else ""
    if wanted not in modem.profile.charsets:
        return [], "ERROR"
    modem.charset = wanted
    return [], "OK"


def cmgf(modem: EmulatedModem, name: str, arg: str) -> tuple[list[str], str]:
    if arg == "?":
        return ["+CMGF: 0"], "OK"
    if arg == "=?":
        return ["+CMGF: (0)"], "OK"
    # The emulator speaks PDU mode only (the daemon never uses text mode).
    return ([], "OK") if arg == "=0" else ([], modem.cms(CmsCode.OPERATION_NOT_SUPPORTED))


def cpms(modem: EmulatedModem, name: str, arg: str) -> tuple[list[str], str]:
    if arg == "=?":
        options = ",".join(f'"{s}"' for s in modem.profile.storages)
        return [f"+CPMS: ({options}),({options}),({options})"], "OK"
    if arg == "?":
        used = len(modem.store() or {})
        total = modem.profile.capacity
        entry = f'"{modem.storage}",{used},{total}'
        return [f"+CPMS: {entry},{entry},{entry}"], "OK"
    error = modem.sim_error()
    if error:
        return [], error
    wanted = split_args(arg[1:])
    if not wanted or any(s not in modem.profile.storages for s in wanted):
        return [], modem.cms(CmsCode.OPERATION_NOT_ALLOWED)
    modem.storage = wanted[-1] if len(wanted) >= 3 else wanted[0]
    used = len(modem.store() or {})
    total = modem.profile.capacity
    return [f"+CPMS: {used},{total},{used},{total},{used},{total}"], "OK"


def cnmi(modem: EmulatedModem, name: str, arg: str) -> tuple[list[str], str]:
    if arg == "=?":
        return [f"+CNMI: {modem.profile.cnmi_ranges}"], "OK"
    if arg == "?":
        return [f"+CNMI: 2,{modem.cnmi_mt},0,0,0"], "OK"
    setting = arg[1:].replace(" ", "")
    if setting in modem.profile.cnmi_rejects:
        return [], modem.cms(CmsCode.OPERATION_NOT_SUPPORTED)
    fields = setting.split(",")
    try:
        modem.cnmi_mt = int(fields[1]) if len(fields) > 1 and fields[1] else 0
    except ValueError:
        return [], "ERROR"
    return [], "OK"


def cmgr(modem: EmulatedModem, name: str, arg: str) -> tuple[list[str], str]:
    error = modem.sim_error()
    if error:
        return [], error
    try:
        index = int(arg[1:])
    except ValueError:
        return [], modem.cms(CmsCode.INVALID_MEMORY_INDEX)
    slot = (modem.store() or {}).get(index)
    if slot is None:
        return (
            ([], modem.cms(CmsCode.INVALID_MEMORY_INDEX))
            if modem.profile.empty_read_error
            else ([], "OK")
        )
    status = slot.status
    slot.status = SmsStatus.RECEIVED_READ
    return [f"+CMGR: {status:d},,{len(slot.pdu) // 2 - _smsc_octets(slot.pdu)}", slot.pdu], "OK"


def cmgl(modem: EmulatedModem, name: str, arg: str) -> tuple[list[str], str]:
    error = modem.sim_error()
    if error:
        return [], error
    try:
        wanted = int(arg[1:]) if arg.startswith("=") else SmsStatus.RECEIVED_UNREAD
    except ValueError:
        return [], modem.cms(CmsCode.OPERATION_NOT_ALLOWED)
    lines = []
    for index, slot in sorted((modem.store() or {}).items()):
        if wanted not in (SmsStatus.ALL, slot.status):
            continue
        length = len(slot.pdu) // 2 - _smsc_octets(slot.pdu)
        lines += [f"+CMGL: {index},{slot.status:d},,{length}", slot.pdu]
        slot.status = SmsStatus.RECEIVED_READ
    return lines, "OK"


def cmgd(modem: EmulatedModem, name: str, arg: str) -> tuple[list[str], str]:
    error = modem.sim_error()
    if error:
        return [], error
    fields = split_args(arg[1:])
    store = modem.store()
    if store is None:
        return [], modem.cms(CmsCode.SIM_NOT_INSERTED)
    try:
        index = int(fields[0])
        flag = int(fields[1]) if len(fields) > 1 and fields[1] else 0
    except (ValueError, IndexError):
        return [], modem.cms(CmsCode.INVALID_MEMORY_INDEX)
    if flag == 4:
        modem.deleted.extend(slot.pdu for slot in store.values())
        store.clear()
    else:
        base = modem.profile.index_base
        if not base <= index < base + modem.profile.capacity:
            return [], modem.cms(CmsCode.INVALID_MEMORY_INDEX)
        slot = store.pop(index, None)
        if slot is not None:
            modem.deleted.append(slot.pdu)
    if modem.network_queue:
        asyncio.get_running_loop().call_soon(modem.drain_network_queue)
    return [], "OK"


# Each handler gets (modem, name, argument after the name incl. "=" or "?").
COMMANDS: dict[str, Callable[[EmulatedModem, str, str], tuple[list[str], str] | None]] = {
    "+CSCS": cscs,
    "+CMGF": cmgf,
    "+CPMS": cpms,
    "+CNMI": cnmi,
    "+CMGR": cmgr,
    "+CMGL": cmgl,
    "+CMGD": cmgd,
}


def _smsc_octets(pdu: str) -> int:
    try:
        return int(pdu[:2], 16) + 1
    except ValueError:
        return 0
