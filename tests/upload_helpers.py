"""Helpers for the resumable-upload tests: raw protocol requests and a cutting TCP proxy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.conftest import AnyServer

MiB = 1024 * 1024


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


async def call(http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> Answer:
    async with http.request(method, url, **kwargs) as response:
        text = await response.text()
        body: Any = text
        if response.content_type.endswith("json") and text:
            body = await response.json(content_type=None)
        return Answer(response.status, dict(response.headers), body)


async def create_upload(
    http: aiohttp.ClientSession,
    server: AnyServer,
    token: str,
    *,
    data: bytes = b"",
    **headers: str,
) -> str:
    """POST /v1/uploads; the upload's absolute URL."""
    answer = await call(
        http,
        "POST",
        f"{server.url}/v1/uploads",
        data=data,
        headers=bearer(token) | {key.replace("_", "-"): value for key, value in headers.items()},
    )
    assert answer.status == 201, answer.body
    assert answer.headers["Location"].startswith("/v1/uploads/")
    assert answer.headers["Upload-Offset"] == str(len(data))
    return server.url + answer.headers["Location"]


async def head(http: aiohttp.ClientSession, url: str, token: str) -> Answer:
    return await call(http, "HEAD", url, headers=bearer(token))


async def offset_of(http: aiohttp.ClientSession, url: str, token: str) -> int:
    answer = await head(http, url, token)
    assert answer.status == 204, answer
    assert answer.headers["Upload-Complete"] == "?0"
    return int(answer.headers["Upload-Offset"])


async def patch(
    http: aiohttp.ClientSession,
    url: str,
    token: str,
    offset: int,
    data: Any,
    *,
    complete: bool = False,
    **headers: str,
) -> Answer:
    extra = {key.replace("_", "-"): value for key, value in headers.items()}
    return await call(
        http,
        "PATCH",
        url,
        data=data,
        headers=bearer(token)
        | {"Upload-Offset": str(offset), "Upload-Complete": "?1" if complete else "?0"}
        | extra,
    )


def upload_id(url: str) -> str:
    return url.rpartition("/")[2]


def staged_bytes(server: AnyServer, url: str) -> bytes | None:
    """The bytes staged for an upload: its segments in order; None if it has none on disk."""
    directory = server.data_dir / "uploads" / upload_id(url)
    if not directory.exists():
        return None
    segments = sorted(directory.iterdir(), key=lambda path: [int(n) for n in path.name.split(".")])
    return b"".join(path.read_bytes() for path in segments)


def staged_size(server: AnyServer, url: str) -> int:
    """Bytes written for an upload so far (recorded or not), 0 if none."""
    directory = server.data_dir / "uploads" / upload_id(url)
    paths = list(directory.iterdir()) if directory.exists() else []
    return sum(path.stat().st_size for path in paths)


async def upload_rows(server: AnyServer, *, completed: bool = False) -> dict[str, dict[str, Any]]:
    """The uploads in progress (with ``completed``, the completed ones too) by id."""
    connection = await server.connect_db()
    try:
        rows = await connection.fetch(
            "SELECT * FROM uploads WHERE $1 OR completed_digest IS NULL", completed
        )
    finally:
        await connection.close()
    return {row["id"]: dict(row) for row in rows}


async def wait_until(predicate: Any, what: str = "condition", seconds: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class HangingPatch:
    """A PATCH on a raw connection that sends part of its body, then goes silent (a client
    whose link died while the server still holds the request)."""

    def __init__(self, server: AnyServer, url: str, token: str) -> None:
        self.server, self.url, self.token = server, url, token
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, offset: int, announced: int, data: bytes) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        path = self.url.removeprefix(self.server.url)
        head = (
            f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {self.token}\r\nUpload-Offset: {offset}\r\n"
            f"Upload-Complete: ?0\r\nContent-Length: {announced}\r\n\r\n"
        )
        self.writer.write(head.encode() + data)
        await self.writer.drain()

    async def ended(self, seconds: float = 10.0) -> bytes:
        """What the server answered before it let go of the request (b'' if it just closed)."""
        assert self.reader is not None
        with contextlib.suppress(ConnectionError):
            return await asyncio.wait_for(self.reader.read(200), seconds)
        return b""

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()


@dataclass
class Budget:
    """What the proxy lets one connection send upstream before it cuts or stalls it."""

    limit: int | None  # None: unlimited
    stall: bool = False  # stall (keep the connection open, forward nothing) instead of cutting


@dataclass
class CuttingProxy:
    """A loopback TCP proxy in front of a server: the n-th client connection gets the n-th
    budget, after which its connection is cut (or stalls until ``release_stall``)."""

    target_port: int
    budgets: list[Budget]
    port: int = 0
    forwarded: int = 0  # bytes sent upstream, all connections together
    stalled: asyncio.Event = field(default_factory=asyncio.Event)
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def release_stall(self) -> None:
        self._release.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        budget = self.budgets.pop(0) if self.budgets else Budget(None)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            writer.transport.abort()
            self._tasks.discard(task)
            return
        back = asyncio.ensure_future(_pipe(upstream_reader, writer))
        try:
            if not await self._forward(reader, upstream_writer, budget):
                await back  # the client is done sending: let the answer through
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            back.cancel()
            writer.transport.abort()
            upstream_writer.transport.abort()
            self._tasks.discard(task)

    async def _forward(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, budget: Budget
    ) -> bool:
        """Forward the client's bytes; True when the budget ran out (cut the connection)."""
        sent = 0
        while budget.limit is None or sent < budget.limit:
            want = MiB if budget.limit is None else min(MiB, budget.limit - sent)
            data = await reader.read(want)
            if not data:
                writer.write_eof()
                return False
            writer.write(data)
            await writer.drain()
            sent += len(data)
            self.forwarded += len(data)
        if budget.stall:
            self.stalled.set()
            await self._release.wait()
        return True


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(MiB):
            writer.write(data)
            await writer.drain()
        writer.write_eof()


def log_entries(log: str) -> list[dict[str, Any]]:
    """The server's log lines, each one JSON object."""
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def lease_pids(log: str) -> dict[int, int]:
    """The OS pid of each casd process by the lease number it logged at start."""
    found = {}
    for entry in log_entries(log):
        number = re.search(r"process is number (\d+)", entry["message"])
        if entry["logger"] == "casd.upload_leases" and number is not None:
            found[int(number.group(1))] = int(entry["pid"])
    return found


def access_pids(log: str, method: str, path: str) -> list[int]:
    """The OS pids of the processes that logged ``method path`` in their access log."""
    return [
        int(entry["pid"])
        for entry in log_entries(log)
        if entry["logger"] == "casd.access" and entry["method"] == method and entry["path"] == path
    ]


async def slow_chunks(data: bytes, piece: int, pause: float) -> AsyncIterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start : start + piece]
        await asyncio.sleep(pause)
