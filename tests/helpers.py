"""Small helpers shared by the tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aiohttp
import blake3


def digest_of(data: bytes) -> str:
    """The digest, computed by the blake3 package itself (not by casd's code)."""
    return "blake3:" + blake3.blake3(data).hexdigest()


def random_bytes(size: int) -> bytes:
    return os.urandom(size)


def blob_path(data_dir: Path, digest: str) -> Path:
    hexdigest = digest.removeprefix("blake3:")
    return data_dir / "blobs" / "blake3" / hexdigest[:2] / hexdigest


async def problem_of(response: aiohttp.ClientResponse) -> dict[str, Any]:
    """The problem+json body of an error answer, checked for the contract's shape."""
    assert response.content_type == "application/problem+json", await response.text()
    body: dict[str, Any] = await response.json(content_type=None)
    assert body["status"] == response.status
    assert body["type"] == "about:blank"
    assert {"title", "detail", "code"} <= body.keys()
    return body


async def put_blob(
    session: aiohttp.ClientSession, base_url: str, token: str, data: bytes
) -> tuple[int, dict[str, Any]]:
    async with session.put(
        f"{base_url}/v1/blobs/{digest_of(data)}",
        data=data,
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        return response.status, await response.json(content_type=None)
