"""Three nodes over one PostgreSQL: what one node writes every node sees, compare-and-swap holds
across nodes, a revocation reaches every node within seconds, periodic work runs on one node at a
time (tests/multinode.py describes the tier)."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import CasdServer
from tests.helpers import digest_of
from tests.multinode import Cluster, cluster_seed, fresh_session, running_cluster, until
from tests.name_helpers import bearer, create_only, get_name, history, if_match, put_name

pytestmark = pytest.mark.multinode


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, request: pytest.FixtureRequest
) -> Iterator[Cluster]:
    yield from running_cluster(
        tmp_path_factory.mktemp("multinode"),
        postgres_url,
        seed=cluster_seed(request),
    )


async def upload_blobs(http: aiohttp.ClientSession, cluster: Cluster, count: int) -> list[str]:
    digests = []
    for index, node in zip(range(count), itertools.cycle(cluster.nodes), strict=False):
        data = f"multinode blob {index}".encode()
        async with http.put(
            f"{node.url}/v1/blobs/{digest_of(data)}", data=data, headers=bearer(cluster.admin_token)
        ) as response:
            assert response.status in (200, 201), await response.text()
        digests.append(digest_of(data))
    return digests


async def test_the_nodes_bootstrap_one_admin_token_and_one_schema(cluster: Cluster) -> None:
    assert cluster.admin_token  # exactly one node wrote it
    rows = await cluster.sql("SELECT count(*) AS tokens FROM tokens")
    assert rows[0]["tokens"] >= 1
    migrations = await cluster.sql("SELECT version, count(*) FROM schema_migrations GROUP BY 1")
    assert {row["count"] for row in migrations} == {1}


async def test_a_name_written_on_one_node_resolves_on_every_node(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    token = cluster.admin_token
    blobs = await upload_blobs(http, cluster, 3)
    for index, writer in enumerate(cluster.nodes):
        name = f"everywhere/{index}/image.qcow2"
        status, body, _ = await put_name(
            http, writer, token, name, {"digest": blobs[index]}, create_only()
        )
        assert status == 201, body
        for reader in cluster.nodes:
            status, seen = await get_name(http, reader, name)
            assert (status, seen["digest"], seen["version"]) == (200, blobs[index], 1)


async def test_one_winner_per_version_in_a_cas_storm_across_nodes(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """Rounds of 16 writers spread over the nodes, all with the same If-Match: exactly one 200
    per round, the others 412 naming the winner's version; the history is every winner, in order,
    without gaps, each entry chained to the one before."""
    writers, rounds = 16, 12
    token, name = cluster.admin_token, "storm/across/nodes.img"
    blobs = await upload_blobs(http, cluster, 4)
    status, _, _ = await put_name(
        http, cluster.pick(), token, name, {"digest": blobs[0]}, create_only()
    )
    assert status == 201
    winners: list[tuple[int, str, dict[str, int]]] = []
    async with asyncio.timeout(120):
        for round_ in range(rounds):
            version = round_ + 1

            async def write(writer: int, node: CasdServer, version: int = version) -> Any:
                metadata = {"writer": writer, "version": version}
                digest = blobs[writer % len(blobs)]
                body = {"digest": digest, "metadata": metadata}
                status, answer, _ = await put_name(http, node, token, name, body, if_match(version))
                return status, answer, digest, metadata

            answers = await asyncio.gather(
                *(write(writer, node) for writer, node in enumerate(cluster.spread(writers)))
            )
            statuses = Counter(status for status, *_ in answers)
            assert statuses == {200: 1, 412: writers - 1}, answers
            for status, answer, digest, metadata in answers:
                if status == 200:
                    assert answer["version"] == version + 1
                    winners.append((version + 1, digest, metadata))
                else:
                    assert answer["code"] == "precondition-failed"
                    assert answer["current"]["version"] == version + 1

    entries = await history(http, cluster.pick(), name, limit=1000)
    assert [entry["version"] for entry in entries] == list(range(rounds + 1, 0, -1))
    recorded = [(e["version"], e["digest"], e["metadata"]) for e in reversed(entries[:-1])]
    assert recorded == winners
    chain = list(reversed(entries))
    for before, after in itertools.pairwise(chain):
        assert after["previous_digest"] == before["digest"]


async def token_status(session: aiohttp.ClientSession, node: CasdServer, secret: str) -> int:
    async with session.get(f"{node.url}/v1/token", headers=bearer(secret)) as response:
        return response.status


async def test_a_token_revoked_on_one_node_is_refused_by_the_others_within_seconds(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """Every worker of the other nodes has the token in its cache when it is revoked on one node;
    within a second every request on them is refused: they heard PostgreSQL's NOTIFY (without
    it they would trust their caches for TOKEN_CACHE_SECONDS, 2 s, after the warm-up)."""
    revoker = cluster.pick()
    others = cluster.others(revoker)
    async with http.post(
        f"{revoker.url}/v1/tokens",
        json={"label": "revoked across nodes", "write_prefixes": ["revoked"]},
        headers=bearer(cluster.admin_token),
    ) as response:
        assert response.status == 201
        created = await response.json()
    secret, probes = created["token"], 8  # fresh connections: both workers of each node
    async with await fresh_session() as session:
        for node in others:
            statuses = [await token_status(session, node, secret) for _ in range(probes)]
            assert set(statuses) == {200}
        async with http.delete(
            f"{revoker.url}/v1/tokens/{created['id']}", headers=bearer(cluster.admin_token)
        ) as response:
            assert response.status == 200

        async def refused_everywhere() -> bool:
            answers = await asyncio.gather(
                *(token_status(session, node, secret) for node in others * probes)
            )
            return set(answers) == {401}

        _, elapsed = await until(refused_everywhere, "the revocation reached every node", 1.0)
    print(f"revocation refused on every other node after {elapsed:.3f}s")
