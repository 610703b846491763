"""The AT channel over a real pseudo-terminal, against a scripted peer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import AsyncIterator, Callable

import pytest

from modems.at import Unsolicited
from modems.channel import ATChannel, open_channel
from modems.errors import CmeError, CommandNotSupported, CommandTimeout, ModemDisconnected


class Peer:
    """The far end of a pty: answers each command line with `respond(line)`."""

    def __init__(self, respond: Callable[[str], bytes | None]) -> None:
        self.respond = respond
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.lines: list[str] = []
        self._buffer = bytearray()
        self._out = bytearray()
        self.received = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.master, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except OSError:
            return
        for byte in data:
            if byte == 0x0D:
                line = self._buffer.decode("latin-1")
                self._buffer.clear()
                self.lines.append(line)
                self.received.set()
                reply = self.respond(line)
                if reply:
                    self.send(reply)
            elif byte != 0x1B:
                self._buffer.append(byte)

    def send(self, data: bytes) -> None:
        """Everything, in order: what the pty cannot take now goes when it can."""
        pending = bool(self._out)
        self._out += data
        if not pending:
            self._flush()

    def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(BlockingIOError):
            del self._out[: os.write(self.master, self._out)]
        if self._out:
            loop.add_writer(self.master, self._flush)
        else:
            loop.remove_writer(self.master)

    def close(self) -> None:
        if self.master >= 0:
            asyncio.get_running_loop().remove_writer(self.master)
            asyncio.get_running_loop().remove_reader(self.master)
            os.close(self.master)
            os.close(self.slave)
            self.master = -1


@pytest.fixture
async def peer_and_channel() -> AsyncIterator[
    Callable[..., asyncio.Future[tuple[Peer, ATChannel, list[Unsolicited]]]]
]:
    made: list[tuple[Peer, ATChannel]] = []

    async def make(
        respond: Callable[[str], bytes | None],
    ) -> tuple[Peer, ATChannel, list[Unsolicited]]:
        peer = Peer(respond)
        urcs = UrcLog()
        channel = await open_channel(peer.path, urcs.append)
        made.append((peer, channel))
        return peer, channel, urcs

    yield make  # type: ignore[misc]
    for peer, channel in made:
        channel.close()
        peer.close()


class UrcLog(list[Unsolicited]):
    """Unsolicited codes as they come, with an event to wait on."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = asyncio.Event()

    def append(self, urc: Unsolicited) -> None:
        super().append(urc)
        self.arrived.set()


def table(answers: dict[str, bytes]) -> Callable[[str], bytes | None]:
    return lambda line: answers.get(line.strip(), b"\r\nERROR\r\n")


async def test_reply_and_urc_in_the_middle(peer_and_channel) -> None:  # type: ignore[no-untyped-def]
    peer, channel, urcs = await peer_and_channel(
        table({"AT+CMGL=4": b'\r\n+CMGL: 1,0,,3\r\n+CMTI: "SM",2\r\n000000\r\n\r\nOK\r\n'})
    )
    reply = await channel.command("AT+CMGL=4")
    assert reply.lines == ("+CMGL: 1,0,,3", "000000")
    assert [u.name for u in urcs] == ["+CMTI"]


async def test_echo_is_tolerated(peer_and_channel) -> None:  # type: ignore[no-untyped-def]
    peer, channel, _ = await peer_and_channel(
        lambda line: line.encode() + b"\r\r\n+CSQ: 7,99\r\n\r\nOK\r\n"
    )
    reply = await channel.command("AT+CSQ")
    assert reply.lines == ("+CSQ: 7,99",)


async def test_one_command_in_flight(peer_and_channel) -> None:  # type: ignore[no-untyped-def]
    in_flight: list[str] = []
    seen_while_busy: list[str] = []
    peer_holder: list[Peer] = []

    def respond(line: str) -> bytes | None:
        if in_flight:
            seen_while_busy.append(line)
        in_flight.append(line)

        def answer() -> None:
            in_flight.remove(line)
            peer_holder[0].send(f"\r\n+X: {line}\r\nOK\r\n".encode())

        asyncio.get_running_loop().call_soon(answer)
        return None

    peer, channel, _ = await peer_and_channel(respond)
    peer_holder.append(peer)
    replies = await asyncio.gather(*(channel.command(f"AT+X={i}", prefix="+X") for i in range(20)))
    assert seen_while_busy == []
    assert [r.lines for r in replies] == [(f"+X: AT+X={i}",) for i in range(20)]


async def test_errors_are_typed(peer_and_channel) -> None:  # type: ignore[no-untyped-def]
    peer, channel, _ = await peer_and_channel(
        table({"AT+CIMI": b"\r\n+CME ERROR: 10\r\n", "AT+FOO": b"\r\nCOMMAND NOT SUPPORT\r\n"})
    )
    with pytest.raises(CmeError) as excinfo:
        await channel.command("AT+CIMI")
    assert excinfo.value.code == 10
    with pytest.raises(CommandNotSupported):
        await channel.command("AT+FOO")


