"""The operations page's figures: whole-store counts kept in PostgreSQL and recomputed in the
background when stale; quarantined and missing blobs counted live."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp

from tests.conftest import AnyServer
from tests.helpers import blob_path
from tests.inprocess import InProcessServer
from tests.integrity_helpers import flip_byte, run_json
from tests.name_helpers import create_only, put_name, upload


async def card(http: aiohttp.ClientSession, server: AnyServer, label: str) -> int:
    async with http.get(f"{server.url}/ops") as answer:
        assert answer.status == 200
        html = await answer.text()
    match = re.search(rf'<div class="muted">{label}</div><div class="big">(\d+)</div>', html)
    assert match is not None, label
    return int(match.group(1))


async def test_store_figures_follow_changes_and_damage_shows_at_once(
    http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    token = http_server.admin_token
    digest = await upload(http, http_server, token, b"first")
    await put_name(http, http_server, token, "figures/a", {"digest": digest}, create_only())
    assert await card(http, http_server, "names") == 1
    assert await card(http, http_server, "stored blobs") == 1

    await put_name(http, http_server, token, "figures/b", {"digest": digest}, create_only())
    second = await upload(http, http_server, token, b"second")
    deadline = time.monotonic() + 30
    while (
        await card(http, http_server, "names"),
        await card(http, http_server, "stored blobs"),
    ) != (2, 2):
        assert time.monotonic() < deadline, "the figures were never recomputed"
        await asyncio.sleep(0.5)

    flip_byte(blob_path(http_server.data_dir, second), 1)
    await asyncio.to_thread(run_json, http_server, "scrub")
    assert await card(http, http_server, "quarantined") == 1  # counted live, no waiting
