"""The hub protocol over real HTTP: every rule of docs/protocol.md and the hub's seven tests."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from supplier.backend import StoreBackend
from supplier.config import HubConfig, ServerConfig
from supplier.inventory import MAX_OFFERS, Inventory
from supplier.protocol import SERVICE, ProtocolService, create_protocol_app

from .hubkit import Clock, prefix_set, sim_ready
from .pg import Stores

pytestmark = pytest.mark.backends  # every test here on SQLite and on PostgreSQL

SMSHUB = HubConfig(name="smshub", key="key-smshub-1", push_url="http://127.0.0.1:9/push")
ONLINESIM = HubConfig(
    name="onlinesim", key="key-onlinesim-1", push_url="http://127.0.0.1:9/p", profile="onlinesim"
)
SERVICES = ("vk", "ok", "wa", "tg")


class Agent:
    """The protocol stack on a real loopback HTTP server, fed SIMs as pool events."""

    def __init__(
        self, client: TestClient, inventory: Inventory, store: StoreBackend, clock: Clock
    ) -> None:
        self.client = client
        self.inventory = inventory
        self.store = store
        self.clock = clock

    async def add_sims(self, *slots: int, **kwargs: Any) -> None:
        for slot in slots:
            event = sim_ready(slot, **kwargs)
            await self.inventory.sim_ready(event.port, event.sim, event.network)

    async def call(
        self, body: dict[str, Any], key: str | None = SMSHUB.key.get_secret_value(), **kw: Any
    ) -> dict[str, Any]:
        if key is not None:
            body = {"key": key, **body}
        response = await self.client.post("/", json=body, **kw)
        assert response.status == 200, await response.text()
        answer = await response.json()
        assert isinstance(answer, dict) and answer["status"] in ("SUCCESS", "ERROR", "NO_NUMBERS")
        return answer

    async def services(
        self, key: str = SMSHUB.key.get_secret_value()
    ) -> dict[str, dict[str, dict[str, int]]]:
        answer = await self.call({"action": "GET_SERVICES"}, key=key)
        assert answer["status"] == "SUCCESS"
        return {c["country"]: c["operatorMap"] for c in answer["countryList"]}

    async def number(
        self, service: str = "vk", country: str = "russia", operator: str = "any", **extra: Any
    ) -> dict[str, Any]:
        body = {
            "action": "GET_NUMBER",
            "country": country,
            "operator": operator,
            "service": service,
            "sum": 12.5,
            "currency": 643,
            **extra,
        }
        return await self.call(body, **({"key": extra.pop("key")} if "key" in extra else {}))

    async def finish(
        self, activation_id: int, status: int, key: str = SMSHUB.key.get_secret_value()
    ) -> dict[str, Any]:
        return await self.call(
            {"action": "FINISH_ACTIVATION", "activationId": activation_id, "status": status},
            key=key,
        )


AgentFactory = Callable[..., Awaitable[Agent]]


@pytest.fixture
async def agent(stores: Stores, aiohttp_client) -> AgentFactory:  # type: ignore[no-untyped-def]
    async def factory(
        release_after: float = 1200.0,
        db: str = "agent",
        clock: Clock | None = None,
        max_body: int = 4096,
    ) -> Agent:
        clock = clock or Clock()
        store = await stores.open(db)
        inventory = Inventory(store, services=SERVICES, release_after=release_after, clock=clock)
        await inventory.load()
        service = ProtocolService(inventory, [SMSHUB, ONLINESIM])
        client = await aiohttp_client(create_protocol_app(service, max_body=max_body))
        return Agent(client, inventory, store, clock)

    return factory


async def test_get_services_counts_exactly_what_can_be_sold(agent: AgentFactory) -> None:
    a = await agent()
    await a.add_sims(
        0, 1, 2, 3, 8, 4
    )  # russia: mts x2 (0, 8), megafon, beeline, tele2; ukraine: vodafone
    await a.add_sims(9, number=False)  # no number: not stock
    await a.add_sims(10, registered=False)  # not registered: not stock
    services = await a.services()
    assert services["russia"]["mts"] == {"vk": 2, "ok": 2, "wa": 2, "tg": 2}
    assert services["russia"]["megafon"] == dict.fromkeys(SERVICES, 1)
    assert services["ukraine"] == {"vodafone": dict.fromkeys(SERVICES, 1)}
    assert "any" not in services["russia"]  # smshub: split by operator, never both


async def test_get_services_follows_every_change_at_once(agent: AgentFactory) -> None:
    # GET_SERVICES' answer is encoded once per change of the stock, per hub profile: each
    # change shows in the very next answer, in JSON and in gzip, to either profile.
    a = await agent()
    await a.add_sims(0, 8, 1)  # russia: mts x2, megafon
    plain = {"Accept-Encoding": "identity"}

    async def vk(operator: str) -> tuple[int, int, int]:
        smshub = (await a.services())["russia"][operator]["vk"]
        unzipped = await a.call({"action": "GET_SERVICES"}, headers=plain)
        onlinesim = await a.services(ONLINESIM.key.get_secret_value())
        as_json = {c["country"]: c["operatorMap"] for c in unzipped["countryList"]}
        return smshub, as_json["russia"][operator]["vk"], onlinesim["russia"][operator]["vk"]

    assert await vk("mts") == (2, 2, 2)
    service = a.client.app[SERVICE]
    same = await service.get_services(SMSHUB, {})
    assert await service.get_services(SMSHUB, {}) is same  # nothing changed: not encoded again
    sold = await a.number("vk", operator="mts")
    assert await vk("mts") == (1, 1, 1)  # a sale
    assert await service.get_services(SMSHUB, {}) is not same
    assert (await a.finish(sold["activationId"], 4))["status"] == "SUCCESS"
    assert await vk("mts") == (2, 2, 2)  # a FINISH
    await a.number("vk", operator="megafon")
    assert await vk("megafon") == (0, 0, 0)
    a.clock.advance(1201)
    assert await vk("megafon") == (1, 1, 1)  # a hold running out
    a.inventory.sim_lost(sim_ready(8).sim.iccid)
    assert await vk("mts") == (1, 1, 1)  # a SIM gone
    await a.add_sims(8)
    assert await vk("mts") == (2, 2, 2)  # and back
    service.inventory.reconfigure(  # the answering host's (test_two_hosts: another host)
        services=("ok", "tg"), release_after=1200, sim_overrides={}, network_overrides={}
    )
    assert (await a.services())["russia"]["mts"] == {"ok": 2, "tg": 2}  # a reload


async def test_counts_are_real_asking_for_all_of_them_succeeds(agent: AgentFactory) -> None:
    # The hub's test 6: ask GET_NUMBER as many times as advertised.
    a = await agent()
    await a.add_sims(*range(16))
    advertised = (await a.services())["russia"]
    numbers = set()
    for operator, counts in advertised.items():
        for _ in range(counts["tg"]):
            answer = await a.number("tg", operator=operator)
            assert answer["status"] == "SUCCESS"
            numbers.add(answer["number"])
        assert (await a.number("tg", operator=operator))["status"] == "NO_NUMBERS"
    assert len(numbers) == sum(c["tg"] for c in advertised.values())
    after = await a.services()
    assert all(c == dict.fromkeys(SERVICES, 0) for c in after["russia"].values())  # zeros included


async def test_number_and_activation_id_are_json_integers_with_country_code(
    agent: AgentFactory,
) -> None:
    # The hub's tests 3 and 4.
    a = await agent()
    await a.add_sims(0)
    response = await a.client.post(
        "/",
        json={
            "key": "key-smshub-1",
            "action": "GET_NUMBER",
            "country": "russia",
            "operator": "mts",
            "service": "vk",
            "sum": 10,
        },
    )
    text = await response.text()
    answer = json.loads(text)
    assert answer == {
        "status": "SUCCESS",
        "number": 79150000000,
        "activationId": answer["activationId"],
    }
    assert type(answer["number"]) is int and type(answer["activationId"]) is int
    assert '"number": 79150000000' in text


async def test_exception_phone_set_prefixes_are_never_handed_out(agent: AgentFactory) -> None:
    # The hub's test 7: prefixes of any length, as strings or integers.
    a = await agent()
    await a.add_sims(0, 1, 8, 9)  # +7915…0, +7926…1, +7915…8, +7926…9
    answer = await a.number("vk", exceptionPhoneSet=["7915", 79260000001])
    assert answer["status"] == "SUCCESS"
    assert answer["number"] == 79260000009
    assert (await a.number("vk", exceptionPhoneSet=["79", "7926"]))["status"] == "NO_NUMBERS"
    answer = await a.number("vk", exceptionPhoneSet=["7926", "79150000008"])
    assert answer["number"] == 79150000000


async def test_ten_thousand_prefixes_are_honoured(agent: AgentFactory) -> None:
    # The protocol's largest exceptionPhoneSet (10,000 prefixes, as OnlineSim sends them:
    # integers) with the SIMs it bars anywhere in it: a whole number (slot 0), a 4-digit
    # prefix (slots 1 and 9) and a 9-digit one (slots 2 and 10). Only the others are sold.
    a = await agent(max_body=ServerConfig().max_body)  # the default takes it
    await a.add_sims(*range(16))  # Russian: 0-3 and 8-11
    barred = ["79150000000", "7926", "790300000"]
    listed = prefix_set(barred)
    body = [int(p) for p in listed]
    sold = set()
    for _ in range(8):
        answer = await a.number("vk", exceptionPhoneSet=body)
        if answer["status"] == "NO_NUMBERS":
            break
        sold.add(str(answer["number"]))
    assert sold == {"79150000008", "79500000003", "79500000011"}
    assert not any(n.startswith(p) for n in sold for p in listed)
    # The holds over, the same set as one string for another service: the same three.
    a.clock.advance(1201)
    again = set()
    for _ in range(4):
        answer = await a.number("tg", exceptionPhoneSet=",".join(listed))
        if answer["status"] == "NO_NUMBERS":
            break
        again.add(str(answer["number"]))
    assert again == sold


async def test_finish_is_idempotent_and_unknown_ids_are_errors(agent: AgentFactory) -> None:
    # The hub's test 1.
    a = await agent()
    await a.add_sims(0)
    activation = (await a.number("vk"))["activationId"]
    assert await a.finish(activation, 4) == {"status": "SUCCESS"}
    usage = dict(a.inventory.usage)
    assert await a.finish(activation, 4) == {"status": "SUCCESS"}
    assert await a.finish(activation, 3) == {"status": "SUCCESS"}  # a repeat: the first stands
    assert a.inventory.usage == usage
    stored = await a.store.get_activation(activation)
    assert stored is not None and stored.status == 4
    unknown = await a.finish(activation + 1000, 3)
    assert unknown["status"] == "ERROR" and "activationId" in unknown["error"]
    other_hub = await a.finish(activation, 3, key="key-onlinesim-1")
    assert other_hub["status"] == "ERROR"


@pytest.mark.parametrize(
    ("status", "again"), [(1, 0), (3, 0), (4, MAX_OFFERS - 1), (5, MAX_OFFERS - 1)]
)
async def test_finish_statuses_decide_what_is_offered_again(
    agent: AgentFactory, status: int, again: int
) -> None:
    a = await agent()
    await a.add_sims(0)
    first = await a.number("vk")
    assert (await a.finish(first["activationId"], status))["status"] == "SUCCESS"
    offered = 0
    while (answer := await a.number("vk"))["status"] == "SUCCESS":
        offered += 1
        await a.finish(answer["activationId"], status)
        assert offered <= MAX_OFFERS
    assert offered == again
    # Other services are unaffected by this service's history.
    assert (await a.number("tg"))["status"] == "SUCCESS"


async def test_an_activation_holds_its_sim_until_finish_or_release(agent: AgentFactory) -> None:
    clock = Clock()
    a = await agent(release_after=600, clock=clock)
    await a.add_sims(0)
    held = await a.number("vk")
    assert (await a.number("ok"))["status"] == "NO_NUMBERS"
    assert (await a.services())["russia"]["mts"]["ok"] == 0
    clock.advance(599)
    assert (await a.number("ok"))["status"] == "NO_NUMBERS"
    clock.advance(2)  # release_after passed without a FINISH: sellable again
    again = await a.number("ok")
    assert again["status"] == "SUCCESS" and again["number"] == held["number"]
    assert await a.finish(held["activationId"], 3) == {"status": "SUCCESS"}  # a late FINISH
    assert (await a.number("vk"))["status"] == "NO_NUMBERS"  # …still counts


async def test_least_recently_used_sim_is_given_first(agent: AgentFactory) -> None:
    clock = Clock()
    a = await agent(clock=clock)
    await a.add_sims(0, 4 + 4, 16)  # three MTS SIMs (slots 0, 8, 16)
    seen = []
    for _ in range(6):
        answer = await a.number("vk", operator="mts")
        seen.append(answer["number"])
        await a.finish(answer["activationId"], 4)
        clock.advance(1)
    assert len(set(seen[:3])) == 3
    assert seen[3:] == seen[:3]


async def test_concurrent_get_number_never_hands_out_a_sim_twice(agent: AgentFactory) -> None:
    a = await agent()
    await a.add_sims(*range(12))
    answers = await asyncio.gather(*(a.number("wa", operator="any") for _ in range(40)))
    won = [x for x in answers if x["status"] == "SUCCESS"]
    russian = sum(1 for slot in range(12) if slot % 8 < 4)
    assert len(won) == russian
    assert len({x["number"] for x in won}) == russian
    assert len({x["activationId"] for x in won}) == russian


async def test_onlinesim_profile_adds_any_and_takes_bearer(agent: AgentFactory) -> None:
    a = await agent()
    await a.add_sims(0, 1, 2)
    services = await a.services(key="key-onlinesim-1")
    assert services["russia"]["any"] == dict.fromkeys(SERVICES, 3)
    assert services["russia"]["mts"] == dict.fromkeys(SERVICES, 1)
    response = await a.client.post(
        "/", json={"action": "GET_SERVICES"}, headers={"Authorization": "Bearer key-onlinesim-1"}
    )
    assert (await response.json())["status"] == "SUCCESS"
    response = await a.client.post(
        "/", json={"action": "GET_SERVICES"}, headers={"Authorization": "Bearer key-smshub-1"}
    )
    assert (await response.json())["status"] == "ERROR"  # Bearer is OnlineSim's, not SMSHub's


async def test_unknown_operator_makes_the_country_any_for_smshub(agent: AgentFactory) -> None:
    a = await agent()
    await a.add_sims(0)
    unknown = sim_ready(1)
    imsi = "25077" + unknown.sim.imsi[5:]  # a Russian network not in the table
    odd = type(unknown.sim)(unknown.sim.iccid, imsi, unknown.sim.number, "250", "77")
    await a.inventory.sim_ready(unknown.port, odd, unknown.network)
    services = await a.services()
    assert services["russia"] == {"any": dict.fromkeys(SERVICES, 2)}
    assert (await a.number("vk", operator="any"))["status"] == "SUCCESS"


async def test_several_hubs_share_the_pool_and_own_their_activations(agent: AgentFactory) -> None:
    a = await agent()
    await a.add_sims(0, 1)
    mine = await a.number("vk")
    theirs = await a.number("vk", key="key-onlinesim-1")
    assert {mine["status"], theirs["status"]} == {"SUCCESS"}
    assert mine["number"] != theirs["number"]
    assert (await a.number("vk"))["status"] == "NO_NUMBERS"
    assert (await a.finish(theirs["activationId"], 3))["status"] == "ERROR"
    assert (await a.finish(theirs["activationId"], 3, key="key-onlinesim-1"))["status"] == "SUCCESS"


async def test_gzip_in_both_directions_and_form_bodies(agent: AgentFactory) -> None:
    a = await agent()
    await a.add_sims(0)
    body = gzip.compress(json.dumps({"key": "key-smshub-1", "action": "GET_SERVICES"}).encode())
    response = await a.client.post(
        "/",
        data=body,
        headers={
            "Content-Encoding": "gzip",
            "Content-Type": "application/json",
            "Accept-Encoding": "gzip",
        },
    )
    assert response.headers.get("Content-Encoding") == "gzip"
    assert (await response.json())["status"] == "SUCCESS"
    # gzip with no header at all: detected by its magic bytes.
    response = await a.client.post("/", data=body, headers={"Content-Type": "application/json"})
    assert (await response.json())["status"] == "SUCCESS"
    response = await a.client.post(
        "/",
        data={
            "key": "key-smshub-1",
            "action": "GET_NUMBER",
            "country": "russia",
            "operator": "mts",
            "service": "vk",
            "sum": "10.5",
            "exceptionPhoneSet[]": ["7926"],
        },
    )
    answer = await response.json()
    assert answer["status"] == "SUCCESS" and type(answer["number"]) is int
    activation = await a.store.get_activation(answer["activationId"])
    assert activation is not None and activation.sum == "10.5"


BAD_REQUESTS: list[tuple[str, Any]] = [
    ("no key", {"action": "GET_SERVICES"}),
    ("wrong key", {"action": "GET_SERVICES", "key": "key-smshub-2"}),
    ("key of wrong type", {"action": "GET_SERVICES", "key": 12345678}),
    ("unknown action", {"action": "GET_BALANCE", "key": "key-smshub-1"}),
    ("action of wrong type", {"action": ["GET_NUMBER"], "key": "key-smshub-1"}),
    (
        "country missing",
        {
            "action": "GET_NUMBER",
            "key": "key-smshub-1",
            "service": "vk",
            "operator": "any",
            "sum": 1,
        },
    ),
    (
        "country of wrong type",
        {
            "action": "GET_NUMBER",
            "key": "key-smshub-1",
            "country": 7,
            "service": "vk",
            "operator": "any",
            "sum": 1,
        },
    ),
    (
        "sum not a number",
        {
            "action": "GET_NUMBER",
            "key": "key-smshub-1",
            "country": "russia",
            "service": "vk",
            "operator": "any",
            "sum": "a lot",
        },
    ),
    (
        "sum negative",
        {
            "action": "GET_NUMBER",
            "key": "key-smshub-1",
            "country": "russia",
            "service": "vk",
            "operator": "any",
            "sum": -1,
        },
    ),
    (
        "sum huge",
        {
            "action": "GET_NUMBER",
            "key": "key-smshub-1",
            "country": "russia",
            "service": "vk",
            "operator": "any",
            "sum": 1e308,
        },
    ),
    (
        "currency of wrong type",
        {
            "action": "GET_NUMBER",
            "key": "key-smshub-1",
            "country": "russia",
            "service": "vk",
            "operator": "any",
            "currency": "RUB",
        },
    ),
    (
        "exceptions not a list",
        {
            "action": "GET_NUMBER",
            "key": "key-smshub-1",
            "country": "russia",
            "service": "vk",
            "operator": "any",
            "exceptionPhoneSet": {"a": 1},
        },
    ),
    (
        "exception not digits",
        {
            "action": "GET_NUMBER",
            "key": "key-smshub-1",
            "country": "russia",
            "service": "vk",
            "operator": "any",
            "exceptionPhoneSet": ["79x"],
        },
    ),
    ("activation id missing", {"action": "FINISH_ACTIVATION", "key": "key-smshub-1", "status": 3}),
    (
        "activation id of wrong type",
        {"action": "FINISH_ACTIVATION", "key": "key-smshub-1", "activationId": "one", "status": 3},
    ),
    (
        "activation id huge",
        {"action": "FINISH_ACTIVATION", "key": "key-smshub-1", "activationId": 10**30, "status": 3},
    ),
    (
        "status 2",
        {"action": "FINISH_ACTIVATION", "key": "key-smshub-1", "activationId": 1, "status": 2},
    ),
    (
        "status of wrong type",
        {"action": "FINISH_ACTIVATION", "key": "key-smshub-1", "activationId": 1, "status": True},
    ),
]


@pytest.mark.parametrize(("name", "body"), BAD_REQUESTS, ids=[n for n, _ in BAD_REQUESTS])
async def test_bad_requests_get_an_error_and_change_nothing(
    agent: AgentFactory, name: str, body: Any
) -> None:
    a = await agent()
    await a.add_sims(0, 1)
    before = (a.inventory.counts(), dict(a.inventory.activations))
    response = await a.client.post("/", json=body)
    assert response.status == 200
    answer = await response.json()
    assert answer["status"] == "ERROR" and isinstance(answer["error"], str) and answer["error"]
    assert (a.inventory.counts(), dict(a.inventory.activations)) == before


@pytest.mark.parametrize(
    ("name", "data", "headers"),
    [
        ("not JSON", b"{not json", {"Content-Type": "application/json"}),
        ("JSON array", b"[1, 2]", {"Content-Type": "application/json"}),
        ("JSON string", b'"GET_SERVICES"', {"Content-Type": "application/json"}),
        ("not UTF-8", b"\xff\xfe{}", {"Content-Type": "application/json"}),
        ("empty", b"", {}),
        ("oversized", b'{"key": "' + b"k" * 10_000 + b'"}', {"Content-Type": "application/json"}),
        ("corrupt gzip", b"\x1f\x8b\x08\x00garbage", {}),
        ("gzip bomb", gzip.compress(b" " * 10_000_000), {"Content-Encoding": "gzip"}),
        ("deep nesting", b"[" * 100_000 + b"]" * 100_000, {"Content-Type": "application/json"}),
        ("bad form", b"a=%zz&&=", {"Content-Type": "application/x-www-form-urlencoded"}),
    ],
)
async def test_malformed_bodies_get_an_error(
    agent: AgentFactory, name: str, data: bytes, headers: dict[str, str]
) -> None:
    a = await agent()
    response = await a.client.post("/", data=data, headers=headers)
    assert response.status < 500
    answer = json.loads(await response.read())
    assert answer["status"] == "ERROR"


async def test_get_is_refused_with_a_json_error(agent: AgentFactory) -> None:
    a = await agent()
    response = await a.client.get("/?key=key-smshub-1&action=GET_SERVICES")
    assert response.status == 405
    assert (await response.json())["status"] == "ERROR"
    response = await a.client.post("/elsewhere", json={})
    assert response.status == 404 and (await response.json())["status"] == "ERROR"


async def test_everything_survives_a_restart(agent: AgentFactory) -> None:
    clock = Clock()
    a = await agent(db="restart", clock=clock)
    await a.add_sims(0, 1)
    held = await a.number("vk", operator="mts")
    sold = await a.number("vk", operator="megafon")
    await a.finish(sold["activationId"], 3)
    await a.store.close()

    b = await agent(db="restart", clock=clock)
    await b.add_sims(0, 1)  # the modems report their SIMs again
    assert (await b.services())["russia"]["mts"]["ok"] == 0  # still held
    assert (await b.services())["russia"]["megafon"]["vk"] == 0  # sold: never again for vk
    assert await b.finish(held["activationId"], 4) == {"status": "SUCCESS"}
    assert await b.finish(sold["activationId"], 3) == {"status": "SUCCESS"}  # known, idempotent
    fresh = await b.number("ok", operator="any")
    assert fresh["activationId"] > sold["activationId"]  # ids never reused


# -- thousands of generated bodies: every answer well-formed, nothing changes -------------

from urllib.parse import urlencode  # noqa: E402

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["russia", "any", "mts", "vk", "7915", "3", "1e9999", "NaN", "\u0000", "😀"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_bodies = st.fixed_dictionaries(
    {},
    optional={
        "action": st.one_of(
            st.sampled_from(["GET_SERVICES", "GET_NUMBER", "FINISH_ACTIVATION", "PUSH_SMS", ""]),
            _values,
        ),
        "key": st.one_of(st.sampled_from(["key-smshub-1", "key-onlinesim-1", "", "key"]), _values),
        "country": st.one_of(st.just("russia"), _values),
        "operator": st.one_of(st.sampled_from(["any", "mts"]), _values),
        "service": st.one_of(st.sampled_from(["vk", "tg"]), _values),
        "sum": st.one_of(st.sampled_from([10, "12.50", 0.5]), _values),
        "currency": _values,
        "exceptionPhoneSet": _values,
        "activationId": _values,
        "status": _values,
    },
).flatmap(
    lambda d: st.dictionaries(st.text(max_size=10), _values, max_size=3).map(
        lambda extra: {**extra, **d}
    )
)


_WELL_FORMED = {
    "action": "GET_NUMBER",
    "key": "key-smshub-1",
    "country": "russia",
    "operator": "any",
    "service": "vk",
    "sum": 10,
}


async def test_generated_bodies_never_break_anything(agent: AgentFactory) -> None:
    a = await agent()
    await a.add_sims(0, 1, 2, 3)
    for _ in range(4):  # every SIM held: a well-formed GET_NUMBER can only say NO_NUMBERS
        assert (await a.number("vk"))["status"] == "SUCCESS"
    before = (a.inventory.counts(), dict(a.inventory.activations), dict(a.inventory.usage))
    loop = asyncio.get_running_loop()
    answers: list[dict[str, Any]] = []

    @settings(
        max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
    )
    @given(body=_bodies, encoding=st.sampled_from(["json", "form", "gzip", "raw"]))
    @example(body=_WELL_FORMED, encoding="json")
    @example(body=_WELL_FORMED, encoding="form")
    @example(body=_WELL_FORMED, encoding="gzip")
    def check(body: dict[str, Any], encoding: str) -> None:
        answers.append(
            asyncio.run_coroutine_threadsafe(send(body, encoding), loop).result(timeout=30)
        )

    async def send(body: dict[str, Any], encoding: str) -> dict[str, Any]:
        if body.get("action") == "FINISH_ACTIVATION" and body.get("key") in (
            "key-smshub-1",
            "key-onlinesim-1",
        ):
            # A well-formed FINISH of a real id would rightly change state.
            body = {**body, "key": "not-the-key"}
        text = json.dumps(body, allow_nan=True)
        if encoding == "json":
            response = await a.client.post(
                "/", data=text.encode(), headers={"Content-Type": "application/json"}
            )
        elif encoding == "gzip":
            response = await a.client.post(
                "/", data=gzip.compress(text.encode()), headers={"Content-Encoding": "gzip"}
            )
        elif encoding == "form":
            form = urlencode({str(k): str(v) for k, v in body.items()}).encode()
            response = await a.client.post(
                "/", data=form, headers={"Content-Type": "application/x-www-form-urlencoded"}
            )
        else:
            response = await a.client.post("/", data=text.encode("utf-8", "surrogatepass")[::-1])
        assert response.status < 500
        answer = json.loads(await response.read())
        assert isinstance(answer, dict)
        assert answer["status"] in ("SUCCESS", "ERROR", "NO_NUMBERS")
        if answer["status"] == "ERROR":
            assert isinstance(answer["error"], str) and answer["error"]
        return answer

    await asyncio.to_thread(check)
    assert len(answers) >= 2000
    assert (a.inventory.counts(), dict(a.inventory.activations), dict(a.inventory.usage)) == before
    assert {x["status"] for x in answers} >= {"ERROR", "SUCCESS", "NO_NUMBERS"}


async def test_network_and_sim_overrides_decide_the_slugs(store: StoreBackend) -> None:
    from supplier.config import SimOverride

    event = sim_ready(1)
    odd = type(event.sim)(event.sim.iccid, "25077" + event.sim.imsi[5:], None, "250", "77")
    inventory = Inventory(
        store,
        services=SERVICES,
        release_after=600,
        network_overrides={"25077": ("russia", "rostelecom")},
        sim_overrides={odd.iccid: SimOverride(number="89261234567")},
    )
    sim = await inventory.sim_ready(event.port, odd, event.network)
    assert (sim.country, sim.operator, sim.number) == ("russia", "rostelecom", "79261234567")
    assert inventory.counts() == {"russia": {"rostelecom": dict.fromkeys(SERVICES, 1)}}
    await store.close()


async def test_the_largest_exception_set_fits_the_default_body_limit(agent: AgentFactory) -> None:
    """10,000 prefixes of 15 digits, quoted (~180 KB of JSON): taken under the default."""
    a = await agent(max_body=ServerConfig().max_body)
    await a.add_sims(0)
    longest = [f"{n:015d}" for n in range(10_000)]  # bar no Russian number
    answer = await a.number("vk", exceptionPhoneSet=longest)
    assert answer["status"] == "SUCCESS", answer
