"""The virtual modem bank: pseudo-terminals that behave like GSM modems.

Shipped with the daemon (not only for tests): `supplier emulate` runs it on
its own, the demo and the benchmarks use it, and tests drive the daemon's
real serial code path through it.
"""

from .bank import VirtualModemBank, make_sim
from .device import VirtualModem
from .interpreter import EmulatedModem, Slot, VirtualSim
from .profiles import PROFILES, VendorProfile

__all__ = [
    "PROFILES",
    "EmulatedModem",
    "Slot",
    "VendorProfile",
    "VirtualModem",
    "VirtualModemBank",
    "VirtualSim",
    "make_sim",
]
