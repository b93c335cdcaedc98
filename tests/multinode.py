"""The multi-node tier: several ``casd serve --workers 2`` nodes over one PostgreSQL (and one blob
store), each with a data directory of its own, and a client that spreads requests over them.

A module starts its cluster once (``running_cluster`` in a module-scoped fixture) on a fresh
database; its tests mark themselves ``multinode`` and keep every loop bounded in count and time.
The client picks nodes with a seeded ``random.Random`` (the seed is printed in the output of the
module's first test), so a failing spread can be replayed with ``CASD_MULTINODE_SEED``.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
import pytest

from tests.conftest import CasdServer, create_database

NODES = 3
WORKERS = 2
T = TypeVar("T")


@dataclass
class Cluster:
    """Nodes sharing one database; ``pick`` and ``spread`` choose among them, seeded."""

    nodes: list[CasdServer]
    database_url: str
    seed: int
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @property
    def admin_token(self) -> str:
        """The admin token, written by whichever node bootstrapped the empty database."""
        tokens = [node.admin_token for node in self.nodes if _has_admin_token(node)]
        assert len(tokens) == 1, f"{len(tokens)} nodes created an admin token"
        return tokens[0]

    def pick(self) -> CasdServer:
        return self.rng.choice(self.nodes)

    def spread(self, count: int) -> list[CasdServer]:
        """``count`` nodes in turn from a random start, so that every node gets its share."""
        start = self.rng.randrange(len(self.nodes))
        return [self.nodes[(start + index) % len(self.nodes)] for index in range(count)]

    def others(self, node: CasdServer) -> list[CasdServer]:
        return [other for other in self.nodes if other is not node]

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """Look at the shared database directly (what every node sees)."""
        connection = await asyncpg.connect(self.database_url)
        try:
            return await connection.fetch(query, *args)
        finally:
            await connection.close()

    def stop(self) -> None:
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.stop(), self.nodes))


def _has_admin_token(node: CasdServer) -> bool:
    return (node.data_dir / "admin.token").exists()


def seed_for(name: str) -> int:
    given = os.environ.get("CASD_MULTINODE_SEED")
    return int(given) if given else random.Random(name).randrange(2**32)


def running_cluster(
    directory: Path,
    postgres_url: str,
    *,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    count: int = NODES,
    seed: int = 0,
) -> Iterator[Cluster]:
    """Start ``count`` nodes at once on a fresh database (they race through migrations and the
    admin bootstrap, as nodes of a real deployment do), yield them, stop them."""
    database_url = create_database(postgres_url)
    nodes = [
        CasdServer(
            directory / f"node{index}",
            database_url,
            ["--workers", str(WORKERS), *args],
            {"CASD_LOG_LEVEL": "WARNING", **(env or {})},
        )
        for index in range(count)
    ]
    cluster = Cluster(nodes, database_url, seed)
    try:
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(lambda node: node.start(), nodes))
        yield cluster
    finally:
        cluster.stop()


def cluster_seed(request: pytest.FixtureRequest) -> int:
    seed = seed_for(request.module.__name__)
    print(f"{request.module.__name__}: CASD_MULTINODE_SEED={seed}")  # shown with a failure
    return seed


async def fresh_session() -> aiohttp.ClientSession:
    """A session whose every request opens a new connection, so that the kernel spreads them
    over a node's workers too."""
    connector = aiohttp.TCPConnector(force_close=True, limit=64)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))


async def until(
    check: Callable[[], Awaitable[T | None]], what: str, seconds: float, pause: float = 0.05
) -> tuple[T, float]:
    """The first truthy result of ``check`` and how long it took; fails after ``seconds``."""
    started = time.monotonic()
    while True:
        result = await check()
        elapsed = time.monotonic() - started
        if result:
            return result, elapsed
        if elapsed > seconds:
            raise AssertionError(f"not within {seconds:g}s: {what}")
        await asyncio.sleep(pause)
