"""Bad input is an ERROR on a connection that stays usable, never an internal error (issue 11.6).

Every request here goes over one raw keep-alive TCP connection to the real
protocol server on loopback, so "the connection stays usable" is checked
literally: the next request is written on the same socket and answered.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from supplier.backend import StoreBackend
from supplier.inventory import Inventory
from supplier.protocol import ProtocolService, create_protocol_app

from .hubkit import Clock
from .test_protocol import SERVICES, SMSHUB, Agent
from .test_push_faults import Captured, captured_logs

pytestmark = pytest.mark.backends  # every test here on SQLite and on PostgreSQL

KEY = SMSHUB.key.get_secret_value()
ARABIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


class Connection:
    """One keep-alive HTTP/1.1 connection written by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def post(
        self, body: bytes, headers: dict[str, str] | None = None, pause: float = 0.0
    ) -> tuple[int, dict[str, Any]]:
        head = "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        if pause:  # the body in two segments, apart in time
            self.writer.write(head.encode() + body[:7])
            await self.writer.drain()
            await asyncio.sleep(pause)
            self.writer.write(body[7:])
        else:
            self.writer.write(head.encode() + body)
        await self.writer.drain()
        async with asyncio.timeout(5):
            status_line = await self.reader.readuntil(b"\r\n")
            length = 0
            while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                assert name.lower() != "connection" or "close" not in value.lower()
            answer = json.loads(await self.reader.readexactly(length))
        return int(status_line.split()[1]), answer

    async def services_work(self) -> None:
        """The connection is still usable: a good request on it is answered."""
        status, answer = await self.post(
            json.dumps({"action": "GET_SERVICES", "key": KEY}).encode()
        )
        assert (status, answer["status"]) == (200, "SUCCESS")


@pytest.fixture
async def conn(store: StoreBackend, aiohttp_client: Any) -> AsyncIterator[tuple[Agent, Connection]]:
    clock = Clock()
    inventory = Inventory(store, services=SERVICES, release_after=1200.0, clock=clock)
    await inventory.load()
    service = ProtocolService(inventory, [SMSHUB])
    client = await aiohttp_client(create_protocol_app(service, max_body=64 * 1024))
    a = Agent(client, inventory, store, clock)
    await a.add_sims(0, 1, 2, 3)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    yield a, Connection(reader, writer)
    writer.close()
    await writer.wait_closed()


def body(**fields: Any) -> bytes:
    return json.dumps({"key": KEY, **fields}, ensure_ascii=False).encode()


NUMBER = {"action": "GET_NUMBER", "country": "russia", "operator": "any", "service": "vk"}


@pytest.mark.parametrize(
    ("data", "headers", "error"),
    [
        (body(action="GET_SERVICES"), {"Content-Encoding": "gzip"}, "not gzip data"),
        (body(action="GET_SERVICES"), {"Content-Encoding": "deflate"}, "not deflate data"),
        (body(action="GET_SERVICES"), {"Content-Encoding": "br"}, "'br' not supported"),
        (b"\x1f\x8b\x08\x00garbage", {}, "not gzip data"),
        (gzip.compress(b" " * 70_000), {"Content-Encoding": "gzip"}, "larger than"),
        (b'{"key": "k", "action": "GET_SERVICES", "n": 1' + b"0" * 4301 + b"}", {}, "digits"),
        (body(**NUMBER, sum="٣"), {}, "sum: expected a number in ASCII digits"),
        (body(**NUMBER, currency="٦٤٣"), {}, "currency: expected an integer"),
        (body(**NUMBER, exceptionPhoneSet=["٧٩"]), {}, "exceptionPhoneSet"),
        (body(**NUMBER, exceptionPhoneSet="٧٩,7"), {}, "exceptionPhoneSet"),
        (body(**{**NUMBER, "country": "\u212aazakhstan"}), {}, "country: expected a slug"),
        (body(action="FINISH_ACTIVATION", activationId="1", status="٣"), {}, "status"),
    ],
    ids=[
        "json-labelled-gzip",
        "json-labelled-deflate",
        "unknown-encoding",
        "corrupt-gzip",
        "gzip-bomb",
        "4301-digit-integer",
        "arabic-indic-sum",
        "arabic-indic-currency",
        "arabic-indic-prefix-list",
        "arabic-indic-prefix-string",
        "kelvin-sign-slug",
        "arabic-indic-status",
    ],
)
async def test_bad_input_is_an_error_and_the_connection_stays_usable(
    conn: tuple[Agent, Connection], data: bytes, headers: dict[str, str], error: str
) -> None:
    _, c = conn
    with captured_logs() as logs:
        status, answer = await c.post(data, headers)
        await c.services_work()
    assert status == 200 and answer["status"] == "ERROR", answer
    assert error in answer["error"], answer
    assert not _crashes(logs)


