"""Three nodes over one PostgreSQL and one SeaweedFS: blobs (tests/multinode.py describes the
tier). Any node serves what another stored, one creation under races across nodes, verify before
visible, a resumable upload outlives the worker that held it, GC against re-uploads, quarantine
and healing, an object-store outage, and the periodic scrub once per interval that adopts and
marks missing. Runs once the S3 store (casd/stores/s3.py) is there.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import psutil
import pytest

from tests.conftest import CasdServer
from tests.helpers import digest_of
from tests.multinode import Cluster, cluster_seed, running_cluster, until
from tests.name_helpers import bearer, create_only, get_name, if_match, put_name
from tests.ops_helpers import workers_of
from tests.seaweed import S3Area, SeaweedFS, new_area
from tests.upload_helpers import call, create_upload, patch

pytestmark = pytest.mark.multinode
pytest.importorskip("casd.stores.s3", reason="the S3 store is not in this tree yet")

KiB, MiB = 1 << 10, 1 << 20
LARGE = 6 * MiB  # above S3's 5 MiB part minimum: a multipart upload
SCRUB_INTERVAL = 2.0


@pytest.fixture(scope="module")
def area(seaweedfs: SeaweedFS) -> S3Area:
    return new_area(seaweedfs)


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_url: str,
    area: S3Area,
    request: pytest.FixtureRequest,
) -> Iterator[Cluster]:
    yield from running_cluster(
        tmp_path_factory.mktemp("multinode-s3"),
        postgres_url,
        env={**area.env(), "CASD_SCRUB_INTERVAL": f"{SCRUB_INTERVAL:g}s"},
        seed=cluster_seed(request),
    )


def blob_key(digest: str) -> str:
    hexdigest = digest.removeprefix("blake3:")
    return f"blake3/{hexdigest[:2]}/{hexdigest}"


async def put(
    http: aiohttp.ClientSession,
    node: CasdServer,
    token: str,
    data: bytes,
    digest: str | None = None,
) -> tuple[int, dict[str, Any]]:
    url = f"{node.url}/v1/blobs/{digest or digest_of(data)}"
    async with http.put(url, data=data, headers=bearer(token)) as answer:
        return answer.status, await answer.json(content_type=None)


async def get(http: aiohttp.ClientSession, node: CasdServer, digest: str) -> tuple[int, bytes]:
    """Status and bytes of a full GET; one cut short (the verified read found the bytes
    wrong) is status -1."""
    try:
        async with http.get(f"{node.url}/v1/blobs/{digest}") as answer:
            return answer.status, await answer.read()
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
        return -1, b""


async def rows_of(cluster: Cluster, digest: str) -> list[str]:
    found = await cluster.sql("SELECT status FROM blobs WHERE digest = $1", digest)
    return [row["status"] for row in found]


async def test_any_node_serves_what_another_stored(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    token = cluster.admin_token
    for size in (0, 64 * KiB, LARGE):
        data = os.urandom(size)
        digest = digest_of(data)
        assert (await put(http, cluster.pick(), token, data))[0] == 201
        for node in cluster.nodes:
            assert await get(http, node, digest) == (200, data)
            async with http.head(f"{node.url}/v1/blobs/{digest}") as answer:
                assert (answer.status, answer.headers["Content-Length"]) == (200, str(size))
            if size:
                headers = {"Range": f"bytes={size // 2}-"}
                async with http.get(f"{node.url}/v1/blobs/{digest}", headers=headers) as answer:
                    assert (answer.status, await answer.read()) == (206, data[size // 2 :])


async def test_one_creation_under_concurrent_puts_over_the_nodes(
    cluster: Cluster, http: aiohttp.ClientSession, area: S3Area
) -> None:
    """8 PUTs of one new blob spread over the nodes at once: exactly one 201, one object, one
    row; 30 small trials (one conditional PutObject each) and 3 large ones (multipart, whose
    conditional complete SeaweedFS does not make atomic: the publish lock does)."""
    token, racers = cluster.admin_token, 8
    async with asyncio.timeout(150):
        for size in [64 * KiB] * 30 + [LARGE] * 3:
            data = os.urandom(size)
            digest = digest_of(data)
            answers = await asyncio.gather(
                *(put(http, node, token, data) for node in cluster.spread(racers))
            )
            statuses = Counter(status for status, _ in answers)
            assert statuses == {201: 1, 200: racers - 1}, (size, answers)
            assert await area.keys(blob_key(digest)) == [blob_key(digest)]
            assert await rows_of(cluster, digest) == ["ok"]
    assert await area.open_multipart_uploads() == []


async def test_a_wrong_digest_leaves_no_object_and_no_open_multipart_upload(
    cluster: Cluster, http: aiohttp.ClientSession, area: S3Area
) -> None:
    token = cluster.admin_token
    for size, node in zip((64 * KiB, LARGE), cluster.spread(2), strict=True):
        data = os.urandom(size)
        claimed = digest_of(data + b"!")
        status, problem = await put(http, node, token, data, claimed)
        assert (status, problem["code"]) == (400, "digest-mismatch")
        assert await area.keys(blob_key(claimed)) == []
        assert await area.keys(blob_key(digest_of(data))) == []
        assert await rows_of(cluster, claimed) == []
        for other in cluster.nodes:
            assert (await get(http, other, claimed))[0] == 404

    async def none_open() -> bool:
        return await area.open_multipart_uploads() == []

    await until(none_open, "no multipart upload left open", 5.0)


def serving_worker(node: CasdServer, client: socket.socket) -> psutil.Process:
    """The worker of ``node`` that accepted the connection of ``client``."""
    local_port = client.getsockname()[1]
    for worker in workers_of(node).values():
        for connection in worker.net_connections(kind="tcp"):
            if connection.raddr and connection.raddr.port == local_port:
                return worker
    raise AssertionError(f"no worker of {node.url} holds port {local_port}")


async def test_a_resumable_upload_survives_kill_9_of_its_worker_and_completes_elsewhere(
    cluster: Cluster, http: aiohttp.ClientSession, area: S3Area
) -> None:
    """A PATCH sends part of its body to a node and stalls; the worker holding it is killed with
    SIGKILL. HEAD on another node tells the durable offset; the rest sent there completes the
    upload with the right digest, served by every node. Three random cut points."""
    token = cluster.admin_token
    for _trial in range(3):
        data = os.urandom(8 * MiB)
        first, second = cluster.rng.sample(cluster.nodes, 2)
        url = await create_upload(http, first, token, Casd_Digest=digest_of(data))
        path = url.removeprefix(first.url)
        cut = cluster.rng.randrange(1 * MiB, 7 * MiB)
        _reader, writer = await asyncio.open_connection("127.0.0.1", first.port)
        try:
            head = (
                f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                f"Upload-Offset: 0\r\nUpload-Complete: ?1\r\nContent-Length: {len(data)}\r\n\r\n"
            )
            writer.write(head.encode() + data[:cut])
            await writer.drain()
            await asyncio.sleep(0.3)  # the worker takes in what arrived
            worker = serving_worker(first, writer.get_extra_info("socket"))
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
        finally:
            writer.transport.abort()
        rest_url = second.url + path
        answer = await call(http, "HEAD", rest_url, headers=bearer(token))
        assert answer.status == 204, answer
        offset = int(answer.headers["Upload-Offset"])
        assert 0 <= offset <= cut
        done = await patch(http, rest_url, token, offset, data[offset:], complete=True)
        assert done.status == 201, done
        assert done.body["digest"] == digest_of(data)
        # Not from the first node: connecting to it right after a worker's death may be
        # refused (SO_REUSEPORT resets what was queued on the dead worker's socket).
        for node in cluster.others(first):
            assert await get(http, node, digest_of(data)) == (200, data)
    assert await area.open_multipart_uploads() == []


async def gc_once(node: CasdServer, area: S3Area) -> int:
    """``casd gc --grace 0 --keep-versions 0`` on ``node``'s data directory and database; the
    number of blobs it collected."""
    process = await asyncio.create_subprocess_exec(
        *node.command("gc", "--grace", "0", "--keep-versions", "0", "--json"),
        env={**os.environ, **area.env()},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    collected: int = json.loads(out)["collected"]
    return collected


async def test_gc_looping_on_one_node_while_others_reupload_and_rename_leaves_no_dangling_name(
    cluster: Cluster, http: aiohttp.ClientSession, area: S3Area
) -> None:
    """`casd gc --grace 0 --keep-versions 0` runs again and again (3 times) on one node while the
    others re-upload four blobs and point three names at them in turn, so that one blob or more
    is always unnamed and collectable: no name ends up pointing at a blob whose object is gone,
    and every named blob is served, verified, by every node."""
    token = cluster.admin_token
    collector, *writers = cluster.nodes
    contents = [f"gc race {index}".encode() * 4096 for index in range(4)]
    names = [f"gc-race/{index}" for index in range(3)]
    done = asyncio.Event()

    async def collect() -> list[int]:
        collected: list[int] = []
        try:
            while len(collected) < 3:
                collected.append(await gc_once(collector, area))
        finally:
            done.set()
        return collected

    refused: Counter[str] = Counter()  # names refused because GC took their blob meanwhile

    async def point(writer: CasdServer, name: str, data: bytes) -> None:
        """Upload ``data`` and point ``name`` at it by compare-and-swap; again when another
        writer was first, and with a fresh upload when GC collected the blob meanwhile
        (``422 unknown-blob``: casd never lets a name point at a collected blob). Bounded."""
        for _attempt in range(20):
            status, _ = await put(http, writer, token, data)
            assert status in (200, 201)
            status, current = await get_name(http, writer, name)
            condition = create_only() if status == 404 else if_match(current["version"])
            body = {"digest": digest_of(data)}
            status, answer, _ = await put_name(http, writer, token, name, body, condition)
            if status in (200, 201):
                return
            assert status in (409, 412, 422), answer
            refused[answer["code"]] += 1
        raise AssertionError(f"{name} never took {digest_of(data)}")

    async def write(writer: CasdServer) -> None:
        for round_ in range(500):
            if done.is_set():
                return
            data = contents[cluster.rng.randrange(len(contents))]
            await point(writer, names[round_ % len(names)], data)

    async with asyncio.timeout(120):
        gc = asyncio.create_task(collect())
        await asyncio.gather(*(write(writer) for writer in writers))
        collected = await gc
    assert sum(collected) >= 1, "the race needs collections that delete something"
    print(f"GC runs collected {collected} blobs; names refused meanwhile: {dict(refused)}")
    for name in names:
        async with http.get(f"{cluster.pick().url}/v1/names/{name}") as answer:
            digest = (await answer.json())["digest"]
        assert await rows_of(cluster, digest) == ["ok"]
        assert await area.keys(blob_key(digest)) == [blob_key(digest)]
        for node in cluster.nodes:
            status, body = await get(http, node, digest)
            assert status == 200 and digest_of(body) == digest


async def test_bytes_changed_in_the_bucket_are_never_served_and_a_reupload_heals_them(
    cluster: Cluster, http: aiohttp.ClientSession, area: S3Area
) -> None:
    token = cluster.admin_token
    data = os.urandom(256 * KiB)
    digest = digest_of(data)
    assert (await put(http, cluster.pick(), token, data))[0] == 201
    await area.put(blob_key(digest), os.urandom(len(data)))  # behind casd's back
    status, served = await get(http, cluster.pick(), digest)
    assert status in (-1, 410), status  # cut short, or the periodic scrub was first
    assert served != data

    async def quarantined_everywhere() -> bool:
        statuses = {(await get(http, node, digest))[0] for node in cluster.nodes}
        return statuses == {410}

    await until(quarantined_everywhere, "410 on every node", 10.0)
    hexdigest = digest.removeprefix("blake3:")
    assert any(hexdigest in key for key in await area.keys("quarantine/"))
    assert (await put(http, cluster.pick(), token, data))[0] in (200, 201)  # heals
    for node in cluster.nodes:
        assert await get(http, node, digest) == (200, data)


async def test_an_object_store_outage_gives_503_and_the_upload_completes_after_it(
    cluster: Cluster, http: aiohttp.ClientSession, seaweedfs: SeaweedFS
) -> None:
    """SeaweedFS stopped (by PID): a PUT on every node and the PATCH of a resumable upload begun
    before get 503 with Retry-After, and no row appears; once it is back (same data) the PUT
    succeeds and the upload completes on a third node, verified."""
    token = cluster.admin_token
    data, resumable = os.urandom(64 * KiB), os.urandom(2 * MiB)
    digest = digest_of(data)
    starter, patcher, finisher = cluster.spread(3)
    url = await create_upload(http, starter, token, data=resumable[:MiB])
    path = url.removeprefix(starter.url)
    with seaweedfs.stopped():
        for node in cluster.nodes:
            async with http.put(
                f"{node.url}/v1/blobs/{digest}", data=data, headers=bearer(token)
            ) as answer:
                assert (answer.status, answer.headers.get("Retry-After") is not None) == (503, True)
                assert (await answer.json())["code"] == "unavailable"
        during = await patch(http, patcher.url + path, token, MiB, resumable[MiB:], complete=True)
        assert (during.status, during.body["code"]) == (503, "unavailable"), during
        assert await rows_of(cluster, digest) == []
        assert await rows_of(cluster, digest_of(resumable)) == []
    assert (await put(http, cluster.pick(), token, data))[0] == 201
    offset = int(
        (await call(http, "HEAD", finisher.url + path, headers=bearer(token))).headers[
            "Upload-Offset"
        ]
    )
    done = await patch(http, finisher.url + path, token, offset, resumable[offset:], complete=True)
    assert (done.status, done.body["digest"]) == (201, digest_of(resumable)), done
    for node in cluster.nodes:
        assert await get(http, node, digest) == (200, data)
        assert await get(http, node, digest_of(resumable)) == (200, resumable)


async def test_the_periodic_scrub_runs_once_per_interval_adopts_and_marks_missing(
    cluster: Cluster, http: aiohttp.ClientSession, area: S3Area
) -> None:
    """Six workers on three nodes all poll for a due scrub; one scrub runs per interval (runs
    never overlap, each starts an interval after the last one finished). It adopts an object
    that has no row and marks missing a row whose object is gone."""
    token = cluster.admin_token
    orphan = os.urandom(32 * KiB)
    await area.put(blob_key(digest_of(orphan)), orphan)
    lost = os.urandom(32 * KiB)
    assert (await put(http, cluster.pick(), token, lost))[0] == 201
    await area.delete(blob_key(digest_of(lost)))

    async def reconciled() -> bool:
        return await rows_of(cluster, digest_of(orphan)) == ["ok"] and await rows_of(
            cluster, digest_of(lost)
        ) == ["missing"]

    await until(reconciled, "the scrub adopted the orphan and marked the lost blob", 20.0, 0.5)

    async def runs() -> list[Any]:
        found = await cluster.sql(
            "SELECT started_at, finished_at FROM maintenance_runs"
            " WHERE kind = 'scrub' ORDER BY started_at"
        )
        return found if len(found) >= 3 else []

    found, _ = await until(runs, "three periodic scrubs", 20.0, pause=0.5)
    for before, after in itertools.pairwise(found):
        gap = (after["started_at"] - before["finished_at"]).total_seconds()
        assert gap >= SCRUB_INTERVAL - 0.05, (before, after)
