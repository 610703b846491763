"""Semi-octets: digit strings stored two per octet, low nibble first.

EF_ICCID on the SIM (3GPP TS 51.011 §10.1.1) and addresses in SMS PDUs
(3GPP TS 23.040 §9.1.2.3) keep digits this way, an odd count padded with `F`.
"""

from __future__ import annotations

__all__ = ["swap_nibbles"]


def swap_nibbles(digits: str) -> str:
    """`8970101` → `9807101F`: pad an odd count with `F`, then swap each pair.

    The same function undoes itself on an even-length string (reading a raw
    EF_ICCID back gives the ICCID, its `F` filler at the end).
    """
    text = digits + ("F" if len(digits) % 2 else "")
    return "".join(text[i + 1] + text[i] for i in range(0, len(text), 2))
