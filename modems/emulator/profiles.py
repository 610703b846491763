"""Vendor profiles: the quirks of real modems (docs/modems.md) the emulator reproduces."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PROFILES", "VendorProfile"]


@dataclass(frozen=True, slots=True)
class VendorProfile:
    name: str
    manufacturer: str
    model: str
    revision: str
    # The ICCID commands this firmware knows; the others get `unknown_reply`.
    iccid_commands: frozenset[str]
    unknown_reply: str = "ERROR"
    echo_ignores_ate0: bool = False
    cpin_without_ok: bool = False  # old Wavecom: `+CPIN: READY` and no final OK
    busy_after_boot: int = 0  # SIM commands answered `+CME ERROR: 515` after power-up
    rssi_flood: float | None = None  # Huawei: ^RSSI/^BOOT lines every N s until AT^CURC=0
    storages: tuple[str, ...] = ("SM", "ME")
    index_base: int = 1  # Huawei numbers storage from 0
    capacity: int = 30
    cnmi_ranges: str = "(0-2),(0-3),(0,2),(0-2),(0,1)"
    cnmi_rejects: frozenset[str] = frozenset()
    number_in_cnum: bool = True  # else AT+CNUM is empty and the number is in the ON phonebook
    empty_read_error: bool = False  # AT+CMGR on an empty slot: +CMS ERROR 321 instead of OK
    sim_removed_urc: str | None = "+CPIN: NOT READY"
    sim_inserted_urc: str | None = "+CPIN: READY"
    # AT+CSCS: the sets it takes, the first at power-up (USSD text follows it).
    charsets: tuple[str, ...] = ("GSM", "IRA", "UCS2")
    ussd_packed: bool = False  # Huawei: USSD strings as packed GSM 7-bit hex, both ways
    ussd_late_ok: bool = False  # some firmware: `AT+CUSD=1,…` gets its OK after the answer


PROFILES: dict[str, VendorProfile] = {
    profile.name: profile
    for profile in (
        VendorProfile(
            name="generic",  # SIMCom / Quectel-like
            manufacturer="SIMCOM_Ltd",
            model="SIMCOM_SIM800C",
            revision="Revision:1418B05SIM800C24",
            iccid_commands=frozenset({"+CCID", "+QCCID", "+CRSM"}),
        ),
        VendorProfile(
            name="huawei",
            manufacturer="huawei",
            model="E3372",
            revision="22.200.15.00.00",
            iccid_commands=frozenset({"^ICCID", "+CRSM"}),
            unknown_reply="COMMAND NOT SUPPORT",
            rssi_flood=0.5,
            storages=("ME", "MT"),
            index_base=0,
            capacity=100,
            cnmi_ranges="(0,1,2),(0,1,2,3),(0,2),(0,1,2),(0,1)",
            number_in_cnum=False,
            empty_read_error=True,
            sim_removed_urc="^SIMST: 255",
            sim_inserted_urc="^SIMST: 1",
            ussd_packed=True,
        ),
        VendorProfile(
            name="wavecom",
            manufacturer="WAVECOM MODEM",
            model="MULTIBAND  900E  1800",
            revision="R7.46.0.201108091301.FXT009",
            iccid_commands=frozenset({"+CRSM"}),
            cpin_without_ok=True,
            busy_after_boot=2,
            cnmi_ranges="(0-3),(0-3),(0-3),(0-2),(0-1)",
            sim_removed_urc=None,
            sim_inserted_urc=None,
        ),
        VendorProfile(
            name="sierra",  # echoes despite ATE0; needs the CNMI fallback
            manufacturer="Sierra Wireless, Incorporated",
            model="MC8090",
            revision="K2_0_7_35AP",
            iccid_commands=frozenset({"!ICCID", "+CRSM"}),
            echo_ignores_ate0=True,
            cnmi_ranges="(0-2),(0-3),(2),(0-2),(0,1)",
            cnmi_rejects=frozenset({"2,1,0,0,0"}),
            number_in_cnum=False,
            charsets=("UCS2", "IRA"),  # refuses "GSM": stays in UCS2, USSD comes as UCS-2 hex
            sim_removed_urc=None,
            sim_inserted_urc=None,
        ),
    )
}
