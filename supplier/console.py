"""`supplier ussd ICCID CODE`: an operator's USSD through the running daemon's status API.

The daemon holds its serial ports exclusively, so the command line cannot
talk to a modem itself: it posts to `POST /api/sims/{iccid}/ussd` on
`status.listen` with `status.token`, and prints the network's answer.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp

from .config import Config
from .errors import SupplierError

__all__ = ["ConsoleError", "send_ussd"]

# The daemon waits up to ussd.timeout (30 s) for the network; a little more here.
_MARGIN = 10.0


class ConsoleError(SupplierError):
    """The daemon could not be asked, or refused (its error message)."""


async def send_ussd(
    config: Config, iccid: str, *, code: str | None, reply: str | None, close: bool
) -> str:
    """Ask the running daemon; the text to print (the answer, and what to do in a menu)."""
    if config.status.token is None:
        raise ConsoleError("status.token is not set: the daemon takes no operator actions")
    host, port = config.status.listen
    # A wildcard listen address is reached on loopback (it is not a place to connect to).
    wildcard = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}  # noqa: S104
    host = wildcard.get(host, host)
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    url = f"http://{netloc}/api/sims/{quote(iccid, safe='')}/ussd"
    body: dict[str, Any] = (
        {"close": True} if close else {"reply": reply} if reply is not None else {"code": code}
    )
    headers = {"Authorization": f"Bearer {config.status.token.get_secret_value()}"}
    timeout = aiohttp.ClientTimeout(total=config.ussd.timeout + _MARGIN)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, json=body, headers=headers) as response,
        ):
            answer = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ConsoleError(f"the daemon does not answer at {netloc} ({exc or 'timeout'})") from None
    except json.JSONDecodeError:
        raise ConsoleError(f"{netloc} is not the daemon's status route") from None
    if not isinstance(answer, dict) or answer.get("status") != "SUCCESS":
        error = answer.get("error", answer) if isinstance(answer, dict) else answer
        raise ConsoleError(str(error))
    if answer.get("closed"):
        return "USSD session closed"
    text = str(answer.get("text", ""))
    if answer.get("menu"):
        return (
            f"{text}\n(menu open: answer with `supplier ussd {iccid} --reply ITEM`, "
            f"or end it with `supplier ussd {iccid} --close`)"
        )
    return text or f"(no text; USSD status {answer.get('ussd_status')})"
