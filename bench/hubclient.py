"""A lean HTTP/1.1 client for the benchmarks' hub load: keep-alive connections, JSON POSTs.

The load generator shares this machine's two cores with the daemon and the
emulator, so what it costs per request caps what can be measured. aiohttp's
client costs ~0.15 ms of CPU per request: against a do-nothing server it
topped out at 1,100-1,300 GET_NUMBER (+ FINISH) a second, about the rate
being measured. This client writes one prebuilt request per call and reads
back only the status line, `Content-Length`, `Content-Encoding`,
`Transfer-Encoding` and `Connection`. It says `Accept-Encoding: gzip`, as
aiohttp's client and the hubs do, so the daemon compresses its answers as in
the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import zlib
from typing import Any
from urllib.parse import urlsplit


class HttpError(Exception):
    """An answer this client cannot read, or a connection that closed mid-answer."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def exchange(self, request: bytes) -> tuple[int, bytes, bool]:
        """Send one request; its status, body (decoded) and whether the connection stays open."""
        self.writer.write(request)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise HttpError(f"no complete answer head: {exc}") from exc
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise HttpError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(parts[1])
        length: int | None = None
        gzipped = chunked = False
        connection = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"content-encoding":
                gzipped = value == b"gzip"
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                connection = value
        # HTTP/1.1 keeps the connection unless told to close; 1.0 only when told to keep it.
        keep = connection != b"close" if parts[0] == b"HTTP/1.1" else connection == b"keep-alive"
        try:
            if chunked:
                body = await self._chunks()
            elif length is not None:
                body = await self.reader.readexactly(length)
            else:
                body, keep = await self.reader.read(), False
        except asyncio.IncompleteReadError as exc:
            raise HttpError(f"answer cut short: {exc}") from exc
        if gzipped:
            body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
        return status, body, keep

    async def _chunks(self) -> bytes:
        pieces = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")  # no trailers from these servers
                return b"".join(pieces)
            pieces.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    def close(self) -> None:
        self.writer.close()


class Client:
    """Keep-alive connections per server, at most `limit` requests in flight in all."""

    def __init__(self, limit: int = 200) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._heads: dict[str, tuple[tuple[str, int], bytes]] = {}
        self._open: set[_Connection] = set()
        self._slots = asyncio.Semaphore(limit)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _head(self, url: str) -> tuple[tuple[str, int], bytes]:
        known = self._heads.get(url)
        if known is None:
            parts = urlsplit(url)
            if parts.scheme != "http" or parts.hostname is None:
                raise ValueError(f"{url!r}: only http://host:port/path")
            server = (parts.hostname, parts.port or 80)
            head = (
                f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                "Content-Type: application/json\r\nAccept-Encoding: gzip\r\n"
                "Content-Length: "
            ).encode()
            known = self._heads[url] = (server, head)
        return known

    async def post(self, url: str, payload: Any) -> tuple[int, Any]:
        """POST `payload` as JSON (bytes: already encoded); the answer's status and its JSON."""
        server, head = self._head(url)
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        request = b"%s%d\r\n\r\n%s" % (head, len(body), body)
        async with self._slots:
            idle = self._idle.setdefault(server, [])
            if idle:
                connection = idle.pop()
            else:
                connection = _Connection(*await asyncio.open_connection(*server))
                self._open.add(connection)
            try:
                status, data, keep = await connection.exchange(request)
            except BaseException:
                self._open.discard(connection)
                connection.close()
                raise
            if keep:
                idle.append(connection)
            else:
                self._open.discard(connection)
                connection.close()
        try:
            return status, json.loads(data)
        except ValueError as exc:
            raise HttpError(f"not JSON ({status}): {data[:80]!r}") from exc

    async def close(self) -> None:
        for connection in self._open:
            connection.close()
        for connection in self._open:
            with contextlib.suppress(OSError):
                await connection.writer.wait_closed()
        self._open.clear()
        self._idle.clear()