async def test_a_non_ascii_activation_id_is_refused_not_read_as_another(
    conn: tuple[Agent, Connection],
) -> None:
    a, c = conn
    given = await a.number()
    assert given["status"] == "SUCCESS"
    arabic = str(given["activationId"]).translate(ARABIC)
    with captured_logs() as logs:
        _, answer = await c.post(body(action="FINISH_ACTIVATION", activationId=arabic, status=3))
    assert answer["status"] == "ERROR" and "activationId" in answer["error"], answer
    activation = await a.store.get_activation(given["activationId"])
    assert activation is not None and activation.finished is None  # not finished as "its" id
    assert not _crashes(logs)


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw deflate, as many clients send
        ("", gzip.compress),  # gzip without a header, found by its magic bytes
    ],
    ids=["gzip", "zlib-deflate", "raw-deflate", "unlabelled-gzip"],
)
async def test_good_compressed_bodies_are_read(
    conn: tuple[Agent, Connection], encoding: str, compress: Any
) -> None:
    _, c = conn
    headers = {"Content-Encoding": encoding} if encoding else {}
    status, answer = await c.post(compress(body(action="GET_SERVICES")), headers)
    assert (status, answer["status"]) == (200, "SUCCESS"), answer
    await c.services_work()


async def test_a_body_in_two_segments_is_read_whole(conn: tuple[Agent, Connection]) -> None:
    _, c = conn
    status, answer = await c.post(body(action="GET_SERVICES"), pause=0.2)
    assert (status, answer["status"]) == (200, "SUCCESS"), answer


def _crashes(logs: Captured) -> list[dict[str, Any]]:
    return [e for e in logs if e["log_level"] in ("error", "critical", "exception")]


def test_numbers_outside_the_protocol_are_ascii_digits_too() -> None:
    from supplier.config import phone_digits
    from supplier.networks import international_number

    with pytest.raises(ValueError, match="6-15 digits"):
        phone_digits("79001234567".translate(ARABIC))
    assert phone_digits("+79001234567") == "79001234567"
    assert international_number("+7 900 123-45-67", "russia") == "79001234567"
    assert international_number("٧9001234567", "russia").isascii()  # never "٧" sold as 7


async def test_made_up_slugs_do_not_grow_the_demand_without_bound(
    conn: tuple[Agent, Connection],
) -> None:
    # A hostile hub asks GET_NUMBER for countries, operators and services nobody sells:
    # each is NO_NUMBERS, and none is kept (the rotation weighs only what can be sold).
    agent, connection = conn
    for i in range(300):
        fields = {"country": "russia", "operator": f"op{i}", "service": "vk"}
        if i % 3 == 1:
            fields = {"country": f"land{i}", "operator": "any", "service": "vk"}
        elif i % 3 == 2:
            fields = {"country": "russia", "operator": "any", "service": f"svc{i}"}
        status, answer = await connection.post(body(action="GET_NUMBER", **fields))
        assert (status, answer["status"]) == (200, "NO_NUMBERS"), answer
    await agent.number()  # a real one is still counted
    assert dict(agent.inventory.demand) == {("russia", "any", "vk"): 1}
