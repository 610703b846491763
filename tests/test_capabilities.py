"""Each modem capability on its own: a `Session` over a real pty to one emulated modem.

No `Modem`, no pool: the capability under test is the only thing talking,
so each test shows the module works without the others.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from modems.channel import open_channel
from modems.codes import RegStatus
from modems.emulator import VirtualModemBank, make_sim
from modems.emulator.device import VirtualModem
from modems.errors import CommandTimeout
from modems.events import NetworkInfo
from modems.messaging import Messaging
from modems.network import Network, moved
from modems.session import ModemHung, Session
from modems.sim import SimCard
from modems.vendors import quirks_for

from .conftest import FAST, BankFactory

SessionFactory = Callable[..., Awaitable[tuple[VirtualModem, Session]]]


@pytest.fixture
async def session_to(make_bank: BankFactory) -> AsyncIterator[SessionFactory]:
    sessions: list[Session] = []

    async def factory(profile: str = "generic") -> tuple[VirtualModem, Session]:
        bank: VirtualModemBank = await make_bank(1, profiles=(profile,))
        vm = bank[0]
        session = Session(vm.link, FAST)
        session.attach(await open_channel(vm.link, lambda urc: None))
        sessions.append(session)
        await session.attempt("ATE0")
        await session.attempt("AT+CMEE=1")
        manufacturer = await session.text("AT+CGMI", "+CGMI")
        session.quirks = quirks_for(manufacturer, await session.text("AT+CGMM", "+CGMM"))
        return vm, session

    yield factory
    for session in sessions:
        session.detach()


@pytest.mark.parametrize("profile", ["generic", "huawei", "wavecom", "sierra"])
async def test_sim_capability_alone_identifies_the_card(session_to, profile) -> None:  # type: ignore[no-untyped-def]
    vm, session = await session_to(profile)
    card = SimCard(session)
    assert await card.status() == "READY"
    iccid = await card.read_iccid()
    assert vm.sim is not None and iccid == vm.sim.iccid
    identity = await card.identify(iccid)
    assert identity.imsi == vm.sim.imsi and identity.number == vm.sim.number
    assert (identity.home_mcc, identity.home_mnc) == (vm.sim.imsi[:3], vm.sim.imsi[3:5])
    vm.remove_sim()
    assert await card.status() is None


async def test_sim_capability_alone_enters_a_pin_once(session_to) -> None:  # type: ignore[no-untyped-def]
    vm, session = await session_to()
    vm.remove_sim()
    vm.insert_sim(make_sim(7, pin="1234"))
    await session.channel.settle(quiet=0.05, limit=0.5)  # let the SIM URCs pass first
    card = SimCard(session)
    assert await card.status() == "SIM PIN"
    assert await card.unlock("0000") is not None and card.pin_failed
    assert await card.unlock("1234") is None
    assert await card.status() == "READY"


@pytest.mark.parametrize("profile", ["generic", "huawei"])
async def test_messaging_capability_alone_reads_sweeps_and_deletes(session_to, profile) -> None:  # type: ignore[no-untyped-def]
    vm, session = await session_to(profile)
    messaging = Messaging(session)
    await messaging.setup()
    assert messaging.storage == vm.storage and messaging.indications is not None
    got: list[tuple[int, str]] = []

    async def accept(index: int, pdu: str) -> bool:
        got.append((index, pdu))
        return True

    first = vm.deliver("one")[0]
    index = next(i for i, slot in vm.stored().items() if slot.pdu == first)
    await messaging.read(index, accept)
    assert got == [(index, first)] and not vm.stored() and vm.deleted == [first]
    vm.deliver("two")
    vm.deliver("three")
    await messaging.sweep(accept)
    assert len(got) == 3 and not vm.stored() and messaging.sms_read == 3

    async def refuse(index: int, pdu: str) -> bool:
        raise OSError("disk full")

    kept = vm.deliver("four")[0]
    await messaging.sweep(refuse)
    assert vm.has_pdu(kept) and messaging.sweep_due  # stays on the SIM, swept again later
    await messaging.sweep(accept)
    assert not vm.stored() and not messaging.sweep_due


async def test_network_capability_alone_reads_signal_and_registration(session_to) -> None:  # type: ignore[no-untyped-def]
    vm, session = await session_to()
    network = Network(session)
    before = NetworkInfo(None, None, None)
    info = await network.read(before)
    assert vm.sim is not None
    assert (info.registration, info.operator, info.rssi) == (RegStatus.HOME, vm.sim.operator, 21)
    assert info.registered and moved(before, info)
    vm.registration = RegStatus.DENIED
    denied = await network.read(info)
    assert denied.registration == RegStatus.DENIED and denied.operator is None
    assert not denied.registered and moved(info, denied)
    assert not moved(denied, await network.read(denied))


async def test_session_alone_counts_timeouts_and_declares_a_hang(session_to) -> None:  # type: ignore[no-untyped-def]
    vm, session = await session_to()
    vm.hang()
    for _ in range(FAST.hang_after - 1):
        with pytest.raises(CommandTimeout):
            await session.command("AT+CSQ")
    with pytest.raises(ModemHung):
        await session.command("AT+CSQ")
    assert session.timeouts == FAST.hang_after
