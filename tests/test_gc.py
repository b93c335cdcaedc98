"""casd gc: keeps what names, history and recent uploads keep, deletes the rest, and never races
an upload or a name into a blob without bytes."""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import aiohttp

from casd.digests import lock_key
from casd.gc import Collector
from tests.conftest import AnyServer, HttpServerFactory
from tests.helpers import blob_path, digest_of
from tests.inprocess import InProcessServer
from tests.integrity_helpers import (
    blob_rows,
    blob_service,
    db_execute,
    flip_byte,
    full_get,
    metric_samples,
    run_json,
    upload,
)
from tests.name_helpers import bearer, create_only, if_match, put_name


class Names:
    """Writes names through the API, following their versions."""

    def __init__(self, http: aiohttp.ClientSession, server: AnyServer) -> None:
        self.http, self.server = http, server
        self.versions: dict[str, int] = {}

    async def point(self, name: str, data: bytes, metadata: dict[str, Any] | None = None) -> None:
        version = self.versions.get(name)
        condition = create_only() if version is None else if_match(version)
        body: dict[str, Any] = {"digest": digest_of(data)}
        if metadata is not None:
            body["metadata"] = metadata
        status, record, _ = await put_name(
            self.http, self.server, self.server.admin_token, name, body, condition
        )
        assert status in (200, 201), record
        self.versions[name] = record["version"]

    async def delete(self, name: str) -> None:
        headers = {**bearer(self.server.admin_token), **if_match(self.versions.pop(name))}
        async with self.http.delete(
            f"{self.server.url}/v1/names/{name}", headers=headers
        ) as response:
            assert response.status == 204, await response.text()


async def test_gc_keeps_what_is_kept_and_collects_the_rest(
    http_server_factory: HttpServerFactory, http: aiohttp.ClientSession
) -> None:
    server = http_server_factory()
    keys = ["H1", "H2", "H3", "K1", "K2", "D1", "D2", "D3", "U", "Q"]
    blobs = {key: os.urandom(1000 + n) for n, key in enumerate(keys)}
    for data in blobs.values():
        await upload(http, server, data)
    names = Names(http, server)
    for key in ("H1", "H2", "H3"):  # the current digest and one before it stay (keep 2)
        await names.point("prod/h", blobs[key])
    await names.point("prod/k", blobs["K1"])
    await names.point("prod/k", blobs["K2"])
    await names.point("prod/k", blobs["K1"])
    await names.point("prod/k", blobs["K1"], {"build": 2})  # K2 is still among the last two
    for key in ("D1", "D2", "D3"):  # a deleted name's last digests stay too
        await names.point("prod/d", blobs[key])
    await names.delete("prod/d")
    flip_byte(blob_path(server.data_dir, digest_of(blobs["Q"])), 0)
    assert (await full_get(http, f"{server.url}/v1/blobs/{digest_of(blobs['Q'])}"))[0] is None

    fresh = run_json(server, "gc", "--keep-versions", "2")
    assert (fresh["collected"], fresh["dry_run"]) == (0, False), "the default grace is 24h"

    await db_execute(server, "UPDATE blobs SET last_used_at = now() - interval '2 days'")
    blobs["R"] = os.urandom(999)  # uploaded within the grace period
    await upload(http, server, blobs["R"])
    rows_before = await blob_rows(server)

    doomed = {digest_of(blobs[key]): len(blobs[key]) for key in ("H1", "D1", "U", "Q")}
    dry = run_json(server, "gc", "--grace", "1h", "--keep-versions", "2", "--dry-run")
    assert {entry["digest"]: entry["size"] for entry in dry["blobs"]} == doomed
    assert (dry["collected"], dry["collected_bytes"]) == (4, sum(doomed.values()))
    listing = server.run_cli("gc", "--grace", "1h", "--keep-versions", "2", "--dry-run")
    assert sorted(listing.stdout.splitlines()[:-1]) == sorted(
        f"{d}\t{s}" for d, s in doomed.items()
    )
    assert "would collect 4 blobs" in listing.stdout.splitlines()[-1]
    assert await blob_rows(server) == rows_before, "a dry run changes nothing"

    report = run_json(server, "gc", "--grace", "1h", "--keep-versions", "2")

    assert (report["collected"], report["collected_bytes"]) == (4, sum(doomed.values()))
    rows = await blob_rows(server)
    for key, data in blobs.items():
        digest = digest_of(data)
        if digest in doomed:
            assert digest not in rows and not blob_path(server.data_dir, digest).exists(), key
        else:
            assert rows[digest] == "ok", key
            assert await full_get(http, f"{server.url}/v1/blobs/{digest}") == (200, data), key
    async with http.get(f"{server.url}/v1/blobs/{digest_of(blobs['U'])}") as response:
        assert response.status == 404
    samples = await metric_samples(http, server)
    assert samples['casd_last_run{kind="gc",stat="collected"}'] == 4
    assert samples['casd_last_run{kind="gc",stat="collected_bytes"}'] == sum(doomed.values())

    assert run_json(server, "gc", "--grace", "1h", "--keep-versions", "2")["collected"] == 0
    # With the default of 10 versions, what history keeps stays; the fresh R goes without grace.
    last = run_json(server, "gc", "--grace", "0")
    assert (last["collected"], [entry["digest"] for entry in last["blobs"]]) == (
        1,
        [digest_of(blobs["R"])],
    )
    # Collected content can come back.
    async with http.put(
        f"{server.url}/v1/blobs/{digest_of(blobs['U'])}",
        data=blobs["U"],
        headers=server.admin_headers,
    ) as response:
        assert response.status == 201


