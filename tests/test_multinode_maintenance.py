"""Periodic work across nodes: every worker of every node looks whether a scrub is due, one
scrub runs per interval (casd/maintenance.py). A cluster of its own: with the file store each node
scrubs its own disk, which would mark the blobs of the other nodes missing."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from tests.multinode import Cluster, cluster_seed, running_cluster, until

pytestmark = pytest.mark.multinode

SCRUB_INTERVAL = 1.0  # seconds; every worker of every node looks twice as often at most


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, request: pytest.FixtureRequest
) -> Iterator[Cluster]:
    yield from running_cluster(
        tmp_path_factory.mktemp("multinode-maintenance"),
        postgres_url,
        env={"CASD_SCRUB_INTERVAL": f"{SCRUB_INTERVAL:g}s"},
        seed=cluster_seed(request),
    )


async def test_the_periodic_scrub_runs_once_per_interval_across_all_nodes(
    cluster: Cluster,
) -> None:
    """Six workers on three nodes all poll for a due scrub; the advisory lock and the check under
    it let exactly one scrub run per interval: runs never overlap and each starts at least one
    interval after the previous one finished."""

    async def runs() -> list[Any]:
        found = await cluster.sql(
            "SELECT started_at, finished_at FROM maintenance_runs"
            " WHERE kind = 'scrub' ORDER BY started_at"
        )
        return found if len(found) >= 4 else []

    found, _ = await until(runs, "four periodic scrubs", 20.0, pause=0.5)
    for before, after in itertools.pairwise(found):
        gap = (after["started_at"] - before["finished_at"]).total_seconds()
        assert gap >= SCRUB_INTERVAL - 0.05, (before, after)
