# Operators write in Cyrillic: its letters here are meant, not look-alikes of Latin ones.
# ruff: noqa: RUF001, RUF002
"""A SIM's balance from its operator's USSD answer: the amount and currency, where the text says.

Pure. Operators write balances every way (`Balans: 100.50 rub.`,
`Kontostand: 3.00 EUR`, `7777Ft`, `رصيدك 107.93 د.ل`, `-12,40 р.`): the
amount taken is the first one written next to a currency, else the first
one after a balance word; a number inside a USSD code (`*105#`) or a date
is never an amount. Unreadable answers give None (the text is still kept).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

__all__ = ["Balance", "parse_balance"]

# Currency words and signs → ISO 4217, lower-case, longest first when matched.
_CURRENCIES: dict[str, str] = {
    "rub": "RUB", "руб": "RUB", "р.": "RUB", "р": "RUB", "₽": "RUB", "rur": "RUB",
    "eur": "EUR", "euro": "EUR", "€": "EUR",
    "usd": "USD", "$": "USD",
    "uah": "UAH", "грн": "UAH", "grn": "UAH", "₴": "UAH",
    "kzt": "KZT", "тенге": "KZT", "тг": "KZT", "tg": "KZT", "₸": "KZT",
    "ngn": "NGN", "₦": "NGN", "naira": "NGN",
    "gbp": "GBP", "£": "GBP",
    "inr": "INR", "rs": "INR", "₹": "INR",
    "idr": "IDR", "rp": "IDR",
    "byn": "BYN", "pln": "PLN", "zł": "PLN", "zl": "PLN",
    "huf": "HUF", "ft": "HUF",
    "lyd": "LYD", "د.ل": "LYD",
    "mdl": "MDL", "lei": "MDL", "gel": "GEL", "amd": "AMD", "azn": "AZN", "uzs": "UZS",
    "so'm": "UZS", "сум": "UZS", "tjs": "TJS", "kgs": "KGS", "сом": "KGS",
}  # fmt: skip
_BALANCE_WORDS = re.compile(
    r"balan|баланс|guthaben|kontostand|egyenleg|saldo|solde|pulsa|rasid|رصيد|счет|рахунку",
    re.IGNORECASE,
)
_AMOUNT = re.compile(r"(?<![\w*#.,/-])(-?\d{1,9}(?:[.,]\d{1,2})?)(?![\d#*]|[.,/-]\d)")
_CURRENCY = "|".join(re.escape(c) for c in sorted(_CURRENCIES, key=len, reverse=True))
_AFTER = re.compile(rf"\s{{0,2}}({_CURRENCY})(?![a-zа-яё])", re.IGNORECASE)
_BEFORE = re.compile(rf"({_CURRENCY})\s{{0,2}}$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Balance:
    amount: Decimal
    currency: str | None  # ISO 4217; None when the text names none


def _decimal(text: str) -> Decimal | None:
    try:
        return Decimal(text.replace(",", "."))
    except InvalidOperation:
        return None


def _with_currency(text: str, match: re.Match[str]) -> Balance | None:
    after = _AFTER.match(text, match.end())
    before = _BEFORE.search(text[max(0, match.start() - 4) : match.start()])
    token = after.group(1) if after else before.group(1) if before else None
    amount = _decimal(match.group(1))
    if token is None or amount is None:
        return None
    return Balance(amount, _CURRENCIES[token.lower()])


def parse_balance(text: str) -> Balance | None:
    """The balance an operator's answer states, or None.

    An amount with a currency after a balance word first (`Havi keret: 0Ft.
    Feltöltött egyenleg: 7777Ft` is 7777), then any amount with a currency,
    then the first bare amount after a balance word.
    """
    amounts = list(_AMOUNT.finditer(text))
    word = _BALANCE_WORDS.search(text)
    start = word.end() if word is not None else len(text)
    for match in [m for m in amounts if m.start() >= start] + amounts:
        found = _with_currency(text, match)
        if found is not None:
            return found
    for match in amounts:
        if match.start() >= start:
            amount = _decimal(match.group(1))
            return Balance(amount, None) if amount is not None else None
    return None
