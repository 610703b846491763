"""Home networks → the hubs' country and operator slugs.

Keyed by the SIM's home MCC+MNC (from its IMSI), so a roaming SIM is still
sold as its own country and operator. Networks not listed fall back to the
country of their MCC and the operator `any`; `networks:` in the config
overrides or extends both tables.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["ANY", "COUNTRIES", "OPERATORS", "slugs_for"]

ANY = "any"

COUNTRIES: dict[str, str] = {
    "250": "russia",
    "255": "ukraine",
    "401": "kazakhstan",
    "621": "nigeria",
    "310": "usa",
    "311": "usa",
    "312": "usa",
    "313": "usa",
    "316": "usa",
    "234": "england",
    "235": "england",
    "510": "indonesia",
    "404": "india",
    "405": "india",
    "406": "india",
    "257": "belarus",
    "259": "moldova",
    "282": "georgia",
    "283": "armenia",
    "400": "azerbaijan",
    "434": "uzbekistan",
    "436": "tajikistan",
    "437": "kyrgyzstan",
    "260": "poland",
    "262": "germany",
    "208": "france",
}

OPERATORS: dict[str, str] = {
    # Russia
    "25001": "mts",
    "25002": "megafon",
    "25099": "beeline",
    "25020": "tele2",
    "25011": "yota",
    "25035": "motiv",
    "25032": "win",
    # Ukraine
    "25501": "vodafone",
    "25503": "kyivstar",
    "25506": "life",
    "25507": "3mob",
    # Kazakhstan
    "40101": "beeline",
    "40102": "kcell",
    "40107": "altel",
    "40177": "tele2",
    # Nigeria
    "62120": "airtel",
    "62130": "mtn",
    "62150": "glo",
    "62160": "9mobile",
    # USA
    "310260": "tmobile",
    "310410": "att",
    "311480": "verizon",
    "310120": "sprint",
    # United Kingdom
    "23410": "o2",
    "23415": "vodafone",
    "23420": "three",
    "23430": "ee",
    "23433": "ee",
    # Indonesia
    "51001": "indosat",
    "51021": "indosat",
    "51010": "telkomsel",
    "51011": "xl",
    "51089": "three",
    # India
    "40410": "airtel",
    "40445": "airtel",
    "40420": "vi",
    "40486": "vi",
    "405840": "jio",
    "405854": "jio",
    "405857": "jio",
}


def slugs_for(
    imsi: str | None, overrides: Mapping[str, tuple[str, str]] | None = None
) -> tuple[str | None, str]:
    """(country, operator) of a SIM's home network, from its IMSI.

    MCC+MNC is tried with a 3-digit MNC, then a 2-digit one, in the overrides
    first; country is None when even the MCC is unknown.
    """
    if not imsi:
        return None, ANY
    codes = (imsi[:6], imsi[:5])
    for code in codes:
        if overrides and code in overrides:
            return overrides[code]
    country = COUNTRIES.get(imsi[:3])
    for code in codes:
        if code in OPERATORS:
            return country, OPERATORS[code]
    return country, ANY


CALLING_CODES: dict[str, str] = {
    "russia": "7",
    "kazakhstan": "7",
    "ukraine": "380",
    "nigeria": "234",
    "usa": "1",
    "england": "44",
    "indonesia": "62",
    "india": "91",
    "belarus": "375",
    "moldova": "373",
    "georgia": "995",
    "armenia": "374",
    "azerbaijan": "994",
    "uzbekistan": "998",
    "tajikistan": "992",
    "kyrgyzstan": "996",
    "poland": "48",
    "germany": "49",
    "france": "33",
}


def international_number(number: str, country: str | None) -> str:
    """A SIM's own number with its country code, as the hubs want it (digits only).

    `AT+CNUM` sometimes gives the national form: `8928…` in Russia and
    Kazakhstan, `0…` with a trunk prefix elsewhere. Unknown forms are kept.
    """
    digits = "".join(ch for ch in number if "0" <= ch <= "9")  # ASCII only: "٣" is not 3
    code = CALLING_CODES.get(country or "")
    if not code or digits.startswith(code):
        return digits
    if code == "7" and len(digits) == 11 and digits.startswith("8"):
        return "7" + digits[1:]
    if digits.startswith("0") and not digits.startswith("00"):
        return code + digits[1:]
    if digits.startswith("00" + code):
        return digits[2:]
    return digits
