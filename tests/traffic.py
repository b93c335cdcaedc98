"""Traffic for fault tests: uploads and name flips whose acknowledged outcomes are recorded, so
that a test can check afterwards that no acknowledged blob or flip was lost."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import blake3

from tests.helpers import digest_of

MiB = 1024 * 1024
# CASD_SOAK=1: the fault tests run many more cycles (minutes instead of seconds).
SOAK = os.environ.get("CASD_SOAK", "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class Ledger:
    """What the server acknowledged, and every answer's status and duration."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    flips: dict[str, dict[int, str]] = field(default_factory=dict)  # name -> version -> digest
    statuses: dict[int, int] = field(default_factory=dict)
    slowest: float = 0.0
    errors: int = 0  # connections refused or cut (a server being killed)

    def answered(self, status: int, started: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.slowest = max(self.slowest, time.monotonic() - started)


class Traffic:
    """Clients that upload blobs (some resumable) and flip names until stopped."""

    def __init__(self, base_url: str, token: str, clients: int = 4) -> None:
        self.base_url = base_url
        self.auth = {"Authorization": f"Bearer {token}"}
        self.clients = clients
        self.ledger = Ledger()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Traffic:
        timeout = aiohttp.ClientTimeout(total=60)
        self._session = aiohttp.ClientSession(timeout=timeout)
        self._tasks = [asyncio.create_task(self._client(n)) for n in range(self.clients)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        assert self._session is not None
        await self._session.close()

    async def _client(self, number: int) -> None:
        name = f"traffic/{number}/{os.urandom(4).hex()}"
        version: int | None = None
        while not self._stop.is_set():
            try:
                data = os.urandom(random.choice([1000, 100_000, MiB + 17]))
                stored = await (self._resumable(data) if number % 2 else self._put(data))
                if not stored:
                    continue
                version = await self._flip(name, digest_of(data), version)
            except (TimeoutError, aiohttp.ClientError):
                self.ledger.errors += 1
                version = None  # unknown outcome: read the name again
                await asyncio.sleep(0.05)

    async def _request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        assert self._session is not None
        started = time.monotonic()
        async with self._session.request(method, self.base_url + path, **kwargs) as response:
            body: Any = await response.read()
            if response.content_type.endswith("json") and body:
                body = await response.json(content_type=None)
            self.ledger.answered(response.status, started)
            headers = dict(response.headers)
            return response.status, (body, headers)

    async def _put(self, data: bytes) -> bool:
        digest = digest_of(data)
        status, _ = await self._request("PUT", f"/v1/blobs/{digest}", data=data, headers=self.auth)
        if status in (200, 201):
            self.ledger.blobs[digest] = data
            return True
        return False

    async def _resumable(self, data: bytes) -> bool:
        half = len(data) // 2
        status, (_, headers) = await self._request(
            "POST", "/v1/uploads", data=data[:half], headers=self.auth
        )
        if status != 201:
            return False
        location = headers["Location"]
        headers = self.auth | {"Upload-Offset": str(half), "Upload-Complete": "?1"}
        status, _ = await self._request("PATCH", location, data=data[half:], headers=headers)
        if status in (200, 201):
            self.ledger.blobs[digest_of(data)] = data
            return True
        return False

    async def _flip(self, name: str, digest: str, version: int | None) -> int | None:
        if version is None:
            status, (body, _) = await self._request("GET", f"/v1/names/{name}")
            if status == 200:
                version = body["version"]
            elif status != 404:
                return None
        precondition = {"If-None-Match": "*"} if version is None else {"If-Match": f'"{version}"'}
        status, (body, _) = await self._request(
            "PUT",
            f"/v1/names/{name}",
            json={"digest": digest},
            headers=self.auth | precondition,
        )
        if status in (200, 201):
            self.ledger.flips.setdefault(name, {})[body["version"]] = digest
            new_version: int = body["version"]
            return new_version
        return None


async def check_nothing_lost(http: aiohttp.ClientSession, base_url: str, ledger: Ledger) -> None:
    """Every acknowledged blob reads back whole; every acknowledged flip is in its history."""
    for digest, data in ledger.blobs.items():
        async with http.get(f"{base_url}/v1/blobs/{digest}") as response:
            assert response.status == 200, f"acknowledged blob {digest} is lost"
            assert await response.read() == data
    for name, versions in ledger.flips.items():
        async with http.get(f"{base_url}/v1/history/{name}?limit=1000") as response:
            assert response.status == 200, f"the history of {name} is lost"
            history = {
                entry["version"]: entry["digest"] for entry in (await response.json())["history"]
            }
        for version, digest in versions.items():
            assert history.get(version) == digest, f"acknowledged flip {name} v{version} is lost"


def check_no_partial_blob(data_dir: Path) -> list[str]:
    """Every file under the blob tree hashes to its name; the digests found."""
    found = []
    for path in (data_dir / "blobs").rglob("*"):
        if path.is_file():
            with contextlib.suppress(FileNotFoundError):
                assert blake3.blake3(path.read_bytes()).hexdigest() == path.name, path
                found.append(f"blake3:{path.name}")
    return found