async def test_timeout_then_late_reply_is_not_taken_by_the_next_command(peer_and_channel) -> None:  # type: ignore[no-untyped-def]
    peer, channel, urcs = await peer_and_channel(table({"AT": b"\r\nOK\r\n", "AT+CSQ": b""}))
    with pytest.raises(CommandTimeout):
        await channel.command("AT+CSQ", timeout=0.1)
    peer.send(b"\r\n+CSQ: 5,99\r\nOK\r\n")  # the late answer arrives with nothing pending
    await asyncio.wait_for(urcs.arrived.wait(), 2)
    reply = await channel.command("AT")
    assert reply.lines == ()
    assert urcs and urcs[0].text == "+CSQ: 5,99"


async def test_disconnect_fails_the_pending_command(peer_and_channel) -> None:  # type: ignore[no-untyped-def]
    peer, channel, _ = await peer_and_channel(lambda line: None)
    pending = asyncio.ensure_future(channel.command("AT+CSQ", timeout=5))
    await asyncio.wait_for(peer.received.wait(), 2)
    peer.close()
    with pytest.raises(ModemDisconnected):
        await asyncio.wait_for(pending, 3)
    with pytest.raises(ModemDisconnected):
        await channel.command("AT")


async def test_reply_without_final_completes_after_grace(peer_and_channel) -> None:  # type: ignore[no-untyped-def]
    peer, channel, _ = await peer_and_channel(table({"AT+CPIN?": b"\r\n+CPIN: READY\r\n"}))
    reply = await channel.command("AT+CPIN?", info_grace=0.05, timeout=2)
    assert reply.first("+CPIN") == "READY"


async def test_overlong_garbage_is_capped(peer_and_channel) -> None:  # type: ignore[no-untyped-def]
    peer, channel, _ = await peer_and_channel(table({"AT": b"\r\nOK\r\n"}))
    peer.send(b"\xff" * 50_000)
    reply = await channel.command("AT")
    assert reply.final.ok
    assert channel.junk_lines >= 1


async def test_reply_one_byte_at_a_time(peer_and_channel) -> None:  # type: ignore[no-untyped-def]
    holder: list[Peer] = []
    answer = b"\r\n+CSQ: 12,99\r\n\r\nOK\r\n"

    def respond(line: str) -> None:
        loop = asyncio.get_running_loop()
        for i, byte in enumerate(answer):
            loop.call_later(0.001 * i, holder[0].send, bytes([byte]))

    peer, channel, _ = await peer_and_channel(respond)
    holder.append(peer)
    reply = await channel.command("AT+CSQ", timeout=3)
    assert reply.lines == ("+CSQ: 12,99",)


async def test_port_with_a_descriptor_above_1024(peer_and_channel) -> None:  # type: ignore[no-untyped-def]
    """select() cannot watch descriptors >= 1024; a 512-port host has them."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard descriptor limit {hard} is below 1200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    filler = []
    try:
        while not filler or filler[-1] < 1030:
            filler.append(os.open(os.devnull, os.O_RDONLY))
        peer, channel, _ = await peer_and_channel(table({"AT+CSQ": b"\r\n+CSQ: 3,99\r\nOK\r\n"}))
        assert channel._transport.serial.fd >= 1024  # type: ignore[union-attr]
        reply = await channel.command("AT+CSQ", timeout=2)
        assert reply.lines == ("+CSQ: 3,99",)
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_late_answer_is_not_taken_for_the_next_command(peer_and_channel) -> None:  # type: ignore[no-untyped-def]
    holder: list[Peer] = []

    def respond(line: str) -> None:
        loop = asyncio.get_running_loop()
        if line == "AT+CSQ":  # answers, but only after the channel gave up on it
            loop.call_later(0.1, holder[0].send, b"\r\n+CSQ: 5,99\r\n\r\nOK\r\n")
        elif line == "AT+CIMI":  # a slower answer: the late CSQ one would come first
            loop.call_later(0.15, holder[0].send, b"\r\n250011234567890\r\n\r\nOK\r\n")

    peer, channel, _ = await peer_and_channel(respond)
    holder.append(peer)
    with pytest.raises(CommandTimeout):
        await channel.command("AT+CSQ", timeout=0.05)
    reply = await channel.command(
        "AT+CIMI", timeout=3
    )  # sent at once: the CSQ answer is still coming
    assert reply.lines == ("250011234567890",)


async def test_a_command_is_written_at_once_not_after_a_writability_wait(peer_and_channel) -> None:  # type: ignore[no-untyped-def]
    """Issue 17: waiting for the loop to say the port is writable cost two epoll_ctl
    calls and a loop iteration per command; at 512 modems, most of the idle CPU."""
    peer, channel, _ = await peer_and_channel(table({"AT": b"\r\nOK\r\n"}))
    transport = channel._transport
    assert transport is not None
    transport.write(b"AT\r")
    # Written before any loop iteration: nothing is left to wait for writability.
    assert transport.get_write_buffer_size() == 0
    assert not transport._has_writer
    reply = await channel.command("AT")
    assert reply.final.ok