async def test_collect_checks_again_under_the_lock(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    """What was a candidate when listed is kept if it was re-uploaded or named meanwhile."""
    server = module_http_server
    old, reuploaded, named = (os.urandom(5000) for _ in range(3))
    for data in (old, reuploaded, named):
        await upload(http, server, data)
    digests = [digest_of(data) for data in (old, reuploaded, named)]
    await db_execute(
        server,
        "UPDATE blobs SET last_used_at = now() - interval '2 hours' WHERE digest = ANY($1)",
        digests,
    )
    async with blob_service(server) as blobs:
        collector = Collector(blobs, keep_versions=10, grace=3600)
        listed = [
            row["digest"] for row in await blobs.db.fetch("gc_candidates", "", 10, 3600, 1000)
        ]
        assert set(digests) <= set(listed)
        await upload(http, server, reuploaded)
        await Names(http, server).point(f"keep/{os.urandom(4).hex()}", named)

        assert await collector.collect(digest_of(old)) == len(old)
        assert await collector.collect(digest_of(reuploaded)) is None
        assert await collector.collect(digest_of(named)) is None
    rows = await blob_rows(server)
    assert digest_of(old) not in rows and not blob_path(server.data_dir, digest_of(old)).exists()
    for data in (reuploaded, named):
        assert await full_get(http, f"{server.url}/v1/blobs/{digest_of(data)}") == (200, data)


async def test_reupload_without_body_waits_for_a_collection_in_progress(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    """PUT with Expect: 100-continue of stored bytes counts as a re-upload: while a collector
    holds the blob, it waits; when the blob is gone, the client is asked for the bytes."""
    server = module_http_server
    data = os.urandom(50_000)
    digest = await upload(http, server, data)
    collector = await server.connect_db()
    try:
        async with collector.transaction():
            await collector.execute("SELECT pg_advisory_xact_lock($1)", lock_key(digest))
            put = asyncio.create_task(put_expecting_continue(http, server, data))
            await asyncio.sleep(1.0)
            assert not put.done(), "a re-upload must not pass a collection in progress"
            await collector.execute("DELETE FROM blobs WHERE digest = $1", digest)
            blob_path(server.data_dir, digest).unlink()
        assert await asyncio.wait_for(put, 30) == 201, "the bytes were sent again"
    finally:
        await collector.close()
    assert await full_get(http, f"{server.url}/v1/blobs/{digest}") == (200, data)


async def put_expecting_continue(
    http: aiohttp.ClientSession, server: AnyServer, data: bytes
) -> int:
    async with http.put(
        f"{server.url}/v1/blobs/{digest_of(data)}",
        data=data,
        headers=server.admin_headers,
        expect100=True,
    ) as response:
        return response.status


async def test_gc_races_uploads_names_and_reuploads(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    """GC without grace or history in a loop while clients upload, name and re-upload a small
    set of contents: afterwards every name resolves to a readable blob with the right bytes,
    and every blob row has its file."""
    server = module_http_server
    contents = [os.urandom(size) for size in (1, 700, 40_000, 300_000, 1_200_000) for _ in (0, 1)]
    by_digest = {digest_of(data): data for data in contents}
    stop = asyncio.Event()
    collected: list[int] = []
    deadline = time.monotonic() + 8

    async def collect_loop() -> None:
        async with blob_service(server) as blobs:
            while not stop.is_set():
                report = await Collector(blobs, keep_versions=0, grace=0).run()
                collected.append(report.collected)

    async def client(n: int) -> tuple[str, bytes | None, int]:
        rng, names, refused = random.Random(n), Names(http, server), 0
        name, named = f"race/{n}/image", None
        for _ in range(200):
            if time.monotonic() > deadline:
                break
            data = rng.choice(contents)
            if rng.random() < 0.5:
                assert await put_expecting_continue(http, server, data) in (200, 201)
            else:
                await upload(http, server, data)
            version = names.versions.get(name)
            status, record, _ = await put_name(
                http,
                server,
                server.admin_token,
                name,
                {"digest": digest_of(data)},
                create_only() if version is None else if_match(version),
            )
            if status == 422:  # collected between the upload and the name: upload again
                assert record["code"] == "unknown-blob"
                refused += 1
                continue
            assert status in (200, 201), record
            names.versions[name], named = record["version"], data
            # Named, so nothing may collect it: it must be readable, byte for byte.
            url = f"{server.url}/v1/blobs/{digest_of(data)}"
            assert await full_get(http, url) == (200, data), "a named blob is not readable"
            # A re-upload of named bytes, which the server need not receive again.
            assert await put_expecting_continue(http, server, data) == 200
        return name, named, refused

    async def reader() -> None:
        """Whatever a GET by digest answers completely has exactly the right bytes."""
        while not stop.is_set():
            digest = random.choice(list(by_digest))
            status, body = await full_get(http, f"{server.url}/v1/blobs/{digest}")
            assert status in (200, 404, None), status
            if status == 200:
                assert body == by_digest[digest]

    gc_task = asyncio.create_task(collect_loop())
    reader_task = asyncio.create_task(reader())
    results = await asyncio.wait_for(asyncio.gather(*(client(n) for n in range(6))), 120)
    stop.set()
    await asyncio.gather(gc_task, reader_task)

    assert sum(collected) > 0, "the collector had something to collect"
    rows = await blob_rows(server)
    for name, named, _ in results:
        assert named is not None, f"{name} was never named"
        async with http.get(f"{server.url}/v1/names/{name}") as response:
            record = await response.json()
        assert record["digest"] == digest_of(named) and record["healthy"] is True
        assert await full_get(http, f"{server.url}/v1/blobs/{record['digest']}") == (200, named)
    for digest, status in rows.items():
        assert status == "ok", (digest, status)
        assert blob_path(server.data_dir, digest).is_file(), f"row without its file: {digest}"
