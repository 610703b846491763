"""The hub-facing HTTP endpoint: GET_SERVICES, GET_NUMBER, FINISH_ACTIVATION.

Thin on purpose: one POST route; the body (JSON or form, gzip or deflate
named by Content-Encoding, gzip also found by its magic bytes) becomes a
dict, the key picks the hub
(constant-time comparison), the action picks a method from a table, and the
business logic lives in `Inventory`. Every failure becomes
`{"status": "ERROR", "error": "…"}` in one place (`handle`): bad
input never reaches a 500 or a traceback, and never changes state.

The body is decoded here, not by aiohttp (`auto_decompress=False`): a body
labelled gzip that is not gzip is the client's mistake and gets an ERROR
on a connection that stays usable, not a broken keep-alive connection.
Numbers are ASCII digits only: `int()` and `Decimal()` would silently read
Arabic-Indic or other Unicode digits (`"٣"`) as a different number.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import struct
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

import structlog
from aiohttp import hdrs, web

from .config import SLUG_RE, HubConfig
from .errors import BadRequest, ProtocolError, StoreError, Unauthorized
from .inventory import Inventory
from .logs import Episode, Sampled, Throttled
from .networks import ANY
from .sale import NO_PREFIXES, Prefixes, SaleRequest
from .store import FINISH_STATUSES

__all__ = ["ProtocolService", "create_protocol_app"]

log = structlog.get_logger("supplier.protocol")

Body = dict[str, Any]
Answer = dict[str, Any]
Counts = dict[str, dict[str, dict[str, int]]]

_GZIP_MAGIC = b"\x1f\x8b"
_MAX_ID = 2**63 - 1
_ASCII_INT = re.compile(r"\s*[0-9]{1,19}\s*")
_ASCII_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")
# Content-Encoding → zlib's wbits for it; "deflate" is zlib-wrapped by the RFC, raw in practice.
_ENCODINGS = {"gzip": (31,), "x-gzip": (31,), "deflate": (15, -15)}


@dataclass(frozen=True, slots=True)
class Encoded:
    """An answer encoded once, sent as it is for as long as it holds: GET_SERVICES' while
    the stock it shows is unchanged (hubs ask every few seconds, each of them)."""

    answer: Answer
    json: bytes
    gzipped: bytes

    @classmethod
    def of(cls, answer: Answer) -> Encoded:
        body = json.dumps(answer).encode()
        return cls(answer, body, _gzip(body))


Reply = Answer | Encoded


class ProtocolService:
    """The three actions, answered from the inventory. One object per daemon."""

    def __init__(
        self,
        inventory: Inventory,
        hubs: Sequence[HubConfig],
        *,
        on_request: Callable[[str, str, str, float], None] | None = None,
    ) -> None:
        self.inventory = inventory
        self.set_hubs(hubs)
        self._on_request = on_request
        self.unknown_key = Throttled(log, "hub request with an unknown key")  # first, then a count
        # One info line per number given and per FINISH while they are few a second;
        # under a hub's full load, the first ones and a count each second.
        self.handed = Sampled(log)
        # The store refuses hub requests (a database down): logged once per episode.
        self.store_episode = Episode(time.monotonic)
        # GET_SERVICES' answer per hub profile, with the counts and services it was made from:
        # the inventory (and, with several hosts, `Hosts`) returns the same counts object
        # until a sale, a FINISH, a hold running out, a SIM's change, a reload or another
        # host's change makes new ones, so a new object is exactly when to encode again.
        self._services_answers: dict[str, tuple[Counts, tuple[str, ...], Encoded]] = {}
        self.actions: Mapping[str, Callable[[HubConfig, Body], Awaitable[Reply]]] = {
            "GET_SERVICES": self.get_services,
            "GET_NUMBER": self.get_number,
            "FINISH_ACTIVATION": self.finish_activation,
        }

    def set_hubs(self, hubs: Sequence[HubConfig]) -> None:
        """New hub list (SIGHUP); activations keep the hub name they were opened for."""
        self.hubs = tuple(hubs)
        self._keys = [(hub, hub.key.get_secret_value().encode()) for hub in hubs]

    def find_hub(self, key: str) -> HubConfig | None:
        """The hub whose key this is; every key is compared, in constant time."""
        given = key.encode("utf-8", "surrogatepass")
        found = None
        for hub, expected in self._keys:
            if hmac.compare_digest(given, expected):
                found = hub
        return found

    def close(self) -> None:
        """At a stop: the counts of lines held back so far, and no timer left behind."""
        self.unknown_key.close()
        self.handed.close()

    def store_failed(self, exc: StoreError, seen: Mapping[str, str]) -> None:
        """A hub request answered ERROR because of the store: one error line per episode."""
        if self.store_episode.failed():
            log.error(
                "store failed during a hub request; answering ERROR until it works",
                error=str(exc),
                **seen,
            )
        else:
            log.debug("store failed during a hub request", error=str(exc), **seen)

    @property
    def store_failing_since(self) -> float | None:
        return self.store_episode.since

    @property
    def store_refused(self) -> int:
        return self.store_episode.refused

    def store_works(self, action: str, answer: Answer, asked: int | None) -> None:
        """A sale or a FINISH asked in episode `asked` went through the store: that
        episode, if it is still the current one, is over."""
        if answer.get("status") != "SUCCESS" or action not in ("GET_NUMBER", "FINISH_ACTIVATION"):
            return  # not a write (answered from memory): says nothing about the store
        ended = self.store_episode.ended(asked)
        if ended is not None:
            log.info(
                "hub requests served by the store again",
                after=round(ended[0], 1),
                answered_error=ended[1],
            )

    def observe(self, hub: str, action: str, result: str, seconds: float) -> None:
        if self._on_request is not None:
            self._on_request(hub, action, result, seconds)

    # -- actions ----------------------------------------------------------------------

    async def get_services(self, hub: HubConfig, body: Body) -> Encoded:
        """The stock, encoded again only when the counts it shows are new."""
        counts = self.inventory.counts()
        services = self.inventory.services
        cached = self._services_answers.get(hub.profile)
        if cached is not None and cached[0] is counts and cached[1] is services:
            return cached[2]
        encoded = Encoded.of(self._services_answer(hub, counts))
        self._services_answers[hub.profile] = (counts, services, encoded)
        return encoded

    def _services_answer(self, hub: HubConfig, counts: Counts) -> Answer:
        country_list = []
        for country in sorted(counts):
            operators = counts[country]
            if hub.profile == "onlinesim":
                # OnlineSim wants `any` with the country's summed counts as well.
                merged = _summed(operators.values(), self.inventory.services)
                shown = {op: c for op, c in operators.items() if op != ANY}
                shown[ANY] = merged
            elif ANY in operators:
                # SMSHub: a country is split by operator or `any`, never both.
                shown = {ANY: _summed(operators.values(), self.inventory.services)}
            else:
                shown = operators
            country_list.append({"country": country, "operatorMap": shown})
        return {"status": "SUCCESS", "countryList": country_list}

    async def get_number(self, hub: HubConfig, body: Body) -> Answer:
        # Checked in this order: a body with several bad fields names the same one as ever.
        country = _slug(body, "country")
        operator = _slug(body, "operator")
        service = _slug(body, "service")
        amount = _decimal(body, "sum")
        request = SaleRequest(
            hub=hub.name,
            country=country,
            operator=operator,
            service=service,
            sum=None if amount is None else format(amount, "f"),  # as stored: 10, not 1E+1
            currency=_optional_int(body, "currency", 1, 999),
            exclude=_prefixes(body.get("exceptionPhoneSet")),
        )
        activation = await self.inventory.get_number(request)
        if activation is None:
            return {"status": "NO_NUMBERS"}
        self.handed(
            "number given",
            hub=hub.name,
            activation_id=activation.id,
            service=request.service,
            iccid=activation.iccid,
        )
        return {
            "status": "SUCCESS",
            "number": int(activation.number),
            "activationId": activation.id,
        }

    async def finish_activation(self, hub: HubConfig, body: Body) -> Answer:
        activation_id = _int(body, "activationId", 1, _MAX_ID)
        status = _int(body, "status", 0, 99)
        if status not in FINISH_STATUSES:
            raise BadRequest(f"status: {status} is not one of 1, 3, 4, 5")
        activation, changed = await self.inventory.finish(hub.name, activation_id, status)
        self.handed(
            "activation finished" if changed else "activation finished again (no effect)",
            hub=hub.name,
            activation_id=activation.id,
            status=activation.status,
            requested=status,
        )
        return {"status": "SUCCESS"}


def _summed(maps: Any, services: Sequence[str]) -> dict[str, int]:
    total = dict.fromkeys(services, 0)
    for counts in maps:
        for service, count in counts.items():
            total[service] = total.get(service, 0) + count
    return total


# -- field checks: each raises BadRequest naming the field -----------------------------


def _slug(body: Body, name: str) -> str:
    value = body.get(name)
    # isascii first: str.lower() maps some non-ASCII letters (the Kelvin sign) to ASCII.
    if (
        not isinstance(value, str)
        or not value.isascii()
        or not SLUG_RE.fullmatch(value.strip().lower())
    ):
        raise BadRequest(f"{name}: expected a slug string such as 'russia', 'mts' or 'vk'")
    return value.strip().lower()


def _int(body: Body, name: str, low: int, high: int) -> int:
    value = body.get(name)
    if isinstance(value, str) and _ASCII_INT.fullmatch(value):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{name}: expected an integer from {low} to {high}")
    return value


def _optional_int(body: Body, name: str, low: int, high: int) -> int | None:
    return None if body.get(name) is None else _int(body, name, low, high)


def _decimal(body: Body, name: str) -> Decimal | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadRequest(f"{name}: expected a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequest(f"{name}: expected a finite number")
    text = str(value).strip()
    if not _ASCII_DECIMAL.fullmatch(text):
        raise BadRequest(f"{name}: expected a number in ASCII digits")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise BadRequest(f"{name}: expected a number") from None
    if not amount.is_finite() or amount < 0 or amount > Decimal("1e9"):
        raise BadRequest(f"{name}: expected a number from 0 to 1000000000")
    return amount.quantize(Decimal("0.0001")).normalize()


def _prefixes(value: Any) -> Prefixes:
    if value is None or value == "":
        return NO_PREFIXES
    if isinstance(value, str):
        value = [v for v in re.split(r"[\s,;]+", value) if v]
    if not isinstance(value, list) or len(value) > 10_000:
        raise BadRequest("exceptionPhoneSet: expected a list of number prefixes")
    if not value:
        return NO_PREFIXES
    # Up to 10,000 items: checked all at once by builtins rather than one by one, the
    # same rule (each 1-15 ASCII digits once stripped of spaces and a leading +).
    kinds = set(map(type, value))
    if kinds == {int}:  # OnlineSim sends integers
        texts = list(map(str, value))
    elif kinds == {str}:
        texts = [item.strip().lstrip("+") for item in value]
    else:
        texts = list(map(_prefix_text, value))
    digits = "".join(texts)
    lengths = set(map(len, texts))
    if not digits.isascii() or not digits.isdigit() or min(lengths) < 1 or max(lengths) > 15:
        raise BadRequest("exceptionPhoneSet: expected prefixes of 1-15 digits")
    return Prefixes(frozenset(texts), tuple(sorted(lengths)))


def _prefix_text(item: Any) -> str:
    if isinstance(item, bool) or not isinstance(item, str | int):
        raise BadRequest("exceptionPhoneSet: expected prefixes of 1-15 digits")
    return str(item).strip().lstrip("+")


# -- HTTP ------------------------------------------------------------------------------


SERVICE: web.AppKey[ProtocolService] = web.AppKey("protocol", ProtocolService)
MAX_BODY: web.AppKey[int] = web.AppKey("max_body", int)


def _inflate(raw: bytes, encoding: str, max_body: int) -> bytes:
    """The body decompressed, at most `max_body` bytes (a zip bomb is refused, not inflated)."""
    for wbits in _ENCODINGS[encoding]:
        inflater = zlib.decompressobj(wbits=wbits)
        try:
            data = inflater.decompress(raw, max_body + 1)
        except zlib.error:
            continue
        if len(data) > max_body:
            raise BadRequest(f"body: larger than {max_body} bytes once decompressed")
        if inflater.eof:
            return data
    raise BadRequest(f"body: not {encoding} data (mislabelled, corrupt or cut short)")


def _decode_body(raw: bytes, content_type: str, encoding: str, max_body: int) -> Body:
    encoding = encoding.strip().lower()
    if encoding in _ENCODINGS:
        raw = _inflate(raw, encoding, max_body)
    elif encoding not in ("", "identity"):
        raise BadRequest(f"body: Content-Encoding {encoding!r} not supported (gzip, deflate)")
    elif raw[:2] == _GZIP_MAGIC:
        raw = _inflate(raw, "gzip", max_body)  # gzip without a Content-Encoding header
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body: not UTF-8") from None
    stripped = text.strip()
    if not stripped:
        raise BadRequest("body: empty; expected JSON or form fields with action and key")
    # The content type is a hint; the body decides (test tools mislabel JSON as form).
    if "json" in content_type or stripped[0] in "{[":
        try:
            data = json.loads(stripped)
        except (json.JSONDecodeError, RecursionError):
            raise BadRequest("body: not valid JSON") from None
        except ValueError:
            # Python's int-string limit: an integer of more than 4,300 digits.
            raise BadRequest("body: a number in it has too many digits") from None
        if not isinstance(data, dict):
            raise BadRequest("body: expected a JSON object")
        return data
    try:
        pairs = parse_qsl(stripped, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise BadRequest("body: neither JSON nor form fields") from None
    form: Body = {}
    for key, value in pairs:
        if key.endswith("[]"):
            form.setdefault(key[:-2], []).append(value)
        else:
            form[key] = value
    return form


async def _read_limited(request: web.Request, limit: int) -> bytes:
    """The whole body, however many segments it came in; refused past `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"body: larger than {limit} bytes")
    return b"".join(chunks)


_SMALL_ANSWER = 4096


@lru_cache(maxsize=256)
def _gzip_small(data: bytes) -> bytes:
    """A short answer gzip-compressed, for a hub that accepts it (the protocol asks for it).

    Short JSON needs no more than a 512-byte window and the smallest memory
    level, which spares allocating and clearing zlib's default 256 KiB state
    per answer (aiohttp's compression: ~5 % of the loop under load). The same
    answer again (FINISH's SUCCESS, NO_NUMBERS, GET_SERVICES while nothing
    changes) is compressed once.
    """
    packer = zlib.compressobj(6, zlib.DEFLATED, 16 + 9, 1)
    return packer.compress(data) + packer.flush()


_TINY_ANSWER = 256
# gzip's header (RFC 1952): deflate, no flags, no time, no extra flags, OS unknown.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def _gzip_stored(data: bytes) -> bytes:
    """A tiny answer (GET_NUMBER's, an ERROR) as gzip of one stored deflate block (RFC 1951).

    Deflate saves nothing on 20-100 bytes of JSON (it adds ~15 here), and
    zlib releases the GIL twice per answer, each time letting the store's
    thread in ahead of the event loop; this is gzip's framing around the bytes
    as they are, which every gzip reader takes.
    """
    size = len(data)
    return b"".join(
        (
            _GZIP_HEADER,
            struct.pack("<BHH", 1, size, size ^ 0xFFFF),  # final block, stored; LEN, NLEN
            data,
            struct.pack("<II", zlib.crc32(data), size),
        )
    )


def _gzip(data: bytes) -> bytes:
    if len(data) <= _TINY_ANSWER:
        return _gzip_stored(data)
    if len(data) <= _SMALL_ANSWER:
        return _gzip_small(data)
    packer = zlib.compressobj(6, zlib.DEFLATED, 16 + 15)  # a large GET_SERVICES: not kept
    return packer.compress(data) + packer.flush()


_JSON_HEADERS = {
    hdrs.CONTENT_TYPE: "application/json; charset=utf-8",
    hdrs.VARY: hdrs.ACCEPT_ENCODING,
}
_GZIP_HEADERS = {**_JSON_HEADERS, hdrs.CONTENT_ENCODING: "gzip"}


def _respond(request: web.Request, reply: Reply, status: int = 200) -> web.Response:
    gzip = "gzip" in request.headers.get(hdrs.ACCEPT_ENCODING, "").lower()
    if isinstance(reply, Encoded):
        if gzip:
            return web.Response(body=reply.gzipped, status=status, headers=_GZIP_HEADERS)
        return web.Response(body=reply.json, status=status, headers=_JSON_HEADERS)
    body = json.dumps(reply).encode()
    if gzip:
        return web.Response(body=_gzip(body), status=status, headers=_GZIP_HEADERS)
    return web.Response(body=body, status=status, headers=_JSON_HEADERS)


class _WrongMethod(BadRequest):
    """Anything but POST (keys do not belong in URLs, which proxies log)."""


async def _dispatch(request: web.Request, service: ProtocolService, seen: dict[str, str]) -> Reply:
    if request.method != hdrs.METH_POST:
        raise _WrongMethod("use POST (keys do not belong in URLs)")
    raw = await _read_limited(request, request.app[MAX_BODY])
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "")
    body = _decode_body(raw, request.content_type, encoding, request.app[MAX_BODY])
    key = body.get("key")
    hub = service.find_hub(key) if isinstance(key, str) and key else None
    auth = request.headers.get(hdrs.AUTHORIZATION, "")
    if hub is None and auth[:7].lower() == "bearer ":
        bearer = service.find_hub(auth[7:].strip())
        hub = bearer if bearer is not None and bearer.profile == "onlinesim" else None
    if hub is None:
        service.unknown_key(peer=request.remote, action=str(body.get("action"))[:40])
        raise Unauthorized("key: missing or unknown")
    seen["hub"] = hub.name
    action = body.get("action")
    if not isinstance(action, str) or action not in service.actions:
        raise BadRequest(f"action: expected one of {', '.join(service.actions)}")
    seen["action"] = action
    return await service.actions[action](hub, body)


async def handle(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    started = time.perf_counter()
    seen = {"hub": "-", "action": "-"}
    status = 200
    asked = service.store_episode.asked()
    try:
        reply = await _dispatch(request, service, seen)
        answer = reply.answer if isinstance(reply, Encoded) else reply
        service.store_works(seen["action"], answer, asked)
    except ProtocolError as exc:
        reply = answer = {"status": "ERROR", "error": str(exc)}
        status = 405 if isinstance(exc, _WrongMethod) else 200
    except StoreError as exc:
        service.store_failed(exc, seen)
        reply = answer = {"status": "ERROR", "error": "temporarily unable to record the request"}
    except Exception as exc:  # the one place every failure becomes an answer
        log.exception("hub request failed", error=repr(exc), **seen)
        reply = answer = {"status": "ERROR", "error": "internal error"}
    service.observe(
        seen["hub"], seen["action"], str(answer.get("status")), time.perf_counter() - started
    )
    return _respond(request, reply, status)


async def not_here(request: web.Request) -> web.Response:
    return _respond(request, {"status": "ERROR", "error": "no such path"}, status=404)


def create_protocol_app(
    service: ProtocolService, *, path: str = "/", max_body: int = 256 * 1024
) -> web.Application:
    # aiohttp's own size limit answers with HTML; ours answers with protocol JSON.
    # auto_decompress off: the body is inflated by `_decode_body`, bounded, with our errors.
    app = web.Application(
        client_max_size=max_body * 4 + 1024, handler_args={"auto_decompress": False}
    )
    app[SERVICE] = service
    app[MAX_BODY] = max_body
    app.router.add_route("*", path, handle)
    app.router.add_route("*", "/{tail:.*}", not_here)
    return app
