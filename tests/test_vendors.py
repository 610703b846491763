"""The vendor quirk table: each entry, and what a modem of that vendor is sent because of it."""

from __future__ import annotations

import pytest

from modems.vendors import GENERIC, ICCID_COMMANDS, VENDORS, VendorQuirks, quirks_for


def test_entries_are_found_by_what_cgmi_and_cgmm_say() -> None:
    assert quirks_for("huawei", "E3372").name == "huawei"
    assert quirks_for("HUAWEI TECHNOLOGIES", None).name == "huawei"
    assert quirks_for("WAVECOM MODEM", "MULTIBAND  900E  1800").name == "wavecom"
    assert quirks_for("Sierra Wireless, Incorporated", "MC8090").name == "sierra"
    assert quirks_for("SIMCOM_Ltd", "SIMCOM_SIM800C") is GENERIC
    assert quirks_for(None, None) is GENERIC
    by_model = VendorQuirks(name="x", manufacturer="acme", model_prefix="m1")
    assert by_model.matches("ACME Corp", "M100") and not by_model.matches("ACME Corp", "M200")


def test_every_entry_keeps_every_iccid_fallback() -> None:
    for quirks in (GENERIC, *VENDORS):
        order = quirks.iccid_order()
        assert sorted(order) == sorted(ICCID_COMMANDS)
        assert order[: len(quirks.iccid_commands)] == list(quirks.iccid_commands)


def _after(commands: list[str], marker: str) -> list[str]:
    return commands[commands.index(marker) + 1 :] if marker in commands else commands


def _first_iccid_command(commands: list[str]) -> str:
    wanted = {command for command, _ in ICCID_COMMANDS}
    return next(line for line in _after(commands, "AT+CPIN?") if line in wanted)


@pytest.mark.parametrize(
    ("profile", "iccid_command", "init_command"),
    [
        ("generic", "AT+CCID", None),
        ("huawei", "AT^ICCID?", "AT^CURC=0"),
        ("wavecom", "AT+CRSM=176,12258,0,0,10", None),
        ("sierra", "AT!ICCID?", None),
    ],
)
async def test_a_vendor_gets_its_own_commands(
    make_bank, pool_of, profile, iccid_command, init_command
) -> None:  # type: ignore[no-untyped-def]
    bank = await make_bank(1, profiles=(profile,))
    pool, recorder = await pool_of(bank)
    await recorder.wait_for(lambda: len(recorder.ready_ports()) == 1, timeout=10)
    commands = [line.strip() for line in bank[0].commands]
    assert _first_iccid_command(commands) == iccid_command
    if init_command is not None:
        assert init_command in commands
        assert commands.index(init_command) > commands.index("AT+CGMM")
    else:
        assert "AT^CURC=0" not in commands
