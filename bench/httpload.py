"""A small HTTP/1.1 load generator: keep-alive connections, each driven by one coroutine.

aiohttp's client costs more CPU per request than the server under test spends on a small
upload, and wrk cannot chain requests (an upload that starts with a POST, a compare-and-swap
that reads the version it must send). This client writes prepared bytes and parses only the
status line, headers and body, so one core drives thousands of requests a second. Every run is
bounded by a count and a deadline.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bench.procs import LOOPBACK


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


class Connection:
    """One keep-alive HTTP/1.1 connection to a loopback server."""

    def __init__(self, port: int, host: str = LOOPBACK) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.host_header = f"{host}:{port}".encode()

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, limit=1024 * 1024
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> Reply:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + self.host_header]
        lines.extend(f"{name}: {value}".encode() for name, value in (headers or {}).items())
        if body or method in ("PUT", "POST", "PATCH"):
            lines.append(b"Content-Length: %d" % len(body))
        self.writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
        if body:
            self.writer.write(body)
        await self.writer.drain()
        reply = await self._read_reply(method)
        if reply.headers.get("connection", "").lower() == "close":
            self.close()
        return reply

    async def _read_reply(self, method: str) -> Reply:
        assert self.reader is not None
        while True:
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split(" ", 2)[1])
            if status != 100:
                break
        headers: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if method == "HEAD" or status in (204, 304):
            return Reply(status, headers, b"")
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._read_chunked()
        else:
            body = await self.reader.read()
            self.close()
        return Reply(status, headers, body)

    async def _read_chunked(self) -> bytes:
        assert self.reader is not None
        parts: list[bytes] = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)


# One operation: given a connection and the operation's index, do one or more requests and
# return an outcome label ("ok", "412", ...). Raising counts as an error.
Operation = Callable[[Connection, int], Awaitable[str]]


@dataclass
class LoadResult:
    count: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def percentile_ms(self, fraction: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    @property
    def p50_ms(self) -> float:
        return 1000 * statistics.median(self.latencies) if self.latencies else 0.0

    @property
    def p99_ms(self) -> float:
        return self.percentile_ms(0.99)

    @property
    def client_cpu(self) -> float:
        """The share of one core the load generator used (1.0: it may be the bottleneck)."""
        return self.cpu_seconds / self.seconds if self.seconds else 0.0


async def run_load(
    port: int, operation: Operation, count: int, concurrency: int, max_seconds: float
) -> LoadResult:
    """Run ``operation`` ``count`` times over ``concurrency`` connections, within a deadline."""
    next_index = 0
    result = LoadResult(0, 0.0)
    deadline = time.monotonic() + max_seconds

    async def worker() -> None:
        nonlocal next_index
        connection = Connection(port)
        try:
            while next_index < count and time.monotonic() < deadline and len(result.errors) < 20:
                index, next_index = next_index, next_index + 1
                started = time.perf_counter()
                try:
                    outcome = await operation(connection, index)
                except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                    result.errors.append(f"{type(error).__name__}: {error}")
                    connection.close()
                    continue
                result.latencies.append(time.perf_counter() - started)
                result.outcomes[outcome] += 1
        finally:
            connection.close()

    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    result.cpu_seconds = time.process_time() - cpu
    result.count = len(result.latencies)
    if result.errors:
        raise RuntimeError(f"{len(result.errors)} failed operations, first: {result.errors[0]}")
    return result
