"""The virtual modem bank: N emulated modems with stable symlinked port paths."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from .device import VirtualModem, VirtualSim
from .profiles import PROFILES

__all__ = ["OPERATORS", "VirtualModemBank", "make_sim"]

# Home networks of the generated SIMs: (MCC+MNC, country calling code, number prefix).
OPERATORS: tuple[tuple[str, str, str], ...] = (
    ("25001", "7", "915"),  # Russia, MTS
    ("25002", "7", "926"),  # Russia, MegaFon
    ("25099", "7", "903"),  # Russia, Beeline
    ("25020", "7", "950"),  # Russia, Tele2
    ("25501", "380", "50"),  # Ukraine, Vodafone (MTS)
    ("25503", "380", "67"),  # Ukraine, Kyivstar
    ("40101", "7", "701"),  # Kazakhstan, Beeline
    ("62130", "234", "803"),  # Nigeria, MTN
)


def _luhn(digits: str) -> str:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 0:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return str((10 - total % 10) % 10)


def make_sim(index: int, *, with_number: bool = True, pin: str | None = None) -> VirtualSim:
    """A deterministic SIM for slot `index`: ICCID (with Luhn digit), IMSI, number."""
    mccmnc, country_code, prefix = OPERATORS[index % len(OPERATORS)]
    base = "8970" + mccmnc[3:] + f"{index:012d}"
    number = country_code + prefix + f"{index:07d}"
    return VirtualSim(
        iccid=base + _luhn(base),
        imsi=mccmnc + f"{index:010d}",
        number=number if with_number else None,
        network_number=number,
        pin=pin,
    )


class VirtualModemBank:
    """`count` emulated modems at `directory/modem000`…, cycling through `profiles`."""

    def __init__(
        self,
        count: int,
        directory: str,
        *,
        profiles: Sequence[str] = ("generic", "huawei", "wavecom", "sierra"),
        first_index: int = 0,
        pace: float | None = None,
    ) -> None:
        unknown = [name for name in profiles if name not in PROFILES]
        if unknown:
            raise ValueError(f"unknown modem profile(s) {unknown}; known: {sorted(PROFILES)}")
        if count < 0:
            raise ValueError(f"modem count must be >= 0, got {count}")
        self.directory = directory
        self.modems = [
            VirtualModem(
                os.path.join(directory, f"modem{i:03d}"),
                PROFILES[profiles[i % len(profiles)]],
                make_sim(first_index + i),
                pace=pace,
            )
            for i in range(count)
        ]

    @property
    def pattern(self) -> str:
        return os.path.join(self.directory, "modem*")

    @property
    def paths(self) -> list[str]:
        return [modem.link for modem in self.modems]

    def __len__(self) -> int:
        return len(self.modems)

    def __iter__(self) -> Iterator[VirtualModem]:
        return iter(self.modems)

    def __getitem__(self, index: int) -> VirtualModem:
        return self.modems[index]

    def by_link(self, link: str) -> VirtualModem | None:
        for modem in self.modems:
            if modem.link == link:
                return modem
        return None

    def by_iccid(self, iccid: str) -> VirtualModem | None:
        for modem in self.modems:
            if modem.sim is not None and modem.sim.iccid == iccid:
                return modem
        return None

    async def start(self) -> None:
        """Create the ptys (must run on the event loop that will serve them)."""
        os.makedirs(self.directory, exist_ok=True)
        for modem in self.modems:
            modem.open()

    def stop(self) -> None:
        for modem in self.modems:
            if modem.plugged:
                modem.close()
