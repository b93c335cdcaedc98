"""Helpers for the integrity tests (verify on read, scrub, gc): damage files, read rows, run the
same scrub and gc code the CLI runs in-process against a test server's database and data."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from casd.blobs import BlobService
from casd.config import Settings
from casd.core import open_core
from tests.conftest import AnyServer
from tests.helpers import blob_path, digest_of


def flip_byte(path: Path, offset: int) -> None:
    """Damage one bit of a stored file in place, as rot would."""
    with path.open("r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0x01]))


def quarantined_files(server: AnyServer, digest: str) -> list[Path]:
    hexdigest = digest.removeprefix("blake3:")
    return sorted((server.data_dir / "quarantine").glob(f"{hexdigest}.*"))


async def upload(http: aiohttp.ClientSession, server: AnyServer, data: bytes) -> str:
    digest = digest_of(data)
    async with http.put(
        f"{server.url}/v1/blobs/{digest}", data=data, headers=server.admin_headers
    ) as response:
        assert response.status in (200, 201), await response.text()
    return digest


async def stored_blob(http: aiohttp.ClientSession, server: AnyServer, size: int) -> bytes:
    """Random bytes uploaded to the server; they are at their blob path when this returns."""
    data = os.urandom(size)
    await upload(http, server, data)
    assert blob_path(server.data_dir, digest_of(data)).is_file()
    return data


async def blob_rows(server: AnyServer) -> dict[str, str]:
    """digest -> status of every blob row."""
    connection = await server.connect_db()
    try:
        rows = await connection.fetch("SELECT digest, status FROM blobs")
    finally:
        await connection.close()
    return {row["digest"]: row["status"] for row in rows}


async def db_execute(server: AnyServer, statement: str, *args: Any) -> None:
    connection = await server.connect_db()
    try:
        await connection.execute(statement, *args)
    finally:
        await connection.close()


async def full_get(http: aiohttp.ClientSession, url: str) -> tuple[int | None, bytes]:
    """(status, body) of a complete answer, or (None, bytes received) of a broken transfer."""
    received = bytearray()
    try:
        async with http.get(url) as response:
            async for chunk in response.content.iter_any():
                received += chunk
            return response.status, bytes(received)
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
        return None, bytes(received)


@contextlib.asynccontextmanager
async def blob_service(server: AnyServer) -> AsyncIterator[BlobService]:
    """The blob service of a test server's database and data directory, in this process."""
    assert server.database_url is not None
    settings = Settings(data_dir=server.data_dir)
    async with open_core(settings, server.database_url, pool_size=4, listen=False) as core:
        yield core.blobs


def run_json(server: AnyServer, *args: str, env: dict[str, str] | None = None) -> Any:
    """Run an administrative command with --json and return what it printed."""
    result = server.run_cli(*args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


_SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", re.MULTILINE)


async def metric_samples(http: aiohttp.ClientSession, server: AnyServer) -> dict[str, float]:
    """Prometheus samples as 'name{labels}' -> value."""
    async with http.get(f"{server.url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {name + (labels or ""): float(value) for name, labels, value in _SAMPLE.findall(text)}
