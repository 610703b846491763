"""What differs between modem vendors, in one table (the client's side of `emulator/profiles.py`).

A modem's entry is found by what it says to `AT+CGMI` / `AT+CGMM`; anything
not in the table gets `GENERIC`, which tries every fall-back in turn. A new
vendor is one entry here plus its test (tests/test_vendors.py), never edits
in the capability modules.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GENERIC", "ICCID_COMMANDS", "VENDORS", "VendorQuirks", "quirks_for"]

# ICCID commands, tried in turn until one answers (docs/modems.md); the
# vendor's own comes first and the one that worked is remembered per modem.
ICCID_COMMANDS: tuple[tuple[str, str], ...] = (
    ("AT+CCID", "+CCID"),
    ("AT+ICCID", "+ICCID"),
    ("AT^ICCID?", "^ICCID"),
    ("AT+QCCID", "+QCCID"),
    ("AT!ICCID?", "!ICCID"),
    ("AT+CRSM=176,12258,0,0,10", "+CRSM"),
)


@dataclass(frozen=True, slots=True)
class VendorQuirks:
    name: str
    # Lower-case text that `AT+CGMI` contains (and `AT+CGMM` starts with, if set).
    manufacturer: str
    model_prefix: str = ""
    # Sent once after identification; failures are ignored (optional settings).
    init_commands: tuple[str, ...] = ()
    # The vendor's own ICCID command(s), tried before the generic fall-backs.
    iccid_commands: tuple[tuple[str, str], ...] = ()
    # How long an `AT+CPIN?` answer waits for its final OK. Old Wavecom firmware
    # sends `+CPIN: READY` and no OK at all: waiting would stall every health check.
    cpin_grace: float = 0.3
    # USSD strings go out and come back as packed GSM 7-bit septets in hex, not
    # as text (Huawei; ModemManager's Huawei plugin encodes them the same way).
    ussd_packed: bool = False

    def matches(self, manufacturer: str | None, model: str | None) -> bool:
        if not self.manufacturer or self.manufacturer not in (manufacturer or "").lower():
            return False
        return (model or "").lower().startswith(self.model_prefix)

    def iccid_order(self) -> list[tuple[str, str]]:
        """The vendor's ICCID commands first, then every other fall-back."""
        rest = [entry for entry in ICCID_COMMANDS if entry not in self.iccid_commands]
        return [*self.iccid_commands, *rest]


GENERIC = VendorQuirks(name="generic", manufacturer="")

VENDORS: tuple[VendorQuirks, ...] = (
    VendorQuirks(
        name="huawei",
        manufacturer="huawei",
        # Huawei floods ^RSSI/^BOOT/^MODE/^DSFLOWRPT unless told not to.
        init_commands=("AT^CURC=0",),
        # ^ICCID? answers the raw nibble-swapped EF_ICCID (replies.normalize_iccid).
        iccid_commands=(("AT^ICCID?", "^ICCID"),),
        ussd_packed=True,
    ),
    VendorQuirks(
        name="wavecom",
        manufacturer="wavecom",
        iccid_commands=(("AT+CRSM=176,12258,0,0,10", "+CRSM"),),
        cpin_grace=0.0,
    ),
    VendorQuirks(
        name="sierra",
        manufacturer="sierra wireless",
        iccid_commands=(("AT!ICCID?", "!ICCID"),),
    ),
)


def quirks_for(manufacturer: str | None, model: str | None) -> VendorQuirks:
    """The table's entry for what `AT+CGMI` / `AT+CGMM` said, else `GENERIC`."""
    for quirks in VENDORS:
        if quirks.matches(manufacturer, model):
            return quirks
    return GENERIC
